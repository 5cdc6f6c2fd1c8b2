"""Filtered evaluation speed on DB15K's test split (9,902 triples, both directions, 12,842 candidates) at
d=250, one process, 2 threads; the model is untrained (speed does not depend on the weights).

    python benchmarks/eval_speed.py [--src ../shared/datasets/DB15K]

Prints and saves results/eval_speed/eval_speed.json: first call (includes torch.compile) and a warm call.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

from _common import SHARED_DATASETS, machine, results_dir, write_json
from mmkgc_dist.config import load_config
from mmkgc_dist.data.openke import read_openke
from mmkgc_dist.compose import local_trainer


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--src", default=os.path.join(SHARED_DATASETS, "DB15K"))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    if not os.path.exists(os.path.join(args.src, "test2id.txt")):
        print(f"skip: {args.src} not found")
        return 0
    torch.set_num_threads(args.threads)
    cfg = load_config(None, [("model.dim", "250"), ("model.modalities", "[]"), ("mat.enabled", "false")])
    trainer = local_trainer(cfg, read_openke(args.src, "DB15K"), None, show_progress=False)
    timings = []
    for _ in range(2):
        start = time.perf_counter()
        metrics = trainer.evaluate("test")
        timings.append(time.perf_counter() - start)
    report = {"machine": machine(), "queries": 2 * metrics["count"] // 2, "first_s": timings[0],
              "warm_s": timings[1], "ties": metrics["ties"]}
    write_json(os.path.join(results_dir("eval_speed"), "eval_speed.json"), report)
    print(f"DB15K test filtered evaluation ({metrics['count']} ranks): first {timings[0]:.1f}s "
          f"(incl. compile), warm {timings[1]:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
