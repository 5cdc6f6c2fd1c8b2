"""ComplEx: f(h, r, t) = Re(Σ_k h_k r_k conj(t_k)), rows [re_1..re_d, im_1..im_d].

Re(<q, conj(c)>) = Σ q_re c_re + q_im c_im is a real dot product, so a tail query is q = h·r and a head query
q = t·conj(r) (f = Re(Σ t conj(r) conj(h)), the conjugate of the same sum): both compared by a dot product.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .base import Scorer, register_scorer
from .distmult import DotKernels


def complex_product(a: Tensor, b: Tensor) -> Tensor:
    d = a.shape[-1] // 2
    a_re, a_im, b_re, b_im = a[..., :d], a[..., d:], b[..., :d], b[..., d:]
    return torch.cat([a_re * b_re - a_im * b_im, a_re * b_im + a_im * b_re], dim=-1)


@register_scorer("complex")
class ComplEx(Scorer):
    complex_rows = True
    answer_search = "inner_product"     # answers: the rows of largest q · t in the real layout

    def query(self, anchor: Tensor, relation: Tensor, head_mode: Tensor | None = None) -> Tensor:
        if head_mode is not None:          # conj(r) where the anchor is the tail
            d = relation.shape[-1] // 2
            sign = torch.where(head_mode.unsqueeze(-1), -1.0, 1.0).to(relation.dtype)
            relation = torch.cat([relation[..., :d], sign * relation[..., d:]], dim=-1)
        return complex_product(anchor, relation)

    def similarity(self, query: Tensor, candidates: Tensor) -> Tensor:
        return (query * candidates).sum(-1)

    def kernels(self, compile: bool = False) -> DotKernels:
        return DotKernels(self, compile)

    def describe(self) -> dict:
        return {**super().describe(), "score": "Re(sum_k h_k * r_k * conj(t_k))  (higher is more plausible)",
                "entities": "use the 'joint' column; a row of width 2d is [re_1..re_d, im_1..im_d]",
                "relations": "use the 'embedding' column, [re_1..re_d, im_1..im_d]"}

    def numpy_score(self, head: np.ndarray, relation_rows: np.ndarray, tail: np.ndarray) -> np.ndarray:
        d = head.shape[1] // 2
        c = lambda x: x[:, :d] + 1j * x[:, d:]
        return np.real((c(head) * c(relation_rows) * np.conj(c(tail))).sum(1))
