"""Wall time of ``load_run(run).predict(...)`` in a fresh process — what a user waits for before the first answer —
for this checkout and, side by side, an earlier one (``--before``), alternating, ``--rounds`` times. One run
folder (trained here on the default graph) serves both. Also records which heavy modules each process imported.

    python benchmarks/load_run_time.py --before PATH [--rounds 3]

Writes results/load_run_time/load_run_time.json.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

from _common import REPO, machine, mean_std, results_dir, write_json

PROBE = """
import json, sys, time
start = time.perf_counter()
from mmkgc_dist import load_run
model = load_run(sys.argv[1])
answers = model.predict(head=10, relation=3, k=10)
seconds = time.perf_counter() - start
heavy = [m for m in ("deepspeed", "torchrec", "mmkgc_dist.training.trainer") if m in sys.modules]
print(json.dumps({"seconds": seconds, "answers": len(answers), "imported": heavy}))
"""


def probe(tree: str, run: str) -> dict:
    env = dict(os.environ, PYTHONPATH=tree, OMP_NUM_THREADS="1", TQDM_DISABLE="1")
    proc = subprocess.run([sys.executable, "-c", PROBE, run], cwd=tree, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"load_run in {tree} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def revision(tree: str) -> str:
    proc = subprocess.run(["git", "-C", tree, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return proc.stdout.strip() or "unknown"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", required=True, help="a checkout of the earlier version")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=1)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="load-run-")
    run = os.path.join(work, "run")
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1", TQDM_DISABLE="1")
    subprocess.run([sys.executable, "-m", "mmkgc_dist.cli", "train", "--run-dir", run,
                    f"--train.epochs={args.epochs}", "--train.compile=false"], cwd=work, env=env, check=True,
                   capture_output=True)
    trees = {"before": os.path.abspath(args.before), "after": REPO}
    runs = {label: [] for label in trees}
    for _ in range(args.rounds):
        for label, tree in trees.items():
            runs[label].append(probe(tree, run))
            print(label, json.dumps(runs[label][-1]), flush=True)
    summary = {label: dict(zip(("mean_s", "std_s"), mean_std(r["seconds"] for r in rs)),
                           imported=rs[0]["imported"]) for label, rs in runs.items()}
    report = {"machine": machine(), "protocol": f"fresh process: import, load_run of a default-graph run "
                                                f"({args.epochs} epoch), one predict of 10 tails; {args.rounds} "
                                                f"rounds alternating; ± is sample std (ddof = 1)",
              "commits": {label: revision(tree) for label, tree in trees.items()}, "runs": runs, "summary": summary}
    write_json(os.path.join(results_dir("load_run_time"), "load_run_time.json"), report)
    for label, s in summary.items():
        print(f"{label}: {s['mean_s']:.2f} ± {s['std_s']:.2f} s; imported {s['imported'] or 'none of them'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
