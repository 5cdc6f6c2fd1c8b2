"""Trainers, assembled: the one ``train.Trainer`` with the runtime a run needs — ``LocalRuntime`` for one process,
``DistributedRuntime`` (TorchRec + DDP + DeepSpeed) under torchrun/srun or with ``--distributed``. The only place
that knows both the loop and the runtimes."""
from __future__ import annotations

from .config import Config
from .data.format import KGData
from .train.trainer import Trainer


def local_trainer(cfg: Config, data: KGData, run_dir: str | None = None, show_progress: bool = True) -> Trainer:
    return Trainer(cfg, data, make_runtime(cfg, False), run_dir, show_progress)


def distributed_trainer(cfg: Config, data: KGData, run_dir: str | None = None, show_progress: bool = True,
                        env=None) -> Trainer:
    return Trainer(cfg, data, make_runtime(cfg, True, env), run_dir, show_progress)


def make_runtime(cfg: Config, distributed: bool, env=None):
    """One process: LocalRuntime. Several (torchrun/srun) or --distributed: DistributedRuntime."""
    if not distributed:
        from .parallel.local import LocalRuntime
        return LocalRuntime(cfg)
    from .parallel.distributed import DistributedRuntime
    return DistributedRuntime(cfg, env)
