"""View fusion, for the multi-modal baselines that score views instead of one fused embedding (IKRL, TBKGC).

An entity becomes the concatenation of V L2-normalised views of width W; the baselines' scorers
(scorers/views.py) sum a TransE energy over pairs of (query view, candidate view). Definitions as the AdaMF-MAT
authors' code computes them (their TransE `_calc` normalises each operand):

- IKRL (Xie et al., 2017): views [s, p(m)] — the structural row and the projected modality — with all four pairs
  (s,s), (m,m), (m,s), (s,m). With several modalities each gets a view and every pair is summed.
- TBKGC (Sergieh et al., 2018): views [s, m, s + m] where m is the concatenation of each modality's projection
  to W / M, with pairs (s,s), (m,m), (m,s), (s,m), (s+m, s+m).

An absent modality projects to zeros (its view is then 0 after normalisation), where the reference draws a
random feature row.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .dropout import STRUCTURE


class ViewFusion(nn.Module):
    def __init__(self, width: int, feature_dims: dict[str, int], kind: str):
        super().__init__()
        self.kind, self.width, self.modalities = kind, width, list(feature_dims)
        share = width if kind == "ikrl" else width // max(len(feature_dims), 1)
        if kind == "tbkgc" and share * len(feature_dims) != width:
            raise ValueError(f"TBKGC splits the entity width {width} over {len(feature_dims)} modalities evenly; "
                             f"choose model.dim so that it divides")
        self.projections = nn.ModuleDict({m: nn.Linear(f, share) for m, f in feature_dims.items()})

    @staticmethod
    def views_of(kind: str, modalities: int) -> int:
        return 1 + modalities if kind == "ikrl" else 3

    def project(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        return {m: self.projections[m](features[m]) for m in self.modalities}

    def fuse(self, structural: Tensor, modal: dict[str, Tensor], masks: dict[str, Tensor],
             detach_attention: bool = False) -> tuple[Tensor, None]:
        present = [modal[m] * masks[m].unsqueeze(-1).to(modal[m].dtype) for m in self.modalities]
        if masks.get(STRUCTURE) is not None:          # a dropped or new entity's structure: a zero view
            structural = structural * masks[STRUCTURE].unsqueeze(-1).to(structural.dtype)
        if self.kind == "ikrl":
            views = [structural, *present]
        else:
            joined = torch.cat(present, dim=-1)
            views = [structural, joined, structural + joined]
        return torch.cat([F.normalize(v, dim=-1) for v in views], dim=-1), None

    def forward(self, structural: Tensor, features: dict[str, Tensor], masks: dict[str, Tensor]):
        return self.fuse(structural, self.project(features), masks)
