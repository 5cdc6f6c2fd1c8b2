"""One multi-rank trial of a study, under torchrun (``tune --nproc-per-trial K`` starts it through the command
line's hidden ``tune-trial`` command): the study's base config plus the trial's values, trained into the trial's
run folder; rank 0 reports each validation run to the trial in the shared storage and the pruner's verdict
reaches every rank.

    python -m torch.distributed.run --standalone --nproc_per_node=2 -m mmkgc_dist.cli tune-trial \\
        --storage URL --study NAME --trial-id ID --run-dir STUDY/trials/N --config STUDY/base.yaml --train.lr=...
"""
from __future__ import annotations

import os


def run_trial(storage: str, study_name: str, trial_id: int, run_dir: str, config: str, overrides) -> int:
    from ..compose import run_training
    from ..config import load_config
    from ..parallel.env import world_size_from_environment
    from .storage import open_storage, storage_ref
    from .study import PruningHook

    cfg = load_config(config, overrides)
    hooks = []
    if int(os.environ.get("RANK", "0")) == 0:     # only rank 0 talks to the storage
        import optuna
        study = optuna.load_study(study_name=study_name, storage=open_storage(storage_ref("", storage), 0))
        hooks.append(PruningHook(optuna.trial.Trial(study, trial_id), cfg.eval.select_by))
    run_training(cfg, run_dir, distributed=world_size_from_environment() > 1, validation_hooks=hooks)
    return 0
