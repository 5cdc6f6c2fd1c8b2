"""AdaMF: project each modality into the structural space, weight modalities by a shared attention
vector, and sum. Missing modalities are masked out of the softmax (the reference code cannot) — the structure
too, when ``masks`` says it is missing (a dropped or a new entity's: dropout.py)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .dropout import STRUCTURE


def masked_attention(embeddings: Tensor, present: Tensor, attention: Tensor) -> Tensor:
    """Softmax over modalities of w·tanh(x_m), with absent modalities at weight 0.

    embeddings [U, M, W], present bool [U, M] (column 0 the structure; every row needs one True), attention [W].
    """
    logits = torch.tanh(embeddings) @ attention
    logits = logits.masked_fill(~present, float("-inf"))
    return torch.softmax(logits, dim=-1)


class AdaMFFusion(nn.Module):
    """Dense, data-parallel part of the model: per-modality projections + the attention vector."""

    def __init__(self, width: int, feature_dims: dict[str, int]):
        super().__init__()
        self.modalities = list(feature_dims)
        self.projections = nn.ModuleDict({m: nn.Linear(f, width) for m, f in feature_dims.items()})
        self.attention = nn.Parameter(torch.empty(width).uniform_(-width ** -0.5, width ** -0.5))

    def project(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        return {m: self.projections[m](features[m]) for m in self.modalities}

    def fuse(self, structural: Tensor, modal: dict[str, Tensor], masks: dict[str, Tensor],
             detach_attention: bool = False) -> tuple[Tensor, Tensor]:
        """Joint embeddings [U, W] and modality weights [U, 1+M] (structure first).

        ``detach_attention`` keeps gradients out of the attention vector (the generator's update).
        """
        stacked = torch.stack([structural] + [modal[m] for m in self.modalities], dim=1)
        structure = masks.get(STRUCTURE)        # absent for a dropped or a new entity's structure (dropout.py)
        if structure is None:
            structure = torch.ones_like(structural[:, 0], dtype=torch.bool)
        present = torch.stack([structure] + [masks[m] for m in self.modalities], dim=1)
        attention = self.attention.detach() if detach_attention else self.attention
        weights = masked_attention(stacked, present, attention)
        # masked_fill keeps an absent modality's (possibly garbage) row out of the sum entirely.
        joint = (weights.unsqueeze(-1) * stacked.masked_fill(~present.unsqueeze(-1), 0.0)).sum(1)
        return joint, weights

    def forward(self, structural: Tensor, features: dict[str, Tensor], masks: dict[str, Tensor]):
        return self.fuse(structural, self.project(features), masks)
