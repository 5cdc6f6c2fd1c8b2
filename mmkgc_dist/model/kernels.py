"""RotatE's distance kernels for scoring many candidates per query, optionally fused with torch.compile (its
fast path: the other scorers use the generic kernels of scorers/base.py).

Written as plain tensor code (gather → difference → modulus → sum) so autograd derives the
backward; torch.compile fuses the chain into one loop per direction, which removes the
[B, K, 2d] intermediates that dominate an eager step (see benchmarks/throughput.py).
"""
from __future__ import annotations

import torch
from torch import Tensor


MODULUS_FLOOR = 1e-30       # squared modulus below which the gradient is taken as 0 (value changes by < 1e-15)


def complex_l1_distance(a: Tensor, b: Tensor) -> Tensor:
    """Σ_k |a_k − b_k| over the d complex coordinates (complex modulus, then sum); broadcasts."""
    d = a.shape[-1] // 2
    diff = a - b
    # clamped: d√x/dx at x = 0 is inf, and inf·0 = NaN would poison every parameter through backward
    return torch.sqrt((diff[..., :d] ** 2 + diff[..., d:] ** 2).clamp_min(MODULUS_FLOOR)).sum(-1)


def gathered_distance(query: Tensor, rows: Tensor, index: Tensor) -> Tensor:
    """dist[b, k] = Σ_c |query[b] − rows[index[b, k]]|  (per-positive candidates)."""
    cand = rows[index]                                           # [B, K, 2d]
    diff = (query.unsqueeze(1) - cand).unflatten(-1, (2, -1))    # [B, K, 2, d]
    return diff.pow(2).sum(2).sqrt().sum(-1)


def gathered_distance_backward(grad: Tensor, query: Tensor, rows: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
    """∂/∂query [B, 2d] and ∂/∂candidate-row [B, K, 2d] of Σ grad·dist (the latter still to be scattered)."""
    per_candidate = _per_candidate(grad, query.unsqueeze(1) - rows[index])
    return per_candidate.sum(1), per_candidate


def _per_candidate(grad: Tensor, difference: Tensor) -> Tensor:
    """[B, K, 2d]: ∂(Σ grad·dist)/∂query for each candidate, from query − candidate [B, K, 2d]."""
    diff = difference.unflatten(-1, (2, -1))                         # [B, K, 2, d]
    modulus = diff.pow(2).sum(2, keepdim=True).clamp_min(MODULUS_FLOOR).sqrt()       # the floor above
    return (grad[:, :, None, None] * diff / modulus).flatten(-2)


def _row_gradient(rows: Tensor, index: Tensor, per_candidate: Tensor) -> Tensor:
    """The candidates' gradient scattered onto the rows they were gathered from (−∂/∂query each)."""
    return torch.zeros_like(rows).index_add_(0, index.reshape(-1), per_candidate.reshape(-1, rows.shape[1]),
                                             alpha=-1)


class _GatheredDistance(torch.autograd.Function):
    """Hand-written backward: autograd through a compiled gather scatters B·K rows with atomic adds;
    computing the per-candidate gradient in one fused loop and scattering it with index_add_ is ~1.5x
    faster (benchmarks/throughput.py, structure mode)."""

    @staticmethod
    def forward(ctx, forward_fn, backward_fn, query, rows, index):
        ctx.backward_fn = backward_fn
        ctx.save_for_backward(query, rows, index)
        return forward_fn(query, rows, index)

    @staticmethod
    def backward(ctx, grad):
        query, rows, index = ctx.saved_tensors
        grad_query, per_candidate = ctx.backward_fn(grad.contiguous(), query, rows, index)
        return None, None, grad_query, _row_gradient(rows, index, per_candidate), None


def _side_queries(tail_query: Tensor, head_query: Tensor, head: Tensor) -> Tensor:
    """[B, K, 2d]: each negative's query — the head query where its head is corrupted, else the tail query."""
    return torch.where(head.unsqueeze(-1), head_query.unsqueeze(1), tail_query.unsqueeze(1))


def two_sided_distance(tail_query: Tensor, head_query: Tensor, rows: Tensor, index: Tensor, head: Tensor) -> Tensor:
    """dist[b, k] = Σ_c |q_b,k − rows[index[b, k]]| with q = h∘r (tail corrupted) or t∘r̄ (head corrupted, ``head``):
    the corruption side chosen per negative, one distance per negative."""
    diff = (_side_queries(tail_query, head_query, head) - rows[index]).unflatten(-1, (2, -1))
    return diff.pow(2).sum(2).sqrt().sum(-1)


def two_sided_backward(grad: Tensor, tail_query: Tensor, head_query: Tensor, rows: Tensor, index: Tensor,
                       head: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """∂/∂tail_query, ∂/∂head_query [B, 2d] and ∂/∂candidate-row [B, K, 2d] (to be scattered)."""
    per_candidate = _per_candidate(grad, _side_queries(tail_query, head_query, head) - rows[index])
    side = head.unsqueeze(-1)
    return per_candidate.masked_fill(side, 0.0).sum(1), per_candidate.masked_fill(~side, 0.0).sum(1), per_candidate


class _TwoSidedDistance(torch.autograd.Function):
    """As ``_GatheredDistance``, with two queries per positive (one per corruption side)."""

    @staticmethod
    def forward(ctx, forward_fn, backward_fn, tail_query, head_query, rows, index, head):
        ctx.backward_fn = backward_fn
        ctx.save_for_backward(tail_query, head_query, rows, index, head)
        return forward_fn(tail_query, head_query, rows, index, head)

    @staticmethod
    def backward(ctx, grad):
        tail_query, head_query, rows, index, head = ctx.saved_tensors
        grad_tail, grad_head, per_candidate = ctx.backward_fn(grad.contiguous(), tail_query, head_query, rows,
                                                              index, head)
        return None, None, grad_tail, grad_head, _row_gradient(rows, index, per_candidate), None, None


def chunk_shared_distance(query: Tensor, rows: Tensor, index: Tensor) -> Tensor:
    """Candidates shared by chunks of positives: query [C·S, 2d], index [C, K] → dist [C·S, K]."""
    chunks, k = index.shape
    cand = rows[index].unsqueeze(1)                              # [C, 1, K, 2d]
    q = query.view(chunks, -1, 1, query.shape[-1])               # [C, S, 1, 2d]
    diff = (q - cand).unflatten(-1, (2, -1))                     # [C, S, K, 2, d]
    return diff.pow(2).sum(3).clamp_min(MODULUS_FLOOR).sqrt().sum(-1).view(-1, k)   # autograd: no inf·0 at 0


EAGER_BLOCK = 1 << 23          # floats of one eager all-pairs difference block (32 MiB)


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
        self._gathered_backward = wrap(gathered_distance_backward)
        self._shared = wrap(chunk_shared_distance)
        self._two_sided = wrap(two_sided_distance)
        self._two_sided_backward = wrap(two_sided_backward)
        self._all_pairs = wrap(all_pairs_distance)

    def _dyn(self, *tensors: Tensor) -> None:
        if self.compiled:
            for t in tensors:
                torch._dynamo.maybe_mark_dynamic(t, 0)

    def gathered(self, query: Tensor, rows: Tensor, index: Tensor) -> Tensor:
        self._dyn(query, rows, index)
        if torch.is_grad_enabled() and (query.requires_grad or rows.requires_grad):
            return _GatheredDistance.apply(self._gathered, self._backward, query, rows, index)
        return self._gathered(query, rows, index)

    def _backward(self, grad: Tensor, query: Tensor, rows: Tensor, index: Tensor):
        self._dyn(grad, query, rows, index)
        return self._gathered_backward(grad, query, rows, index)

    def two_sided(self, tail_query: Tensor, head_query: Tensor, rows: Tensor, index: Tensor, head: Tensor) -> Tensor:
        """Per-negative corruption sides: ``head`` bool [B, K] picks each negative's query."""
        self._dyn(tail_query, head_query, rows, index, head)
        if torch.is_grad_enabled() and (tail_query.requires_grad or head_query.requires_grad or rows.requires_grad):
            return _TwoSidedDistance.apply(self._two_sided, self._two_sided_bwd, tail_query, head_query, rows, index,
                                           head)
        return self._two_sided(tail_query, head_query, rows, index, head)

    def _two_sided_bwd(self, grad, tail_query, head_query, rows, index, head):
        self._dyn(grad, tail_query, head_query, rows, index, head)
        return self._two_sided_backward(grad, tail_query, head_query, rows, index, head)

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
        if self.compiled:               # one fused loop: nothing [B, N, 2d]-sized is ever materialised
            return self._all_pairs(query, candidates)
        # eager: the difference tensor is [B, n, 2d]; candidates go in blocks that keep it near EAGER_BLOCK floats
        block = max(1, EAGER_BLOCK // max(1, query.shape[0] * query.shape[-1]))
        if block >= len(candidates):
            return self._all_pairs(query, candidates)
        return torch.cat([self._all_pairs(query, candidates[i:i + block])
                          for i in range(0, len(candidates), block)], dim=1)
