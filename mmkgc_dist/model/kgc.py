"""The KGC model over looked-up rows: structure-only RotatE or AdaMF fusion, plus MAT fake fusion."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .dropout import STRUCTURE, StructureDropout
from .fusion import AdaMFFusion
from .views import ViewFusion


@dataclass
class EntityRows:
    """Looked-up rows of a set of entities: structural [U, 2d], raw features and presence masks per modality;
    ``ids``, the entities' ids where the lookup knows them (structure dropout decides by id)."""
    structural: Tensor
    features: dict[str, Tensor]
    masks: dict[str, Tensor]
    ids: Tensor | None = None


@dataclass
class EmbeddedEntities:
    """What scoring needs of a set of entities: joint embeddings, structural rows, presence masks.

    ``structural`` is None where nothing reads it (the owners' exchange without MAT). ``structural_of``, a bool
    mask over the entities, says which of them ``structural`` holds rows for, in order (the owners' exchange
    ships only the positives' rows, the ones MAT reads); None: one row per entity."""
    joint: Tensor
    structural: Tensor | None
    masks: dict[str, Tensor]
    structural_of: Tensor | None = None

    def select(self, index: Tensor) -> "EmbeddedEntities":
        """The entities at ``index``; with ``structural_of`` set, they must be among the entities it marks."""
        structural = self.structural
        if structural is not None:
            # the row of entity p is the number of marked entities before it (a cumsum: no host sync on a GPU)
            structural = structural[index if self.structural_of is None else self.structural_of.cumsum(0)[index] - 1]
        return EmbeddedEntities(self.joint[index], structural, {m: k[index] for m, k in self.masks.items()})


class MultiModalKGC(nn.Module):
    """Joint entity embeddings: AdaMF over (structure, modalities), the baselines' views (``fusion`` ikrl or
    tbkgc: model/views.py), or the structural row alone."""

    def __init__(self, width: int, feature_dims: dict[str, int], fusion: str = "adamf"):
        super().__init__()
        if not feature_dims:
            self.fusion = None
        else:
            self.fusion = AdaMFFusion(width, feature_dims) if fusion == "adamf" else \
                ViewFusion(width, feature_dims, fusion)
        self.structure_dropout: StructureDropout | None = None      # set by the training step (dropout.py)

    def embed(self, rows: EntityRows) -> tuple[Tensor, Tensor | None]:
        if self.fusion is None:
            return rows.structural, None
        return self.fusion(rows.structural, rows.features, rows.masks)

    def forward(self, rows: EntityRows) -> tuple[Tensor, Tensor | None]:
        """``embed``, with the training step's structure dropout when one is active (lookups of a step fuse
        through here; evaluation calls ``embed``)."""
        if self.fusion is not None and self.structure_dropout is not None and rows.ids is not None:
            keep = self.structure_dropout.keep(rows.ids, rows.masks)
            if keep is not None and STRUCTURE in rows.masks:      # a structure already missing stays missing
                keep = keep & rows.masks[STRUCTURE]
            if keep is not None:
                rows = EntityRows(rows.structural, rows.features, {**rows.masks, STRUCTURE: keep}, rows.ids)
        return self.embed(rows)

    def embed_fake(self, structural: Tensor, masks: dict[str, Tensor], fakes: dict[str, Tensor],
                   detach_attention: bool = False, fill_missing: bool = True) -> Tensor:
        """Fuse generated modality embeddings in place of the projected ones (same attention). ``fill_missing``:
        every generated modality takes part, also one the entity lacks — otherwise an entity without any
        modality would have a fake identical to itself, and MAT would never act where modalities are missing."""
        if fill_missing:
            masks = {m: torch.ones_like(k) for m, k in masks.items()}
        return self.fusion.fuse(structural, fakes, masks, detach_attention)[0]


def unique_ids(ids: Tensor, universe: int) -> tuple[Tensor, Tensor]:
    """Sorted unique ids and the inverse map, in O(len + universe) with a presence mask.

    torch.unique(return_inverse=True) sorts all B·(K+2) ids; this is ~10x faster for the id
    universes of one rank's tables.
    """
    present = torch.zeros(universe, dtype=torch.bool, device=ids.device)
    present[ids] = True
    unique = present.nonzero().squeeze(1)
    position = torch.empty(universe, dtype=torch.long, device=ids.device)
    position[unique] = torch.arange(len(unique), device=ids.device)
    return unique, position[ids]
