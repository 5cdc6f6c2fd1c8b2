"""Approximate top-k answers at millions of entities (issue #35): candidates for each query from a FAISS index of
the joint rows, re-ranked exactly by the scorer; how approximate they are is measured when the index is built.

A tail query of every built-in scorer is one vector q (its anchor combined with the relation) and the answers are
the rows t that score best against it, so the search is a nearest-row search:
- ComplEx and DistMult score q · t (ComplEx in its real layout [re, im]): an inner-product index finds the rows
  of largest q · t — the candidates are the answers' own order;
- RotatE (complex L1) and TransE (L1) score −distance(q, t): a Euclidean index fetches the nearest rows, whose
  order is close to the scorer's, so ``overfetch × k`` candidates are fetched and re-ranked by the scorer.
A scorer's ``answer_search`` names its index ("inner_product" or "l2"); None (the IKRL / TBKGC views) means it
has no single-vector form, and the exact path answers.

The build calibrates the search knob (HNSW's efSearch, IVF's nprobe) to the smallest value whose recall@k against
the exact fused path (``best_answers``) on seeded sample queries — random entities and relations, both
directions — reaches the target, and keeps the sweep in ``meta.json``. recall@k counts an answer right when it
scores at least the exact k-th answer's score (ties are equally right). Known answers excluded by
``known="filter"`` are dropped from the candidates; a query left with fewer than k candidates is answered
exactly (counted in ``fallbacks``).
"""
from __future__ import annotations

import json
import os
import time

import numpy as np
import torch

from ..errors import ConfigError
from ..outputs import built_aside, write_atomic
from .exact_answers import best_answers
from .neighbour_index import HNSW_MAX_ROWS, META, FaissIndex, load_faiss, table_digest, write_index

SEARCHES = ("inner_product", "l2")


class AnswerIndex(FaissIndex):
    """The index of one scorer's answers over the joint rows (``meta["search"]``: inner product or Euclidean)."""

    @torch.no_grad()
    def answers(self, scorer, kernels, query: torch.Tensor, table: torch.Tensor, k: int,
                excluded: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Like ``best_answers``: (negated similarity, row) of each query's ``k`` best rows, best first."""
        n = table.shape[0]
        k = min(k, n)
        excluded_per_query = np.bincount(excluded[0], minlength=len(query)) if excluded is not None \
            else np.zeros(len(query), dtype=np.int64)
        # known answers left out (known="filter") take candidates' places: fetch that many more
        fetch = min(self.overfetch * k + int(excluded_per_query.max(initial=0)), n)
        _, found = self.index.search(np.ascontiguousarray(query.float().cpu().numpy()), fetch)
        found = torch.from_numpy(found.astype(np.int64))
        valid = (found >= 0) & (found < n)            # FAISS pads with −1 where it found fewer rows
        if excluded is not None and len(excluded[0]):
            pairs = excluded[0].astype(np.int64) * n + excluded[1]
            asked = np.arange(len(query), dtype=np.int64)[:, None] * n + found.numpy()
            valid &= torch.from_numpy(~np.isin(asked, pairs))
        rows = table[found.clamp(0, n - 1).to(table.device)]                      # [q, fetch, W]
        similarity = scorer.similarity(query.unsqueeze(1), rows).float().cpu()
        similarity[~valid] = float("-inf")
        top = torch.topk(similarity, min(k, fetch), dim=1)
        best_s, best_e = top.values, found.gather(1, top.indices)
        answerable = torch.from_numpy(np.minimum(k, n - excluded_per_query))
        short = ((~torch.isinf(best_s)).sum(1) < answerable).nonzero().flatten()
        if best_s.shape[1] < k or len(short):         # too few candidates: those queries are answered exactly
            best_s = torch.cat([best_s, best_s.new_full((len(query), k - best_s.shape[1]), float("-inf"))], 1)
            best_e = torch.cat([best_e, best_e.new_zeros((len(query), k - best_e.shape[1]))], 1)
            self.fallbacks += len(short)
            if len(short):
                sub = None
                if excluded is not None:
                    mine = np.isin(excluded[0], short.numpy())
                    remap = np.full(len(query), -1, dtype=np.int64)
                    remap[short.numpy()] = np.arange(len(short))
                    sub = (remap[excluded[0][mine]], excluded[1][mine])
                exact_d, exact_e = best_answers(kernels, query[short], table, k, sub)
                best_s[short], best_e[short] = -exact_d, exact_e
        return -best_s, best_e


def build_answer_index(folder: str, table: torch.Tensor, identity: dict, scorer, kernels, queries: torch.Tensor,
                       kind: str = "auto", m: int = 32, ef_construction: int = 80, overfetch: int = 4, k: int = 10,
                       target_recall: float = 0.95, seed: int = 0) -> AnswerIndex:
    """Build an answer index of ``table`` into ``folder`` (a temporary sibling renamed into place) for ``scorer``
    (its ``answer_search``), then calibrate it on ``queries`` (sample queries of the model)."""
    faiss = load_faiss()
    search = getattr(scorer, "answer_search", None)
    if search not in SEARCHES:
        raise ConfigError(f"approximate answers: the {scorer.name!r} scorer has no single-vector query form to "
                          f"search by; answer exactly (approximate=False)")
    if kind == "auto":
        kind = "hnsw" if table.shape[0] <= HNSW_MAX_ROWS else "ivf"
    if kind not in ("hnsw", "ivf"):
        raise ConfigError(f"answer index: kind={kind!r}; expected hnsw, ivf or auto")
    metric = faiss.METRIC_INNER_PRODUCT if search == "inner_product" else faiss.METRIC_L2
    vectors = np.ascontiguousarray(table.float().cpu().numpy())
    with built_aside(folder) as work:
        built, knobs = write_index(faiss, vectors, work, kind, m, ef_construction, seed, metric)
        meta = {**identity, **built, "search": search,
                "vectors_sha256": identity.get("vectors_sha256") or table_digest(table),
                "overfetch": overfetch if search == "l2" else 1, "knob": knobs[-1], "target_recall": target_recall}
        write_atomic(os.path.join(work, META), json.dumps(meta))
        built = AnswerIndex(work)
        built.meta.update(calibrate_answers(built, scorer, kernels, table, queries, knobs, k, target_recall))
        write_atomic(os.path.join(work, META), json.dumps(built.meta))
    return AnswerIndex(folder)


def calibrate_answers(index: AnswerIndex, scorer, kernels, table: torch.Tensor, queries: torch.Tensor,
                      knobs: list[int], k: int, target_recall: float) -> dict:
    """Exact answers of ``queries`` once, then recall@k and speed at each knob value, stopping at the first that
    reaches ``target_recall``; the chosen knob's numbers and the whole sweep."""
    t0 = time.time()
    exact_d, _ = best_answers(kernels, queries, table, k)
    exact_qps = len(queries) / max(time.time() - t0, 1e-9)
    sweep = []
    for knob in knobs:
        index.set_knob(knob)
        t0 = time.time()
        found_d, _ = index.answers(scorer, kernels, queries, table, k)
        seconds = time.time() - t0
        kth = exact_d[:, -1:]
        right = (found_d <= kth + 1e-5 * kth.abs() + 1e-6).sum().item()
        sweep.append({"knob": knob, "recall_at_k": round(right / found_d.numel(), 4), "recall_k": k,
                      "recall_queries": int(len(queries)), "exact_queries_per_s": round(exact_qps, 1),
                      "approximate_queries_per_s": round(len(queries) / max(seconds, 1e-9), 1)})
        if sweep[-1]["recall_at_k"] >= target_recall:
            break
    return {**sweep[-1], "sweep": sweep}
