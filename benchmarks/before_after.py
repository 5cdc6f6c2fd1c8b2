"""Single-process throughput of two checkouts side by side in one invocation: ``benchmarks/throughput.py`` run in
a checkout of an earlier version (``--before``) and in this one, alternating, ``--rounds`` times.

    python benchmarks/before_after.py --before PATH [--rounds 2] [--modes exact,scalable,structure] [--steps 6]
                                      [--after-modes MODES]   (this checkout's modes, when it has others)

Writes results/before_after/before_after.json (every run's rows) and prints positives/s per mode and run.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from _common import REPO, machine, results_dir, write_json


def run(tree: str, args, modes: str) -> dict:
    cmd = [sys.executable, os.path.join(tree, "benchmarks", "throughput.py"), "--steps", str(args.steps),
           "--threads", str(args.threads), "--modes", modes]
    proc = subprocess.run(cmd, cwd=tree, env=dict(os.environ, PYTHONPATH=tree), capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} in {tree} failed:\n{proc.stderr[-3000:]}")
    return json.load(open(os.path.join(tree, "results", "throughput", "throughput.json")))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", required=True, help="a checkout of the earlier version")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--modes", default="exact,scalable,structure")
    ap.add_argument("--after-modes", default="", help="modes of this checkout when they differ (default: --modes)")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    runs = {}
    for round_ in range(1, args.rounds + 1):
        for label, tree in (("before", os.path.abspath(args.before)), ("after", REPO)):
            result = run(tree, args, args.after_modes if label == "after" and args.after_modes else args.modes)
            runs[f"{label}-{round_}"] = result
            print(f"{label} run {round_}: " + ", ".join(f"{r['mode']} {r['positives_per_s']:,.1f}/s"
                                                         for r in result["rows"]), flush=True)
    head = subprocess.run(["git", "-C", os.path.abspath(args.before), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True).stdout.strip()
    out = results_dir("before_after")
    write_json(os.path.join(out, "before_after.json"),
               {"machine": machine(), "before": head or "unknown",
                "command": f"python benchmarks/before_after.py --before <checkout of {head}> --rounds {args.rounds} "
                           f"--modes {args.modes}" + (f" --after-modes {args.after_modes}" if args.after_modes else "")
                           + f" --steps {args.steps} --threads {args.threads}", "runs": runs})
    print(f"wrote {out}/before_after.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
