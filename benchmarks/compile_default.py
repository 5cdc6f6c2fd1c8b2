"""The main job's wall time with the default ``train.compile=auto`` against compile forced off and on (issue #34):
on a CPU, auto must not compile (the first line says which) and must cost no more than forcing it off.

    python benchmarks/compile_default.py [--rounds 2] [--settings auto,false,true] [-- extra overrides]

Each run is `torchrun --nproc_per_node=1 launch/train.py` on the embedded default graph in a fresh process;
settings alternate within each round. Writes results/compile_default/compile_default.json.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

from _common import REPO, machine, results_dir, write_json


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--settings", default="auto,false,true")
    ap.add_argument("extra", nargs="*", help="overrides for every run (after --)")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="compile-")
    runs = []
    try:
        for round_ in range(args.rounds):
            for setting in args.settings.split(","):
                run_dir = os.path.join(work, f"{setting}-{round_}")
                cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
                       os.path.join(REPO, "launch", "train.py"), "--run-dir", run_dir, *args.extra]
                if setting != "auto":
                    cmd.append(f"--train.compile={setting}")
                t = time.perf_counter()
                proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, TQDM_DISABLE="1"))
                seconds = time.perf_counter() - t
                if proc.returncode != 0:
                    raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
                first = proc.stdout.splitlines()[0]
                test = next(line for line in proc.stdout.splitlines() if line.strip().startswith("test ["))
                runs.append({"setting": setting, "round": round_ + 1, "seconds": round(seconds, 1),
                             "first_line": first, "test": test.strip()})
                print(runs[-1], flush=True)
                shutil.rmtree(run_dir, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary = {}
    for setting in args.settings.split(","):
        seconds = [r["seconds"] for r in runs if r["setting"] == setting]
        summary[setting] = {"seconds_mean": round(float(np.mean(seconds)), 1),
                            "seconds_std": round(float(np.std(seconds, ddof=1)), 1) if len(seconds) > 1 else None}
    if "auto" in summary and "false" in summary:
        summary["auto_vs_false"] = round(summary["auto"]["seconds_mean"] / summary["false"]["seconds_mean"], 3)
    result = {"machine": machine(), "runs": runs, "summary": summary,
              "command": "torchrun --nproc_per_node=1 launch/train.py [--train.compile=false|true]"}
    write_json(os.path.join(results_dir("compile_default"), "compile_default.json"), result)
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
