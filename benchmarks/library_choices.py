"""Where the tool keeps its own code beside a well-kept library, the measurement behind the choice (issue #34):

- name suggestions for an unknown name: difflib (ours, standard library) vs rapidfuzz, over N entity names;
- reading a triple table: the converter's block reader (bounded records, line numbers, truncated-stream errors)
  feeding pyarrow's CSV parser vs pyarrow's streaming CSV reader alone, over the same TSV.

    python benchmarks/library_choices.py [--names 1000000] [--lines 2000000]

rapidfuzz is measured only when installed (it is not a dependency). Writes results/library_choices/.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

from _common import machine, results_dir, write_json


def suggestions(n: int) -> dict:
    import difflib
    names = [f"<http://dbpedia.org/resource/Entity_{i:07d}_{'abcdefgh'[i % 8]}>" for i in range(n)]
    query = "<http://dbpedia.org/resource/Entity_0123456_x>"
    t = time.perf_counter()
    difflib.get_close_matches(query, names, n=5, cutoff=0.5)
    out = {"names": n, "difflib_s": round(time.perf_counter() - t, 3)}
    try:
        from rapidfuzz import process
        t = time.perf_counter()
        process.extract(query, names, limit=5)
        out["rapidfuzz_s"] = round(time.perf_counter() - t, 3)
    except ImportError:
        out["rapidfuzz_s"] = None
    return out


def table_read(lines: int) -> dict:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    from mmkgc_dist.data.convert import SplitReport, TextLayout, TripleTextReader
    folder = tempfile.mkdtemp()
    path = os.path.join(folder, "train.tsv")
    rng = np.random.default_rng(0)
    with open(path, "w") as fh:
        for start in range(0, lines, 100_000):
            h, r, t = (rng.integers(0, 10**6, 100_000), rng.integers(0, 500, 100_000), rng.integers(0, 10**6, 100_000))
            fh.writelines(f"e{a}\tr{b}\te{c}\n" for a, b, c in zip(h, r, t))
    t0 = time.perf_counter()
    rows = sum(len(cols[0]) for cols in TripleTextReader(path, TextLayout(), SplitReport()))
    ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    reader = pacsv.open_csv(path, read_options=pacsv.ReadOptions(column_names=["head", "relation", "tail"],
                                                                 block_size=1 << 24),
                            parse_options=pacsv.ParseOptions(delimiter="\t", quote_char=False),
                            convert_options=pacsv.ConvertOptions(column_types={c: pa.large_string()
                                                                               for c in ("head", "relation", "tail")}))
    alone = sum(batch.num_rows for batch in reader)
    theirs = time.perf_counter() - t0
    os.remove(path)
    return {"lines": lines, "rows": rows, "ours_s": round(ours, 3), "pyarrow_streaming_s": round(theirs, 3),
            "ours_lines_per_s": round(rows / ours), "pyarrow_lines_per_s": round(alone / theirs)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--names", type=int, default=1_000_000)
    ap.add_argument("--lines", type=int, default=2_000_000)
    args = ap.parse_args()
    result = {"machine": machine(), "suggestions": suggestions(args.names), "table_read": table_read(args.lines)}
    write_json(os.path.join(results_dir("library_choices"), "library_choices.json"), result)
    print(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
