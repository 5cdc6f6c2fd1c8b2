"""Throughput grid: positives/s and the step-phase breakdown across world size, sharding type, dim,
negatives, trainable/frozen features and MAT on/off, each cell under real torchrun (gloo on CPU, nccl on
GPUs), all in one run beside its own baseline row (1 rank, the paper's DB15K config) and the core issue's
single-process figure (plain trainer, 2 threads). Where ``pykeen`` is installed, a peer row times PyKEEN's
RotatE at the same dim / negatives / batch in the same run.

The grid varies one factor at a time from the baseline (a full factorial is hundreds of cells):

    python benchmarks/grid.py [--steps 3] [--cells baseline,world2,...] [--threads 1]

Writes results/grid/{grid.json,grid.md,grid.png}. Positives/s are comparable only within one run.
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
from scaling import PHASES  # noqa: E402

# name: (world size, scaling mode, overrides). The baseline is the paper's config: d=250, batch 1024,
# 128 per-positive negatives, trainable 4096-d visual + 384-d text features, MAT on.
CELLS = {
    "baseline": (1, "exact", []),
    "world2": (2, "exact", []),
    "world2-entity-table_wise": (2, "exact", ["parallel.sharding={entity: table_wise}"]),
    "world2-entity-column_wise": (2, "exact", ["parallel.sharding={entity: column_wise}"]),
    "world2-features-data_parallel": (2, "exact", ["parallel.sharding={visual: data_parallel, text: data_parallel}"]),
    "dim125": (1, "exact", ["model.dim=125"]),
    "dim500": (1, "exact", ["model.dim=500"]),
    "neg32": (1, "exact", ["train.num_negatives=32"]),
    "neg256": (1, "exact", ["train.num_negatives=256"]),
    "chunk_shared": (1, "exact", ["train.negatives=chunk_shared", "train.chunk_size=64"]),
    "frozen-features": (1, "exact", ["model.raw_features=frozen"]),
    "mat-off": (1, "exact", ["mat.enabled=false"]),
    "structure-only": (1, "exact", ["model.modalities=[]", "mat.enabled=false"]),
    "scalable": (1, "scalable", []),
    "world2-scalable": (2, "scalable", []),
}


def run_cell(name: str, steps: int, threads: int, out: str) -> dict:
    world, mode, overrides = CELLS[name]
    path = os.path.join(out, f"cell-{name}.json")
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    cmd = [torchrun, "--standalone", f"--nproc_per_node={world}", os.path.join(HERE, "scaling.py"), "--worker", path,
           "--steps", str(steps), "--mode", mode, f"--set=train.threads={threads}", *[f"--set={o}" for o in overrides]]
    res = subprocess.run(cmd, env=dict(os.environ, OMP_NUM_THREADS=str(threads)), capture_output=True, text=True)
    if res.returncode != 0:
        return {"cell": name, "error": res.stderr.strip().splitlines()[-1][-300:] if res.stderr.strip() else "failed"}
    row = json.load(open(path))
    return {"cell": name, "world_size": world, "mode": mode, "overrides": overrides, **row}


def core_trainer_row(steps: int) -> dict:
    """The core issue's figure: the single-process trainer, 2 threads, exact mode (benchmarks/throughput.py)."""
    res = subprocess.run([sys.executable, os.path.join(HERE, "throughput.py"), "--modes", "exact", "--steps",
                          str(steps), "--threads", "2"], capture_output=True, text=True)
    if res.returncode != 0:
        return {"cell": "single-process trainer, 2 threads", "error": res.stderr.strip()[-300:] or "failed"}
    row = json.load(open(os.path.join(os.path.dirname(HERE), "results", "throughput", "throughput.json")))["rows"][0]
    return {"cell": "single-process trainer, 2 threads", "world_size": 1, "positives_per_s": row["positives_per_s"],
            "step_s": row["step_s_median"], "phases_s": {}}


def pykeen_peer(steps: int, threads: int) -> dict | None:
    """PyKEEN's RotatE at d=250, 128 negatives, batch 1024, self-adversarial loss, on the same graph."""
    try:
        import numpy as np
        import torch
        from pykeen.losses import NSSALoss
        from pykeen.models import RotatE
        from pykeen.training import SLCWATrainingLoop
        from pykeen.triples import TriplesFactory
    except ImportError:
        return None
    from throughput import db15k_shaped

    torch.set_num_threads(threads)
    data = db15k_shaped(np.random.default_rng(0))
    batches = steps + 2
    train = torch.as_tensor(data.splits["train"][: 1024 * batches][:, [0, 1, 2]], dtype=torch.long)
    factory = TriplesFactory(train, entity_to_id={str(i): i for i in range(data.num_entities)},
                             relation_to_id={str(i): i for i in range(data.num_relations)})
    model = RotatE(triples_factory=factory, embedding_dim=250, loss=NSSALoss(margin=12.0, adversarial_temperature=2.0),
                   random_seed=0)
    loop = SLCWATrainingLoop(model=model, triples_factory=factory, optimizer=torch.optim.Adam(model.parameters(), 1e-3),
                             negative_sampler_kwargs={"num_negs_per_pos": 128})
    start = time.perf_counter()
    loop.train(triples_factory=factory, num_epochs=1, batch_size=1024, use_tqdm=False)
    seconds = time.perf_counter() - start
    return {"cell": "pykeen-rotate (peer)", "world_size": 1, "positives_per_s": len(train) / seconds,
            "step_s": seconds / batches, "phases_s": {}, "note": "one epoch incl. warm-up; structure-only, "
                                                               "unfiltered negatives"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="threads per rank")
    ap.add_argument("--cells", default=",".join(CELLS))
    ap.add_argument("--no-peer", action="store_true")
    args = ap.parse_args()
    out = results_dir("grid")
    rows = []
    for name in args.cells.split(","):
        row = run_cell(name, args.steps, args.threads, out)
        rows.append(row)
        print(json.dumps({k: row.get(k) for k in ("cell", "positives_per_s", "step_s", "error")}), flush=True)
    rows.append(core_trainer_row(args.steps))
    print(json.dumps({k: rows[-1].get(k) for k in ("cell", "positives_per_s", "error")}), flush=True)
    peer = None if args.no_peer else pykeen_peer(args.steps, args.threads)
    if peer:
        rows.append(peer)
        print(json.dumps({k: peer[k] for k in ("cell", "positives_per_s")}), flush=True)
    base = next((r["positives_per_s"] for r in rows if r["cell"] == "baseline" and "positives_per_s" in r), None)
    lines = [f"{machine()['date']}, {args.threads} thread(s) per rank, {args.steps} timed steps after 2 warm-up "
             "steps; DB15K-shaped graph (12,842 entities, 79,222 triples, 4096-d visual + 384-d text)\n",
             "| cell | ranks | positives/s | vs baseline | step (s) | " + " | ".join(PHASES) + " |",
             "|---" * (5 + len(PHASES)) + "|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['cell']} | — | failed: {r['error']} |" + " |" * (3 + len(PHASES)))
            continue
        ratio = f"{r['positives_per_s'] / base:.2f}x" if base else "—"
        lines.append(f"| {r['cell']} | {r['world_size']} | {r['positives_per_s']:.1f} | {ratio} | {r['step_s']:.2f} | "
                     + " | ".join(f"{r['phases_s'].get(k, 0):.2f}" if r["phases_s"] else "—" for k in PHASES) + " |")
    md = "\n".join(lines) + "\n"
    write_json(os.path.join(out, "grid.json"), {"machine": machine(), "threads": args.threads, "steps": args.steps,
                                                "rows": rows})
    with open(os.path.join(out, "grid.md"), "w") as fh:
        fh.write(md)
    ok = [r for r in rows if "positives_per_s" in r]
    fig, ax = new_plot((8, 5))
    ax.barh([r["cell"] for r in ok], [r["positives_per_s"] for r in ok], label="positives/s")
    if base:
        ax.axvline(base, color="gray", linestyle="--", label="baseline")
    save_plot(fig, ax, os.path.join(out, "grid.png"), "positives / s", "", "Throughput grid (one run)")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
