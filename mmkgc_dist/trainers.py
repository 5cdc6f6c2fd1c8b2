"""Trainers, assembled: the one ``train.Trainer`` with the runtime a run needs — ``LocalRuntime`` for one process,
``DistributedRuntime`` (TorchRec + DDP + DeepSpeed) under torchrun/srun or with ``--distributed``. The only place
that knows both the loop and the runtimes."""
from __future__ import annotations

from .config import Config
from .data.format import KGData
from .train.trainer import Trainer


def local_trainer(cfg: Config, data: KGData, run_dir: str | None = None, show_progress: bool = True) -> Trainer:
    from .parallel.local import LocalRuntime
    return Trainer(cfg, data, LocalRuntime(cfg), run_dir, show_progress)


def distributed_trainer(cfg: Config, data: KGData, run_dir: str | None = None, show_progress: bool = True,
                        env=None) -> Trainer:
    from .parallel.distributed import DistributedRuntime
    return Trainer(cfg, data, DistributedRuntime(cfg, env), run_dir, show_progress)


def make_trainer(cfg: Config, data: KGData, run_dir: str | None = None, distributed: bool = False,
                 show_progress: bool = True) -> Trainer:
    return (distributed_trainer if distributed else local_trainer)(cfg, data, run_dir, show_progress)
