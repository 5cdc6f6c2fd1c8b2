"""Filtered link-prediction ranking over all entities, both directions, in bounded memory.

Tie policy: ``optimistic`` rank = 1 + #(strictly better) — what the reference code reports;
``pessimistic`` = 1 + #(better or equal); ``realistic`` (default) = their mean, the expected rank
under random tie-breaking. Filtering removes every other entity that forms a known triple
(train ∪ valid ∪ test) with the query.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..rng import numpy_rng

TIE_POLICIES = ("realistic", "optimistic", "pessimistic")
DIRECTIONS = (("tail", 0, 2, 1.0), ("head", 2, 0, -1.0))   # (name, anchor column, answer column, sign)


class FilterIndex:
    """Known answers of (anchor, relation) queries in CSR form: sorted keys → answer ranges."""

    def __init__(self, known: np.ndarray, num_relations: int, anchor_col: int, answer_col: int):
        keys = known[:, anchor_col] * num_relations + known[:, 1]
        order = np.lexsort((known[:, answer_col], keys))
        self.keys = keys[order]
        self.answers = known[order, answer_col]
        self.num_relations = num_relations

    def pairs(self, anchors: np.ndarray, relations: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row, entity) pairs to filter for a batch of queries."""
        keys = anchors * self.num_relations + relations
        lo = np.searchsorted(self.keys, keys, "left")
        hi = np.searchsorted(self.keys, keys, "right")
        counts = hi - lo
        rows = np.repeat(np.arange(len(keys)), counts)
        starts = np.repeat(lo - np.cumsum(counts) + counts, counts)
        return rows, self.answers[starts + np.arange(counts.sum())]


def count_better_equal(dist: Tensor, true: Tensor, exclude_rows: Tensor, exclude_cols: Tensor) -> tuple[Tensor, Tensor]:
    """Per query, candidates strictly better than / tied with ``true`` [b, 1], ignoring excluded cells."""
    dist = dist.index_put((exclude_rows, exclude_cols), torch.tensor(float("inf"), device=dist.device))
    return (dist < true).sum(1).double(), (dist == true).sum(1).double()


def ranks_from_counts(better: Tensor, equal: Tensor, ties: str) -> Tensor:
    if ties == "optimistic":
        return 1 + better
    if ties == "pessimistic":
        return 1 + better + equal
    if ties == "realistic":
        return 1 + better + equal / 2
    from ..errors import QueryError
    raise QueryError(f"unknown tie policy {ties!r}; expected one of {TIE_POLICIES}")


def ranks_from_distances(dist: Tensor, target: Tensor, filter_rows: Tensor, filter_cols: Tensor,
                         ties: str) -> Tensor:
    """dist [b, N] (lower is better); the target and filtered entities are excluded from the counts."""
    true = dist.gather(1, target.unsqueeze(1))
    rows = torch.cat([filter_rows, torch.arange(len(target), device=target.device)])
    cols = torch.cat([filter_cols, target])
    return ranks_from_counts(*count_better_equal(dist, true, rows, cols), ties)


# --------------------------------------------------------------------------------------- sampled protocol
# For graphs where scoring every entity per query is too slow: each query is ranked against k_u uniform and
# k_d degree-proportional candidates (the degree-based ones are the hard, frequent entities), drawn from
# seeds of (seed, direction, chunk) so every run and every rank sees the same candidates. Candidates that
# are the answer, another known answer or a repeated draw are excluded, so a sampled rank never exceeds
# the exact rank. Ranks are smaller than
# exact ranks (fewer competitors), so sampled metrics are comparable only with sampled metrics of the same
# settings — every report carries the label.

def eval_subset(triples: np.ndarray, max_queries: int, seed: int) -> np.ndarray:
    """At most ``max_queries`` triples, a seeded sample in file order (all when 0 or fewer triples)."""
    if not max_queries or len(triples) <= max_queries:
        return triples
    keep = np.sort(numpy_rng(seed, "eval_subset").choice(len(triples), max_queries, replace=False))
    return triples[keep]


def protocol_label(cfg, seed: int, used: int, total: int) -> str:
    label = "filtered, all entities" if cfg.protocol == "exact" else (
        f"filtered, sampled: {cfg.sampled_uniform} uniform + {cfg.sampled_degree} degree-proportional "
        f"candidates per query (seed {seed})")
    return label + (f"; {used} of {total} triples (seeded sample)" if used < total else "")


def sampled_candidates(rng: np.random.Generator, queries: int, num_entities: int, k_uniform: int, degree,
                       k_degree: int) -> np.ndarray:
    return np.concatenate([rng.integers(0, num_entities, size=(queries, k_uniform)),
                           degree.draw(rng, (queries, k_degree))], axis=1)


def excluded_candidates(index: FilterIndex, anchors: np.ndarray, relations: np.ndarray, answers: np.ndarray,
                        cand: np.ndarray) -> np.ndarray:
    """bool [b, k]: candidates that are the query's answer, another known answer, or a repeat of an earlier
    candidate of the same query (draws are with replacement; each entity competes once)."""
    rows, cols = index.pairs(anchors, relations)
    width = int(max(cand.max(initial=0), cols.max(initial=0), answers.max(initial=0))) + 1
    known = np.unique(rows * width + cols)
    cells = np.arange(len(cand))[:, None] * width + cand
    order = np.argsort(cand, axis=1, kind="stable")
    ordered = np.take_along_axis(cand, order, axis=1)
    repeat = np.zeros_like(cand, dtype=bool)
    np.put_along_axis(repeat, order[:, 1:], ordered[:, 1:] == ordered[:, :-1], axis=1)
    return np.isin(cells, known) | (cand == answers[:, None]) | repeat


def sampled_chunks(triples: np.ndarray, num_relations: int, known: np.ndarray, num_entities: int, degree,
                   cfg, seed: int):
    """(direction, sign, chunk, anchor ids, answer ids, candidates [b, k], excluded [b, k]) per query chunk."""
    for d, (direction, anchor_col, answer_col, sign) in enumerate(DIRECTIONS):
        index = FilterIndex(known, num_relations, anchor_col, answer_col)
        for c, start in enumerate(range(0, len(triples), cfg.batch_size)):
            chunk = triples[start:start + cfg.batch_size]
            rng = numpy_rng(seed, "eval_candidates", d, c)
            cand = sampled_candidates(rng, len(chunk), num_entities, cfg.sampled_uniform, degree, cfg.sampled_degree)
            excluded = excluded_candidates(index, chunk[:, anchor_col], chunk[:, 1], chunk[:, answer_col], cand)
            yield direction, sign, chunk, chunk[:, anchor_col], chunk[:, answer_col], cand, excluded
