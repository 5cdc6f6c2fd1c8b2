"""Single-process training throughput at the DB15K paper config (d=250, batch 1024, 128 negatives, 4096-d
visual + 384-d text features with random values, MAT on), side by side in one run:

  exact         per-positive negatives, trainable raw features (the paper's semantics)
  scalable      128 negatives shared within chunks of 64 positives, frozen raw features
  structure     structure-only RotatE, per-positive negatives (PyKEEN / reference semantics)
  eager-*       the same with torch.compile off (how much the fused kernels buy)
  *-side-per-positive   one corruption side per positive instead of per negative (the default)

    python benchmarks/throughput.py [--steps 6] [--threads 2] [--modes exact,scalable,structure]

Writes results/throughput/{throughput.json,throughput.md}. Positives/s is measured over the steps after
two warm-up steps (compilation excluded); the sgemm roofline of the projections is printed beside it.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

from _common import machine, results_dir, write_json
from mmkgc_dist.config import load_config
from mmkgc_dist.data.format import Features, KGData
from mmkgc_dist.compose import local_trainer

MODES = {
    "exact": [("train.negatives", "per_positive")],
    "scalable": [("train.negatives", "chunk_shared"), ("train.chunk_size", "64"), ("model.raw_features", "frozen")],
    "structure": [("model.modalities", "[]"), ("mat.enabled", "false")],
    # the step of before issue #21, MAT's fakes generated under no_grad (exact now sends their gradient through
    # the generators, as the reference does): isolates the scorer seam's cost from that change of semantics
    "exact-detached": [("mat.detach_fakes", "true")],
}
# The same with one corruption side per positive instead of per negative (the default): what drawing a side for
# every negative costs (two queries per positive, one two-sided distance kernel).
MODES.update({f"{m}-side-per-positive": o + [("train.corruption_side", "per_positive")]
              for m, o in list(MODES.items()) if m != "scalable"})


def db15k_shaped(rng: np.random.Generator, n=12842, r=279, triples=79222, visual=4096, text=384,
                 test=10) -> KGData:
    """Random graph and features with DB15K's sizes (speed does not depend on the values)."""
    train = np.stack([rng.integers(0, n, triples), rng.integers(0, r, triples), rng.integers(0, n, triples)], 1)
    feats = {"visual": Features(rng.standard_normal((n, visual), dtype=np.float32), np.ones(n, bool)),
             "text": Features(rng.standard_normal((n, text), dtype=np.float32), np.ones(n, bool))}
    return KGData(n, r, {"train": train, "valid": train[:10], "test": train[:test]},
                  [str(i) for i in range(n)], [str(i) for i in range(r)], feats, "db15k-shaped")


def sgemm_gflops(threads: int) -> float:
    a, b = torch.randn(4096, 4096), torch.randn(4096, 512)
    a @ b
    t = time.perf_counter()
    for _ in range(5):
        a @ b
    return 5 * 2 * 4096 * 4096 * 512 / (time.perf_counter() - t) / 1e9


def step_traffic_bytes(cfg, data: KGData, batch: np.ndarray, negatives) -> int:
    """A lower bound on the memory traffic of one step, from its real ids: each unique entity's structural row
    is read, its gradient written, Adam's two moments read and written and the row written back (7 passes); its
    raw feature rows are read (and go through the same 7 passes when trainable); every scored slot (positives'
    targets and each negative) gathers a 2d-wide row forward and scatters its gradient back (3 passes). Fusion
    weights, generators and activations are left out, so achieved bandwidth = this / step time is a floor."""
    cand = negatives.entities.detach().cpu().numpy().ravel()
    unique = len(np.unique(np.concatenate([batch[:, 0], batch[:, 2], cand])))
    width, fp32 = 2 * cfg.model.dim, 4
    features = sum(data.features[m].values.shape[1] for m in cfg.model.modalities if m in data.features)
    feature_passes = 7 if cfg.model.raw_features == "trainable" else 1
    feature_bytes = 2 if cfg.model.raw_features == "frozen" and cfg.parallel.frozen_dtype == "fp16" else fp32
    return (unique * width * fp32 * 7 + unique * features * feature_bytes * feature_passes
            + (len(cand) + 2 * len(batch)) * width * fp32 * 3)


def measure(data: KGData, overrides, steps: int, device: str = "cpu") -> dict:
    cfg = load_config(None, [("model.dim", "250"), ("train.batch_size", "1024"), ("train.num_negatives", "128"),
                             ("train.filter_negatives", "true"), ("train.epochs", "1"), ("train.device", device)]
                      + overrides)
    trainer = local_trainer(cfg, data, None, show_progress=False)
    batches = trainer.batches()
    timings = []
    for i in range(steps + 2):
        t = time.perf_counter()
        batch, negatives = next(batches)       # sampling (with filtering) is part of the step's cost
        trainer.step_fn(batch, negatives)
        if device == "cuda":                   # the step leaves its last kernels queued (no host sync)
            torch.cuda.synchronize()
        timings.append(time.perf_counter() - t)
    steady = np.array(timings[2:])
    step = float(np.median(steady))
    traffic = step_traffic_bytes(cfg, data, batch, negatives)
    return {"positives_per_s": 1024 / step, "step_s_median": step,
            "step_s_all": [round(x, 3) for x in timings], "warmup_s": round(sum(timings[:2]), 1),
            "traffic_bytes_per_step": traffic, "achieved_gb_s": traffic / step / 1e9}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--modes", default="exact,scalable,structure,eager-structure")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = db15k_shaped(np.random.default_rng(0))
    gflops = sgemm_gflops(args.threads)
    # Projection FLOPs per step: forward + weight-grad (+ input-grad when features are trainable) GEMMs.
    rows = []
    for mode in args.modes.split(","):
        eager = mode.startswith("eager-")
        base = mode.removeprefix("eager-")
        overrides = MODES[base] + ([("train.compile", "false")] if eager else [])
        res = measure(data, overrides, args.steps)
        res["mode"] = mode
        rows.append(res)
        print(f"{mode:>16}: {res['positives_per_s']:8.1f} positives/s  (median step {res['step_s_median']:.3f}s, "
              f"warm-up {res['warmup_s']}s)", flush=True)
    out = results_dir("throughput")
    report = {"machine": machine(), "sgemm_gflops": round(gflops, 1), "threads": args.threads,
              "config": "d=250, batch 1024, 128 negatives, visual 4096-d + text 384-d, MAT on (modalities)",
              "rows": rows}
    write_json(os.path.join(out, "throughput.json"), report)
    with open(os.path.join(out, "throughput.md"), "w") as fh:
        fh.write(f"sgemm {gflops:.1f} GFLOP/s, {args.threads} threads, {report['machine']['date']}\n\n")
        fh.write("| mode | positives/s | median step (s) |\n|---|---|---|\n")
        for r in rows:
            fh.write(f"| {r['mode']} | {r['positives_per_s']:.1f} | {r['step_s_median']:.3f} |\n")
    print(f"sgemm: {gflops:.1f} GFLOP/s; wrote {out}/throughput.json and throughput.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
