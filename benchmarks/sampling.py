"""Cost of negative sampling per rank at scale: 8 ranks × 64k positives × 128 negatives, each rank's slice drawn
on one thread of this CPU (the ranks are simulated one after another), against the training step of one rank
(structure-only RotatE — the cheapest step, so the strictest ratio). A 64k-positive step does not fit in this
machine's 24 GiB, so the step and a slice of the same size are both timed at --step-positives (8,192) and the
step is also scaled linearly to 64k (the step's work is linear in positives × negatives).

    python benchmarks/sampling.py [--ranks 8] [--positives 65536] [--negatives 128] [--step-positives 8192]

Also timed: the whole global batch drawn at once (what every rank did before negatives were drawn per rank), and
whether the ranks' slices equal the global draw. DB15K-shaped graph (12,842 entities, 79,222 training triples),
exact filtering on. Writes results/sampling/sampling.json.
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
from mmkgc_dist.data.sampling import NegativeSampler
from mmkgc_dist.compose import local_trainer
from throughput import db15k_shaped


def timed(fn, repeats: int):
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times)), out


def step_seconds(data, positives: int, negatives: int, steps: int, compile: bool) -> float:
    """Median seconds of the local trainer's step (sampling included) at ``positives`` per step, after one
    warm-up step; structure-only, per-negative sides, filtering on."""
    cfg = load_config(None, [("model.dim", "250"), ("train.batch_size", str(positives)),
                             ("train.num_negatives", str(negatives)), ("model.modalities", "[]"),
                             ("mat.enabled", "false"), ("train.epochs", "1"), ("train.threads", "1"),
                             ("train.compile", str(compile).lower())])
    trainer = local_trainer(cfg, data, None, show_progress=False)
    batches = trainer.batches()
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        trainer.step_fn(*next(batches))
        times.append(time.perf_counter() - start)
    return float(np.median(times[1:]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ranks", type=int, default=8)
    ap.add_argument("--positives", type=int, default=65536, help="per rank")
    ap.add_argument("--negatives", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--eager", action="store_true", help="torch.compile off (train.compile=false)")
    ap.add_argument("--step-steps", type=int, default=2, help="timed training steps (0: skip the step)")
    ap.add_argument("--step-positives", type=int, default=8192, help="positives of the timed training step")
    ap.add_argument("--out", help="folder for the results (default: results/sampling)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    data = db15k_shaped(rng, visual=8, text=8)
    train = data.splits["train"]
    sampler = NegativeSampler(train, data.num_entities, data.num_relations, args.negatives, seed=0,
                              compile=not args.eager)
    batch = train[rng.integers(0, len(train), args.ranks * args.positives)]
    sampler.sample(batch[:args.positives], (1, 0))      # compiles the fused parts (not timed)
    per_rank, parts = [], []
    for rank in range(args.ranks):
        lo = rank * args.positives
        seconds, neg = timed(lambda: sampler.sample(batch[lo:lo + args.positives], (0, 0), offset=lo), args.repeats)
        per_rank.append(seconds)
        parts.append(neg)
        print(f"rank {rank}: {seconds:.3f} s for {args.positives:,} positives × {args.negatives} negatives "
              f"({neg.false_negatives} false negatives left)", flush=True)
    whole_s, whole = timed(lambda: sampler.sample(batch, (0, 0)), 1)
    identical = torch.equal(torch.cat([p.entities for p in parts]), whole.entities) and \
        torch.equal(torch.cat([p.head_mode for p in parts]), whole.head_mode)
    rank_s = float(np.median(per_rank))
    print(f"median rank slice {rank_s:.3f} s; the whole global batch at once {whole_s:.3f} s "
          f"({whole_s / rank_s:.1f}×); slices equal the global draw: {identical}", flush=True)
    report = {"machine": machine(), "command": " ".join(["python", "benchmarks/sampling.py", *sys.argv[1:]]),
              "ranks": args.ranks, "positives_per_rank": args.positives, "negatives": args.negatives,
              "graph": "DB15K-shaped: 12,842 entities, 279 relations, 79,222 training triples; filtering on",
              "rank_slice_s": per_rank, "rank_slice_s_median": rank_s, "global_batch_once_s": whole_s,
              "slices_equal_global_draw": identical}
    if args.step_steps:
        size = args.step_positives
        small_s, _ = timed(lambda: sampler.sample(batch[:size], (2, 0)), args.repeats)
        step_s = step_seconds(data, size, args.negatives, args.step_steps, not args.eager)
        scaled = step_s * args.positives / size
        report.update(step_positives=size, step_s=step_s, slice_at_step_size_s=small_s,
                      sampling_share_at_step_size=small_s / step_s, step_s_scaled_to_positives=scaled,
                      sampling_share=rank_s / scaled, previous_share=whole_s / scaled)
        print(f"training step at {size:,} positives (structure-only, 1 thread, sampling included): {step_s:.2f} s; "
              f"its sampling {small_s:.3f} s = {100 * small_s / step_s:.1f}%. Scaled to {args.positives:,} "
              f"positives: step {scaled:.1f} s, sampling {100 * rank_s / scaled:.1f}% (bar ≤ 5%); drawing the "
              f"global batch on every rank (before) would be {100 * whole_s / scaled:.0f}%", flush=True)
    out = args.out or results_dir("sampling")
    os.makedirs(out, exist_ok=True)
    write_json(os.path.join(out, "sampling.json"), report)
    print(f"wrote {out}/sampling.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
