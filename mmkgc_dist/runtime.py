"""The runtime contract: what differs between one process and N ranks, written down once.

``training.Trainer``, ``training.TrainStep``, ``eval.Evaluator``, export and the checkpoint format are written against
this protocol and never ask which runtime they hold. Two implementations satisfy it (``tests/test_layers.py``
checks that each defines every member with the same parameters): ``parallel.local.LocalRuntime`` (one process,
``nn.Embedding`` tables) and ``parallel.distributed.DistributedRuntime`` (TorchRec tables, data-parallel fusion,
DeepSpeed generators). ``parallel.make_runtime`` picks one.

Life cycle: construct with the config (placement: ``rank``, ``world_size``, ``is_main``, ``device``), then
``build`` once; the model attributes exist from then on.

The members come in groups, and callers use nothing else (``tests/test_layers.py`` walks the package and fails on
any ``runtime.<name>`` outside this protocol): placement, the model it hosts, a global batch and its numbers,
collectives, 1-vs-all training, reading the trained model, and checkpoint I/O.
"""
from __future__ import annotations

from typing import Callable, Iterator, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor, nn


@runtime_checkable
class Runtime(Protocol):
    # ---- placement (set at construction)
    rank: int
    world_size: int
    is_main: bool
    device: torch.device

    # ---- the model (set by ``build``)
    model: nn.Module                      # the AdaMF fusion module (model.kgc.MultiModalKGC), unwrapped
    embedder: Callable                    # (entity ids, relation ids, positives) -> (EmbeddedEntities, relation rows)
    generators: nn.Module | None          # the MAT generators (None without MAT)
    opt_model: object                     # steps the tables' and the fusion's optimizers (optim.OptimizerGroup)
    dense_optimizer: torch.optim.Optimizer | None
    opt_generator: torch.optim.Optimizer | None
    update_generator: Callable[[Tensor], None] | None      # one generator update from its loss
    sync_gradients: Callable[[], None] | None              # starts summing dense gradients over ranks
    table_state_kind: str                 # how the table optimizer's state is keyed in a checkpoint
    table_optimizer_rule: str             # the table-optimizer rule (train.table_optimizer) a checkpoint records
    zero_stage: int                       # ZeRO stage of the generators' optimizer (0: plain torch, or no MAT)

    def build(self, data, features: dict, modalities: list[str], scoring, use_mat: bool) -> None:
        """Tables (widths, rows and initial bounds from ``scoring``, a ``model.Scoring``), fusion, generators and
        optimizers, with the same initial values at any world size."""

    # ---- a global batch and its numbers
    def batch_slice(self, size: int) -> tuple[int, int]:
        """This process's rows ``[lo, hi)`` of a global batch of ``size`` rows (disjoint, covering, in rank
        order)."""

    def reduce_metrics(self, metrics: dict) -> dict:
        """A step's metrics (device tensors, each this process's share) summed over ranks, as plain numbers."""

    def batch_softmax(self, logits: Tensor) -> Tensor:
        """Softmax of this process's scores over the global batch, column by column."""

    # ---- collectives (no-ops in one process)
    def total(self, count: int) -> int:
        """The sum of ``count`` over ranks."""

    def gather_rows(self, rows: np.ndarray) -> np.ndarray:
        """Every rank's rows, concatenated in rank order, on every rank."""

    def share(self, obj):
        """Rank 0's value of ``obj`` on every rank."""

    def barrier(self) -> None:
        """Wait for every rank."""

    # ---- 1-vs-all training (differentiable: gradients return to the rows' owners)
    def candidate_range(self) -> tuple[int, int]:
        """[lo, hi): the entities this process owns and scores against."""

    def gather_queries(self, rows: Tensor) -> tuple[Tensor, slice]:
        """(every process's rows in rank order, the slice of them that are this process's)."""

    def sum_over_ranks(self, t: Tensor) -> Tensor:
        """The sum of ``t`` over ranks; its gradient is the sum of the ranks' gradients."""

    def max_over_ranks(self, t: Tensor) -> Tensor:
        """The elementwise maximum over ranks (no gradient)."""

    # ---- the trained model, read
    def embedding_chunks(self, chunk: int = 4096) -> Iterator[tuple[Tensor, Tensor, Tensor, Tensor | None]]:
        """(ids, structural rows, joint embeddings, AdaMF weights or None) of the entities this process owns."""

    def candidate_shard(self):
        """The candidates this process ranks against (``eval.engine.CandidateShard``)."""

    def relation_table(self) -> Tensor:
        """Every relation's trained row (relations are replicated)."""

    def protocol_suffix(self) -> str:
        """What the layout adds to an evaluation's protocol label (empty when nothing)."""

    def plan_report(self) -> tuple[str, str] | None:
        """(text, JSON) of how the tables are placed, or None when there is nothing to report."""

    # ---- checkpoints (checkpoint/format.py writes and reads these)
    def checkpoint_state(self, optimizer: bool) -> dict:
        """The tensors of the checkpoint format, which a load fills in place."""

    def restore_state(self, state: dict, optimizer: bool) -> None:
        """Copy what a checkpoint load filled back where it is not already in place."""

    def save_generator_shards(self, folder: str) -> None:
        """The generators and their optimizer state partitioned over ranks (``zero_stage`` > 0 only) into
        ``folder``; a collective."""

    def load_generator_shards(self, folder: str) -> None:
        """What ``save_generator_shards`` wrote, at the same ZeRO stage; a collective."""
