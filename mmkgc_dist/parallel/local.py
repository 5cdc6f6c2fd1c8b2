"""The single-process runtime: local tables (nn.Embedding), the plain fusion module, local optimizers and the
checkpoint format of every world size (checkpoint.py). ``training.Trainer`` is handed this or
``distributed.DistributedRuntime``; both offer the same operations (build, the rank's part of a global batch, metric reduction, the candidate shard, collectives,
checkpoint I/O), so the loop, the step and evaluation exist once.
"""
from __future__ import annotations

import logging
from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn

from ..config import Config
from ..errors import ConfigError
from ..eval.engine import CandidateShard
from ..model import MATGenerators
from ..model.kgc import EmbeddedEntities, MultiModalKGC
from ..model.optim import OptimizerGroup, load_table_state, table_optimizer, table_state
from ..rng import torch_seed
from .local_tables import FROZEN_DTYPES, LocalTables, pad_rows

log = logging.getLogger("mmkgc_dist")


def choose_device(wanted: str) -> torch.device:
    if wanted == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: cuda requested but no CUDA device is visible")
    return torch.device("cuda" if wanted == "cuda" or (wanted == "auto" and torch.cuda.is_available()) else "cpu")


class LocalEmbedder:
    """Table lookup, then fusion of the looked-up rows, in this process."""

    def __init__(self, tables, model: nn.Module):
        self.tables, self.model = tables, model

    def __call__(self, entity_ids: Tensor, relation_ids: Tensor,
                 positives: Tensor | None = None) -> tuple[EmbeddedEntities, Tensor]:
        rows, relation_rows = self.tables.lookup(entity_ids, relation_ids)
        joint, _ = self.model(rows)
        return EmbeddedEntities(joint, rows.structural, rows.masks), relation_rows

    @torch.no_grad()
    def positives(self, entity_ids: Tensor, relation_ids: Tensor) -> tuple[EmbeddedEntities, Tensor]:
        """The positives' rows again, with the updated model (the generator step)."""
        return self(entity_ids, relation_ids)


def local_generator_update(generators: nn.Module, optimizer: torch.optim.Optimizer) -> Callable[[Tensor], None]:
    """Single-process generator update: gradients for the generator parameters only, then Adam."""
    params = list(generators.parameters())

    def update(loss: Tensor) -> None:
        for p, g in zip(params, torch.autograd.grad(loss, params)):
            p.grad = g
        optimizer.step()
    return update


class LocalRuntime:
    rank, world_size, is_main = 0, 1, True
    sync_gradients = None          # one process: its gradients are the global batch's

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.device = choose_device(cfg.train.device)

    # ------------------------------------------------------------------------------------ building
    def build(self, data, features: dict, modalities: list[str], scoring, use_mat: bool) -> None:
        """Tables, dense model, generators and their optimizers — the same initial values and rules as the
        distributed runtime (named streams, rng.py; optim.py)."""
        cfg, scorer = self.cfg, scoring.scorer
        width = scorer.width
        self.num_entities = data.num_entities
        self.tables = LocalTables(data.num_entities, scoring.relation_rows, (width, scorer.relation_width),
                                  scorer.entity_init_bound, scorer.relation_init_bound, features,
                                  cfg.model.raw_features == "trainable",
                                  cfg.train.seed, FROZEN_DTYPES[cfg.parallel.frozen_dtype],
                                  data.unseen).to(self.device)
        torch_seed(cfg.train.seed, "dense_init")
        self.model = MultiModalKGC(width, {m: f.dim for m, f in features.items()}, scorer.fusion).to(self.device)
        self.embedder = LocalEmbedder(self.tables, self.model)
        torch_seed(cfg.train.seed, "generator_init")
        self.generators = MATGenerators(modalities, width, cfg.mat.noise_dim, cfg.mat.hidden).to(self.device) \
            if use_mat else None
        tables = [p for p in self.tables.parameters() if p.requires_grad]
        dense = [p for p in self.model.parameters() if p.requires_grad]
        self.table_optimizer = table_optimizer(cfg.train.table_optimizer, tables, cfg.train.lr, cfg.train.adagrad_lr)
        self.dense_optimizer = torch.optim.Adam(dense, lr=cfg.train.lr, fused=True) if dense else None
        self.opt_model = OptimizerGroup(self.table_optimizer, self.dense_optimizer)
        self.opt_generator = torch.optim.Adam(self.generators.parameters(), lr=cfg.mat.lr) \
            if use_mat else None
        self.update_generator = local_generator_update(self.generators, self.opt_generator) if use_mat else None
        torch_seed(cfg.train.seed, "generator_noise", self.rank)

    # ------------------------------------------------------------------------------------ data and collectives
    def batch_slice(self, size: int) -> tuple[int, int]:
        """One process holds the whole global batch."""
        return 0, size

    def reduce_metrics(self, metrics: dict) -> dict:
        """Plain numbers (the step keeps its losses on the device; reading them waits for the device)."""
        return {k: float(v) for k, v in metrics.items()}

    @staticmethod
    def total(count: int) -> int:
        """The sum of ``count`` over ranks (one process: itself)."""
        return count

    @staticmethod
    def batch_softmax(logits: Tensor) -> Tensor:
        """Softmax over the batch (one process holds all of it)."""
        return torch.softmax(logits, dim=0)

    def gather_rows(self, rows: np.ndarray) -> np.ndarray:
        return rows

    @staticmethod
    def gather_queries(rows: Tensor) -> tuple[Tensor, slice]:
        """Every process's queries and the slice that is this one's (one process: all of them)."""
        return rows, slice(0, len(rows))

    @staticmethod
    def sum_over_ranks(t: Tensor) -> Tensor:
        return t

    @staticmethod
    def max_over_ranks(t: Tensor) -> Tensor:
        return t

    def candidate_range(self) -> tuple[int, int]:
        """The entities this process scores against: all of them."""
        return 0, self.num_entities

    def share(self, obj):
        """Rank 0's value of ``obj`` on every rank (one process: itself)."""
        return obj

    def barrier(self) -> None:
        """Nothing to wait for in one process."""

    # ------------------------------------------------------------------------------------ embeddings
    @torch.no_grad()
    def embedding_chunks(self, chunk: int = 4096):
        """(ids, structural rows, joint embeddings, AdaMF weights or None) of this process's entities."""
        for start in range(0, self.num_entities, chunk):
            ids = torch.arange(start, min(start + chunk, self.num_entities))
            rows = self.tables.entities(ids.to(self.device))
            joint, weights = self.model.embed(rows)
            yield ids, rows.structural, joint, weights

    def candidate_shard(self) -> CandidateShard:
        """The candidates this process ranks against: all entities."""
        return CandidateShard.whole(torch.cat([joint for _, _, joint, _ in self.embedding_chunks()]))

    def relation_table(self) -> torch.Tensor:
        return self.tables.relation.weight.detach()

    def protocol_suffix(self) -> str:
        return ""

    def plan_report(self) -> tuple[str, str] | None:
        """(text, JSON) of how the tables are placed; nothing to report in one process."""
        return None

    # ------------------------------------------------------------------------------------ checkpoints
    table_state_kind = "rows"          # table-optimizer state by table row (see checkpoint.py)
    zero_stage = 0                     # the generators' optimizer is plain torch Adam in one process

    @property
    def table_optimizer_rule(self) -> str:
        return self.cfg.train.table_optimizer

    def save_generator_shards(self, folder: str) -> None:
        raise NotImplementedError("one process keeps the generators' optimizer whole (zero_stage 0)")

    def load_generator_shards(self, folder: str) -> None:
        raise NotImplementedError("one process keeps the generators' optimizer whole (zero_stage 0)")

    def _trainable_tables(self) -> dict[str, nn.Parameter]:
        """The tables a checkpoint holds; a modality table that no entity has is left out (nothing to save)."""
        tables = {"entity": self.tables.entity.weight, "relation": self.tables.relation.weight}
        tables.update({m: t.weight for m, t in self.tables.features.items()
                       if t.weight.requires_grad and self.tables.saved_rows(m)})
        return tables

    def _saved_rows(self) -> dict[str, int]:
        """Rows saved of each modality table: the present entities' (feature_rows.py), at every world size."""
        return {m: self.tables.saved_rows(m) for m in self.tables.features}

    def checkpoint_state(self, optimizer: bool) -> dict:
        """The tensors of the checkpoint format (checkpoint.py): tables at TorchRec's row width, fusion
        weights, and with ``optimizer`` the table optimizer's named state."""
        tables, saved = self._trainable_tables(), self._saved_rows()
        state = {"tables": {name: pad_rows(p.detach()[:saved.get(name, len(p))]) for name, p in tables.items()},
                 "dense": self.model.state_dict()}
        if optimizer:
            state["optimizer"] = table_state(self.table_optimizer, tables, {n: p.shape[1] for n, p in tables.items()},
                                             saved)
        return state

    @torch.no_grad()
    def restore_state(self, state: dict, optimizer: bool) -> None:
        """Copy what a checkpoint load filled back where it is not already in place (padded tables)."""
        tables = self._trainable_tables()
        for name, p in tables.items():
            loaded = state["tables"][name]
            if loaded.data_ptr() != p.data_ptr():
                p[:len(loaded)].copy_(loaded[:, :p.shape[1]])
        if optimizer:
            load_table_state(self.table_optimizer, tables, state["optimizer"])
