"""Trainers, assembled: the one ``training.Trainer`` on the runtime a run needs — ``LocalRuntime`` for one process,
``DistributedRuntime`` (TorchRec + DeepSpeed) under torchrun/srun or with ``--distributed``."""
from __future__ import annotations

from .config import Config
from .data.format import KGData
from .parallel import make_runtime
from .training.trainer import Trainer


def local_trainer(cfg: Config, data: KGData, run_dir: str | None = None, show_progress: bool = True) -> Trainer:
    return Trainer(cfg, data, make_runtime(cfg, False), run_dir, show_progress)


def distributed_trainer(cfg: Config, data: KGData, run_dir: str | None = None, show_progress: bool = True,
                        env=None) -> Trainer:
    return Trainer(cfg, data, make_runtime(cfg, True, env), run_dir, show_progress)
