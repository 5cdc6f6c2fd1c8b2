"""The distributed runtime: TorchRec-sharded tables, data-parallel AdaMF fusion (dense gradients summed in flat
buckets), DeepSpeed generator engine, each rank's part of every global batch, candidate-sharded evaluation;
checkpoints in the one format of every world size (checkpoint/format.py). ``training.Trainer`` runs the same loop,
step and evaluation over it as over ``local.LocalRuntime``.

Gradient scaling: every rank's loss is the mean over its own positives, multiplied by its share of the global
batch (b / B; a rank may hold fewer positives than another, or none) before backward. The owners' table rows
receive the gradients of every rank that used them (the fused-row all-to-all's
backward), and the dense gradients (fusion weights, replicated tables) are summed over ranks in flat buckets
(``DenseGradients``), so both are the gradient of the global-batch mean, exactly as one process with the whole
batch.

Collectives of one training step (owners' row layout, the default): the id counts (the one exchange the host
waits on: it sizes the rest), the ids, the fused rows (forward and backward), the dense gradients' sum, one
all-gather for the global softmax of the MAT adversarial term, the positives' fused rows again for the generator
step (no id exchange: marked in the first one), and DeepSpeed's generator gradient all-reduce. Metrics are
reduced only on logging steps.
"""
from __future__ import annotations

import logging

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ..config import Config
from ..errors import ConfigError
from ..data.format import KGData
from ..eval.engine import CandidateShard
from ..checkpoint.safe_load import safe_deepspeed_engine
from ..model import MATGenerators
from ..model.kgc import MultiModalKGC, unique_ids
from ..model.optim import OptimizerGroup, load_table_state, table_optimizer, table_state
from ..rng import torch_seed
from .embedder import OwnerEmbedder, owner_block
from .env import (DistEnv, gather_rows_differentiable, global_softmax, init_distributed, max_over_ranks,
                  sum_over_ranks)
from .tables import ShardedTables


log = logging.getLogger("mmkgc_dist")


def deepspeed_config(cfg: Config, micro_batch: int) -> dict:
    """The generator engine's config, derived from our schema (one source of truth)."""
    return {"train_micro_batch_size_per_gpu": micro_batch, "gradient_accumulation_steps": 1,
            # torch's Adam, as one process uses: DeepSpeed's "Adam" is AdamW with weight decay 0.01 unless
            # adam_w_mode is false
            "optimizer": {"type": "Adam", "params": {"lr": cfg.mat.lr, "torch_adam": True, "adam_w_mode": False}},
            "zero_optimization": {"stage": cfg.parallel.zero_stage},
            "steps_per_print": 1 << 30, "wall_clock_breakdown": False}


def without_shared_memory_kernel() -> None:
    """Mark DeepSpeed's shared-memory all-reduce kernel unavailable before its communication backend starts.
    On CPU that backend otherwise JIT-loads the kernel (for inference all-reduce, which we never call) in every
    process, under a lock file that a process killed in that window leaves behind: every later start then waits
    on it forever. Marking it also skips DeepSpeed's probe of every op's compiler. The generator's gradients
    travel through torch.distributed either way."""
    import deepspeed.ops
    if "__compatible_ops__" not in vars(deepspeed.ops):       # DeepSpeed probes lazily, on first access
        deepspeed.ops.__compatible_ops__ = {}
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def _broadcast(params: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for p in params:
            dist.broadcast(p, src=0)


class DenseGradients:
    """Sums the gradients of replicated parameters over ranks: flat buckets of at most ``bucket_mb`` MiB, one
    all-reduce each. A parameter without a gradient on this rank sends zeros; one flag per parameter travels
    along, so a parameter gets a gradient on every rank exactly when some rank used it (as one process would).
    Calling it starts the all-reduces; ``wait()`` writes the sums into ``.grad`` — in between the owners' row
    updates run, which need no dense gradient (OptimizerGroup's ``local``)."""

    def __init__(self, params: list[torch.Tensor], bucket_mb: int):
        self.buckets, current, size = [], [], 0
        for p in params:
            if current and size + p.numel() * p.element_size() > bucket_mb * 2 ** 20:
                self.buckets.append(current)
                current, size = [], 0
            current.append(p)
            size += p.numel() * p.element_size()
        if current:
            self.buckets.append(current)

        self.pending: list = []

    @torch.no_grad()
    def __call__(self) -> None:
        for bucket in self.buckets:
            used = torch.tensor([float(p.grad is not None) for p in bucket])
            flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in bucket]
                             + [used.to(bucket[0].device, bucket[0].dtype)])
            self.pending.append((bucket, used, flat, dist.all_reduce(flat, async_op=True)))

    @torch.no_grad()
    def wait(self) -> None:
        pending, self.pending = self.pending, []
        for bucket, used, flat, work in pending:
            work.wait()
            parts = torch.split(flat, [p.numel() for p in bucket] + [len(bucket)])
            # the flags are read (a host sync) only when this rank left a parameter unused
            anywhere = parts[-1].tolist() if not bool(used.all()) else [1.0] * len(bucket)
            for p, part, elsewhere in zip(bucket, parts[:-1], anywhere):
                if p.grad is not None:
                    p.grad.copy_(part.view_as(p))
                elif elsewhere:                # unused here, used on another rank
                    p.grad = part.view_as(p).clone()


def slice_bounds(rows: int, rank: int, world: int) -> tuple[int, int]:
    """Rank ``rank``'s contiguous rows [lo, hi) of a global batch of ``rows``: sizes differ by at most one, and
    a rank gets none when the batch has fewer rows than ranks (it still takes part in every collective)."""
    return rank * rows // world, (rank + 1) * rows // world


class DistributedRuntime:
    def __init__(self, cfg: Config, env: DistEnv | None = None):
        self.cfg = cfg
        self.env = env or init_distributed()
        if cfg.train.batch_size % self.env.world_size:
            raise ConfigError(f"train.batch_size ({cfg.train.batch_size}) must be a multiple of the world size "
                             f"({self.env.world_size})")
        local = cfg.train.batch_size // self.env.world_size
        if cfg.train.negatives == "chunk_shared" and local % cfg.train.chunk_size:
            raise ConfigError(f"train.chunk_size ({cfg.train.chunk_size}) must divide the per-rank batch ({local})")
        if cfg.parallel.frozen_dtype == "bf16" and cfg.model.raw_features == "frozen" and self.env.device.type == "cpu":
            raise ConfigError("parallel.frozen_dtype: bf16 sharded tables need CUDA (FBGEMM's CPU lookup has no "
                              "bf16 kernel); on CPU use fp16, or bf16 in one process")
        self.rank, self.world_size, self.is_main = self.env.rank, self.env.world_size, self.env.is_main
        self.device = self.env.device            # one device per rank, from LOCAL_RANK (see env.py)

    def build(self, data: KGData, features: dict, modalities: list[str], scoring, use_mat: bool) -> None:
        cfg, env, scorer = self.cfg, self.env, scoring.scorer
        width = scorer.width
        self.num_entities, self.num_relations = data.num_entities, scoring.relation_rows
        self.modalities = modalities
        self.tables = ShardedTables(env, data.num_entities, scoring.relation_rows, (width, scorer.relation_width),
                                    scorer.entity_init_bound, scorer.relation_init_bound, features,
                                    cfg.model.raw_features == "trainable", cfg.parallel, cfg.train.seed,
                                    cfg.train.table_optimizer, cfg.train.lr, cfg.train.adagrad_lr, data.unseen)
        torch_seed(cfg.train.seed, "dense_init")   # the planner/DMP consume RNG by world size; dense init must not
        self.model = MultiModalKGC(width, {m: f.dim for m, f in features.items()}, scorer.fusion)
        dense = list(self.model.parameters())
        _broadcast(dense)                        # identical by seeding already; a cheap guarantee
        self.embedder = OwnerEmbedder(self.tables, self.model, data.num_entities, env.world_size)
        self.replicated = {name.split(".")[0]: p for name, p in self.tables.dmp.named_parameters()
                           if isinstance(p, nn.Parameter) and p.requires_grad and self._data_parallel(name)}
        # Fusion weights always; replicated tables too when their lookups bypass TorchRec (DMP's own DDP then
        # never runs a forward, so it leaves their gradients alone).
        self.sync_gradients = DenseGradients(
            dense + (list(self.replicated.values()) if self.tables.local_rows else []), cfg.parallel.dense_bucket_mb)
        # The single-process trainer's rules (optim.py): Adam for the fusion weights, the configured table
        # optimizer for replicated tables (dense gradients) and for the owners' rows of the sharded ones.
        self.dense_optimizer = torch.optim.Adam(dense, lr=cfg.train.lr, fused=True) if dense else None
        self.replicated_optimizer = table_optimizer(cfg.train.table_optimizer, list(self.replicated.values()),
                                                    cfg.train.lr, cfg.train.adagrad_lr)
        self.opt_model = OptimizerGroup(self.dense_optimizer, self.replicated_optimizer,
                                        local=(self.tables.row_optimizer,), gradients_ready=self.sync_gradients.wait)
        self.generators = self.engine = self.opt_generator = self.update_generator = None
        if use_mat:
            torch_seed(cfg.train.seed, "generator_init")
            generators = MATGenerators(modalities, width, cfg.mat.noise_dim, cfg.mat.hidden)
            import deepspeed          # only with MAT: a trained model's evaluation never starts it
            without_shared_memory_kernel()
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

    # ------------------------------------------------------------------------------------ data and collectives
    def gather_rows(self, rows: np.ndarray) -> np.ndarray:
        parts = [None] * self.env.world_size
        dist.all_gather_object(parts, rows)
        return np.concatenate(parts)

    def batch_slice(self, size: int) -> tuple[int, int]:
        """This rank's disjoint rows of a global batch."""
        return slice_bounds(size, self.env.rank, self.env.world_size)

    @staticmethod
    def batch_softmax(logits: torch.Tensor) -> torch.Tensor:
        """Softmax of this rank's slice over the global batch: max and normaliser all-reduced (no autograd)."""
        return global_softmax(logits)

    # 1-vs-all training: each rank scores the gathered queries of the global batch against its own entities
    gather_queries = staticmethod(gather_rows_differentiable)
    sum_over_ranks = staticmethod(sum_over_ranks)
    max_over_ranks = staticmethod(max_over_ranks)

    def reduce_metrics(self, metrics: dict) -> dict:
        """The global values: each rank holds its share of every loss (weighted by its part of the batch) and
        its own count of false negatives, so all are sums over ranks."""
        keys = sorted(metrics)
        values = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64)
        dist.all_reduce(values)
        return dict(zip(keys, values.tolist()))

    def total(self, count: int) -> int:
        """The sum of ``count`` over ranks (every rank gets it)."""
        value = torch.tensor([count], dtype=torch.int64)
        dist.all_reduce(value)
        return int(value.item())

    # ------------------------------------------------------------------------------------ evaluation
    def candidate_range(self) -> tuple[int, int]:
        """This rank's candidates are the entities it owns, so their lookups and fusion stay local."""
        block = owner_block(self.num_entities, self.env.world_size)
        lo = min(self.env.rank * block, self.num_entities)
        return lo, min(lo + block, self.num_entities)

    @torch.no_grad()
    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Joint rows of any ids (a collective). In the owners' layout the owners fuse them, as in training —
        a rank that owns no rows (fewer entities than ranks) never calls a lookup on an empty shard."""
        if self.tables.local_rows:
            unique, inverse = unique_ids(ids, self.num_entities)
            entities, _ = self.embedder(unique, torch.zeros(0, dtype=torch.long))
            return entities.joint[inverse]
        rows, _ = self.tables.lookup(ids, torch.zeros(0, dtype=torch.long))
        return self.model.embed(rows)[0]

    def _owned_rows(self, ids: torch.Tensor):
        """Rows of ids this rank owns: read from its own shards in the owners' layout (no collective), through
        TorchRec's lookup (a collective every rank makes) otherwise."""
        lookup = self.tables.lookup_owned if self.tables.local_rows else self.tables.lookup
        return lookup(ids, torch.zeros(0, dtype=torch.long))[0]

    @torch.no_grad()
    def embedding_chunks(self, chunk: int = 4096):
        """(ids, structural, joint, AdaMF weights or None) of this rank's candidate shard, in chunks. Every rank
        makes the same number of lookups (lookups are collectives); empty chunks are not yielded."""
        lo, hi = self.candidate_range()
        for start in range(0, max(owner_block(self.num_entities, self.env.world_size), 1), chunk):
            ids = torch.arange(lo + start, min(lo + start + chunk, hi)) if lo + start < hi \
                else torch.zeros(0, dtype=torch.long)
            rows = self._owned_rows(ids)
            joint, weights = self.model.embed(rows)
            if len(ids):
                yield ids, rows.structural, joint, weights

    def shard_embeddings(self, chunk: int = 4096) -> torch.Tensor:
        parts = [joint for _, _, joint, _ in self.embedding_chunks(chunk)]
        return torch.cat(parts) if parts else torch.zeros(0, 2 * self.cfg.model.dim)   # an empty shard: never scored

    def barrier(self) -> None:
        dist.barrier()

    @torch.no_grad()
    def relation_table(self) -> torch.Tensor:
        if self.tables.local_rows:               # the replica, read locally
            return self.tables.relation_rows(torch.arange(self.num_relations))
        _, rel = self.tables.lookup(torch.zeros(0, dtype=torch.long), torch.arange(self.num_relations))
        return rel

    def candidate_shard(self) -> CandidateShard:
        """This rank's own entities, so their lookups and fusion stay local; counts are summed over ranks."""
        lo, hi = self.candidate_range()

        def all_reduce(t: torch.Tensor) -> torch.Tensor:
            dist.all_reduce(t)
            return t
        return CandidateShard(lo, hi, self.shard_embeddings(), self.embed, self.num_entities, all_reduce)

    def protocol_suffix(self) -> str:
        return f"; candidates sharded over {self.env.world_size} ranks"

    def plan_report(self) -> tuple[str, str]:
        """(text, JSON) of the sharding plan: printed at start, saved as sharding_plan.json."""
        return (f"sharding plan ({self.env.world_size} ranks, backend {self.env.backend}):\n"
                f"{self.tables.plan_summary()}", self.tables.plan_json())

    def share(self, obj):
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    # ------------------------------------------------------------------------------------ checkpoints
    @property
    def table_optimizer_rule(self) -> str:
        return self.cfg.train.table_optimizer

    @property
    def zero_stage(self) -> int:
        """parallel.zero_stage while a DeepSpeed engine steps the generators; 0 without MAT."""
        return self.cfg.parallel.zero_stage if self.engine is not None else 0

    def save_generator_shards(self, folder: str) -> None:
        self.engine.save_checkpoint(folder, tag="generator", save_latest=False)

    def load_generator_shards(self, folder: str) -> None:
        self.engine.load_checkpoint(folder, tag="generator", load_module_strict=True, load_optimizer_states=True)

    @property
    def table_state_kind(self) -> str:
        """"rows": table-optimizer state by table row (optim.table_state names, as one process keeps it);
        "fused": inside FBGEMM's fused optimizer (layouts other than row-wise + replicated relations)."""
        return "rows" if self.tables.row_optimizer is not None else "fused"

    def checkpoint_state(self, optimizer: bool) -> dict:
        """The tensors of the checkpoint format (checkpoint.py) as this rank holds them: its shards of the
        trainable tables and of their optimizer state, the replicated tables and the fusion weights."""
        tables = self.tables
        state = {"tables": {name: tables.saved(name) for name, trainable in tables.trainable.items()
                            if trainable and (name not in tables.sparse or tables.sparse[name].total)},
                 "dense": self.model.state_dict()}
        if optimizer:
            named = tables.row_optimizer.sharded_state() if tables.row_optimizer is not None else {}
            if self.replicated_optimizer is not None:
                named.update(table_state(self.replicated_optimizer, self.replicated, tables.widths))
            state["optimizer"] = named
            if tables.row_optimizer is None:
                state["fused_optimizer"] = tables.fused_optimizer.state_dict()
        return state

    def restore_state(self, state: dict, optimizer: bool) -> None:
        """Tables, fusion weights and sharded optimizer state were filled in place by the load; install the
        rest."""
        for name, loaded in state["tables"].items():
            self.tables.restore_replicated(name, loaded)
        if not optimizer:
            return
        if self.replicated_optimizer is not None:
            load_table_state(self.replicated_optimizer, self.replicated, state["optimizer"])
        if self.tables.row_optimizer is None:
            self.tables.fused_optimizer.load_state_dict(state["fused_optimizer"])
