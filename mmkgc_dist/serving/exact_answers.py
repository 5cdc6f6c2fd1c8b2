"""Exact top-k answers: every entity scored against every query, without a query's score row ever held whole
(``best_answers``): predict.py answers with it, answer_index.py calibrates against it."""
from __future__ import annotations

import numpy as np
import torch


QUERY_TILE, ROW_BLOCK = 64, 4096     # a tile's scores (64 × 4096 floats, 1 MiB) stay in a core's L2 cache


@torch.no_grad()
def best_answers(kernels, query: torch.Tensor, table: torch.Tensor, k: int,
                 excluded: tuple[np.ndarray, np.ndarray] | None = None,
                 block: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(negated similarity, row) of the ``k`` rows of ``table`` that score best against each query, lower first.

    Fused score-and-top-k: ``ROW_BLOCK`` rows (``block`` to override) against ``QUERY_TILE`` queries at a time,
    so a tile's scores are still in cache when each query's best score in it is compared with the query's running
    k-th best; only queries that beat it are merged (a top-k of their tile row, then of 2k), which after the first
    blocks is a few of them. No score row of a query is ever held whole: memory is a tile per worker. On a CPU the
    table's rows are split between ``torch.get_num_threads()`` workers, one thread each (the tiles are too small
    for a matrix product to gain from threads of its own), and their answers merged; on a GPU the tile is every
    query (one kernel per block, no per-tile wait for the host). ``excluded``: (query row, table row) pairs left
    out (known answers under known="filter"). benchmarks/answer_speed.py measures it."""
    k = min(k, table.shape[0])
    if excluded is not None:                  # by table row: a block's pairs are one slice
        order = np.argsort(excluded[1], kind="stable")
        excluded = excluded[0][order], excluded[1][order]
    workers = torch.get_num_threads() if query.device.type == "cpu" else 1
    if workers == 1 or table.shape[0] < 2 * (block or ROW_BLOCK):
        best_s, best_e = _best_in_rows(kernels, query, table, 0, table.shape[0], k, excluded, block)
        return -best_s.cpu(), best_e.cpu()
    from concurrent.futures import ThreadPoolExecutor

    bounds = np.linspace(0, table.shape[0], workers + 1).astype(int)
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(workers) as pool:
            parts = list(pool.map(lambda w: _best_in_rows(kernels, query, table, bounds[w], bounds[w + 1], k,
                                                          excluded, block), range(workers)))
    finally:
        torch.set_num_threads(workers)
    merged_s, merged_e = torch.cat([p[0] for p in parts], 1), torch.cat([p[1] for p in parts], 1)
    keep = torch.topk(merged_s, k, dim=1)
    return -keep.values.cpu(), merged_e.gather(1, keep.indices).cpu()


def _best_in_rows(kernels, query: torch.Tensor, table: torch.Tensor, start: int, stop: int, k: int,
                  excluded: tuple[np.ndarray, np.ndarray] | None, block: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(similarity, row) of the ``k`` best rows in [start, stop) of ``table`` per query, best first."""
    queries, block = query.shape[0], block or ROW_BLOCK
    tile = queries if query.device.type == "cuda" else QUERY_TILE
    best_s = torch.full((queries, k), float("-inf"), device=query.device)
    best_e = torch.zeros((queries, k), dtype=torch.long, device=query.device)
    for lo in range(start, stop, block):
        rows = table[lo:min(lo + block, stop)]
        cut = np.searchsorted(excluded[1], [lo, lo + len(rows)]) if excluded is not None else (0, 0)
        for first in range(0, queries, tile):
            s = kernels.all_pairs(query[first:first + tile], rows).float()
            if cut[1] > cut[0]:
                r, c = excluded[0][cut[0]:cut[1]], excluded[1][cut[0]:cut[1]]
                inside = (r >= first) & (r < first + tile)
                s[torch.from_numpy(r[inside] - first), torch.from_numpy(c[inside] - lo)] = float("-inf")
            better = (s.amax(1) > best_s[first:first + tile, -1]).nonzero().squeeze(1)
            if not len(better):
                continue
            at = better + first
            top = torch.topk(s[better], min(k, s.shape[1]), dim=1)
            merged_s = torch.cat([best_s[at], top.values], 1)
            merged_e = torch.cat([best_e[at], top.indices + lo], 1)
            keep = torch.topk(merged_s, k, dim=1)
            best_s[at], best_e[at] = keep.values, merged_e.gather(1, keep.indices)
    return best_s, best_e
