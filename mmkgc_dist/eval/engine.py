"""The one ranking engine: ranks queries against a shard of candidate entities and sums the counts over
shards. One process is the shard [0, N) and a sum over nothing; N ranks each hold the entities they own.

Per query chunk the engine computes, on each shard, how many of its candidates score strictly better than
the true answer and how many tie with it (filtered candidates and the answer itself excluded); the counts
are summed over shards and turned into ranks by the tie policy. The true answer's distance comes from the
shard that owns it, with the same kernel as the candidates', so ties compare like with like. Exact and
sampled protocols share everything but the candidate sets. Any scoring function (model/scoring.py): the engine
counts in distances, the negated similarities (negation is exact, so RotatE's are its distances bit for bit).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from ..errors import NonFiniteModel
from ..model import Scoring
from .ranking import DIRECTIONS, FilterIndex, count_better_equal, ranks_from_counts, sampled_chunks


@dataclass
class CandidateShard:
    """The candidates one process ranks against: entities [lo, hi) and their joint embeddings."""
    lo: int
    hi: int
    embeddings: Tensor                               # [hi - lo, 2d]
    embed: Callable[[Tensor], Tensor]                # joint embeddings of any entity ids (a collective)
    total: int                                       # entities over all shards
    all_reduce: Callable[[Tensor], Tensor] = lambda t: t   # in-place sum over shards

    @classmethod
    def whole(cls, joint: Tensor) -> "CandidateShard":
        """One process: every entity is a candidate of this shard."""
        return cls(0, joint.shape[0], joint, lambda ids: joint[ids.to(joint.device)], joint.shape[0])


def _count_or_nan(better: Tensor, *distances: Tensor) -> Tensor:
    """``better``, or NaN in the rows whose distances (candidates [b, n], answer [b, 1]) are not finite."""
    finite = torch.ones_like(better, dtype=torch.bool)
    for d in distances:
        finite &= torch.isfinite(d).all(1)
    return better.masked_fill(~finite, float("nan"))


@torch.no_grad()
def rank_queries(shard: CandidateShard, relations: Tensor, scoring: Scoring, triples: np.ndarray, known: np.ndarray,
                 ties: str, batch_size: int, sampled=None, progress=None) -> dict[str, np.ndarray]:
    """Ranks of the true tail and the true head of every triple, and how many candidates each query had
    (the answer and every entity not filtered out; for AMRI). ``sampled``: (eval config, degree distribution,
    num_entities, seed) for the sampled protocol; None ranks against all entities."""
    chunks = _sampled(shard, relations, scoring, triples, known, *sampled) if sampled else \
        _exact(shard, relations, scoring, triples, known, batch_size)
    ranks = {"tail": [], "head": [], "tail_candidates": [], "head_candidates": []}
    for direction, chunk, better, equal, candidates in chunks:
        counts = shard.all_reduce(torch.stack([better, equal]))      # NaN anywhere reaches every rank
        if bool(torch.isnan(counts[0]).any()):
            raise NonFiniteModel(f"evaluation: the model's distances are not finite ({direction} queries of "
                                 f"{len(chunk)} triples starting with {chunk[0].tolist()}); its parameters hold "
                                 f"NaN/inf — training diverged (lower train.lr, or evaluate an earlier checkpoint)")
        ranks[direction].append(ranks_from_counts(counts[0], counts[1], ties).cpu().numpy())
        ranks[f"{direction}_candidates"].append(candidates)
        if progress is not None:
            progress.update(len(chunk))
    return {k: np.concatenate(v) if v else np.zeros(0) for k, v in ranks.items()}


def _query(shard: CandidateShard, relations: Tensor, scoring: Scoring, chunk: np.ndarray, anchors: np.ndarray,
           sign: float) -> Tensor:
    """Queries of one direction (``sign`` −1: head queries) from the anchors' joint rows."""
    return scoring.queries.evaluation_query(shard.embed(torch.from_numpy(anchors)), torch.from_numpy(chunk[:, 1]),
                                            relations, head=sign < 0)


def _true_distance(shard: CandidateShard, answers: np.ndarray, distance) -> Tensor:
    """Each query's distance to its answer, ``distance(query rows, shard-local ids)`` on the shard that holds
    the answer (exactly one); the sum over shards shares it."""
    device = shard.embeddings.device
    target = torch.from_numpy(answers).to(device)
    idx = ((target >= shard.lo) & (target < shard.hi)).nonzero().squeeze(1)
    true = torch.zeros(len(answers), 1, device=device)
    if len(idx):
        true[idx] = distance(idx, target[idx] - shard.lo).to(true.dtype)
    return shard.all_reduce(true)


def _exact(shard, relations, scoring, triples, known, batch_size):
    device, num_entities = shard.embeddings.device, shard.total
    for direction, anchor_col, answer_col, sign in DIRECTIONS:
        index = FilterIndex(known, relations.shape[0], anchor_col, answer_col)
        for start in range(0, len(triples), batch_size):
            chunk = triples[start:start + batch_size]
            query = _query(shard, relations, scoring, chunk, chunk[:, anchor_col], sign)
            local = -scoring.kernels.all_pairs(query, shard.embeddings) if shard.hi > shard.lo else \
                torch.zeros(len(chunk), 0, device=device)
            true = _true_distance(shard, chunk[:, answer_col], lambda i, j: local[i, j][:, None])
            rows, cols = index.pairs(chunk[:, anchor_col], chunk[:, 1])
            candidates = num_entities - _filtered_count(rows, cols, chunk[:, answer_col], num_entities)
            rows = np.concatenate([rows, np.arange(len(chunk))])
            cols = np.concatenate([cols, chunk[:, answer_col]])
            keep = (cols >= shard.lo) & (cols < shard.hi)
            better, equal = count_better_equal(local, true, torch.from_numpy(rows[keep]).to(device),
                                               torch.from_numpy(cols[keep] - shard.lo).to(device))
            yield direction, chunk, _count_or_nan(better, local, true), equal, candidates


def _filtered_count(rows: np.ndarray, cols: np.ndarray, answers: np.ndarray, num_entities: int) -> np.ndarray:
    """Per query, the distinct known answers other than its own answer (they are not candidates)."""
    cells = np.unique(rows * num_entities + cols)
    r, c = cells // num_entities, cells % num_entities
    other = c != answers[r]
    return np.bincount(r[other], minlength=len(answers))


def _sampled(shard, relations, scoring, triples, known, cfg, degree, num_entities, seed):
    """Every shard draws the same candidates (seeded) and scores those it owns."""
    device = shard.embeddings.device
    for direction, sign, chunk, anchors, answers, cand, excluded in sampled_chunks(
            triples, relations.shape[0], known, num_entities, degree, cfg, seed):
        query = _query(shard, relations, scoring, chunk, anchors, sign)
        distance = lambda q, index: -scoring.kernels.gathered(q, shard.embeddings, index)
        true = _true_distance(shard, answers, lambda i, j: distance(query[i], j[:, None]))
        owned = torch.from_numpy((cand >= shard.lo) & (cand < shard.hi) & ~excluded).to(device)
        if shard.hi > shard.lo:
            local = torch.from_numpy(cand - shard.lo).clamp(0, shard.hi - shard.lo - 1).to(device)
            scored = distance(query, local)
            d = scored.masked_fill(~owned, float("inf"))
            better = _count_or_nan((d < true).sum(1).double(), scored, true)
            equal = (d == true).sum(1).double()
        else:
            better = equal = torch.zeros(len(chunk), dtype=torch.float64, device=device)
        yield direction, chunk, better, equal, (~excluded).sum(1) + 1


def filtered_ranks(joint: Tensor, relation_rows: Tensor, scoring: Scoring, triples: np.ndarray, known: np.ndarray,
                   batch_size: int = 256, ties: str = "realistic", progress=None) -> dict[str, np.ndarray]:
    """Ranks of the true tail (queries (h, r, ?)) and the true head ((?, r, t)) for every triple, against all
    entities: the engine on one shard holding every entity. joint [N, 2d], relation_rows: the relation table."""
    return rank_queries(CandidateShard.whole(joint), relation_rows, scoring, triples, known, ties, batch_size,
                        progress=progress)
