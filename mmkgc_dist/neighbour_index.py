"""Approximate nearest entities: a FAISS HNSW graph over an embedding table, for ``neighbours()`` at millions of
entities, with the exact path kept beside it.

The graph is built on the Euclidean distance of the rows (FAISS's native metric); ``neighbours`` ranks by the
complex L1 distance (Σ_k |a_k − b_k| over complex coordinates), so a query fetches ``overfetch × k`` candidates
from the graph and re-ranks them exactly. The build measures recall@k of the whole path against exact search on a
seeded sample of entities and keeps it in ``meta.json`` beside ``index.faiss``: a user reads how approximate the
answers are before trusting them. Needs ``faiss-cpu`` (``pip install faiss-cpu``, in requirements.txt).
"""
from __future__ import annotations

import json
import os

import numpy as np
import torch

from .errors import ConfigError
from .model.kernels import all_pairs_distance
from .outputs import built_aside, write_atomic

META = "meta.json"


def _faiss():
    try:
        import faiss
    except ImportError:
        raise ConfigError("approximate neighbours need faiss: pip install faiss-cpu (or faiss-gpu); the exact "
                          "path (approximate=False) needs nothing") from None
    return faiss


def exact_nearest(table: torch.Tensor, queries: torch.Tensor, k: int, exclude: np.ndarray | None = None,
                  chunk: int = 1 << 16) -> tuple[torch.Tensor, torch.Tensor]:
    """(distance, row) of the ``k`` rows of ``table`` nearest to each query by the complex L1 distance, scored in
    chunks of rows with a running top-k (memory: queries × chunk); ``exclude[q]``: a row left out for query q."""
    best_d = torch.full((len(queries), 0), float("inf"))
    best_i = torch.zeros((len(queries), 0), dtype=torch.long)
    for lo in range(0, table.shape[0], chunk):
        d = all_pairs_distance(queries, table[lo:lo + chunk]).float().cpu()
        if exclude is not None:
            inside = (exclude >= lo) & (exclude < lo + chunk)
            d[torch.from_numpy(np.flatnonzero(inside)), torch.from_numpy(exclude[inside] - lo)] = float("inf")
        rows = torch.arange(lo, lo + d.shape[1]).expand(len(queries), -1)
        d, rows = torch.cat([best_d, d], 1), torch.cat([best_i, rows], 1)
        top = torch.topk(d, min(k, d.shape[1]), dim=1, largest=False)
        best_d, best_i = top.values, rows.gather(1, top.indices)
    return best_d, best_i


class NeighbourIndex:
    """An HNSW graph over a table's rows (``index.faiss`` + ``meta.json`` in a folder)."""

    def __init__(self, folder: str):
        faiss = _faiss()
        with open(os.path.join(folder, META)) as fh:
            self.meta = json.load(fh)
        self.index = faiss.read_index(os.path.join(folder, "index.faiss"))
        self.index.hnsw.efSearch = self.meta["ef_search"]
        self.overfetch = self.meta["overfetch"]

    def nearest(self, table: torch.Tensor, queries: torch.Tensor, k: int,
                exclude: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Like ``exact_nearest``: candidates from the graph (Euclidean), re-ranked by the complex L1 distance."""
        fetch = min(self.overfetch * k + 1, table.shape[0])
        _, candidates = self.index.search(np.ascontiguousarray(queries.float().cpu().numpy()), fetch)
        candidates = torch.from_numpy(candidates.astype(np.int64))
        valid = candidates >= 0
        if exclude is not None:
            valid &= candidates != torch.from_numpy(exclude).unsqueeze(1)
        rows = table[candidates.clamp(min=0)]                                   # [q, fetch, W]
        d = (queries.unsqueeze(1) - rows).unflatten(-1, (2, -1)).pow(2).sum(2).sqrt().sum(-1).float().cpu()
        d[~valid] = float("inf")
        top = torch.topk(d, min(k, d.shape[1]), dim=1, largest=False)
        return top.values, candidates.gather(1, top.indices)


def build_neighbour_index(folder: str, table: torch.Tensor, identity: dict, m: int = 32, ef_construction: int = 80,
                          ef_search: int = 128, overfetch: int = 4, sample: int = 1000, k: int = 10,
                          seed: int = 0) -> NeighbourIndex:
    """Build the graph of ``table``'s rows into ``folder`` (a temporary sibling, renamed into place) and measure
    recall@k against exact search on ``sample`` seeded rows (each its own query, itself excluded)."""
    import time
    faiss = _faiss()
    vectors = np.ascontiguousarray(table.float().cpu().numpy())
    with built_aside(folder) as work:
        t0 = time.time()
        index = faiss.IndexHNSWFlat(vectors.shape[1], m)
        index.hnsw.efConstruction = ef_construction
        index.add(vectors)
        build_s = time.time() - t0
        faiss.write_index(index, os.path.join(work, "index.faiss"))
        meta = {**identity, "rows": int(vectors.shape[0]), "width": int(vectors.shape[1]), "m": m,
                "ef_construction": ef_construction, "ef_search": ef_search, "overfetch": overfetch,
                "build_seconds": round(build_s, 2)}
        write_atomic(os.path.join(work, META), json.dumps(meta))
        built = NeighbourIndex(work)
        built.meta.update(measure_recall(built, table, k, sample, seed))
        write_atomic(os.path.join(work, META), json.dumps(built.meta))
    return NeighbourIndex(folder)


def measure_recall(index: NeighbourIndex, table: torch.Tensor, k: int, sample: int, seed: int) -> dict:
    """recall@k of the approximate path against exact search, and both speeds, on a seeded sample of rows."""
    import time
    rows = np.random.default_rng(seed).choice(table.shape[0], size=min(sample, table.shape[0]), replace=False)
    queries = table[torch.from_numpy(rows)]
    t0 = time.time()
    _, exact = exact_nearest(table, queries, k, exclude=rows)
    exact_s = time.time() - t0
    t0 = time.time()
    _, approximate = index.nearest(table, queries, k, exclude=rows)
    approximate_s = time.time() - t0
    hits = sum(len(set(a.tolist()) & set(e.tolist())) for a, e in zip(approximate, exact))
    return {"recall_at_k": round(hits / (len(rows) * min(k, table.shape[0] - 1)), 4), "recall_k": k,
            "recall_sample": int(len(rows)), "exact_queries_per_s": round(len(rows) / max(exact_s, 1e-9), 1),
            "approximate_queries_per_s": round(len(rows) / max(approximate_s, 1e-9), 1)}
