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
from .env import DistEnv, allreduce_sum_hook

OPTIMIZERS = {"exact_rowwise_adagrad": EmbOptimType.EXACT_ROWWISE_ADAGRAD, "exact_adagrad": EmbOptimType.EXACT_ADAGRAD,
              "adam": EmbOptimType.ADAM, "partial_rowwise_adam": EmbOptimType.PARTIAL_ROWWISE_ADAM,
              "exact_sgd": EmbOptimType.EXACT_SGD}
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
                 cfg: ParallelConfig, seed: int):
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
        sharders = [EmbeddingCollectionSharder(fused_params={"optimizer": OPTIMIZERS[cfg.table_optimizer],
                                                             "learning_rate": cfg.table_lr}),
                    # Frozen tables: plain SGD at lr 0 keeps no optimizer state; their output is detached, so
                    # backward never reaches them. Precision comes from the table config (data_type).
                    FrozenCollectionSharder(fused_params={"optimizer": EmbOptimType.EXACT_SGD, "learning_rate": 0.0})]
        # Entity-indexed tables default to row-wise: the owner-computes fusion (embedder.py) then finds every
        # row it fuses on its own rank. Relations and explicit choices go to the planner / the user.
        chosen = {t: "row_wise" for t in specs if t != "relation"}
        chosen.update(cfg.sharding)
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
        generator = torch.Generator().manual_seed(seed)
        # Same initial values whatever the world size: the full table is drawn from one seeded stream
        # and each rank keeps its shard (O(table) memory per rank at start; fine up to ~10^8 rows).
        self.load_full("entity", (torch.rand(num_entities, 2 * dim, generator=generator) * 2 - 1) * entity_bound)
        self.load_full("relation", (torch.rand(num_relations, dim, generator=generator) * 2 - 1) * relation_bound)
        for m, f in features.items():
            self.load_full(m, torch.from_numpy(f.values))
            self.register_buffer(f"present_{m}", torch.from_numpy(f.present.copy()))

    # ---------------------------------------------------------------------------------- state
    def _weight(self, name: str):
        return self.dmp.state_dict()[f"{name}.embeddings.{name}.weight"]

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
        entity = EntityRows(rows["entity"], {m: rows[m] for m in self.modalities},
                            {m: getattr(self, f"present_{m}")[entity_ids] for m in self.modalities})
        return entity, rows["relation"]

    @property
    def fused_optimizer(self):
        return self.dmp.fused_optimizer
