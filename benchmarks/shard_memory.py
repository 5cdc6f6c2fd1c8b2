"""Peak memory per rank of building sharded tables: each rank draws only the rows it owns (counter-based
streams) and reads only its rows of a feature file, so peak RSS = its shard + a fixed overhead.

    python benchmarks/shard_memory.py [--rows 1000000,2000000,4000000] [--dim 250] [--feature-rows 2000000]

For each table size, two gloo ranks (torchrun) build the entity table (rows x 2d float32, row-wise) and report
their peak RSS (VmHWM) next to their shard's bytes; ``full-then-shard`` repeats the build the way the
previous version did it (the whole table drawn on every rank, then the shard kept) for comparison in the same
run. A feature file (``--feature-rows`` x 256 float32) is then loaded by shards and compared with its size.
A line fit RSS = a + b * shard gives the overhead a and the slope b (~1 when nothing else grows with the
table); the plan for 10^8 rows (d = 250) on 2 ranks is extrapolated from it. Writes
results/shard_memory/{shard_memory.json,shard_memory.md}.
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
sys.path.insert(0, os.path.dirname(HERE))
from _common import machine, peak_rss_mib, results_dir, write_json  # noqa: E402


def child(mode: str, rows: int, dim: int, feature_path: str, feature_dim: int, out: str) -> None:
    """One rank: build the tables, write {rank, peak RSS, shard bytes} to OUT/rank-<r>.json."""
    import numpy as np
    import torch

    from mmkgc_dist.config import ParallelConfig
    from mmkgc_dist.data.format import Features
    from mmkgc_dist.parallel.env import init_distributed
    from mmkgc_dist.parallel.tables import ShardedTables
    from mmkgc_dist.rng import uniform_rows

    torch.set_num_threads(1)
    env = init_distributed()
    features = {}
    if feature_path:
        present = np.ones(rows, bool)
        features["visual"] = Features(None, present, feature_dim, feature_path)
    tables = ShardedTables(env, rows, 10, (2 * dim, dim), 0.05, 0.1, features, False, ParallelConfig(), 1, "adam", 1e-3, 0.05)
    if mode == "full-then-shard":           # the previous version: every rank draws the whole table first
        full = uniform_rows(1, "entity_init", 0, rows, 2 * dim, 0.05)
        weight = tables._weight("entity")
        for shard in weight.local_shards():
            (r0, _), (nr, _) = shard.metadata.shard_offsets, shard.metadata.shard_sizes
            shard.tensor.copy_(full[r0:r0 + nr])
        del full
    shard = tables._weight("entity").local_shards()[0].tensor
    feature_bytes = 0
    if feature_path:
        feature_bytes = tables._weight("visual").local_shards()[0].tensor.numel() * 4
    result = {"rank": env.rank, "peak_rss_mib": peak_rss_mib(), "entity_shard_mib": shard.numel() * 4 / 2 ** 20,
              "feature_shard_mib": feature_bytes / 2 ** 20}
    with open(os.path.join(out, f"rank-{env.rank}.json"), "w") as fh:
        json.dump(result, fh)


def launch(mode: str, rows: int, dim: int, feature_path: str = "", feature_dim: int = 0) -> list[dict]:
    out = tempfile.mkdtemp(prefix="shard-memory-")
    cmd = [os.path.join(os.path.dirname(sys.executable), "torchrun"), "--standalone", "--nproc_per_node=2",
           os.path.abspath(__file__), "--child", mode, "--rows", str(rows), "--dim", str(dim), "--out", out,
           "--feature-path", feature_path, "--feature-dim", str(feature_dim)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.path.dirname(HERE))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{mode} {rows}: failed\n{proc.stderr[-3000:]}")
    results = [json.load(open(os.path.join(out, f"rank-{r}.json"))) for r in range(2)]
    shutil.rmtree(out)
    return results


def write_features(path: str, rows: int, dim: int) -> float:
    """A feature file of rows x dim float32 in ascending ids (written in chunks; never held whole)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("id", pa.int64()), ("feature", pa.list_(pa.float32(), dim))])
    rng = np.random.default_rng(0)
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, rows, 65536):
            ids = np.arange(start, min(start + 65536, rows), dtype=np.int64)
            values = rng.standard_normal((len(ids), dim), dtype=np.float32)
            writer.write_table(pa.table({"id": ids, "feature": pa.FixedSizeListArray.from_arrays(
                pa.array(values.reshape(-1)), dim)}, schema=schema), row_group_size=65536)
    return rows * dim * 4 / 2 ** 20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="1000000,2000000,4000000")
    ap.add_argument("--dim", type=int, default=250)
    ap.add_argument("--feature-rows", type=int, default=2000000)
    ap.add_argument("--feature-dim", type=int, default=256)
    ap.add_argument("--child")
    ap.add_argument("--out")
    ap.add_argument("--feature-path", default="")
    args = ap.parse_args()
    if args.child:
        child(args.child, int(args.rows), args.dim, args.feature_path, args.feature_dim, args.out)
        return
    import numpy as np

    rows_list = [int(r) for r in args.rows.split(",")]
    measured = []
    for rows in rows_list:
        for mode in ("by-shard", "full-then-shard"):
            ranks = launch(mode, rows, args.dim)
            peak = max(r["peak_rss_mib"] for r in ranks)
            shard = ranks[0]["entity_shard_mib"]
            measured.append({"mode": mode, "rows": rows, "dim": args.dim, "shard_mib": shard,
                             "table_mib": rows * 2 * args.dim * 4 / 2 ** 20, "peak_rss_mib_per_rank": peak})
            print(f"{mode:>16}  {rows:>10,} rows  shard {shard:8.0f} MiB  peak RSS/rank {peak:8.0f} MiB", flush=True)
    by_shard = [m for m in measured if m["mode"] == "by-shard"]
    slope, overhead = np.polyfit([m["shard_mib"] for m in by_shard], [m["peak_rss_mib_per_rank"] for m in by_shard], 1)
    plan_rows = 10 ** 8
    plan_shard = plan_rows // 2 * 2 * args.dim * 4 / 2 ** 20
    plan = {"rows": plan_rows, "dim": args.dim, "ranks": 2, "shard_mib": plan_shard,
            "predicted_peak_rss_mib_per_rank": overhead + slope * plan_shard,
            "previous_version_full_table_mib_per_rank": plan_rows * 2 * args.dim * 4 / 2 ** 20 + plan_shard}
    print(f"fit: peak RSS per rank = {overhead:.0f} MiB + {slope:.3f} x shard; 10^8 x {2 * args.dim} on 2 ranks: "
          f"shard {plan_shard / 1024:.0f} GiB -> {plan['predicted_peak_rss_mib_per_rank'] / 1024:.0f} GiB per rank "
          f"(the previous version: {plan['previous_version_full_table_mib_per_rank'] / 1024:.0f} GiB)")
    feature = {}
    if args.feature_rows:
        tmp = tempfile.mkdtemp(prefix="shard-features-")
        path = os.path.join(tmp, "visual.parquet")
        file_mib = write_features(path, args.feature_rows, args.feature_dim)
        ranks = launch("by-shard", args.feature_rows, 4, path, args.feature_dim)
        shutil.rmtree(tmp)
        feature = {"rows": args.feature_rows, "dim": args.feature_dim, "matrix_mib": file_mib,
                   "feature_shard_mib": ranks[0]["feature_shard_mib"],
                   "peak_rss_mib_per_rank": max(r["peak_rss_mib"] for r in ranks)}
        print(f"features: {file_mib:.0f} MiB matrix loaded by shards: {feature['feature_shard_mib']:.0f} MiB per rank, "
              f"peak RSS per rank {feature['peak_rss_mib_per_rank']:.0f} MiB")
    out = results_dir("shard_memory")
    write_json(os.path.join(out, "shard_memory.json"),
               {"machine": machine(), "command": " ".join(["python", "benchmarks/shard_memory.py", *sys.argv[1:]]),
                "measured": measured, "fit": {"overhead_mib": overhead, "slope": slope}, "plan_1e8": plan,
                "features": feature})
    lines = ["| mode | rows | shard MiB | peak RSS per rank MiB |", "|---|---|---|---|"]
    lines += [f"| {m['mode']} | {m['rows']:,} | {m['shard_mib']:.0f} | {m['peak_rss_mib_per_rank']:.0f} |"
              for m in measured]
    with open(os.path.join(out, "shard_memory.md"), "w") as fh:
        fh.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
