"""Entity, relation and modality-feature tables as TorchRec embedding collections, sharded by
DistributedModelParallel with a planner.

One ``EmbeddingCollection`` per table: TorchRec's CPU kernels support row-wise sharding for
``EmbeddingCollection`` (not ``EmbeddingBagCollection``), and a collection needs one embedding width.
Trainable tables are updated by the single-process trainer's rules (optim.py) through ``ShardedRowOptimizer``
on the rows each owner looked up (TorchRec's fused step is then a no-op; FBGEMM's CPU kernels have no Adam);
a non-row-wise layout falls back to FBGEMM's fused row-wise Adagrad. Frozen feature tables live in a
separate collection type whose sharder has no optimizer state, their output is detached, and they may
be stored in fp16. Initial rows are drawn per shard (rng.uniform_rows). Presence masks are small (one bool
per entity and modality) and replicated. A modality's table holds rows only for the entities that have the
feature, padded per owner so row-wise sharding keeps them on their owners; checkpoints hold the present rows in id
order at every world size (feature_rows.py).
"""
from __future__ import annotations

import json
import logging

import numpy as np
import torch
import torch.distributed as dist
from fbgemm_gpu.split_embedding_configs import EmbOptimType
from torch import Tensor, nn
from torchrec import EmbeddingCollection, EmbeddingConfig, KeyedJaggedTensor
from torchrec.distributed import DistributedModelParallel
from torchrec.distributed.embedding import EmbeddingCollectionSharder
from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology
from torchrec.distributed.types import ShardingType
from torchrec.modules.embedding_configs import DataType, dtype_to_data_type

from ..config import ParallelConfig
from ..data.format import Features
from ..model.dropout import STRUCTURE
from ..model.kgc import EntityRows
from ..errors import ConfigError
from ..model.optim import adagrad_rows_, adam_rows_, every_row
from ..data.extraction import owner_block
from ..rng import uniform_rows
from .feature_rows import SparseRows, scatter_present
from .local_tables import FROZEN_DTYPES, row_width, structure_mask
from .env import DistEnv, allreduce_sum_hook



NO_UPDATE = {"optimizer": EmbOptimType.EXACT_SGD, "learning_rate": 0.0}   # SGD at lr 0: no state, no step


def row_layout(chosen: dict[str, str], trainable: dict[str, bool]) -> bool:
    """Trainable entity-indexed tables row-wise and relations replicated: the layout in which every owner looks
    up only its own rows, so the rows can be updated by ``ShardedRowOptimizer``."""
    return chosen.get("relation") == "data_parallel" and all(
        kind == "row_wise" for t, kind in chosen.items() if t != "relation" and trainable.get(t))
log = logging.getLogger("mmkgc_dist")
SHARDING = {"row_wise": ShardingType.ROW_WISE, "table_wise": ShardingType.TABLE_WISE,
            "column_wise": ShardingType.COLUMN_WISE, "data_parallel": ShardingType.DATA_PARALLEL}


class FrozenEmbeddingCollection(EmbeddingCollection):
    """A distinct type so DMP routes it to the optimizer-free sharder."""


class FrozenCollectionSharder(EmbeddingCollectionSharder):
    @property
    def module_type(self):
        return FrozenEmbeddingCollection


class TableModule(nn.Module):
    """The unsharded tables, built on the meta device; one forward = one lookup of every table."""

    def __init__(self, specs: dict[str, tuple[int, int, bool, DataType]]):
        super().__init__()
        self.names = list(specs)
        for name, (rows, width, trainable, dtype) in specs.items():
            cls = EmbeddingCollection if trainable else FrozenEmbeddingCollection
            config = EmbeddingConfig(name=name, embedding_dim=width, num_embeddings=rows, feature_names=[name],
                                     data_type=dtype)
            setattr(self, name, cls(tables=[config], device=torch.device("meta")))

    def forward(self, features: dict[str, KeyedJaggedTensor]):
        return {name: getattr(self, name)(features[name]) for name in self.names}


def _jagged(name: str, ids: Tensor) -> KeyedJaggedTensor:
    # TorchRec's sharded lookup cannot take an empty id list: look up row 0 and drop it (see lookup).
    ids = ids.long().contiguous() if len(ids) else torch.zeros(1, dtype=torch.long)
    return KeyedJaggedTensor.from_lengths_sync(keys=[name], values=ids, lengths=torch.ones(len(ids), dtype=torch.int32))


class ShardedTables(nn.Module):
    """Same lookup interface as ``LocalTables``; the rows of each table live on their owning ranks."""

    def __init__(self, env: DistEnv, num_entities: int, num_relations: int, widths: tuple[int, int], entity_bound: float,
                 relation_bound: float, features: dict[str, Features], trainable_features: bool,
                 cfg: ParallelConfig, seed: int, table_optimizer: str, lr: float, adagrad_lr: float,
                 unseen: np.ndarray | None = None):
        super().__init__()
        # entities held out by `prepare inductive`: their structure is missing in every fusion (model/dropout.py)
        self.register_buffer("structure", structure_mask(unseen))
        self.env, self.modalities = env, list(features)
        # the first entity this rank owns (embedder.owner_block): row-wise entity rows are indexed from it
        self.first_entity = min(env.rank * owner_block(num_entities, env.world_size), num_entities)
        self.sparse = {m: SparseRows(f.present, env.world_size) for m, f in features.items()}
        frozen_dtype = dtype_to_data_type(FROZEN_DTYPES[cfg.frozen_dtype])     # one table of the choices
        entity_width, relation_width = widths             # the scorer's (scorers/base.py)
        specs = {"entity": (num_entities, entity_width, True, DataType.FP32),
                 "relation": (num_relations, relation_width, True, DataType.FP32)}
        for m, f in features.items():
            specs[m] = (self.sparse[m].table_rows, f.dim, trainable_features,
                        DataType.FP32 if trainable_features else frozen_dtype)
        self.trainable = {name: spec[2] for name, spec in specs.items()}
        # TorchRec kernels need widths that are multiples of 4 (d=250 relations are not): pad, slice on lookup.
        self.widths = {name: spec[1] for name, spec in specs.items()}
        specs = {name: (rows, row_width(width), trainable, dtype) for name, (rows, width, trainable, dtype)
                 in specs.items()}
        module = TableModule(specs)
        # Entity-indexed tables default to row-wise: the owner-computes fusion (embedder.py) then finds every
        # row it fuses on its own rank; relations are replicated. Explicit choices go to the planner / the user.
        chosen = {t: "row_wise" for t in specs if t != "relation"}
        chosen["relation"] = "data_parallel"
        chosen.update(cfg.sharding)
        rows_by_owner = row_layout(chosen, self.trainable)
        if rows_by_owner:
            # The rows are updated by optim.py's rules (as in one process); TorchRec's fused step is a no-op.
            fused = dict(NO_UPDATE)
        elif table_optimizer == "adam":
            raise ConfigError(f"parallel.sharding: {cfg.sharding} with train.table_optimizer=adam; Adam needs the "
                              f"trainable entity-indexed tables row_wise and relations data_parallel (or use "
                              f"train.table_optimizer=rowwise_adagrad, which any layout takes)")
        else:
            # Another layout: FBGEMM's fused row-wise Adagrad (same rule; not bitwise the one-process run).
            log.warning("parallel.sharding %s: tables updated by FBGEMM's fused row-wise Adagrad", cfg.sharding)
            fused = {"optimizer": EmbOptimType.EXACT_ROWWISE_ADAGRAD, "learning_rate": adagrad_lr, "eps": 1e-8}
        sharders = [EmbeddingCollectionSharder(fused_params=fused),
                    # Frozen tables: plain SGD at lr 0 keeps no optimizer state; their output is detached, so
                    # backward never reaches them. Precision comes from the table config (data_type).
                    FrozenCollectionSharder(fused_params=dict(NO_UPDATE))]
        constraints = {t: ParameterConstraints(sharding_types=[SHARDING[k].value])
                       for t, k in chosen.items() if k != "auto" and t in specs}
        planner = EmbeddingShardingPlanner(topology=Topology(world_size=env.world_size,
                                                             compute_device=env.device.type),
                                           constraints=constraints)
        self.plan = planner.collective_plan(module, sharders, dist.GroupMember.WORLD)
        self.dmp = DistributedModelParallel(module, device=env.device, plan=self.plan, sharders=sharders)
        if isinstance(self.dmp._dmp_wrapped_module, nn.parallel.DistributedDataParallel):
            # data-parallel tables: gradients are summed like the sharded ones (losses carry 1/world)
            self.dmp._dmp_wrapped_module.register_comm_hook(None, allreduce_sum_hook)
        # Same initial values whatever the world size, one process included: each rank draws only the rows it
        # owns from the counter-based streams of rng.uniform_rows (no rank materialises a full table).
        self.init_shards("entity", lambda r0, r1: uniform_rows(seed, "entity_init", r0, r1, entity_width,
                                                                                entity_bound))
        self.init_shards("relation",
                         lambda r0, r1: uniform_rows(seed, "relation_init", r0, r1, relation_width,
                                                                     relation_bound))
        for m, f in features.items():          # each rank reads only its rows of the feature file
            self.init_shards(m, self.sparse[m].padded_values(f.rows))
            self.register_buffer(f"present_{m}", torch.from_numpy(f.present.copy()))
            self.register_buffer(f"rows_{m}", self.sparse[m].block_rows(env.rank))
        trainable_rows = [t for t in specs if t != "relation" and self.trainable[t]]
        self.row_optimizer = ShardedRowOptimizer(self, trainable_rows, table_optimizer, lr, adagrad_lr) \
            if rows_by_owner else None
        self.local_rows = self._owner_blocks(chosen)
        self.relation_weight = next((p for n, p in self.dmp.named_parameters() if n.split(".")[0] == "relation"),
                                    None) if self.local_rows else None

    def _owner_blocks(self, chosen: dict[str, str]) -> bool:
        """True when every entity-indexed table is row-wise in the owners' blocks (embedder.owner_block) and
        relations are replicated: then a lookup of owned ids reads the local shards directly (``lookup_owned``)."""
        if chosen.get("relation") != "data_parallel" or self.row_optimizer is None:
            return False
        for name, kind in chosen.items():
            if name == "relation":
                continue
            expected = self.env.rank * self.sparse[name].rows_per_block if name in self.sparse else self.first_entity
            shards = self._weight(name).local_shards() if kind == "row_wise" else None
            if not shards or len(shards) != 1 or shards[0].metadata.shard_offsets != [expected, 0]:
                return False
        return True

    # ---------------------------------------------------------------------------------- state
    def _weight(self, name: str):
        return self.dmp.state_dict()[f"{name}.embeddings.{name}.weight"]

    def init_shards(self, name: str, rows, block: int = 1 << 16) -> None:
        """Fill this rank's shard(s) of a table with ``rows(r0, r1)`` (logical width; padded here), ``block``
        rows at a time, so nothing shard-sized is allocated besides the shard itself."""
        weight = self._weight(name)
        if hasattr(weight, "local_shards"):
            pieces = [(s.tensor, *s.metadata.shard_offsets, s.metadata.shard_sizes[0]) for s in weight.local_shards()]
        else:
            pieces = [(weight, 0, 0, weight.size(0))]
        with torch.no_grad():
            for tensor, r0, c0, nr in pieces:
                for start in range(0, nr, block):
                    stop = min(start + block, nr)
                    values = self._pad(rows(r0 + start, r0 + stop), weight.size(1))
                    tensor[start:stop].copy_(values[:, c0:c0 + tensor.shape[1]])

    @staticmethod
    def _pad(block: Tensor, width: int) -> Tensor:
        return torch.nn.functional.pad(block, (0, width - block.shape[1]))

    def local_shard_sizes(self, name: str) -> list[list[int]]:
        weight = self._weight(name)
        if hasattr(weight, "local_shards"):
            return [list(s.metadata.shard_sizes) for s in weight.local_shards()]
        return [list(weight.shape)]

    def full_table(self, name: str) -> Tensor:
        """Gather a whole table onto every rank (tests and small-graph tools only); a modality's as one row per
        entity, zeros where absent."""
        weight = self._weight(name)
        if not hasattr(weight, "local_shards"):
            full = weight.detach().clone().float()
        else:
            full = torch.zeros(*weight.size())
            for shard in weight.local_shards():
                (r0, c0), (nr, nc) = shard.metadata.shard_offsets, shard.metadata.shard_sizes
                full[r0:r0 + nr, c0:c0 + nc] = shard.tensor.float()
            dist.all_reduce(full)   # shards are disjoint: the sum assembles the table
        full = full[:, :self.widths[name]]
        if name not in self.sparse:
            return full
        sparse, dense = self.sparse[name], torch.zeros(len(self.sparse[name].present), self.widths[name])
        present = torch.from_numpy(sparse.present)
        dense[present] = full[sparse.table_rows_of(present.nonzero().squeeze(1))]
        return dense

    def saved(self, name: str, state: list[Tensor] | None = None, trailing: list[int] | None = None):
        """A table as checkpoints hold it: a ShardedTensor over this rank's shards whose pieces are views, so a
        load fills them in place. With ``state`` (one tensor per local shard, rows as the shard's, of trailing
        shape ``trailing``): optimizer state kept beside the rows, in the same layout. Modality tables are saved
        canonically, the present rows in id order (feature_rows.py); a replicated one as a copy of those rows
        (``restore_replicated`` puts a loaded copy back)."""
        from torch.distributed._shard.sharded_tensor import Shard, ShardedTensor, ShardMetadata

        weight, sparse = self._weight(name), self.sparse.get(name)
        if not hasattr(weight, "local_shards"):
            return weight[self._present_table_rows(name)] if sparse else weight
        shards = weight.local_shards()
        tensors = [s.tensor for s in shards] if state is None else state
        trailing = list(weight.size()[1:]) if state is None else trailing
        pieces = []
        for shard, tensor in zip(shards, tensors):
            (r0, c0), (nr, _) = shard.metadata.shard_offsets, shard.metadata.shard_sizes
            columns = [c0] if state is None else [0] * len(trailing)
            for start, stop, at in sparse.canonical_spans(r0, nr) if sparse else [(0, nr, r0)]:
                piece = tensor[start:stop]
                pieces.append(Shard(piece, ShardMetadata([at, *columns], list(piece.shape), shard.metadata.placement)))
        return ShardedTensor._init_from_local_shards(pieces, sparse.total if sparse else weight.size(0), *trailing)

    def _present_table_rows(self, name: str) -> Tensor:
        present = torch.from_numpy(self.sparse[name].present)
        return self.sparse[name].table_rows_of(present.nonzero().squeeze(1))

    @torch.no_grad()
    def restore_replicated(self, name: str, loaded: Tensor) -> None:
        """Put a loaded copy of a replicated modality table's present rows (``saved``) back into the table."""
        weight = self._weight(name)
        if name in self.sparse and not hasattr(weight, "local_shards"):
            weight[self._present_table_rows(name)] = loaded.to(weight.dtype)

    def plan_summary(self) -> str:
        return str(self.plan)

    def plan_json(self) -> str:
        out = {}
        for module, params in self.plan.plan.items():
            for name, ps in params.items():
                out[name] = {"sharding_type": ps.sharding_type, "compute_kernel": ps.compute_kernel,
                             "ranks": ps.ranks}
        return json.dumps(out, indent=2)

    # ---------------------------------------------------------------------------------- lookup
    def lookup(self, entity_ids: Tensor, relation_ids: Tensor) -> tuple[EntityRows, Tensor]:
        """Rows of any ids through TorchRec's lookup (a collective every rank makes); a modality's table is
        asked for the present entities only."""
        ids = {"entity": entity_ids, "relation": relation_ids}
        hits = {}
        for m in self.modalities:
            hits[m] = getattr(self, f"present_{m}")[entity_ids].nonzero().squeeze(1)
            ids[m] = self.sparse[m].table_rows_of(entity_ids[hits[m]])
        out = self.dmp({name: _jagged(name, i) for name, i in ids.items()})
        rows = {name: out[name][name].values()[:len(i), :self.widths[name]] for name, i in ids.items()}
        if self.row_optimizer is not None:
            for name in self.row_optimizer.names:
                first = self.env.rank * self.sparse[name].rows_per_block if name in self.sparse else self.first_entity
                self.row_optimizer.capture(name, ids[name] - first, rows[name])
        for m in self.modalities:
            rows[m] = scatter_present(len(entity_ids), hits[m], rows[m] if self.trainable[m] else rows[m].detach())
        return self._entity_rows(entity_ids, rows), rows["relation"]

    def _entity_rows(self, entity_ids: Tensor, rows: dict[str, Tensor]) -> EntityRows:
        masks = {m: getattr(self, f"present_{m}")[entity_ids] for m in self.modalities}
        if self.structure is not None:
            masks[STRUCTURE] = self.structure[entity_ids]
        return EntityRows(rows["entity"], {m: rows[m] for m in self.modalities}, masks, entity_ids)

    def lookup_owned(self, entity_ids: Tensor, relation_ids: Tensor) -> tuple[EntityRows, Tensor]:
        """``lookup`` of ids this rank owns (the owner-computes fusion asks for nothing else). In the owners'
        row layout it reads the local shards and the relation replica directly — no KJT permutation, no
        TorchRec all-to-all — and the gradients go to ``ShardedRowOptimizer`` (rows) and to the relation
        replica's ``.grad`` (summed over ranks with the dense gradients, see DistributedRuntime)."""
        if not self.local_rows:
            return self.lookup(entity_ids, relation_ids)
        local = entity_ids - self.first_entity
        rows = {"entity": self._owned_block("entity", local)}
        for m in self.modalities:
            table_rows = getattr(self, f"rows_{m}")[local]          # −1: the entity has no row
            hit = (table_rows >= 0).nonzero().squeeze(1)
            rows[m] = scatter_present(len(entity_ids), hit, self._owned_block(m, table_rows[hit].long()))
        return self._entity_rows(entity_ids, rows), self.relation_rows(relation_ids)

    def _owned_block(self, name: str, local: Tensor) -> Tensor:
        """Rows ``local`` of this rank's shard (every row asked for, as on small graphs: the shard itself, no
        gather), their gradient captured for the row optimizer when the table trains."""
        shard = self._weight(name).local_shards()[0].tensor.detach()
        block = shard[:, :self.widths[name]] if every_row(local, len(shard)) else shard[local, :self.widths[name]]
        if self.trainable[name]:
            block = block.requires_grad_(torch.is_grad_enabled())
            self.row_optimizer.capture(name, local, block)
        return block.float()

    def relation_rows(self, relation_ids: Tensor) -> Tensor:
        """Rows of the replicated relation table (owners' row layout only)."""
        return self.relation_weight[relation_ids, :self.widths["relation"]]

    @property
    def fused_optimizer(self):
        return self.dmp.fused_optimizer


class ShardedRowOptimizer:
    """The table optimizer (optim.adam_rows_ or optim.adagrad_rows_) on the rows this rank owns of the
    row-wise entity-indexed tables.

    The owner-computes fusion (embedder.py) looks up only rows the rank owns, and TorchRec's fused update is a
    no-op; a hook on each looked-up block keeps (ids, gradient) — the gradient summed over every rank that
    used the rows — and ``step`` updates the local shard. The optimizer state lives beside the shard and is
    saved as ShardedTensors of the same row layout, so torch.distributed.checkpoint reshards it with the table."""

    def __init__(self, tables: "ShardedTables", names: list[str], rule: str, lr: float, adagrad_lr: float):
        self.tables, self.names, self.rule = tables, names, rule
        self.lr = lr if rule == "adam" else adagrad_lr
        self.step_count = torch.zeros((), dtype=torch.int64)
        self.pending: list[tuple[str, Tensor, Tensor]] = []
        self._state: dict[str, dict[str, Tensor]] | None = None

    @property
    def state(self) -> dict[str, dict[str, Tensor]]:
        """Allocated at first use (Adam's moments are twice the shard; building the tables should not pay)."""
        if self._state is None:
            self._state = {}
            for name in self.names:
                rows, width = self._shard(name).shape[0], self.tables.widths[name]
                self._state[name] = {"exp_avg": torch.zeros(rows, width), "exp_avg_sq": torch.zeros(rows, width)} \
                    if self.rule == "adam" else {"sum": torch.zeros(rows)}
        return self._state

    def _shard(self, name: str) -> Tensor:
        shards = self.tables._weight(name).local_shards()
        return shards[0].tensor if shards else torch.zeros(0, self.tables.widths[name])

    def capture(self, name: str, local: Tensor, rows: Tensor) -> None:
        """Keep the gradient of ``rows``, rows ``local`` (sorted, unique) of this rank's shard of ``name``."""
        if rows.requires_grad and torch.is_grad_enabled():
            rows.register_hook(lambda grad, name=name, local=local: self.pending.append((name, local, grad)))

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.pending.clear()

    @torch.no_grad()
    def step(self) -> None:
        self.step_count += 1
        for name, local, grad in self.pending:
            weight, state = self._shard(name)[:, :self.tables.widths[name]], self.state[name]
            if self.rule == "adam":
                adam_rows_(weight, state["exp_avg"], state["exp_avg_sq"], local, grad.float(),
                           int(self.step_count), self.lr)
            else:
                adagrad_rows_(weight, state["sum"], local, grad.float(), self.lr)
        self.pending.clear()

    def sharded_state(self) -> dict:
        """The state under optim.table_state's names, as ShardedTensors over this rank's rows: a checkpoint
        load (any world size, one process included) fills it in place."""
        out = {}
        for name in self.names:
            if name in self.tables.sparse and not self.tables.sparse[name].total:
                continue                       # a modality no entity has: nothing to save (as in one process)
            if self.rule == "adam":
                out[f"{name}.step"] = self.step_count
            for which, tensor in self.state[name].items():
                out[f"{name}.{which}"] = self.tables.saved(name, [tensor], list(tensor.shape[1:]))
        return out
