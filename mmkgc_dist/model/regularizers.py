"""Regularisers of the factors of a batch's positives (``model.regularizer``), as means over positives.

N3 (Lacroix et al., 2018): Σ |x|³ over the coordinates of head, relation and tail — for complex rows the
modulus of each complex coordinate. L2: Σ x² of the same factors.
"""
from __future__ import annotations

import torch
from torch import Tensor

REGULARIZERS = ("none", "n3", "l2")


def _magnitudes(x: Tensor, complex_rows: bool) -> Tensor:
    if complex_rows and x.shape[-1] % 2 == 0:
        d = x.shape[-1] // 2
        return torch.sqrt(x[..., :d] ** 2 + x[..., d:] ** 2)
    return x.abs()


def regularization(kind: str, factors: list[Tensor], complex_rows: bool) -> Tensor:
    """Mean over the rows (positives) of Σ_factors Σ_coordinates |x|^p; 0 for ``none`` or no rows."""
    power = {"n3": 3, "l2": 2}.get(kind)
    total = factors[0].new_zeros(())
    if power is None or not len(factors[0]):
        return total
    for x in factors:
        total = total + _magnitudes(x, complex_rows).pow(power).sum(-1).mean()
    return total
