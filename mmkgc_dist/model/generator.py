"""MAT generators: synthesise a modality embedding from an entity's structure and Gaussian noise."""
from __future__ import annotations

import torch
from torch import Tensor, nn


class ModalityGenerator(nn.Module):
    """[s_e ‖ z] → hidden → LeakyReLU → width."""

    def __init__(self, width: int, noise_dim: int = 64, hidden: int = 512):
        super().__init__()
        self.noise_dim = noise_dim
        self.net = nn.Sequential(nn.Linear(width + noise_dim, hidden), nn.LeakyReLU(), nn.Linear(hidden, width))

    def forward(self, structural: Tensor, noise: Tensor | None = None) -> Tensor:
        if noise is None:
            noise = torch.randn(structural.shape[0], self.noise_dim, dtype=structural.dtype, device=structural.device)
        return self.net(torch.cat([structural, noise], dim=-1))


class MATGenerators(nn.Module):
    """One generator per fused modality; kept outside the KGC model (it has its own optimizer)."""

    def __init__(self, modalities: list[str], width: int, noise_dim: int = 64, hidden: int = 512):
        super().__init__()
        self.generators = nn.ModuleDict({m: ModalityGenerator(width, noise_dim, hidden) for m in modalities})

    def forward(self, structural: Tensor) -> dict[str, Tensor]:
        return {m: g(structural) for m, g in self.generators.items()}
