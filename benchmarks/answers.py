"""Answers from a trained run, timed against the bars of serving at scale: one predict query with its known
answers marked (after the model is loaded), ``predict --batch`` of many queries (exact, chunked), and approximate
top-10 neighbours (HNSW or IVF, calibrated at build) against exact on a
fresh sample — recall@10 and the speed ratio.

    python benchmarks/answers.py RUN_DIR [--queries 10000] [--neighbour-sample 1000] [--data-path PATH]
                                 [--approximate]

RUN_DIR is any run folder (the billion-edge run of benchmarks, or a small one); the known-triple index and the
neighbour graph are built on first use and their build times reported. Writes results/answers/answers.json.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

from _common import REPO, machine, results_dir, write_json

sys.path.insert(0, REPO)


def batch_recall(exact: str, approximate: str) -> float:
    """Share of the approximate answers that score at least their query's exact 10th answer (ties equally right)."""
    import pandas as pd
    kth = pd.read_parquet(exact, columns=["query", "score"]).groupby("query")["score"].min()
    found = pd.read_parquet(approximate, columns=["query", "score"])
    bound = kth.reindex(found["query"]).to_numpy()
    return round(float(np.mean(found["score"].to_numpy() >= bound - 1e-5 * np.abs(bound) - 1e-6)), 4)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--queries", type=int, default=10000, help="queries of the batch run")
    ap.add_argument("--neighbour-sample", type=int, default=1000)
    ap.add_argument("--data-path", help="where the run's dataset is now (data.path override)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--approximate", action="store_true",
                    help="also the batch through the answer index (predict --approximate) and its recall@10")
    args = ap.parse_args(argv)
    from mmkgc_dist import load_run
    from mmkgc_dist.serving.neighbour_index import exact_answers, measure_recall

    overrides = [f"--data.path={args.data_path}"] if args.data_path else []
    t0 = time.time()
    model = load_run(args.run_dir, overrides=overrides)
    result = {"benchmark": "answers", "machine": machine(), "date": time.strftime("%Y-%m-%d"),
              "entities": len(model.entities.names), "relations": len(model.relations.names),
              "load_seconds": round(time.time() - t0, 2)}
    rng = np.random.default_rng(args.seed)
    t0 = time.time()
    model.known_index()
    result["known_index_seconds"] = round(time.time() - t0, 2)
    heads, relations = rng.integers(0, result["entities"], 5), rng.integers(0, result["relations"], 5)
    single = []
    for h, r in zip(heads, relations):
        t0 = time.time()
        model.predict(head=int(h), relation=int(r), k=10, known="mark")
        single.append(time.time() - t0)
    result["single_query_seconds"] = {"median": float(np.median(single)), "max": float(np.max(single))}

    with tempfile.TemporaryDirectory() as scratch:
        names = model.entities.names
        src = os.path.join(scratch, "queries.tsv")
        with open(src, "w") as fh:
            fh.write("head\trelation\ttail\n")
            for i in range(args.queries):
                e = names[int(rng.integers(len(names)))]
                r = model.relations.names[int(rng.integers(len(model.relations.names)))]
                fh.write(f"{e}\t{r}\t\n" if i % 2 == 0 else f"\t{r}\t{e}\n")
        exact = os.path.join(scratch, "answers.parquet")
        result["batch"] = model.predict_file(src, exact, k=10, progress=True)
        if args.approximate:
            t0 = time.time()
            built = model.answer_index()
            result["answer_index_seconds"] = round(time.time() - t0, 2)
            approximate = os.path.join(scratch, "approximate.parquet")
            result["batch_approximate"] = {**model.predict_file(src, approximate, k=10, progress=True,
                                                                approximate=True),
                                           "recall_at_10": batch_recall(exact, approximate),
                                           "index": {k: v for k, v in built.meta.items() if k != "dataset"}}

    t0 = time.time()
    index = model.neighbour_index("joint")
    result["neighbour_index_seconds"] = round(time.time() - t0, 2)
    # recall on a fresh sample: the build chose its knob on its own sample, so its numbers lean optimistic
    rows = np.random.default_rng(args.seed + 1).choice(result["entities"], args.neighbour_sample, replace=False)
    result["neighbours"] = {"build": {k: v for k, v in index.meta.items() if k != "dataset"},
                            **measure_recall(index, model.joint, 10, rows, exact_answers(model.joint, rows, 10, index.metric))}
    n = result["neighbours"]
    n["speedup"] = round(n["approximate_queries_per_s"] / max(n["exact_queries_per_s"], 1e-9), 1)
    path = os.path.join(results_dir("answers"), "answers.json")
    write_json(path, result)
    print({k: result[k] for k in ("entities", "single_query_seconds", "batch")}, n["recall_at_k"], n["speedup"])
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
