"""Distance kernels for scoring many candidates per query, optionally fused with torch.compile.

Written as plain tensor code (gather → difference → modulus → sum) so autograd derives the
backward; torch.compile fuses the chain into one loop per direction, which removes the
[B, K, 2d] intermediates that dominate an eager step (see benchmarks/throughput.py).
"""
from __future__ import annotations

import torch
from torch import Tensor


def gathered_distance(query: Tensor, rows: Tensor, index: Tensor) -> Tensor:
    """dist[b, k] = Σ_c |query[b] − rows[index[b, k]]|  (per-positive candidates)."""
    cand = rows[index]                                           # [B, K, 2d]
    diff = (query.unsqueeze(1) - cand).unflatten(-1, (2, -1))    # [B, K, 2, d]
    return diff.pow(2).sum(2).sqrt().sum(-1)


def chunk_shared_distance(query: Tensor, rows: Tensor, index: Tensor) -> Tensor:
    """Candidates shared by chunks of positives: query [C·S, 2d], index [C, K] → dist [C·S, K]."""
    chunks, k = index.shape
    cand = rows[index].unsqueeze(1)                              # [C, 1, K, 2d]
    q = query.view(chunks, -1, 1, query.shape[-1])               # [C, S, 1, 2d]
    diff = (q - cand).unflatten(-1, (2, -1))                     # [C, S, K, 2, d]
    return diff.pow(2).sum(3).sqrt().sum(-1).view(-1, k)


def all_pairs_distance(query: Tensor, candidates: Tensor) -> Tensor:
    """dist[b, n] against every candidate row (evaluation)."""
    diff = (query.unsqueeze(1) - candidates.unsqueeze(0)).unflatten(-1, (2, -1))
    return diff.pow(2).sum(2).sqrt().sum(-1)


class DistanceKernels:
    """The three kernels, compiled once per process when ``compile`` is set (eager otherwise).

    Batch and row dimensions are marked dynamic so the varying number of unique entities per
    step does not trigger recompilation.
    """

    def __init__(self, compile: bool = True):
        self.compiled = compile
        wrap = (lambda f: torch.compile(f, dynamic=None)) if compile else (lambda f: f)
        self._gathered = wrap(gathered_distance)
        self._shared = wrap(chunk_shared_distance)
        self._all_pairs = wrap(all_pairs_distance)

    def _dyn(self, *tensors: Tensor) -> None:
        if self.compiled:
            for t in tensors:
                torch._dynamo.mark_dynamic(t, 0)

    def gathered(self, query: Tensor, rows: Tensor, index: Tensor) -> Tensor:
        self._dyn(query, rows, index)
        return self._gathered(query, rows, index)

    def chunk_shared(self, query: Tensor, rows: Tensor, index: Tensor, chunk: int) -> Tensor:
        """index [ceil(B / chunk), K]; a trailing partial chunk (B not a multiple of chunk) uses the last row."""
        full = (query.shape[0] // chunk) * chunk
        parts = []
        if full:
            self._dyn(query, rows, index)
            parts.append(self._shared(query[:full], rows, index[:full // chunk]))
        if full < query.shape[0]:
            rest = index[-1:].expand(query.shape[0] - full, -1)
            parts.append(self.gathered(query[full:], rows, rest))
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    def all_pairs(self, query: Tensor, candidates: Tensor) -> Tensor:
        self._dyn(query, candidates)
        return self._all_pairs(query, candidates)
