"""One multi-rank trial of a study, under torchrun (``tune --nproc-per-trial K`` starts it): the study's base
config plus the trial's values, trained into the trial's run folder; rank 0 reports each validation run to the
trial in the shared storage and the pruner's verdict reaches every rank.

    python -m torch.distributed.run --standalone --nproc_per_node=2 -m mmkgc_dist.tuning.trial \\
        --storage URL --study NAME --trial-id ID --run-dir STUDY/trials/N --config STUDY/base.yaml --train.lr=...
"""
from __future__ import annotations

import argparse
import sys


def run_trial(args, overrides) -> int:
    from ..api import train
    from ..config import load_config
    from ..parallel.env import world_size_from_environment
    from .storage import open_storage, storage_ref
    from .study import PruningHook

    cfg = load_config(args.config, overrides)
    hooks = []
    if int(__import__("os").environ.get("RANK", "0")) == 0:     # only rank 0 talks to the storage
        import optuna
        study = optuna.load_study(study_name=args.study, storage=open_storage(storage_ref("", args.storage), 0))
        hooks.append(PruningHook(optuna.trial.Trial(study, args.trial_id), cfg.eval.select_by))
    train(cfg, run_dir=args.run_dir, on_validation=hooks, distributed=world_size_from_environment() > 1)
    return 0


def main(argv: list[str] | None = None) -> int:
    from ..cli import run_command
    from ..config import parse_overrides
    p = argparse.ArgumentParser(prog="mmkgc_dist.tuning.trial", allow_abbrev=False)
    for name in ("--storage", "--study", "--run-dir", "--config"):
        p.add_argument(name, required=True)
    p.add_argument("--trial-id", type=int, required=True)
    args, rest = p.parse_known_args(sys.argv[1:] if argv is None else argv)
    return run_command(lambda: run_trial(args, parse_overrides(rest)))


if __name__ == "__main__":
    sys.exit(main())
