"""TransE: f(h, r, t) = γ − ‖h + r − t‖₁. Head queries are t − r (‖t − r − h‖₁ is the same distance)."""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .base import Scorer, ScoreKernels, register_scorer


@register_scorer("transe")
class TransE(Scorer):
    answer_search = "l2"                # answers: the rows nearest the query, re-ranked by the L1 distance

    def __init__(self, dim: int, gamma: float, epsilon: float = 2.0):
        super().__init__(dim, gamma, epsilon)
        self.bias = gamma

    @property
    def entity_init_bound(self) -> float:
        return (self.gamma + self.epsilon) / self.width      # RotatE's embedding range, at the real width

    def query(self, anchor: Tensor, relation: Tensor, head_mode: Tensor | None = None) -> Tensor:
        if head_mode is None:
            return anchor + relation
        return anchor + torch.where(head_mode.unsqueeze(-1), -relation, relation)

    def similarity(self, query: Tensor, candidates: Tensor) -> Tensor:
        return -(query - candidates).abs().sum(-1)

    def kernels(self, compile: bool = False) -> "TransEKernels":
        return TransEKernels(self, compile)

    def describe(self) -> dict:
        return {**super().describe(), "score": "gamma - sum_k |h_k + r_k - t_k|  (higher is more plausible)",
                "entities": "use the 'joint' column", "relations": "use the 'embedding' column"}

    def numpy_score(self, head: np.ndarray, relation_rows: np.ndarray, tail: np.ndarray) -> np.ndarray:
        return self.gamma - np.abs(head + relation_rows - tail).sum(1)


class TransEKernels(ScoreKernels):
    def all_pairs(self, query: Tensor, candidates: Tensor, chunk: int = 0) -> Tensor:
        return -torch.cdist(query, candidates, p=1)
