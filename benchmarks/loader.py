"""Streaming pipeline benchmark: generate labeled graphs of growing size (streamed to disk), convert them
with the out-of-core converter, then stream one epoch with 1 rank and with 2 ranks at once.

Every stage runs in its own process so its peak RSS (ru_maxrss of that child) is its own; the loader's
memory must not grow with the edge count (bar: 100M-edge peak within +64 MiB of the 1M run). Prints and
saves a JSON record and a markdown table, with an extrapolation of time and disk to 10^9 edges.

    python benchmarks/loader.py                       # 1M, 10M, 100M edges (~10 min on 2 cores, ~8 GB disk)
    python benchmarks/loader.py --sizes 1e6 1e7 --keep
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import machine, peak_rss_mib, results_dir, write_json  # noqa: E402

CHUNK = 1 << 22


def generate(path: str, edges: int, entities: int, relations: int, seed: int = 0) -> None:
    """Labeled TSV in chunks (heavy-tailed entity popularity, uniform relations); memory is one chunk."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv

    rng = np.random.default_rng(seed)
    popularity = rng.permutation(entities)          # which entity is the i-th most popular
    schema = pa.schema([("h", pa.string()), ("r", pa.string()), ("t", pa.string())])
    opts = pacsv.WriteOptions(include_header=False, delimiter="\t", quoting_style="none")
    with pacsv.CSVWriter(path + ".tmp", schema, write_options=opts) as out:
        for start in range(0, edges, CHUNK):
            n = min(CHUNK, edges - start)
            # rank ~ entities * u^3: a few entities carry most edges, as in real graphs
            heads = popularity[(entities * rng.random(n) ** 3).astype(np.int64)]
            tails = popularity[(entities * rng.random(n) ** 2).astype(np.int64)]
            rels = rng.integers(0, relations, n)

            def label(prefix, ids):
                return pc.binary_join_element_wise(prefix, pc.cast(pa.array(ids), pa.string()), "")
            out.write_table(pa.table([label("Q", heads), label("P", rels), label("Q", tails)], schema=schema))
    os.replace(path + ".tmp", path)


def start_child(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))


def child_result(proc: subprocess.Popen) -> dict:
    out, _ = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"child failed ({proc.returncode}): {' '.join(proc.args)}")
    return json.loads(out.strip().splitlines()[-1])


def child_convert(src: str, out: str) -> None:
    from mmkgc_dist.data.convert import TextLayout, convert_triples
    t0 = time.perf_counter()
    # random graphs repeat some triples; kept and counted (above the check budget the check is skipped)
    manifest = convert_triples(out, {"train": src}, TextLayout(allow_duplicates=True), progress=False)
    print(json.dumps({"seconds": time.perf_counter() - t0, "edges": manifest["splits"]["train"]["rows"],
                      "entities": manifest["num_entities"], "relations": manifest["num_relations"],
                      "rss_mib": peak_rss_mib()}))


def child_stream(root: str, rank: int, world: int, batch: int) -> None:
    from mmkgc_dist.data.stream import StreamingTriples
    stream = StreamingTriples(root, rank=rank, world_size=world, batch_size=batch, seed=1)
    t0 = time.perf_counter()
    edges = batches = 0
    checksum = 0
    for b in stream:
        edges += len(b)
        batches += 1
        checksum ^= int(b[0, 0])
    print(json.dumps({"seconds": time.perf_counter() - t0, "edges": edges, "batches": batches,
                      "rss_mib": peak_rss_mib()}))


def disk_bytes(path: str) -> int:
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def bench_size(workdir: str, edges: int, entities: int, relations: int, batch: int) -> dict:
    tsv, ds = os.path.join(workdir, f"g{edges}.tsv"), os.path.join(workdir, f"g{edges}")
    t0 = time.perf_counter()
    generate(tsv, edges, entities, relations)
    gen_s = time.perf_counter() - t0
    me = [sys.executable, os.path.abspath(__file__)]
    conv = child_result(start_child(me + ["--child", "convert", tsv, ds]))
    one = child_result(start_child(me + ["--child", "stream", ds, "0", "1", str(batch)]))
    # two ranks at once: two processes, each streaming its own half
    two = [child_result(p) for p in [start_child(me + ["--child", "stream", ds, str(r), "2", str(batch // 2)])
                                     for r in range(2)]]
    assert sum(t["edges"] for t in two) == one["edges"] == edges, "edges lost or repeated"
    assert two[0]["batches"] == two[1]["batches"]
    row = {"edges": edges, "entities_seen": conv["entities"], "relations": conv["relations"],
           "generate_s": round(gen_s, 2),
           "convert_s": round(conv["seconds"], 2), "convert_edges_per_s": round(edges / conv["seconds"]),
           "convert_rss_mib": round(conv["rss_mib"], 1),
           "stream1_s": round(one["seconds"], 2), "stream1_edges_per_s": round(edges / one["seconds"]),
           "stream1_rss_mib": round(one["rss_mib"], 1),
           "stream2_edges_per_s_per_rank": [round(t["edges"] / t["seconds"]) for t in two],
           "stream2_rss_mib": [round(t["rss_mib"], 1) for t in two],
           "tsv_bytes": disk_bytes(tsv), "parquet_bytes": disk_bytes(ds)}
    print(json.dumps(row), flush=True)
    return row


def table(rows: list[dict]) -> str:
    lines = ["| edges | convert edges/s | convert peak RSS | stream 1 rank edges/s | stream 1 rank RSS | "
             "stream 2 ranks edges/s per rank | stream 2 ranks RSS | TSV | Parquet |", "|" + "---|" * 9]
    for r in rows:
        lines.append(f"| {r['edges']:,} | {r['convert_edges_per_s']:,} | {r['convert_rss_mib']:.0f} MiB | "
                     f"{r['stream1_edges_per_s']:,} | {r['stream1_rss_mib']:.0f} MiB | "
                     f"{' / '.join(f'{v:,}' for v in r['stream2_edges_per_s_per_rank'])} | "
                     f"{' / '.join(f'{v:.0f}' for v in r['stream2_rss_mib'])} MiB | "
                     f"{r['tsv_bytes'] / 2**30:.2f} GiB | {r['parquet_bytes'] / 2**30:.2f} GiB |")
    return "\n".join(lines)


def extrapolate(rows: list[dict]) -> dict:
    big = max(rows, key=lambda r: r["edges"])
    per = 1e9 / big["edges"]
    return {"basis_edges": big["edges"],
            "convert_hours": round(per * big["convert_s"] / 3600, 2),
            "stream_epoch_minutes_1_process": round(per * big["stream1_s"] / 60, 1),
            "tsv_gib": round(per * big["tsv_bytes"] / 2**30, 1),
            "parquet_gib": round(per * big["parquet_bytes"] / 2**30, 1)}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        kind, rest = sys.argv[2], sys.argv[3:]
        child_convert(*rest) if kind == "convert" else child_stream(rest[0], int(rest[1]), int(rest[2]), int(rest[3]))
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", type=float, default=[1e6, 1e7, 1e8])
    p.add_argument("--entities", type=int, default=1_000_000)
    p.add_argument("--relations", type=int, default=1000)
    p.add_argument("--batch", type=int, default=2048, help="global batch (each of 2 ranks takes half)")
    p.add_argument("--workdir", default=None, help="scratch folder (default: results/loader/work)")
    p.add_argument("--keep", action="store_true", help="keep the generated files")
    args = p.parse_args()
    out = results_dir("loader")
    work = args.workdir or os.path.join(out, "work")
    os.makedirs(work, exist_ok=True)
    rows = []
    try:
        for size in args.sizes:
            rows.append(bench_size(work, int(size), args.entities, args.relations, args.batch))
            if not args.keep:
                for name in os.listdir(work):
                    shutil.rmtree(os.path.join(work, name), ignore_errors=True) if os.path.isdir(
                        os.path.join(work, name)) else os.remove(os.path.join(work, name))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    small, big = min(rows, key=lambda r: r["edges"]), max(rows, key=lambda r: r["edges"])
    record = {"machine": machine(), "entities": args.entities, "relations": args.relations, "rows": rows,
              "stream_rss_growth_mib": round(big["stream1_rss_mib"] - small["stream1_rss_mib"], 1),
              "convert_rss_growth_mib": round(big["convert_rss_mib"] - small["convert_rss_mib"], 1),
              "extrapolated_to_1e9_edges": extrapolate(rows)}
    write_json(os.path.join(out, "loader.json"), record)
    md = table(rows) + f"\n\nstream peak RSS growth {small['edges']:,} → {big['edges']:,} edges: " \
        f"{record['stream_rss_growth_mib']} MiB; converter: {record['convert_rss_growth_mib']} MiB\n" \
        f"extrapolated to 10^9 edges: {json.dumps(record['extrapolated_to_1e9_edges'])}\n"
    with open(os.path.join(out, "loader.md"), "w") as fh:
        fh.write(md)
    print(md)


if __name__ == "__main__":
    main()
