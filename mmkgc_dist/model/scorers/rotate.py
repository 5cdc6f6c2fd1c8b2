"""RotatE (the default): relation = phase vector θ; f(h, r, t) = γ − Σ_k |h_k e^{iθ_k} − t_k|.

A query is the kept entity rotated — by θ for tail prediction, by −θ for head prediction, since
|h e^{iθ} − t| = |h − t e^{−iθ}| — so one distance serves both sides. Its kernels are the hand-written
distance kernels of model/kernels.py (the fast path), negated into similarities.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from ..kernels import DistanceKernels, complex_l1_distance
from .base import Scorer, ScoreKernels, register_scorer


@register_scorer("rotate")
class RotatE(Scorer):
    complex_rows = True
    neighbour_metric = "complex_l1"     # its own distance: Σ_k |a_k − b_k| over complex coordinates
    answer_search = "l2"                # answers: the rows nearest the query, re-ranked by the complex L1

    def __init__(self, dim: int, gamma: float, epsilon: float = 2.0):
        super().__init__(dim, gamma, epsilon)
        self.embedding_range = (gamma + epsilon) / dim
        self.bias = gamma

    @property
    def relation_width(self) -> int:
        return self.dim                    # one phase per complex coordinate

    # Initialisation bounds of the released code (see docs/method.md).
    @property
    def entity_init_bound(self) -> float:
        return self.embedding_range / 2

    @property
    def relation_init_bound(self) -> float:
        return self.embedding_range

    def phase(self, relation_rows: Tensor) -> Tensor:
        return relation_rows / (self.embedding_range / math.pi)

    relation_form = phase

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

    def similarity(self, query: Tensor, candidates: Tensor) -> Tensor:
        return -complex_l1_distance(query, candidates)

    def kernels(self, compile: bool = False) -> "RotatEKernels":
        return RotatEKernels(self, compile)

    def describe(self) -> dict:
        return {**super().describe(), "embedding_range": self.embedding_range,
                "score": "gamma - sum_k |h_k * exp(i * phase_k) - t_k|  (higher is more plausible)",
                "entities": "use the 'joint' column; a row of width 2d is [re_1..re_d, im_1..im_d]",
                "relations": "use the 'phase' column (radians); 'embedding' is the trained row, "
                             "phase = embedding / (embedding_range / pi)"}

    def relation_columns(self, rows: Tensor) -> dict[str, Tensor]:
        return {"phase": self.phase(rows)}

    def numpy_score(self, head: np.ndarray, relation_rows: np.ndarray, tail: np.ndarray) -> np.ndarray:
        d = head.shape[1] // 2
        theta = relation_rows / (self.embedding_range / np.pi)
        h, t = head[:, :d] + 1j * head[:, d:], tail[:, :d] + 1j * tail[:, d:]
        return self.gamma - np.abs(h * np.exp(1j * theta) - t).sum(1)


class RotatEKernels(ScoreKernels):
    """The distance kernels (fused and with their hand-written backward), as similarities: −distance."""

    def __init__(self, scorer: RotatE, compile: bool = False):
        self.scorer, self.compiled = scorer, compile
        self.distance = DistanceKernels(compile)

    def pairs(self, query: Tensor, target: Tensor) -> Tensor:
        return -complex_l1_distance(query, target)

    def gathered(self, query: Tensor, rows: Tensor, index: Tensor) -> Tensor:
        return -self.distance.gathered(query, rows, index)

    def two_sided(self, tail_query: Tensor, head_query: Tensor, rows: Tensor, index: Tensor, head: Tensor) -> Tensor:
        return -self.distance.two_sided(tail_query, head_query, rows, index, head)

    def chunk_shared(self, query: Tensor, rows: Tensor, index: Tensor, chunk: int) -> Tensor:
        return -self.distance.chunk_shared(query, rows, index, chunk)

    def all_pairs(self, query: Tensor, candidates: Tensor, chunk: int = 0) -> Tensor:
        return -self.distance.all_pairs(query, candidates)
