"""Distributed scaling at the DB15K config: 1 rank x 1 thread vs 2 ranks x 1 thread (gloo), same global
batch (1024 positives, 128 per-positive negatives, d=250, 4096-d visual + 384-d text, MAT on), with the
step time split into data, embed (lookup + fusion + all-to-alls), score, backward (incl. gradient all-to-alls and the
fused table update), dense optimizer, generator (DeepSpeed).

    python benchmarks/scaling.py [--steps 4] [--mode exact|scalable]

Writes results/scaling/{scaling.json,scaling.md,scaling.png}. Each world size runs under real torchrun.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from _common import machine, new_plot, results_dir, save_plot, write_json  # noqa: E402

MODES = {"exact": [("train.negatives", "per_positive")],
         "scalable": [("train.negatives", "chunk_shared"), ("train.chunk_size", "64"),
                      ("model.raw_features", "frozen")]}
PHASES = ["data", "embed", "score", "backward", "optimizer", "generator"]


def worker(out: str, steps: int, mode: str, extra: list[str]) -> None:
    import numpy as np
    import torch
    from throughput import db15k_shaped
    from mmkgc_dist.config import load_config
    from mmkgc_dist.trainers import distributed_trainer

    torch.set_num_threads(1)
    cfg = load_config(None, [("model.dim", "250"), ("train.batch_size", "1024"), ("train.num_negatives", "128"),
                             ("train.epochs", "1")] + MODES[mode] + [tuple(o.split("=", 1)) for o in extra])
    trainer = distributed_trainer(cfg, db15k_shaped(np.random.default_rng(0)), run_dir=None, show_progress=False)
    timer = trainer.step_fn.timer
    batches = trainer.batches()
    totals = []
    for i in range(steps + 2):
        if i == 2:                                  # after warm-up (compilation, allocator)
            timer.enabled = True
            timer.seconds.clear()
        torch.distributed.barrier()
        start = time.perf_counter()
        with timer("data"):
            batch, negatives = next(batches)
        trainer.step_fn(batch, negatives)
        torch.distributed.barrier()
        if i >= 2:
            totals.append(time.perf_counter() - start)
    if trainer.env.is_main:
        step = float(np.median(totals))
        phases = {k: v / steps for k, v in timer.seconds.items()}
        with open(out, "w") as fh:
            json.dump({"world_size": trainer.env.world_size, "step_s": step, "positives_per_s": 1024 / step,
                       "phases_s": phases, "steps": totals}, fh)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--mode", choices=list(MODES), default="exact")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="extra config override for both runs, e.g. --set mat.enabled=false")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.steps, args.mode, args.set)
        return 0
    out = results_dir("scaling")
    rows = []
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    for world in (1, 2):
        path = os.path.join(out, f"world{world}.json")
        env = dict(os.environ, OMP_NUM_THREADS="1")
        res = subprocess.run([torchrun, "--standalone", f"--nproc_per_node={world}", __file__, "--worker", path,
                              "--steps", str(args.steps), "--mode", args.mode, *[f"--set={o}" for o in args.set]],
                             env=env, capture_output=True, text=True)
        if res.returncode != 0:
            print(res.stderr[-3000:], file=sys.stderr)
            return 1
        rows.append(json.load(open(path)))
        r = rows[-1]
        print(f"world {world}: {r['positives_per_s']:.1f} positives/s, step {r['step_s']:.2f}s, phases " +
              ", ".join(f"{k} {r['phases_s'].get(k, 0):.2f}" for k in PHASES), flush=True)
    speedup = rows[1]["positives_per_s"] / rows[0]["positives_per_s"]
    # Communication share: how much the lookup + backward phases (which carry the all-to-alls and the
    # dense all-reduce) grew beyond halving, relative to the 2-rank step.
    comm = max(0.0, sum(rows[1]["phases_s"].get(k, 0) - rows[0]["phases_s"].get(k, 0) / 2
                        for k in ("embed", "backward", "optimizer"))) / rows[1]["step_s"]
    report = {"machine": machine(), "mode": args.mode, "overrides": args.set, "rows": rows, "speedup": speedup,
              "communication_share_estimate": comm}
    write_json(os.path.join(out, "scaling.json"), report)
    with open(os.path.join(out, "scaling.md"), "w") as fh:
        fh.write(f"DB15K config ({args.mode}), 1 thread per rank, gloo; {report['machine']['date']}\n\n")
        fh.write("| ranks | positives/s | step (s) | " + " | ".join(PHASES) + " |\n")
        fh.write("|---" * (3 + len(PHASES)) + "|\n")
        for r in rows:
            fh.write(f"| {r['world_size']} | {r['positives_per_s']:.1f} | {r['step_s']:.2f} | " +
                     " | ".join(f"{r['phases_s'].get(k, 0):.2f}" for k in PHASES) + " |\n")
        fh.write(f"\nspeed-up 2 vs 1 rank: {speedup:.2f}x; communication share (estimate): {comm:.0%}\n")
    plot(rows, os.path.join(out, "scaling.png"))
    print(f"speed-up {speedup:.2f}x, communication share ~{comm:.0%}; wrote {out}")
    return 0


def plot(rows, path):
    fig, ax = new_plot()
    bottom = [0.0] * len(rows)
    for phase in PHASES:
        vals = [r["phases_s"].get(phase, 0) for r in rows]
        ax.bar([str(r["world_size"]) for r in rows], vals, bottom=bottom, label=phase)
        bottom = [b + v for b, v in zip(bottom, vals)]
    save_plot(fig, ax, path, "ranks (1 thread each)", "seconds per step (per rank)",
              "Step time by phase, DB15K config")


if __name__ == "__main__":
    sys.exit(main())
