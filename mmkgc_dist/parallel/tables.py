"""Entity, relation and modality-feature tables as TorchRec embedding collections, sharded by
DistributedModelParallel with a planner.

One ``EmbeddingCollection`` per table: TorchRec's CPU kernels support row-wise sharding for
``EmbeddingCollection`` (not ``EmbeddingBagCollection``), and a collection needs one embedding width.
Trainable tables get a fused optimizer (applied inside backward); frozen feature tables live in a
separate collection type whose sharder has no optimizer state, their output is detached, and they may
be stored in fp16. Presence masks are small (one bool per entity and modality) and replicated.
"""
from __future__ import annotations

import json

import torch
import torch.distributed as dist
from fbgemm_gpu.split_embedding_configs import EmbOptimType
from torch import Tensor, nn
from torchrec import EmbeddingCollection, EmbeddingConfig, KeyedJaggedTensor
from torchrec.distributed import DistributedModelParallel
from torchrec.distributed.embedding import EmbeddingCollectionSharder
from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology
from torchrec.distributed.types import ShardingType
from torchrec.modules.embedding_configs import DataType

from ..config import ParallelConfig
from ..data.format import Features
from ..model.kgc import EntityRows
from ..config import ConfigError
from ..optim import adam_rows_
from ..rng import uniform_rows
from .env import DistEnv, allreduce_sum_hook



def table_fused_params(table_optimizer: str, adagrad_lr: float) -> dict:
    """The fused (in-backward) optimizer of the trainable collections. Row-wise Adagrad is FBGEMM's own
    (optim.RowwiseAdagrad computes the same update in one process). For Adam the fused update is a no-op
    (SGD at lr 0: FBGEMM's CPU kernels have no Adam) and ``ShardedLazyAdam`` applies optim.adam_rows_ to
    the rows each owner looked up — the rule the single-process trainer uses, on CPU and GPU alike."""
    if table_optimizer == "adam":
        return {"optimizer": EmbOptimType.EXACT_SGD, "learning_rate": 0.0}
    return {"optimizer": EmbOptimType.EXACT_ROWWISE_ADAGRAD, "learning_rate": adagrad_lr, "eps": 1e-8}
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

    def __init__(self, env: DistEnv, num_entities: int, num_relations: int, dim: int, entity_bound: float,
                 relation_bound: float, features: dict[str, Features], trainable_features: bool,
                 cfg: ParallelConfig, seed: int, table_optimizer: str, lr: float, adagrad_lr: float):
        super().__init__()
        self.env, self.modalities = env, list(features)
        frozen_dtype = DataType.FP16 if cfg.frozen_dtype == "fp16" else DataType.FP32
        specs = {"entity": (num_entities, 2 * dim, True, DataType.FP32),
                 "relation": (num_relations, dim, True, DataType.FP32)}
        for m, f in features.items():
            specs[m] = (num_entities, f.dim, trainable_features, DataType.FP32 if trainable_features else frozen_dtype)
        self.trainable = {name: spec[2] for name, spec in specs.items()}
        # TorchRec kernels need widths that are multiples of 4 (d=250 relations are not): pad, slice on lookup.
        self.widths = {name: spec[1] for name, spec in specs.items()}
        specs = {name: (rows, -(-width // 4) * 4, trainable, dtype) for name, (rows, width, trainable, dtype)
                 in specs.items()}
        module = TableModule(specs)
        sharders = [EmbeddingCollectionSharder(fused_params=table_fused_params(table_optimizer, adagrad_lr)),
                    # Frozen tables: plain SGD at lr 0 keeps no optimizer state; their output is detached, so
                    # backward never reaches them. Precision comes from the table config (data_type).
                    FrozenCollectionSharder(fused_params={"optimizer": EmbOptimType.EXACT_SGD, "learning_rate": 0.0})]
        # Entity-indexed tables default to row-wise: the owner-computes fusion (embedder.py) then finds every
        # row it fuses on its own rank. Relations and explicit choices go to the planner / the user.
        chosen = {t: "row_wise" for t in specs if t != "relation"}
        if table_optimizer == "adam":      # replicated relations: their dense gradients go to optim.LazyAdam
            chosen["relation"] = "data_parallel"
        chosen.update(cfg.sharding)
        if table_optimizer == "adam":
            _check_adam_layout(chosen, self.trainable)
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
        self.init_shards("entity", lambda r0, r1: uniform_rows(seed, "entity_init", r0, r1, 2 * dim, entity_bound))
        self.init_shards("relation",
                         lambda r0, r1: uniform_rows(seed, "relation_init", r0, r1, dim, relation_bound))
        for m, f in features.items():
            self.load_full(m, torch.from_numpy(f.values))
            self.register_buffer(f"present_{m}", torch.from_numpy(f.present.copy()))
        self.sharded_adam = ShardedLazyAdam(self, [t for t in specs if t != "relation" and self.trainable[t]],
                                            lr, num_entities, env) if table_optimizer == "adam" else None

    # ---------------------------------------------------------------------------------- state
    def _weight(self, name: str):
        return self.dmp.state_dict()[f"{name}.embeddings.{name}.weight"]

    def init_shards(self, name: str, rows) -> None:
        """Fill this rank's shard(s) of a table with ``rows(r0, r1)`` (logical width; padded here)."""
        weight = self._weight(name)
        shards = weight.local_shards() if hasattr(weight, "local_shards") else None
        with torch.no_grad():
            if shards is None:
                weight.copy_(self._pad(rows(0, weight.size(0)), weight.size(1)))
                return
            for shard in shards:
                (r0, c0), (nr, nc) = shard.metadata.shard_offsets, shard.metadata.shard_sizes
                shard.tensor.copy_(self._pad(rows(r0, r0 + nr), weight.size(1))[:, c0:c0 + nc])

    @staticmethod
    def _pad(block: Tensor, width: int) -> Tensor:
        return torch.nn.functional.pad(block, (0, width - block.shape[1]))

    def load_full(self, name: str, full: Tensor) -> None:
        """Copy this rank's shard(s) of a full [rows, width] table into the sharded storage."""
        weight = self._weight(name)
        full = torch.nn.functional.pad(full, (0, weight.size(1) - full.shape[1]))
        with torch.no_grad():
            if hasattr(weight, "local_shards"):
                for shard in weight.local_shards():
                    (r0, c0), (nr, nc) = shard.metadata.shard_offsets, shard.metadata.shard_sizes
                    shard.tensor.copy_(full[r0:r0 + nr, c0:c0 + nc])
            else:
                weight.copy_(full)

    def local_shard_sizes(self, name: str) -> list[list[int]]:
        weight = self._weight(name)
        if hasattr(weight, "local_shards"):
            return [list(s.metadata.shard_sizes) for s in weight.local_shards()]
        return [list(weight.shape)]

    def full_table(self, name: str) -> Tensor:
        """Gather a whole table onto every rank (tests and small-graph tools only)."""
        weight = self._weight(name)
        if not hasattr(weight, "local_shards"):
            return weight.detach().clone().float()[:, :self.widths[name]]
        rows, width = weight.size()
        full = torch.zeros(rows, width)
        for shard in weight.local_shards():
            (r0, c0), (nr, nc) = shard.metadata.shard_offsets, shard.metadata.shard_sizes
            full[r0:r0 + nr, c0:c0 + nc] = shard.tensor.float()
        dist.all_reduce(full)   # shards are disjoint: the sum assembles the table
        return full[:, :self.widths[name]]

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
        features = {"entity": _jagged("entity", entity_ids), "relation": _jagged("relation", relation_ids)}
        for m in self.modalities:
            features[m] = _jagged(m, entity_ids)
        out = self.dmp(features)
        counts = {"entity": len(entity_ids), "relation": len(relation_ids), **{m: len(entity_ids) for m in self.modalities}}
        rows = {name: out[name][name].values()[:counts[name], :self.widths[name]] for name in features}
        for m in self.modalities:
            rows[m] = rows[m].float() if self.trainable[m] else rows[m].detach().float()
        if self.sharded_adam is not None:
            for name in self.sharded_adam.names:
                self.sharded_adam.capture(name, entity_ids, rows[name])
        entity = EntityRows(rows["entity"], {m: rows[m] for m in self.modalities},
                            {m: getattr(self, f"present_{m}")[entity_ids] for m in self.modalities})
        return entity, rows["relation"]

    @property
    def fused_optimizer(self):
        return self.dmp.fused_optimizer


def _check_adam_layout(chosen: dict[str, str], trainable: dict[str, bool]) -> None:
    for table, kind in chosen.items():
        want = "data_parallel" if table == "relation" else "row_wise"
        if trainable.get(table) and kind != want:
            raise ConfigError(f"parallel.sharding.{table}: {kind!r} with train.table_optimizer=adam; Adam needs "
                              f"{want} for this table (or use train.table_optimizer=rowwise_adagrad)")


class ShardedLazyAdam:
    """Lazy Adam (optim.adam_rows_) on the rows this rank owns of the row-wise entity-indexed tables.

    The owner-computes fusion (embedder.py) looks up only rows the rank owns, and TorchRec's fused update is a
    no-op; a hook on each looked-up block keeps (ids, gradient) — the gradient summed over every rank that
    used the rows — and ``step`` updates the local shard. The moments live beside the shard and are saved
    as ShardedTensors of the same layout, so torch.distributed.checkpoint reshards them with the table."""

    def __init__(self, tables: "ShardedTables", names: list[str], lr: float, num_entities: int, env: DistEnv):
        from .embedder import owner_block

        self.tables, self.names, self.lr = tables, names, lr
        self.first_row = min(env.rank * owner_block(num_entities, env.world_size), num_entities)
        self.step_count = torch.zeros((), dtype=torch.int64)
        self.pending: list[tuple[str, Tensor, Tensor]] = []
        self.moments = {}
        for name in names:
            shard = self._shard(name)
            width = tables.widths[name]
            self.moments[name] = (torch.zeros(shard.shape[0], width), torch.zeros(shard.shape[0], width))

    def _shard(self, name: str) -> Tensor:
        shards = self.tables._weight(name).local_shards()
        return shards[0].tensor if shards else torch.zeros(0, self.tables.widths[name])

    def capture(self, name: str, ids: Tensor, rows: Tensor) -> None:
        if rows.requires_grad and torch.is_grad_enabled():
            rows.register_hook(lambda grad, name=name, ids=ids: self.pending.append((name, ids, grad)))

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.pending.clear()

    @torch.no_grad()
    def step(self) -> None:
        self.step_count += 1
        for name, ids, grad in self.pending:
            width = self.tables.widths[name]
            exp_avg, exp_avg_sq = self.moments[name]
            adam_rows_(self._shard(name)[:, :width], exp_avg, exp_avg_sq, ids - self.first_row, grad.float(),
                       int(self.step_count), self.lr)
        self.pending.clear()

    # The moments travel through DCP (parallel/checkpoint.py); the dense optimizer file holds nothing of them.
    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def sharded_state(self) -> dict:
        from torch.distributed._shard.sharded_tensor import Shard, ShardedTensor, ShardMetadata

        out = {"step": self.step_count}
        for name in self.names:
            weight = self.tables._weight(name)
            width = self.tables.widths[name]
            rows = weight.size(0)
            for which, tensor in zip(("exp_avg", "exp_avg_sq"), self.moments[name]):
                shards = [Shard(tensor, ShardMetadata([s.metadata.shard_offsets[0], 0], [tensor.shape[0], width],
                                                      s.metadata.placement)) for s in weight.local_shards()]
                out[f"{name}.{which}"] = ShardedTensor._init_from_local_shards(shards, rows, width)
        return out
