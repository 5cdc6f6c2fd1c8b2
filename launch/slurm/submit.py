"""Render launch/slurm/train.sbatch for a config and submit it.

    python launch/slurm/submit.py --config configs/db15k.yaml --nodes 2 --nproc-per-node 8 \\
        --time 12:00:00 --partition gpu --account myproj [--dry-run] -- --train.epochs=100

The config (with the overrides after ``--``) is validated before anything is submitted; the rendered job
script is written into the run folder, so every run keeps the exact script it ran with.
"""
from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))       # the checkout (run from it) or site-packages/mmkgc_dist


def importable() -> None:
    """mmkgc_dist importable: installed (wheel, editable), or from the checkout this script is in."""
    try:
        import mmkgc_dist  # noqa: F401
    except ImportError:
        sys.path.insert(0, REPO)
RUN_FLAGS = ("--resume", "--overwrite")      # train's own flags, passed through after --


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text}")
    return value


def render(template: str, headers: dict[str, str], env: dict[str, str]) -> str:
    lines = [l for l in template.splitlines() if not l.startswith("#SBATCH")]
    insert = lines.index("set -euo pipefail")
    block = [f"#SBATCH --{k}={v}" for k, v in headers.items()]
    block += [f"export {k}={shlex.quote(v)}" for k, v in env.items()]
    return "\n".join(lines[:insert] + block + lines[insert:]) + "\n"


def write_job(template: str, folder: str, args, headers: dict[str, str], env: dict[str, str]) -> str:
    """Render ``template`` (a file beside this one) with the job's headers — partition and account from
    ``args`` when given — and the environment every job script reads; write it as FOLDER/job.sbatch."""
    headers = {**headers, "cpus-per-task": str(args.cpus_per_task), "time": args.time,
               **{k: getattr(args, k) for k in ("partition", "account") if getattr(args, k)}}
    env = {**env, "MMKGC_REPO": REPO, "MMKGC_PYTHON": os.environ.get("MMKGC_PYTHON", sys.executable)}
    with open(os.path.join(HERE, template)) as fh:
        script = render(fh.read(), headers, env)
    job_file = os.path.join(folder, "job.sbatch")
    with open(job_file, "w") as fh:
        fh.write(script)
    return job_file


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ours, train_args = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    ap.add_argument("--config", help="YAML recipe passed to launch/train.py")
    ap.add_argument("--nodes", type=positive_int, default=1)
    ap.add_argument("--nproc-per-node", type=positive_int, default=1, help="ranks per node (GPUs per node)")
    ap.add_argument("--cpus-per-task", type=positive_int, default=2, help="CPU cores per node for the job")
    ap.add_argument("--time", default="01:00:00")
    ap.add_argument("--partition")
    ap.add_argument("--account")
    ap.add_argument("--job-name", default="mmkgc-dist")
    ap.add_argument("--run-dir", help="run folder (default: runs/<job-name>-<timestamp>)")
    ap.add_argument("--dry-run", action="store_true", help="print the job script, submit nothing")
    args = ap.parse_args(ours)
    # Values end up in the job script: a line break or control character would inject lines into it.
    for name, value in [*vars(args).items(), *(("argument", a) for a in train_args)]:
        if isinstance(value, str) and any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
            print(f"error: --{name.replace('_', '-')}: {value!r} contains a line break or control character",
                  file=sys.stderr)
            return 2

    importable()
    from mmkgc_dist.config import load_config, parse_overrides
    from mmkgc_dist.errors import ConfigError
    try:
        load_config(args.config, parse_overrides([a for a in train_args if a not in RUN_FLAGS]))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from mmkgc_dist.outputs import marker_kind, write_marker
    from mmkgc_dist.run_folder import holds_run
    run_dir = os.path.abspath(args.run_dir or os.path.join("runs", f"{args.job_name}-{time.strftime('%Y%m%d-%H%M%S')}"))
    if os.path.lexists(run_dir) and not os.path.isdir(run_dir):
        print(f"error: --run-dir {run_dir}: exists and is not a folder", file=sys.stderr)
        return 2
    if os.path.isdir(run_dir) and os.listdir(run_dir) and marker_kind(run_dir) != "run":
        print(f"error: --run-dir {run_dir}: folder is not empty and is not an mmkgc-dist run folder", file=sys.stderr)
        return 2
    if os.path.isdir(run_dir) and holds_run(run_dir) and not set(RUN_FLAGS) & set(train_args):
        print(f"error: --run-dir {run_dir}: holds another run; pass --resume or --overwrite after --",
              file=sys.stderr)
        return 2
    try:
        os.makedirs(run_dir, exist_ok=True)
    except OSError as exc:
        print(f"error: --run-dir {run_dir}: {exc.strerror}", file=sys.stderr)
        return 2
    if marker_kind(run_dir) is None:
        write_marker(run_dir, "run")
    job_file = write_job("train.sbatch", run_dir, args,
                         {"job-name": args.job_name, "nodes": str(args.nodes), "ntasks-per-node": "1",
                          "output": os.path.join(run_dir, "slurm-%j.out")},
                         {"NPROC_PER_NODE": str(args.nproc_per_node)})
    train = (["--config", os.path.abspath(args.config)] if args.config else []) + ["--run-dir", run_dir] + train_args
    if args.dry_run:
        print(open(job_file).read(), end="")
        print("sbatch", job_file, " ".join(map(shlex.quote, train)))
        return 0
    out = subprocess.run(["sbatch", "--parsable", job_file, *train], capture_output=True, text=True)
    if out.returncode != 0:
        print(f"error: sbatch failed: {out.stderr.strip()}", file=sys.stderr)
        return out.returncode
    job_id = re.match(r"\d+", out.stdout.strip()).group(0)
    print(f"submitted job {job_id}; run folder {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
