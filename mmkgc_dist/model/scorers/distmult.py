"""DistMult: f(h, r, t) = Σ_k h_k r_k t_k. Symmetric: the head query t ⊙ r is the tail query's form."""
from __future__ import annotations

import numpy as np
from torch import Tensor

from .base import Scorer, ScoreKernels, register_scorer


@register_scorer("distmult")
class DistMult(Scorer):
    answer_search = "inner_product"

    def query(self, anchor: Tensor, relation: Tensor, head_mode: Tensor | None = None) -> Tensor:
        return anchor * relation

    def similarity(self, query: Tensor, candidates: Tensor) -> Tensor:
        return (query * candidates).sum(-1)

    def kernels(self, compile: bool = False) -> "DotKernels":
        return DotKernels(self, compile)

    def describe(self) -> dict:
        return {**super().describe(), "score": "sum_k h_k * r_k * t_k  (higher is more plausible)",
                "entities": "use the 'joint' column", "relations": "use the 'embedding' column"}

    def numpy_score(self, head: np.ndarray, relation_rows: np.ndarray, tail: np.ndarray) -> np.ndarray:
        return (head * relation_rows * tail).sum(1)


class DotKernels(ScoreKernels):
    """Similarity is a dot product: every query against every candidate is one matrix product."""

    def all_pairs(self, query: Tensor, candidates: Tensor, chunk: int = 0) -> Tensor:
        return query @ candidates.T
