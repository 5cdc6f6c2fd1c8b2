"""Approximate nearest entities for ``neighbours()`` at millions of entities, with the exact path kept beside it:
a FAISS HNSW graph (up to a million rows) or an inverted file of k-means cells (IVF; its build is ~10x faster per
row, which is what 10^7 entities on a few cores need).

Both are built on the Euclidean distance of the rows (FAISS's native metric); ``neighbours`` ranks by the
scorer's metric — Euclidean, or for RotatE the complex L1 distance (Σ_k |a_k − b_k| over complex coordinates) —
so a query fetches ``overfetch × k`` candidates and re-ranks them exactly. The build calibrates the search knob
(HNSW's efSearch, IVF's nprobe) to the smallest value whose recall@k against exact search on a seeded sample of
entities reaches the target, and keeps the sweep in ``meta.json`` beside ``index.faiss``: a user reads how
approximate the answers are before trusting them. Needs ``faiss-cpu`` (``pip install faiss-cpu``, in
requirements.txt).
"""
from __future__ import annotations

import json
import os
import time

import numpy as np
import torch

from ..errors import ConfigError
from ..model.kernels import all_pairs_distance
from ..outputs import built_aside, write_atomic

META = "meta.json"


def load_faiss():
    try:
        import faiss
    except ImportError:
        raise ConfigError("approximate neighbours need faiss: pip install faiss-cpu (or faiss-gpu); the exact "
                          "path (approximate=False) needs nothing") from None
    return faiss


METRICS = ("euclidean", "complex_l1")
def table_digest(table: torch.Tensor) -> str:
    """SHA-256 of a table's rows as float32 (and its shape): binds an index to the vectors it was built from."""
    import hashlib
    rows = np.ascontiguousarray(table.detach().float().cpu().numpy())
    digest = hashlib.sha256(f"{rows.shape}".encode())
    digest.update(memoryview(rows).cast("B"))
    return digest.hexdigest()


BLOCK = 1 << 25                 # elements of one block of query x row distance work (~128 MiB of float32)


def pair_distances(queries: torch.Tensor, rows: torch.Tensor, metric: str) -> torch.Tensor:
    """[q, n] distances of every query to every row."""
    if metric == "complex_l1":
        return all_pairs_distance(queries, rows)
    return torch.cdist(queries.float(), rows.float())       # a matrix product inside: ‖q‖² + ‖r‖² − 2 q·r


def gathered_distances(queries: torch.Tensor, rows: torch.Tensor, metric: str) -> torch.Tensor:
    """[q, c] distances of each query to its own candidate rows [q, c, W]."""
    diff = (queries.unsqueeze(1) - rows).float()
    if metric == "complex_l1":
        return diff.unflatten(-1, (2, -1)).pow(2).sum(2).sqrt().sum(-1)
    return diff.pow(2).sum(-1).sqrt()


def exact_nearest(table: torch.Tensor, queries: torch.Tensor, k: int, exclude: np.ndarray | None = None,
                  metric: str = "complex_l1", chunk: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(distance, row) of the ``k`` rows of ``table`` nearest to each query by ``metric``, scored in chunks of
    rows with a running top-k (memory: a block of queries × chunk, whatever the table's size); ``exclude[q]``: a
    row left out for query q."""
    if metric not in METRICS:
        raise ConfigError(f"neighbours: metric={metric!r}; expected one of {', '.join(METRICS)}")
    per_row = len(queries) * (table.shape[1] if metric == "complex_l1" else 1)   # complex L1 has [q, n, W] temporaries
    chunk = chunk or max(256, BLOCK // max(per_row, 1))
    best_d = torch.full((len(queries), 0), float("inf"))
    best_i = torch.zeros((len(queries), 0), dtype=torch.long)
    for lo in range(0, table.shape[0], chunk):
        d = pair_distances(queries, table[lo:lo + chunk], metric).float().cpu()
        if exclude is not None:
            inside = (exclude >= lo) & (exclude < lo + chunk)
            d[torch.from_numpy(np.flatnonzero(inside)), torch.from_numpy(exclude[inside] - lo)] = float("inf")
        rows = torch.arange(lo, lo + d.shape[1]).expand(len(queries), -1)
        d, rows = torch.cat([best_d, d], 1), torch.cat([best_i, rows], 1)
        top = torch.topk(d, min(k, d.shape[1]), dim=1, largest=False)
        best_d, best_i = top.values, rows.gather(1, top.indices)
    if metric == "euclidean":       # the matrix-product form loses digits near 0: the found rows' distances exactly
        exact = gathered_distances(queries, table[best_i], metric).cpu()
        exact[torch.isinf(best_d)] = float("inf")
        best_d, order = exact.sort(dim=1)
        best_i = best_i.gather(1, order)
    return best_d, best_i


HNSW_MAX_ROWS = 1_000_000     # above this, an inverted-file index: HNSW's build is ~2,000 rows/s per core


class FaissIndex:
    """A FAISS index over a table's rows (``index.faiss`` + ``meta.json`` in a folder): an HNSW graph (``kind``
    "hnsw", searched with ``efSearch``) or an inverted file of k-means cells (``kind`` "ivf", searched in the
    ``nprobe`` nearest cells). The search knob is the one the build chose to reach its recall target."""

    def __init__(self, folder: str):
        faiss = load_faiss()
        with open(os.path.join(folder, META)) as fh:
            self.meta = json.load(fh)
        self.index = faiss.read_index(os.path.join(folder, "index.faiss"))
        self.overfetch = self.meta["overfetch"]
        self.set_knob(self.meta["knob"])
        self.fallbacks = 0            # queries the index answered too few for, answered exactly instead

    @property
    def kind(self) -> str:
        return self.meta.get("kind", "hnsw")

    def set_knob(self, value: int) -> None:
        """How much of the index a search visits: efSearch (HNSW) or nprobe (IVF)."""
        if self.kind == "ivf":
            self.index.nprobe = int(value)
        else:
            self.index.hnsw.efSearch = int(value)


class NeighbourIndex(FaissIndex):
    """The index of ``neighbours(approximate=True)``: candidates by the Euclidean distance, re-ranked by
    ``metric``."""

    def __init__(self, folder: str):
        super().__init__(folder)
        self.metric = self.meta["metric"]

    def nearest(self, table: torch.Tensor, queries: torch.Tensor, k: int,
                exclude: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Like ``exact_nearest``: candidates from the index (Euclidean), re-ranked exactly by the index's metric."""
        fetch = min(self.overfetch * k + 1, table.shape[0])
        _, candidates = self.index.search(np.ascontiguousarray(queries.float().cpu().numpy()), fetch)
        candidates = torch.from_numpy(candidates.astype(np.int64))
        # FAISS pads with -1 where it found fewer rows (k near the table's size, empty cells): never an answer
        valid = (candidates >= 0) & (candidates < table.shape[0])
        if exclude is not None:
            valid &= candidates != torch.from_numpy(exclude).unsqueeze(1)
        rows = table[candidates.clamp(0, table.shape[0] - 1)]                  # [q, fetch, W]
        d = gathered_distances(queries, rows, self.metric).cpu()
        d[~valid] = float("inf")
        top = torch.topk(d, min(k, d.shape[1]), dim=1, largest=False)
        distance, found = top.values, candidates.gather(1, top.indices)
        available = table.shape[0] - (1 if exclude is not None else 0)
        short = torch.isinf(distance[:, :min(k, available)]).any(1).nonzero().flatten()
        if len(short):            # too few valid candidates: these queries are answered exactly instead
            self.fallbacks += len(short)
            rows_short = short.numpy()
            exact_d, exact_i = exact_nearest(table, queries[short], k, None if exclude is None else
                                             exclude[rows_short], self.metric)
            distance, found = distance.clone(), found.clone()
            distance[short, :exact_d.shape[1]], found[short, :exact_i.shape[1]] = exact_d, exact_i
        found[torch.isinf(distance)] = -1          # no answer there: callers drop these, never index with them
        return distance, found


def new_index(faiss, vectors: np.ndarray, kind: str, m: int, ef_construction: int, seed: int, metric=None):
    """An empty index of ``kind`` for ``vectors``, trained where it needs training (IVF's k-means cells);
    ``metric``: FAISS's metric type (default Euclidean; METRIC_INNER_PRODUCT for answers by dot product)."""
    width = vectors.shape[1]
    metric = faiss.METRIC_L2 if metric is None else metric
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(width, m, metric)
        index.hnsw.efConstruction = ef_construction
        return index
    cells = int(min(4096, max(1, 2 * np.sqrt(len(vectors)))))
    quantizer = faiss.IndexFlatIP(width) if metric == faiss.METRIC_INNER_PRODUCT else faiss.IndexFlatL2(width)
    index = faiss.IndexIVFFlat(quantizer, width, cells, metric)
    index.cp.seed = seed
    train = vectors
    if len(vectors) > 64 * cells:         # k-means on a seeded sample: 64 rows per cell is plenty
        train = vectors[np.sort(np.random.default_rng(seed).choice(len(vectors), 64 * cells, replace=False))]
    index.train(train)
    return index


def write_index(faiss, vectors: np.ndarray, folder: str, kind: str, m: int, ef_construction: int, seed: int,
                metric=None) -> tuple[dict, list[int]]:
    """Build an index of ``kind`` over ``vectors`` into ``folder/index.faiss``: (its build record for meta.json,
    the values of its search knob to calibrate, least thorough first)."""
    start = time.time()
    index = new_index(faiss, vectors, kind, m, ef_construction, seed, metric)
    index.add(vectors)
    record = {"kind": kind, "rows": int(vectors.shape[0]), "width": int(vectors.shape[1]),
              "build_seconds": round(time.time() - start, 2), "knob_name": "nprobe" if kind == "ivf" else "efSearch"}
    record.update({"m": m, "ef_construction": ef_construction} if kind == "hnsw" else {"cells": int(index.nlist)})
    faiss.write_index(index, os.path.join(folder, "index.faiss"))
    # doubling all the way: a table without cluster structure may need half the cells, and the sweep must find
    # that knob rather than jump to a full scan
    knobs = [16, 32, 64, 128, 256, 512] if kind == "hnsw" else \
        [1 << i for i in range(int(index.nlist).bit_length()) if 1 << i < index.nlist] + [index.nlist]
    return record, knobs


def build_neighbour_index(folder: str, table: torch.Tensor, identity: dict, kind: str = "auto",
                          metric: str = "complex_l1", m: int = 32,
                          ef_construction: int = 80, overfetch: int = 4, sample: int = 1000, k: int = 10,
                          target_recall: float = 0.95, seed: int = 0) -> NeighbourIndex:
    """Build an index of ``table``'s rows into ``folder`` (a temporary sibling, renamed into place) — ``kind``
    "hnsw", "ivf" or "auto" (HNSW up to ``HNSW_MAX_ROWS`` rows) — then calibrate its search knob: the smallest
    efSearch / nprobe of a doubling sweep whose recall@k against exact search, on ``sample`` seeded rows (each its
    own query, itself excluded), reaches ``target_recall`` (else the sweep's most thorough). The sweep's recall
    and speeds are kept in ``meta.json``."""
    faiss = load_faiss()
    if kind == "auto":
        kind = "hnsw" if table.shape[0] <= HNSW_MAX_ROWS else "ivf"
    if kind not in ("hnsw", "ivf"):
        raise ConfigError(f"neighbour index: kind={kind!r}; expected hnsw, ivf or auto")
    if metric not in METRICS:
        raise ConfigError(f"neighbour index: metric={metric!r}; expected one of {', '.join(METRICS)}")
    vectors = np.ascontiguousarray(table.float().cpu().numpy())
    with built_aside(folder) as work:
        built, knobs = write_index(faiss, vectors, work, kind, m, ef_construction, seed)
        meta = {**identity, **built, "metric": metric, "vectors_sha256": table_digest(table),
                "overfetch": overfetch, "knob": knobs[-1], "target_recall": target_recall}
        write_atomic(os.path.join(work, META), json.dumps(meta))
        built = NeighbourIndex(work)
        built.meta.update(calibrate(built, table, knobs, k, sample, seed, target_recall))
        write_atomic(os.path.join(work, META), json.dumps(built.meta))
    return NeighbourIndex(folder)


def calibrate(index: NeighbourIndex, table: torch.Tensor, knobs: list[int], k: int, sample: int, seed: int,
              target_recall: float) -> dict:
    """Exact answers for a seeded sample once, then recall and speed of the index at each knob value in turn,
    stopping at the first that reaches ``target_recall``; the chosen knob's numbers and the whole sweep."""
    rows = np.random.default_rng(seed).choice(table.shape[0], size=min(sample, table.shape[0]), replace=False)
    exact = exact_answers(table, rows, k, index.metric)
    sweep = []
    for knob in knobs:
        index.set_knob(knob)
        sweep.append({"knob": knob, **measure_recall(index, table, k, rows, exact)})
        if sweep[-1]["recall_at_k"] >= target_recall:
            break
    return {**sweep[-1], "sweep": sweep}


def exact_answers(table: torch.Tensor, rows: np.ndarray, k: int, metric: str) -> dict:
    """The exact top-k of each sampled row (itself excluded), its k-th distance, and the exact path's speed."""
    t0 = time.time()
    distance, found = exact_nearest(table, table[torch.from_numpy(rows)], k, exclude=rows, metric=metric)
    return {"found": found, "kth": distance[:, -1:], "queries_per_s": len(rows) / max(time.time() - t0, 1e-9)}


def measure_recall(index: NeighbourIndex, table: torch.Tensor, k: int, rows: np.ndarray, exact: dict) -> dict:
    """recall@k of the approximate path against ``exact`` (``exact_answers`` of ``rows``), and both speeds.
    An answer counts when its distance is within the exact k-th distance: rows at the same distance are equally
    right answers (untrained or duplicate rows tie by the thousand), so the ids' overlap is reported beside it."""
    t0 = time.time()
    distance, approximate = index.nearest(table, table[torch.from_numpy(rows)], k, exclude=rows)
    approximate_s = time.time() - t0
    within = (distance <= exact["kth"] * (1 + 1e-5) + 1e-9).sum().item()
    overlap = sum(len(set(a.tolist()) & set(e.tolist())) for a, e in zip(approximate, exact["found"]))
    total = len(rows) * min(k, table.shape[0] - 1)
    return {"recall_at_k": round(within / total, 4), "id_overlap_at_k": round(overlap / total, 4), "recall_k": k,
            "recall_sample": int(len(rows)), "exact_queries_per_s": round(exact["queries_per_s"], 1),
            "approximate_queries_per_s": round(len(rows) / max(approximate_s, 1e-9), 1)}
