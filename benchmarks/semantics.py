"""One semantics at any world size, measured: the default job (40 steps, compile off) trained by one process,
by one rank of the distributed runtime and by two gloo ranks; per-step global losses and whether the initial
tables are identical.

    python benchmarks/semantics.py [--steps 40] [--repo PATH]

``--repo`` runs the same worker against another checkout of the project (e.g. an earlier commit) for a
before/after comparison in one invocation. Writes results/semantics/semantics.json.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from _common import REPO, machine, results_dir, write_json  # noqa: E402

WORKER = os.path.join(REPO, "tests", "semantics_worker.py")


def launch(repo: str, nproc: int | None, steps: int) -> dict:
    out = tempfile.mkdtemp(prefix="semantics-")
    job = [f"--train.max_steps={steps}", "--train.compile=false", "--train.threads=1"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=repo)
    cmd = [sys.executable, WORKER, out, "--local", *job] if nproc is None else \
        [os.path.join(os.path.dirname(sys.executable), "torchrun"), "--standalone", f"--nproc_per_node={nproc}",
         WORKER, out, *job]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=repo)
    if proc.returncode != 0:
        raise SystemExit(f"{cmd}: failed\n{proc.stderr[-3000:]}")
    return json.load(open(os.path.join(out, "local-0.json" if nproc is None else "rank-0.json")))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--repo", default=REPO)
    args = ap.parse_args()
    runs = {"one process": launch(args.repo, None, args.steps), "1 rank": launch(args.repo, 1, args.steps),
            "2 ranks": launch(args.repo, 2, args.steps)}
    reference = runs["one process"]
    summary = {}
    for name, run in runs.items():
        worst = max(abs(a - b) / abs(b) for a, b in zip(run["losses"], reference["losses"]))
        summary[name] = {"loss_step_1": run["losses"][0], f"loss_step_{args.steps}": run["losses"][-1],
                         "max_relative_difference_to_one_process": worst,
                         "initial_tables_identical_to_one_process": run["initial"] == reference["initial"]}
        print(f"{name:>12}: loss {run['losses'][0]:.4f} -> {run['losses'][-1]:.4f}; max relative difference to one "
              f"process {worst:.2e}; initial tables identical: {run['initial'] == reference['initial']}")
    out = results_dir("semantics")
    name = "semantics.json" if os.path.realpath(args.repo) == os.path.realpath(REPO) else "semantics_other_repo.json"
    write_json(os.path.join(out, name), {"machine": machine(), "repo": os.path.basename(os.path.realpath(args.repo)),
                                         "command": " ".join(["python", "benchmarks/semantics.py", *sys.argv[1:]]),
                                         "summary": summary, "losses": {k: v["losses"] for k, v in runs.items()}})


if __name__ == "__main__":
    main()
