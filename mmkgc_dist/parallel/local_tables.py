"""Local (single-process) embedding tables and their lookup (the table optimizers are optim.py's).

The model math only sees looked-up rows (``EntityRows``); the distributed runtime replaces this
module with TorchRec sharded tables exposing the same lookup. Initial rows come from the counter-based
streams of ``rng.uniform_rows``, so a table is the same in one process and on any number of ranks.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from ..data.format import Features
from ..model.dropout import STRUCTURE
from ..model.kgc import EntityRows
from ..rng import uniform_rows
from .feature_rows import SparseRows


def row_width(width: int) -> int:
    """TorchRec's kernels need row widths that are multiples of 4: the stored width of a table (checkpoints
    use it at every world size)."""
    return -(-width // 4) * 4


def pad_rows(table: Tensor) -> Tensor:
    """``table`` at its stored width: itself when no padding is needed, else a zero-padded copy."""
    extra = row_width(table.shape[1]) - table.shape[1]
    return torch.nn.functional.pad(table, (0, extra)) if extra else table


def structure_mask(unseen: np.ndarray | None) -> Tensor | None:
    """bool [N], False for the entities whose structure is missing (unseen ones); None when every entity has it."""
    return None if unseen is None or not unseen.any() else torch.from_numpy(~unseen)


# parallel.frozen_dtype -> storage dtype of frozen feature tables
FROZEN_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class LocalTables(nn.Module):
    def __init__(self, num_entities: int, num_relations: int, widths: tuple[int, int], entity_bound: float,
                 relation_bound: float, features: dict[str, Features], trainable_features: bool, seed: int,
                 frozen_dtype: torch.dtype = torch.float32, unseen: np.ndarray | None = None):
        super().__init__()
        # entities held out by `prepare inductive`: their structure is missing in every fusion (model/dropout.py)
        self.register_buffer("structure", structure_mask(unseen))
        # Sparse gradients: the backward hands the table optimizer the looked-up rows only (optim.touched_rows),
        # not a dense table-sized gradient to zero, scatter into and scan for the rows that moved.
        self.entity = nn.Embedding.from_pretrained(
            uniform_rows(seed, "entity_init", 0, num_entities, widths[0], entity_bound), freeze=False, sparse=True)
        self.relation = nn.Embedding.from_pretrained(
            uniform_rows(seed, "relation_init", 0, num_relations, widths[1], relation_bound), freeze=False, sparse=True)
        # Trainable features get their own copy: training must never write into the caller's dataset (a second
        # trainer built from the same data would start from the first one's trained features).
        # Frozen features may be stored in half precision (parallel.frozen_dtype): half the memory and the
        # bytes read per lookup; rows are widened to fp32 when looked up.
        # A modality's table holds the rows of the entities that have it, in id order (feature_rows.py), then
        # one zero row that every entity without it looks up: no host wait to find who has it (a GPU step counts
        # them), and the row stays zero — the fusion masks an absent modality, so its gradient is exactly 0.
        self.sparse = {m: SparseRows(f.present, 1) for m, f in features.items()}

        def table(f):
            values = torch.cat([torch.from_numpy(f.values[f.present]),     # a copy: the dataset is never written
                                torch.zeros(1, f.dim)])
            return values if trainable_features else values.to(frozen_dtype)
        self.features = nn.ModuleDict({
            m: nn.Embedding.from_pretrained(table(f), freeze=not trainable_features, sparse=True)
            for m, f in features.items()})
        for m, f in features.items():
            self.register_buffer(f"present_{m}", torch.from_numpy(f.present.copy()))
            rows = self.sparse[m].block_rows(0).long()
            self.register_buffer(f"rows_{m}", torch.where(rows < 0, self.sparse[m].total, rows))

    def lookup(self, entity_ids: Tensor, relation_ids: Tensor) -> tuple[EntityRows, Tensor]:
        """Rows of the given entities and relations (one call: the sharded version is one collective)."""
        return self.entities(entity_ids), self.relation(relation_ids)

    def entities(self, ids: Tensor) -> EntityRows:
        masks = {m: getattr(self, f"present_{m}")[ids] for m in self.features}
        if self.structure is not None:
            masks[STRUCTURE] = self.structure[ids]
        return EntityRows(self.entity(ids), {m: self.modality_rows(m, ids) for m in self.features}, masks, ids)

    def modality_rows(self, modality: str, ids: Tensor) -> Tensor:
        """[len(ids), dim] float rows of one modality: the table's rows of the entities that have it, the zero
        row for the others."""
        return self.features[modality](getattr(self, f"rows_{modality}")[ids]).float()

    def saved_rows(self, modality: str) -> int:
        """Rows of a modality's table that a checkpoint holds: the present entities' (not the zero row)."""
        return self.sparse[modality].total
