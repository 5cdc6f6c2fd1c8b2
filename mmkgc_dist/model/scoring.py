"""RotatE over real/imaginary halves: an embedding of width 2d is [re_1..re_d, im_1..im_d]."""
from __future__ import annotations

import math

import torch
from torch import Tensor


MODULUS_FLOOR = 1e-30       # squared modulus below which the gradient is taken as 0 (value changes by < 1e-15)


def complex_l1_distance(a: Tensor, b: Tensor) -> Tensor:
    """Σ_k |a_k − b_k| over the d complex coordinates (complex modulus, then sum); broadcasts."""
    d = a.shape[-1] // 2
    diff = a - b
    # clamped: d√x/dx at x = 0 is inf, and inf·0 = NaN would poison every parameter through backward
    return torch.sqrt((diff[..., :d] ** 2 + diff[..., d:] ** 2).clamp_min(MODULUS_FLOOR)).sum(-1)


class RotatE:
    """Relation = phase vector θ; f(h, r, t) = γ − Σ_k |h_k e^{iθ_k} − t_k|.

    Tail and head corruption share one form: a *query* q (h rotated by θ, or t rotated by −θ,
    since |h e^{iθ} − t| = |h − t e^{−iθ}|) is compared with candidate entities, so one distance
    kernel serves both directions and mixed (Bernoulli) batches.
    """

    def __init__(self, dim: int, gamma: float, epsilon: float = 2.0):
        self.dim = dim
        self.gamma = gamma
        self.embedding_range = (gamma + epsilon) / dim

    # Initialisation bounds of the released code (see docs/method.md).
    @property
    def entity_init_bound(self) -> float:
        return self.embedding_range / 2

    @property
    def relation_init_bound(self) -> float:
        return self.embedding_range

    def phase(self, relation_rows: Tensor) -> Tensor:
        return relation_rows / (self.embedding_range / math.pi)

    @staticmethod
    def rotate(x: Tensor, phase: Tensor) -> Tensor:
        d = x.shape[-1] // 2
        re, im = x[..., :d], x[..., d:]
        cos, sin = torch.cos(phase), torch.sin(phase)
        return torch.cat([re * cos - im * sin, re * sin + im * cos], dim=-1)

    def query(self, anchor: Tensor, phase: Tensor, head_mode: Tensor | None = None) -> Tensor:
        """Rotate the kept entity: by θ for tail prediction, by −θ where ``head_mode`` is True."""
        if head_mode is not None:
            phase = torch.where(head_mode.unsqueeze(-1), -phase, phase)
        return self.rotate(anchor, phase)

    def score(self, head: Tensor, relation_rows: Tensor, tail: Tensor) -> Tensor:
        return self.gamma - complex_l1_distance(self.rotate(head, self.phase(relation_rows)), tail)
