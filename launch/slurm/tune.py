"""Submit a hyperparameter study as a Slurm array job: N workers (launch/slurm/tune.sbatch) on one study.

    python launch/slurm/tune.py benchmarks/tune/db15k_space.yaml studies/db15k --workers 8 --trials 64 \\
        --nproc-per-trial 1 --cpus-per-task 8 --time 12:00:00 --partition gpu [--storage URL] [--dry-run] \\
        -- --config configs/db15k.yaml --train.epochs=20

After ``--`` come the base config (``--config FILE``) and its dotted overrides. The space and the base config are
checked and the study folder is set up before anything is submitted, so a mistake is one line here rather than
N failed jobs. The default storage is the study folder's SQLite file, which suits workers on one node or a
filesystem with working locks; workers on several nodes should share an RDB (``--storage postgresql://...``:
Optuna's heartbeat then marks a trial whose node died as failed) or a journal file on a shared filesystem
(``--storage journal:FILE``). The rendered job script is kept in the study folder.
"""
from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys

try:
    from .submit import importable, positive_int, write_job        # installed: mmkgc_dist.launch.slurm.tune
except ImportError:                                                 # run as a script from the checkout
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from submit import importable, positive_int, write_job  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ours, tune_args = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    ap.add_argument("space")
    ap.add_argument("study_dir")
    ap.add_argument("--workers", type=positive_int, default=2, help="array tasks, one tune worker each")
    ap.add_argument("--trials", type=positive_int, default=20, help="finished trials the study should have")
    ap.add_argument("--nproc-per-trial", type=positive_int, default=1, help="ranks per trial (GPUs per trial)")
    ap.add_argument("--cpus-per-task", type=positive_int, default=2)
    ap.add_argument("--time", default="04:00:00")
    ap.add_argument("--partition")
    ap.add_argument("--account")
    ap.add_argument("--storage", help="shared Optuna storage (default: STUDY_DIR/study.db)")
    ap.add_argument("--pruner", choices=("median", "hyperband", "none"))
    ap.add_argument("--sampler", choices=("tpe", "random"))
    ap.add_argument("--seed", type=int, help="sampler seed (each worker adds its array index)")
    ap.add_argument("--no-baseline", action="store_true", help="no trial of the base config's own values")
    ap.add_argument("--job-name", default="mmkgc-tune")
    ap.add_argument("--dry-run", action="store_true", help="print the job script, submit nothing")
    args = ap.parse_args(ours)
    for name, value in [*vars(args).items(), *(("argument", a) for a in tune_args)]:
        if isinstance(value, str) and any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
            print(f"error: --{name.replace('_', '-')}: {value!r} contains a line break or control character",
                  file=sys.stderr)
            return 2

    importable()
    from mmkgc_dist.config import config_from, parse_overrides
    from mmkgc_dist.errors import UserError
    from mmkgc_dist.tuning.space import base_values, check_space, read_space
    from mmkgc_dist.tuning.study import TuneOptions, open_worker_study

    config, rest = _split_config(tune_args)
    study_dir = os.path.abspath(args.study_dir)
    try:
        params = read_space(args.space)
        base = config_from(config, parse_overrides(rest))
        check_space(params, base)
        if not args.no_baseline:
            base_values(params, base)
        # the folder is bound to its study in the storage before any worker starts
        open_worker_study(study_dir, params, base,
                          TuneOptions(storage=args.storage or "", baseline=not args.no_baseline).check())
    except UserError as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    job_file = write_job("tune.sbatch", study_dir, args,
                         {"job-name": args.job_name, "array": f"0-{args.workers - 1}", "nodes": "1",
                          "ntasks-per-node": "1", "output": os.path.join(study_dir, "slurm-%A_%a.out")},
                         {"NPROC_PER_TRIAL": str(args.nproc_per_trial)})
    worker = [os.path.abspath(args.space), study_dir, "--trials", str(args.trials),
              *(["--storage", args.storage] if args.storage else []),
              *[f"--{k}={v}" for k, v in (("pruner", args.pruner), ("sampler", args.sampler), ("seed", args.seed))
                if v is not None], *(["--no-baseline"] if args.no_baseline else []),
              *(["--config", os.path.abspath(config)] if config else []), *rest]
    if args.dry_run:
        print(open(job_file).read(), end="")
        print("sbatch", job_file, " ".join(map(shlex.quote, worker)))
        return 0
    out = subprocess.run(["sbatch", "--parsable", job_file, *worker], capture_output=True, text=True)
    if out.returncode != 0:
        print(f"error: sbatch failed: {out.stderr.strip()}", file=sys.stderr)
        return out.returncode
    job_id = re.match(r"\d+", out.stdout.strip()).group(0)
    print(f"submitted array job {job_id} ({args.workers} workers); study folder {study_dir}")
    return 0


def _split_config(args: list[str]) -> tuple[str | None, list[str]]:
    """(--config's value, the other arguments: tune's options and the dotted overrides)."""
    rest, config, i = [], None, 0
    while i < len(args):
        if args[i] == "--config" and i + 1 < len(args):
            config, i = args[i + 1], i + 2
        elif args[i].startswith("--config="):
            config, i = args[i].split("=", 1)[1], i + 1
        else:
            rest.append(args[i])
            i += 1
    return config, rest


if __name__ == "__main__":
    sys.exit(main())
