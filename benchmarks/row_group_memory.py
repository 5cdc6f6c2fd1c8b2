"""Streaming memory against the Parquet row-group size: the same triples written with row groups of the
shuffle window's size and as one huge row group, each streamed for one epoch with the same
``data.shuffle_window_rows`` in a fresh process; peak RSS (VmHWM of that child) and seconds side by side.

Bar: the loader's memory follows the shuffle window, not the row group — the huge-group run's peak within
+64 MiB of the window-sized run's.

    python benchmarks/row_group_memory.py                 # 8M triples, window 2^18 (~1 min, ~200 MB disk)
    python benchmarks/row_group_memory.py --edges 2e7 --out docs/benchmarks/row_group_memory_cpu.json
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import machine, peak_rss_mib, results_dir, write_json  # noqa: E402


def write(root: str, edges: int, group_rows: int) -> None:
    import numpy as np

    from mmkgc_dist.data.format import KGData, write_dataset
    rng = np.random.default_rng(0)
    n = 100_000
    triples = np.stack([rng.integers(0, n, edges), rng.integers(0, 100, edges), rng.integers(0, n, edges)], 1)
    write_dataset(KGData(n, 100, {"train": triples}, [f"e{i}" for i in range(n)], [f"r{i}" for i in range(100)]),
                  root, row_group_rows=group_rows)


def stream_child(root: str, window: int) -> None:
    """One epoch, one rank: rows seen, seconds, peak RSS."""
    from mmkgc_dist.data.stream import StreamingTriples
    start = time.perf_counter()
    stream = StreamingTriples(root, batch_size=4096, window_rows=window, workers=2, prefetch=1)
    rows = sum(len(b) for b in stream)
    print(json.dumps({"rows": rows, "seconds": time.perf_counter() - start, "peak_rss_mib": peak_rss_mib()}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--edges", type=float, default=8e6)
    ap.add_argument("--window", type=int, default=1 << 18)
    ap.add_argument("--out", default=os.path.join(results_dir("row_group_memory"), "row_group_memory.json"))
    args = ap.parse_args()
    edges = int(args.edges)
    record = {"machine": machine(), "edges": edges, "shuffle_window_rows": args.window, "runs": {}}
    with tempfile.TemporaryDirectory(prefix="mmkgc-rowgroups-") as tmp:
        for label, group in (("row groups = window", args.window), ("one row group", edges)):
            root = os.path.join(tmp, label.replace(" ", "_").replace("=", ""))
            write(root, edges, group)
            out = subprocess.run([sys.executable, __file__, "--child", root, str(args.window)], check=True,
                                 capture_output=True, text=True).stdout
            record["runs"][label] = {"row_group_rows": group, **json.loads(out.strip().splitlines()[-1])}
            print(f"{label:>22}: {record['runs'][label]}")
    a, b = (record["runs"][k]["peak_rss_mib"] for k in ("row groups = window", "one row group"))
    record["peak_difference_mib"] = round(b - a, 1)
    record["bar_met"] = b - a <= 64
    print(f"peak RSS: {a:.0f} MiB (window-sized groups) vs {b:.0f} MiB (one {edges}-row group): "
          f"{b - a:+.0f} MiB (bar: <= +64 MiB) -> {'met' if record['bar_met'] else 'NOT met'}")
    write_json(args.out, record)
    print(f"saved {args.out}")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        stream_child(sys.argv[2], int(sys.argv[3]))
    else:
        main()
