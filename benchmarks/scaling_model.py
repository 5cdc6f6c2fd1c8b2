"""A scaling model on paper, from measurements: what one step moves through each collective (counted and sized
by ``benchmarks/scaling.py`` on gloo) and how long one device computes it (measured), extrapolated to 8 GPUs on
NVLink and to 4 nodes × 8 GPUs on 400 Gb/s.

    python benchmarks/scaling_model.py [--exact docs/benchmarks/scaling_exact_cpu.json]
        [--scalable docs/benchmarks/scaling_scalable_cpu.json] [--gpu docs/benchmarks/gpu_check_h100.json]

The model, per rank and step (weak scaling: b = 1024 positives per GPU, the paper's batch, global batch W·b):

    T(W)  = T_compute + Σ_collectives [ latency(W) + bytes(W) / bandwidth(W) ]      (no overlap: a bound)
    T_compute = b / (one GPU's measured positives/s at the same config)
    all-to-all (ids, fused rows forward and backward, the positives' rows for the generator): of the measured send
        buffer (every row the slice touches), a fraction (W−1)/W leaves the rank; inside a node at the NVLink rate,
        across nodes at the NIC rate (of the (W−1) peers, W−8 are off-node); latency α per peer message.
    all-reduce (dense gradients, the generator's gradients): ring, 2(W−1)/W × the measured buffer bytes.
    throughput(W) = W·b / T(W)

The bytes per step come from the 2-rank gloo run (the rows a 512-positive slice asks for do not shrink with W for
the uniform draws of a 12.8k-entity graph: every slice touches nearly every entity). Writes
results/scaling_model/scaling_model.json and .md.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from _common import REPO, machine, results_dir, write_json

# Effective per-GPU rates (assumptions, printed with the result): NVLink 4 (H100 SXM, 450 GB/s per direction,
# ~2/3 reached by all-to-all and ring all-reduce); one 400 Gb/s NIC per GPU (50 GB/s, ~80% reached).
FABRICS = {"nvlink": {"bandwidth": 300e9, "latency": 10e-6}, "ib400": {"bandwidth": 40e9, "latency": 25e-6}}
PER_NODE = 8
ALL_TO_ALL, ALL_REDUCE = ("all_to_all_single", "all_gather"), ("all_reduce",)


def collective_seconds(kind: str, sent_bytes: float, calls: float, world: int) -> float:
    """Time of one step's collectives of one kind at ``world`` GPUs (8 per node)."""
    if world == 1:
        return 0.0
    nvlink, ib = FABRICS["nvlink"], FABRICS["ib400"]
    peers, off_node = world - 1, max(world - PER_NODE, 0)
    if kind in ALL_TO_ALL:
        # the measured bytes are the rank's whole send buffer (its own part included); at W ranks a fraction
        # (W−1)/W of it leaves the rank, spread over its peers
        leaving = sent_bytes * peers / world
        on_node = leaving * (peers - off_node) / peers
        across = leaving * off_node / peers
        seconds = max(on_node / nvlink["bandwidth"], across / ib["bandwidth"])
        latency = (ib if off_node else nvlink)["latency"] * peers
    else:
        fabric = ib if off_node else nvlink
        seconds = 2 * peers / world * sent_bytes / fabric["bandwidth"]
        latency = fabric["latency"] * 2 * peers
    return seconds + calls * latency


def predict(measured: dict, gpu_rate: float, world: int, per_gpu: int = 1024) -> dict:
    two = measured["rows"][1]
    compute = per_gpu / gpu_rate
    comm = {k: collective_seconds(k, two["collective_bytes_per_step"].get(k, 0.0), calls, world)
            for k, calls in two["collectives_per_step"].items()}
    step = compute + sum(comm.values())
    return {"world": world, "compute_s": compute, "communication_s": comm, "step_s": step,
            "positives_per_s": world * per_gpu / step, "efficiency": compute / step}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--exact", default=os.path.join(REPO, "docs", "benchmarks", "scaling_exact_cpu.json"))
    ap.add_argument("--scalable", default=os.path.join(REPO, "docs", "benchmarks", "scaling_scalable_cpu.json"))
    ap.add_argument("--gpu", default=os.path.join(REPO, "docs", "benchmarks", "gpu_check_h100.json"))
    ap.add_argument("--out", help="folder for the results (default: results/scaling_model)")
    args = ap.parse_args()
    gpu = json.load(open(args.gpu))
    rates = {r["mode"]: r["positives_per_s"] for r in gpu["rows"] if r["graph"] == "db15k"}
    report = {"machine": machine(), "command": " ".join(["python", "benchmarks/scaling_model.py", *sys.argv[1:]]),
              "fabrics": FABRICS, "gpu": gpu["device"], "modes": {}}
    lines = ["| mode | measured on gloo (1 → 2 ranks, positives/s) | bytes sent per rank and step (2 ranks) | "
             "1 GPU (measured) | 8 GPUs, NVLink (predicted) | 32 GPUs, 4 nodes, 400 Gb/s (predicted) |",
             "|---|---|---|---|---|---|"]
    for mode, path in (("exact", args.exact), ("scalable", args.scalable)):
        measured = json.load(open(path))
        one, two = measured["rows"]
        sent = sum(two["collective_bytes_per_step"].values())
        predictions = [predict(measured, rates[mode], w) for w in (1, 8, 32)]
        report["modes"][mode] = {"measured_gloo": {"one_rank": one["positives_per_s"], "two_ranks":
                                                   two["positives_per_s"], "median_speedup": measured["median_speedup"]},
                                 "bytes_per_step": two["collective_bytes_per_step"],
                                 "collectives_per_step": two["collectives_per_step"], "predictions": predictions}
        cells = [f"{p['positives_per_s']:,.0f} ({100 * p['efficiency']:.0f}% of linear)" for p in predictions[1:]]
        lines.append(f"| {mode} | {one['positives_per_s']:.0f} → {two['positives_per_s']:.0f} "
                     f"({measured['median_speedup']:.2f}×) | {sent / 2 ** 20:.1f} MiB in "
                     f"{sum(two['collectives_per_step'].values()):.0f} collectives | {rates[mode]:,.0f} | "
                     + " | ".join(cells) + " |")
        for p in predictions[1:]:
            parts = ", ".join(f"{k} {1e3 * v:.2f} ms" for k, v in p["communication_s"].items())
            print(f"{mode:>8} W={p['world']:>2}: compute {1e3 * p['compute_s']:.1f} ms, {parts} → "
                  f"{p['positives_per_s']:,.0f} positives/s ({100 * p['efficiency']:.0f}% of linear)")
    table = "\n".join(lines)
    print(table)
    out = args.out or results_dir("scaling_model")
    os.makedirs(out, exist_ok=True)
    write_json(os.path.join(out, "scaling_model.json"), report)
    with open(os.path.join(out, "scaling_model.md"), "w") as fh:
        fh.write(table + "\n")
    print(f"wrote {out}/scaling_model.json and scaling_model.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
