"""One-GPU check, single process (the TorchRec path needs the CUDA fbgemm-gpu wheel, not available on the
lent GPU machines): positives/s, peak GPU memory, achieved memory bandwidth (a floor, from the step's real ids:
throughput.step_traffic_bytes) and its fraction of the card's peak, at the DB15K paper config (exact,
scalable, structure-only) and on a larger generated graph, plus filtered-evaluation time at DB15K's size.
Runs with the packages a GPU box already has (torch, pyarrow, fsspec, PyYAML, tqdm, numpy).

    PYTHONPATH=. python benchmarks/gpu_check.py [--out results/gpu_check] [--steps 10]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from throughput import MODES, db15k_shaped, measure  # noqa: E402


# Peak memory bandwidth (bytes/s) of the cards we are lent or likely to meet, by a name fragment (most specific
# first; the vendors' data sheets).
PEAK_BANDWIDTH = [("H200", 4.8e12), ("H100 NVL", 3.9e12), ("H100 PCIe", 2.0e12), ("H100", 3.35e12),
                  ("A100-SXM4-80GB", 2.039e12), ("A100 80GB PCIe", 1.935e12), ("A100", 1.555e12),
                  ("L40S", 0.864e12)]


def peak_bandwidth(device_name: str) -> float | None:
    return next((bw for fragment, bw in PEAK_BANDWIDTH if fragment in device_name), None)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join("results", "gpu_check"))
    ap.add_argument("--steps", type=int, default=10)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("skip: no CUDA device")
        return 0
    os.makedirs(args.out, exist_ok=True)
    name = torch.cuda.get_device_name(0)
    report = {"device": name, "torch": torch.__version__, "peak_bandwidth_b_s": peak_bandwidth(name), "rows": []}
    print(report["device"], torch.__version__, flush=True)
    rng = np.random.default_rng(0)
    db15k = db15k_shaped(rng, test=9902)
    large = db15k_shaped(rng, n=1_000_000, r=1000, triples=5_000_000, visual=1024, text=384)
    cases = [("db15k", db15k, m, MODES[m]) for m in ("exact", "scalable", "structure")]
    cases += [("large-1M", large, "scalable", MODES["scalable"]),
              ("large-1M", large, "structure", MODES["structure"])]
    for graph, data, mode, overrides in cases:
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        try:
            row = measure(data, overrides, args.steps, device="cuda")
        except Exception as exc:  # report and carry on: one failing case must not hide the others
            row = {"error": f"{type(exc).__name__}: {exc}"[:500]}
        row.update(graph=graph, mode=mode, peak_gib=torch.cuda.max_memory_allocated() / 2 ** 30,
                   wall_s=time.perf_counter() - start)
        if report["peak_bandwidth_b_s"] and "achieved_gb_s" in row:   # a floor: see step_traffic_bytes
            row["bandwidth_fraction"] = row["achieved_gb_s"] * 1e9 / report["peak_bandwidth_b_s"]
        report["rows"].append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "step_s_all"}), flush=True)
        with open(os.path.join(args.out, "gpu_check.json"), "w") as fh:
            json.dump(report, fh, indent=2)
    report["eval"] = eval_speed(db15k)
    print(json.dumps(report["eval"]), flush=True)
    with open(os.path.join(args.out, "gpu_check.json"), "w") as fh:
        json.dump(report, fh, indent=2)
    return 0


def eval_speed(data) -> dict:
    from mmkgc_dist.config import load_config
    from mmkgc_dist.compose import local_trainer

    cfg = load_config(None, [("model.dim", "250"), ("model.modalities", "[]"), ("mat.enabled", "false"),
                             ("train.device", "cuda"), ("eval.batch_size", "1024")])
    trainer = local_trainer(cfg, data, None, show_progress=False)
    times = []
    for _ in range(2):
        torch.cuda.synchronize()
        start = time.perf_counter()
        trainer.evaluate("test")
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return {"eval_queries": 2 * len(data.splits["test"]), "candidates": data.num_entities,
            "first_s": times[0], "warm_s": times[1]}


if __name__ == "__main__":
    sys.exit(main())
