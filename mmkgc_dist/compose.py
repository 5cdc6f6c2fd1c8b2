"""The one place a run is composed from its config: the dataset, the runtime (``LocalRuntime`` for one process,
``DistributedRuntime`` — TorchRec + DeepSpeed — under torchrun/srun or with ``--distributed``), the trainer and
the run's lifecycle (folder, training, selection, testing). The API's ``train``, the studies' trials (in process
and on ranks), the benchmarks and the tests all train through it; nothing above it assembles a trainer."""
from __future__ import annotations

import os

from .config import Config, config_from
from .errors import ConfigError


def run_training(cfg: Config, run_dir: str | None = None, resume: bool = False, overwrite: bool = False,
                 distributed: bool = False, validation_hooks=(), show_progress: bool = True,
                 config=None, overrides=None) -> tuple[str, dict]:
    """Train ``cfg`` into a run folder (created, or continued with ``resume`` / after a torchrun restart);
    (the run folder, its results). ``config``/``overrides``: what ``cfg`` was made of, to compare a resumed run's
    own config with."""
    from .data.build import build_dataset
    from .parallel import make_runtime
    from .training.lifecycle import train_run

    restarted = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0   # torchrun restarted a failed job
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite: choose one (continue the run, or replace its results)")
    how = "explicit" if resume else ("restart" if restarted else None)
    if resume and not (run_dir or cfg.run.name):
        raise ConfigError("--resume: which run? give --run-dir RUN (or --run.name=NAME); without one a new "
                          "timestamped run would start")
    if how:
        cfg = config_to_resume(cfg, config, overrides, run_dir)
    # Bad data fails before the run folder is touched. Distributed ranks read their feature rows later.
    data = build_dataset(cfg, feature_values=not distributed)
    return train_run(cfg, data, make_runtime(cfg, distributed), run_dir, how, overwrite,
                     validation_hooks=list(validation_hooks or ()), show_progress=show_progress)


def config_to_resume(cfg: Config, config, overrides, run_dir: str | None) -> Config:
    """A resumed run trains with the config it was created with (its config.yaml) plus the overrides given now,
    which may change only what does not shape the model or its data (``config.resumed_config``). With a
    ``config`` given, that config is compared instead. A folder without a run of ours: ``cfg`` as it is."""
    from .config import resumed_config
    from .run_folder import created_config

    path = run_dir or (os.path.join(cfg.run.out_dir, cfg.run.name) if cfg.run.name else None)
    created = created_config(path) if path else None
    if created is None:
        return cfg
    asked = cfg if config is not None else config_from(os.path.join(path, "config.yaml"), overrides)
    return resumed_config(created, asked)


def local_trainer(cfg: Config, data, run_dir: str | None = None, show_progress: bool = True):
    """A trainer on the one-process runtime (benchmarks and tests drive its loop themselves)."""
    from .parallel import make_runtime
    from .training.trainer import Trainer
    return Trainer(cfg, data, make_runtime(cfg, False), run_dir, show_progress)


def distributed_trainer(cfg: Config, data, run_dir: str | None = None, show_progress: bool = True, env=None):
    """A trainer on the distributed runtime (under torchrun, or one process with ``--distributed``)."""
    from .parallel import make_runtime
    from .training.trainer import Trainer
    return Trainer(cfg, data, make_runtime(cfg, True, env), run_dir, show_progress)
