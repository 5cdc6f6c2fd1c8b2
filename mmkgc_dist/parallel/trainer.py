"""Distributed trainer: TorchRec-sharded tables, DDP-synchronised AdaMF fusion, DeepSpeed generator engine,
training data split by rank and candidate-sharded evaluation. Same step and loop as the single-process
trainer; only the builders, the batch split and the evaluation differ.

Gradient scaling: every rank's loss is the mean over its own positives, multiplied by 1/world before
backward. TorchRec sums the table gradients arriving from all ranks and the dense DDP uses a summing comm
hook, so both see the gradient of the global-batch mean, exactly as one process with the whole batch.
"""
from __future__ import annotations

import os

import deepspeed
import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from ..config import Config, ConfigError
from ..data.errors import DataError
from ..data.format import KGData
from ..eval.engine import CandidateShard
from ..integrity import safe_deepspeed_engine
from ..model import MATGenerators
from ..model.kgc import MultiModalKGC
from ..optim import OptimizerGroup, table_optimizer
from ..rng import torch_seed
from ..train.trainer import Trainer
from . import checkpoint
from .embedder import OwnerEmbedder, owner_block
from .env import DistEnv, allreduce_sum_hook, init_distributed
from .tables import ShardedTables


def deepspeed_config(cfg: Config, micro_batch: int) -> dict:
    """The generator engine's config, derived from our schema (one source of truth)."""
    return {"train_micro_batch_size_per_gpu": micro_batch, "gradient_accumulation_steps": 1,
            "optimizer": {"type": "Adam", "params": {"lr": cfg.mat.lr, "torch_adam": True}},
            "zero_optimization": {"stage": cfg.parallel.zero_stage},
            "steps_per_print": 1 << 30, "wall_clock_breakdown": False}


class DistributedTrainer(Trainer):
    def __init__(self, cfg: Config, data: KGData, run_dir: str | None = None, show_progress: bool = True,
                 env: DistEnv | None = None):
        self.env = env or init_distributed()
        if cfg.train.batch_size % self.env.world_size:
            raise ConfigError(f"train.batch_size ({cfg.train.batch_size}) must be a multiple of the world size "
                             f"({self.env.world_size})")
        local = cfg.train.batch_size // self.env.world_size
        if cfg.train.negatives == "chunk_shared" and local % cfg.train.chunk_size:
            raise ConfigError(f"train.chunk_size ({cfg.train.chunk_size}) must divide the per-rank batch ({local})")
        main = self.env.is_main
        super().__init__(cfg, data, run_dir if main else None, show_progress and main)
        self.run_dir = run_dir
        self.world_size = self.env.world_size

    def choose_device(self) -> torch.device:
        return self.env.device            # one device per rank, from LOCAL_RANK (see env.py)

    def _build(self) -> None:
        cfg, env, width = self.cfg, self.env, 2 * self.cfg.model.dim
        self.loss_scale = 1.0 / env.world_size
        self.tables = ShardedTables(env, self.data.num_entities, self.data.num_relations, cfg.model.dim,
                                    self.rotate.entity_init_bound, self.rotate.relation_init_bound, self.features,
                                    cfg.model.raw_features == "trainable", cfg.parallel, cfg.train.seed,
                                    cfg.train.table_optimizer, cfg.train.lr, cfg.train.adagrad_lr)
        torch_seed(cfg.train.seed, "dense_init")   # the planner/DMP consume RNG by world size; dense init must not
        self.core = MultiModalKGC(width, {m: f.dim for m, f in self.features.items()})
        dense = list(self.core.parameters())
        if dense:
            # Explicit DDP around the fusion only (not DMP's dense wrapper): the generators must stay outside
            # any DDP (DeepSpeed owns them) and the fake-fusion path calls the core module directly.
            self.model = DDP(self.core, bucket_cap_mb=cfg.parallel.dense_bucket_mb)
            self.model.register_comm_hook(None, allreduce_sum_hook)
        else:
            self.model = self.core
        self.embedder = OwnerEmbedder(self.tables, self.model, self.data.num_entities, env.world_size)
        replicated = [p for name, p in self.tables.dmp.named_parameters()
                      if isinstance(p, nn.Parameter) and p.requires_grad and self._data_parallel(name)]
        # The single-process trainer's rules (optim.py): Adam for the fusion weights, the configured table
        # optimizer for replicated tables (dense gradients) and for the owners' rows of the sharded ones.
        self.opt_model = OptimizerGroup(
            torch.optim.Adam(dense, lr=cfg.train.lr) if dense else None,
            table_optimizer(cfg.train.table_optimizer, replicated, cfg.train.lr, cfg.train.adagrad_lr),
            self.tables.row_optimizer)
        self.generators = self.engine = self.opt_generator = self.update_generator = None
        if self.use_mat:
            torch_seed(cfg.train.seed, "generator_init")
            generators = MATGenerators(self.modalities, width, cfg.mat.noise_dim, cfg.mat.hidden)
            self.engine, self.opt_generator, _, _ = deepspeed.initialize(
                model=generators, model_parameters=generators.parameters(),
                config=deepspeed_config(cfg, cfg.train.batch_size // env.world_size), dist_init_required=False)
            safe_deepspeed_engine(self.engine)     # its checkpoint files load weights-only
            self.generators = self.engine.module
            self.update_generator = self._deepspeed_update
        torch_seed(cfg.train.seed, "generator_noise", env.rank)    # per-rank noise after identical init

    def _data_parallel(self, param_name: str) -> bool:
        table = param_name.split(".")[0]
        for params in self.tables.plan.plan.values():
            for name, ps in params.items():
                if name == table and ps.sharding_type == "data_parallel":
                    return True
        return False

    def _deepspeed_update(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)
        self.engine.step()

    # ------------------------------------------------------------------------------------ data
    def rank_and_world(self) -> tuple[int, int]:
        return self.env.rank, self.env.world_size

    def gather_rows(self, rows: np.ndarray) -> np.ndarray:
        parts = [None] * self.env.world_size
        dist.all_gather_object(parts, rows)
        return np.concatenate(parts)

    def batches(self):
        """In memory, each rank takes a disjoint slice of every global batch; per-positive negatives are drawn
        for the global batch and sliced, so any world size trains on identical data. Streaming, each rank
        reads its own share of the row groups (data/stream.py)."""
        if self.stream is not None:
            yield from self.streamed_batches()
            return
        rank, world = self.env.rank, self.env.world_size
        for index, batch in self.global_batches():
            bounds = np.linspace(0, len(batch), world + 1).astype(int)
            lo, hi = bounds[rank], bounds[rank + 1]
            rng = self.batch_rng(index)
            if self.cfg.train.negatives == "per_positive":
                neg = self.sampler.sample(batch, rng)
                yield batch[lo:hi], neg.rows(lo, hi)
            else:  # chunks must not straddle ranks: each slice gets its own chunks
                slices = [self.sampler.sample(batch[a:b], rng) for a, b in zip(bounds[:-1], bounds[1:])]
                yield batch[lo:hi], slices[rank]

    def reduce_metrics(self, metrics: dict) -> dict:
        """Global means (losses) and sums (false negatives) over ranks."""
        keys = sorted(metrics)
        values = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64)
        dist.all_reduce(values)
        return {k: (v if k == "false_negatives" else v / self.env.world_size) for k, v in zip(keys, values.tolist())}

    # ------------------------------------------------------------------------------------ evaluation
    def candidate_range(self) -> tuple[int, int]:
        """This rank's candidates are the entities it owns, so their lookups and fusion stay local."""
        block = owner_block(self.data.num_entities, self.env.world_size)
        lo = min(self.env.rank * block, self.data.num_entities)
        return lo, min(lo + block, self.data.num_entities)

    @torch.no_grad()
    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        rows, _ = self.tables.lookup(ids, torch.zeros(0, dtype=torch.long))
        return self.core.embed(rows)[0]

    @torch.no_grad()
    def embedding_chunks(self, chunk: int = 4096):
        """(ids, structural, joint, AdaMF weights or None) of this rank's candidate shard, in chunks. Every rank
        makes the same number of lookups (lookups are collectives); empty chunks are not yielded."""
        lo, hi = self.candidate_range()
        for start in range(0, max(owner_block(self.data.num_entities, self.env.world_size), 1), chunk):
            ids = torch.arange(lo + start, min(lo + start + chunk, hi)) if lo + start < hi \
                else torch.zeros(0, dtype=torch.long)
            rows, _ = self.tables.lookup(ids, torch.zeros(0, dtype=torch.long))
            joint, weights = self.core.embed(rows)
            if len(ids):
                yield ids, rows.structural, joint, weights

    def shard_embeddings(self, chunk: int = 4096) -> torch.Tensor:
        parts = [joint for _, _, joint, _ in self.embedding_chunks(chunk)]
        return torch.cat(parts) if parts else torch.zeros(0, 2 * self.cfg.model.dim)

    def barrier(self) -> None:
        dist.barrier()

    @torch.no_grad()
    def relation_table(self) -> torch.Tensor:
        _, rel = self.tables.lookup(torch.zeros(0, dtype=torch.long), torch.arange(self.data.num_relations))
        return rel

    def candidate_shard(self) -> CandidateShard:
        """This rank's own entities, so their lookups and fusion stay local; counts are summed over ranks."""
        lo, hi = self.candidate_range()

        def all_reduce(t: torch.Tensor) -> torch.Tensor:
            dist.all_reduce(t)
            return t
        return CandidateShard(lo, hi, self.shard_embeddings(), self.embed, all_reduce)

    def protocol_suffix(self) -> str:
        return f"; candidates sharded over {self.env.world_size} ranks"

    # ------------------------------------------------------------------------------------ checkpoints
    def save(self) -> str:
        directory = os.path.join(self.run_dir, "checkpoints")
        path = checkpoint.save(self, directory)
        self.logger.log("checkpoint", path=os.path.basename(path), **self.cursor())
        if self.env.is_main:
            self.prune_checkpoints(directory, path)
        dist.barrier()
        return path

    def share(self, obj):
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def resume(self, path: str | None = None) -> bool:
        path = path or (checkpoint.latest(os.path.join(self.run_dir, "checkpoints")) if self.run_dir else None)
        if path is None:
            return False
        if not os.path.isdir(path):
            raise DataError(f"{path}: a single-process checkpoint file; the distributed trainer reads "
                            f"checkpoint folders (step-N/)")
        try:
            checkpoint.load(self, path)
        except (RuntimeError, KeyError, ValueError) as exc:
            if isinstance(exc, DataError):
                raise
            text = str(exc).strip()
            raise DataError(f"{path}: checkpoint does not fit this run's config "
                            f"({(text.splitlines()[0] if text else type(exc).__name__)[:300]})") from exc
        return True
