"""Local (single-process) embedding tables and their lookup.

The model math only sees looked-up rows (``EntityRows``); the distributed trainer replaces this
module with TorchRec sharded tables exposing the same two lookups.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .data.format import Features
from .model.kgc import EntityRows


class LocalTables(nn.Module):
    def __init__(self, num_entities: int, num_relations: int, dim: int, entity_bound: float,
                 relation_bound: float, features: dict[str, Features], trainable_features: bool):
        super().__init__()
        self.entity = nn.Embedding(num_entities, 2 * dim)
        self.relation = nn.Embedding(num_relations, dim)
        nn.init.uniform_(self.entity.weight, -entity_bound, entity_bound)
        nn.init.uniform_(self.relation.weight, -relation_bound, relation_bound)
        self.features = nn.ModuleDict({
            m: nn.Embedding.from_pretrained(torch.from_numpy(f.values), freeze=not trainable_features)
            for m, f in features.items()})
        for m, f in features.items():
            self.register_buffer(f"present_{m}", torch.from_numpy(f.present.copy()))

    def lookup(self, entity_ids: Tensor, relation_ids: Tensor) -> tuple[EntityRows, Tensor]:
        """Rows of the given entities and relations (one call: the sharded version is one collective)."""
        return self.entities(entity_ids), self.relation(relation_ids)

    def entities(self, ids: Tensor) -> EntityRows:
        return EntityRows(self.entity(ids), {m: t(ids) for m, t in self.features.items()},
                          {m: getattr(self, f"present_{m}")[ids] for m in self.features})

    def relations(self, ids: Tensor) -> Tensor:
        return self.relation(ids)
