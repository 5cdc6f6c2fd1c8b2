"""A rank's modality-table memory at partial coverage: dense tables (a checkout from before sparse modality tables)
and sparse ones (this checkout), side by side in one run.

    git worktree add ../before f7ce575          # the last commit with a row per entity in every modality table
    python benchmarks/sparse_tables.py --before ../before [--entities 1000000] [--dim 256] [--coverage 0.2,1]

For each coverage, two gloo ranks (torchrun, one thread each) build the tables of a graph of ``--entities``
entities with one trainable modality of ``--dim`` features (``model.raw_features=trainable``, the recipes'
default; the feature file holds the present entities' rows), allocate the modality's Adam state as the first step
does, and report the bytes of their modality table (shard, Adam's two moments, the row map of the sparse layout)
and their peak RSS (VmHWM). The entity table is kept narrow (d = 4) so the RSS difference is the modality's.
Writes results/sparse_tables/{sparse_tables.json,sparse_tables.md}.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
if "--child" not in sys.argv:         # a rank imports the package of the checkout it was launched for (PYTHONPATH)
    sys.path.insert(0, os.path.dirname(HERE))
from _common import machine, peak_rss_mib, results_dir, write_json, write_report  # noqa: E402


def child(entities: int, dim: int, present_path: str, feature_path: str, out: str) -> None:
    """One rank of either checkout: build the tables, write its modality-table bytes and peak RSS."""
    import numpy as np
    import torch

    from mmkgc_dist.config import ParallelConfig
    from mmkgc_dist.data.format import Features
    from mmkgc_dist.parallel.env import init_distributed
    from mmkgc_dist.parallel.tables import ShardedTables

    torch.set_num_threads(1)
    env = init_distributed()
    present = np.load(present_path)
    features = {"visual": Features(None, present, dim, feature_path)}
    tables = ShardedTables(env, entities, 10, (8, 4), 0.05, 0.1, features, True, ParallelConfig(), 1, "adam",
                           1e-3, 0.05)
    state = tables.row_optimizer.state["visual"]           # Adam's moments, allocated as the first step does
    shard = tables._weight("visual").local_shards()[0].tensor
    row_map = getattr(tables, "rows_visual", torch.zeros(0))
    parts = {"shard": shard.numel() * shard.element_size(),
             "adam": sum(t.numel() * t.element_size() for t in state.values()),
             "row_map": row_map.numel() * row_map.element_size()}
    result = {"rank": env.rank, "rows": shard.shape[0], "bytes": parts, "total_mib": sum(parts.values()) / 2 ** 20,
              "peak_rss_mib": peak_rss_mib()}
    with open(os.path.join(out, f"rank-{env.rank}.json"), "w") as fh:
        json.dump(result, fh)


def write_inputs(folder: str, entities: int, dim: int, coverage: float) -> tuple[str, str, int]:
    """The presence mask (seeded) and a feature file with the present entities' rows; (mask, file, present)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    present = rng.random(entities) < coverage
    mask_path, feature_path = os.path.join(folder, "present.npy"), os.path.join(folder, "visual.parquet")
    np.save(mask_path, present)
    schema = pa.schema([("id", pa.int64()), ("feature", pa.list_(pa.float32(), dim))])
    ids = np.flatnonzero(present).astype(np.int64)
    with pq.ParquetWriter(feature_path, schema) as writer:
        for start in range(0, len(ids), 65536):
            chunk = ids[start:start + 65536]
            values = rng.standard_normal((len(chunk), dim), dtype=np.float32)
            writer.write_table(pa.table({"id": chunk, "feature": pa.FixedSizeListArray.from_arrays(
                pa.array(values.reshape(-1)), dim)}, schema=schema), row_group_size=65536)
    return mask_path, feature_path, int(present.sum())


def launch(checkout: str, entities: int, dim: int, mask: str, features: str) -> list[dict]:
    out = tempfile.mkdtemp(prefix="sparse-tables-")
    cmd = [os.path.join(os.path.dirname(sys.executable), "torchrun"), "--standalone", "--nproc_per_node=2",
           os.path.abspath(__file__), "--child", "--entities", str(entities), "--dim", str(dim), "--out", out,
           "--present", mask, "--features", features]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.path.abspath(checkout))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=out)
    if proc.returncode != 0:
        raise SystemExit(f"{checkout}: the ranks failed\n{proc.stderr[-3000:]}")
    results = [json.load(open(os.path.join(out, f"rank-{r}.json"))) for r in range(2)]
    shutil.rmtree(out)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", required=False, help="a checkout with dense modality tables (f7ce575)")
    ap.add_argument("--entities", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--coverage", default="0.2,1")
    ap.add_argument("--child", action="store_true")
    ap.add_argument("--out")
    ap.add_argument("--present")
    ap.add_argument("--features")
    args = ap.parse_args()
    if args.child:
        child(args.entities, args.dim, args.present, args.features, args.out)
        return
    checkouts = [("sparse (this checkout)", os.path.dirname(HERE))]
    if args.before:
        checkouts.insert(0, ("dense (before)", args.before))
    measured = []
    for coverage in [float(c) for c in args.coverage.split(",")]:
        folder = tempfile.mkdtemp(prefix="sparse-inputs-")
        try:
            mask, features, present = write_inputs(folder, args.entities, args.dim, coverage)
            for label, checkout in checkouts:
                ranks = launch(checkout, args.entities, args.dim, mask, features)
                row = {"tables": label, "coverage": coverage, "present": present, "entities": args.entities,
                       "dim": args.dim, "rows_per_rank": [r["rows"] for r in ranks],
                       "modality_mib_per_rank": max(r["total_mib"] for r in ranks),
                       "parts_bytes_rank0": ranks[0]["bytes"],
                       "peak_rss_mib_per_rank": max(r["peak_rss_mib"] for r in ranks)}
                measured.append(row)
                print(f"coverage {coverage:4.0%}  {label:>22}  rows/rank {row['rows_per_rank']}  modality table "
                      f"{row['modality_mib_per_rank']:8.1f} MiB/rank  peak RSS {row['peak_rss_mib_per_rank']:8.0f} "
                      f"MiB/rank", flush=True)
        finally:
            shutil.rmtree(folder)
    ratios = {}
    for coverage in sorted({m["coverage"] for m in measured}):
        pair = {m["tables"]: m for m in measured if m["coverage"] == coverage}
        if len(pair) == 2:
            dense, sparse = pair["dense (before)"], pair["sparse (this checkout)"]
            ratios[str(coverage)] = {"modality_memory": sparse["modality_mib_per_rank"] / dense["modality_mib_per_rank"],
                                     "peak_rss": sparse["peak_rss_mib_per_rank"] / dense["peak_rss_mib_per_rank"]}
            print(f"coverage {coverage:4.0%}: sparse / dense modality memory {ratios[str(coverage)]['modality_memory']:.3f}, "
                  f"peak RSS {ratios[str(coverage)]['peak_rss']:.3f}")
    out = results_dir("sparse_tables")
    command = " ".join(["python", "benchmarks/sparse_tables.py", *sys.argv[1:]])
    write_json(os.path.join(out, "sparse_tables.json"),
               {"machine": machine(), "command": command, "measured": measured, "sparse_over_dense": ratios})
    lines = [f"`{command}`", "", "| tables | coverage | rows per rank | modality table MiB per rank | "
             "peak RSS MiB per rank |", "|---|---|---|---|---|"]
    lines += [f"| {m['tables']} | {m['coverage']:.0%} | {' / '.join(map(str, m['rows_per_rank']))} | "
              f"{m['modality_mib_per_rank']:.1f} | {m['peak_rss_mib_per_rank']:.0f} |" for m in measured]
    write_report(os.path.join(out, "sparse_tables.md"), lines)

if __name__ == "__main__":
    main()
