"""The multi-modal baselines IKRL and TBKGC as scorers over the views of model/views.py: f = γ − Σ over pairs
(a, b) of ‖q_a − c_b‖₁, where q_a = view a of the anchor ± the normalised relation. They declare the fusion
they read (``fusion``), so the model builds view fusion instead of AdaMF for them."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .base import Scorer, ScoreKernels, register_scorer


class ViewScorer(Scorer):
    fusion = ""
    pairs: tuple[tuple[int, int], ...] = ()

    def __init__(self, dim: int, gamma: float, epsilon: float = 2.0):
        super().__init__(dim, gamma, epsilon)
        self.bias = gamma

    @property
    def entity_init_bound(self) -> float:
        return (self.gamma + self.epsilon) / self.width       # the reference's uniform range

    def relation_form(self, rows: Tensor) -> Tensor:
        return F.normalize(rows, dim=-1)

    def _views(self, x: Tensor) -> Tensor:
        return x.unflatten(-1, (-1, self.width))                # [..., V, W]

    def query(self, anchor: Tensor, relation: Tensor, head_mode: Tensor | None = None) -> Tensor:
        if head_mode is not None:
            relation = torch.where(head_mode.unsqueeze(-1), -relation, relation)
        return (self._views(anchor) + relation.unsqueeze(-2)).flatten(-2)

    def similarity(self, query: Tensor, candidates: Tensor) -> Tensor:
        q, c = self._views(query), self._views(candidates)
        return -sum((q[..., a, :] - c[..., b, :]).abs().sum(-1) for a, b in self.pairs)

    def kernels(self, compile: bool = False) -> "ViewKernels":
        return ViewKernels(self, compile)

    def describe(self) -> dict:
        return {**super().describe(), "width": self.width, "pairs": [list(p) for p in self.pairs],
                "score": "gamma - sum over pairs (a, b) of sum_k |h_a,k + n(r)_k - t_b,k|, with h_a the a-th width-W "
                         "block of the joint row and n(r) = r / |r|_2",
                "entities": "use the 'joint' column: the concatenated normalised views",
                "relations": "use the 'embedding' column (normalised when scoring)"}

    def numpy_score(self, head: np.ndarray, relation_rows: np.ndarray, tail: np.ndarray) -> np.ndarray:
        r = relation_rows / np.maximum(np.linalg.norm(relation_rows, axis=1, keepdims=True), 1e-12)
        h, t = head.reshape(len(head), -1, self.width), tail.reshape(len(tail), -1, self.width)
        return self.gamma - sum(np.abs(h[:, a] + r - t[:, b]).sum(1) for a, b in self.pairs)


class ViewKernels(ScoreKernels):
    def all_pairs(self, query: Tensor, candidates: Tensor, chunk: int = 0) -> Tensor:
        s = self.scorer
        q, c = s._views(query), s._views(candidates)
        return -sum(torch.cdist(q[:, a].contiguous(), c[:, b].contiguous(), p=1) for a, b in s.pairs)


@register_scorer("ikrl")
class IKRL(ViewScorer):
    """Views [s, p(m_1), ...]: every pair of views (with one modality, IKRL's four energies)."""
    fusion = "ikrl"

    def for_modalities(self, count: int) -> "IKRL":
        if not count:
            raise ValueError("model.scoring=ikrl: IKRL fuses modalities; set model.modalities")
        views = 1 + count
        self.pairs = tuple((a, b) for a in range(views) for b in range(views))
        return self


@register_scorer("tbkgc")
class TBKGC(ViewScorer):
    """Views [s, m, s + m]: (s,s), (m,m), (m,s), (s,m), (s+m, s+m)."""
    fusion = "tbkgc"
    pairs = ((0, 0), (1, 1), (1, 0), (0, 1), (2, 2))

    def for_modalities(self, count: int) -> "TBKGC":
        if not count:
            raise ValueError("model.scoring=tbkgc: TBKGC fuses modalities; set model.modalities")
        return self
