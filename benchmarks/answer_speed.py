"""Exact top-k answers at 10^7 entities (issue #35): the fused score-and-top-k of ``serving.exact_answers.best_answers``
against the previous chunked top-k, on the same table and queries, alternated in one invocation.

    python benchmarks/answer_speed.py [--entities 10000000] [--width 32] [--queries 2048] [--batch 512]
                                      [--threads 2] [--rounds 2] [--approximate] [--table random|clustered]

The table is the size of the 10^9-edge run's model (10^7 entities, ComplEx d = 16: rows 32 wide, the scorer's
dot-product kernel), random rows; queries are rows of it. Both paths answer the same queries in batches of
``--batch`` (``eval.batch_size``, what ``predict --batch`` uses) with k = 10, and must return the same answers.
Queries/s of the answering core (scoring and top-k; ``predict --batch`` adds reading, names and known marks).
``--approximate`` adds the answer index (serving/answer_index.py: inner-product IVF above 10^6 rows, calibrated
to recall@10 ≥ 0.95 on 1,000 other queries): its build time, its sweep, its queries/s beside the exact paths and
its recall@k on the timed queries against the exact answers. ``--table random`` rows have no structure at all,
the hardest case for any index; ``--table clustered`` draws each row near one of 10^4 centres (entities of a
type or community, as a trained model's rows group), a stand-in for a trained table, not one.
Writes results/answer_speed/{answer_speed.json,answer_speed.md}.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

from _common import machine, mean_std, results_dir, write_json, write_report
from mmkgc_dist.model.scorers.base import make_scorer
from mmkgc_dist.serving.answer_index import build_answer_index
from mmkgc_dist.serving.exact_answers import best_answers


class Dot:
    """The dot-product scorers' all-pairs kernel (ComplEx, DistMult: query @ rows.T)."""

    @staticmethod
    def all_pairs(query, rows):
        return query @ rows.T


@torch.no_grad()
def chunked_topk(kernels, query, table, k):
    """The previous path: 2^24 scores per chunk, the chunk's own top-k, then a merge of 2k per query."""
    count = table.shape[0]
    chunk = max(1024, (1 << 24) // max(len(query), 1))
    best_s = torch.full((len(query), 0), float("-inf"))
    best_e = torch.zeros((len(query), 0), dtype=torch.long)
    for lo in range(0, count, chunk):
        s = kernels.all_pairs(query, table[lo:lo + chunk]).float()
        top = torch.topk(s, min(k, s.shape[1]), dim=1)
        merged_s, merged_e = torch.cat([best_s, top.values], 1), torch.cat([best_e, top.indices + lo], 1)
        keep = torch.topk(merged_s, min(k, merged_s.shape[1]), dim=1)
        best_s, best_e = keep.values, merged_e.gather(1, keep.indices)
    return -best_s, best_e


def answer_index(table, scorer, generator):
    """The answer index of the table, built and calibrated on 1,000 queries other than the timed ones."""
    import tempfile
    calibration = table[torch.randint(0, len(table), (1000,), generator=generator)]
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="answer-index-") as folder:     # the index stays in memory
        index = build_answer_index(os.path.join(folder, "index"), table, {}, scorer, scorer.kernels(), calibration)
    record = {k: v for k, v in index.meta.items() if k != "vectors_sha256"}
    record["build_and_calibrate_seconds"] = round(time.perf_counter() - start, 1)
    print(f"answer index: {index.kind}, {index.meta['knob_name']} {index.meta['knob']}, recall@{index.meta['recall_k']} "
          f"{index.meta['recall_at_k']} on its calibration queries; built in {index.meta['build_seconds']} s "
          f"(+ calibration: {record['build_and_calibrate_seconds']} s)", flush=True)
    return index, record


def timed(path, table, queries, batch: int, k: int):
    start, found = time.perf_counter(), []
    for lo in range(0, len(queries), batch):
        found.append(path(Dot, queries[lo:lo + batch], table, k)[1])
    return len(queries) / (time.perf_counter() - start), torch.cat(found)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entities", type=int, default=10_000_000)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--queries", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--approximate", action="store_true", help="also the answer index (FAISS IVF, inner product)")
    ap.add_argument("--table", choices=("random", "clustered"), default="random")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    table = torch.randn(args.entities, args.width, generator=generator) / args.width ** 0.5
    if args.table == "clustered":            # a row = its centre + a third of a row's spread of noise
        centres = torch.randn(10_000, args.width, generator=generator) / args.width ** 0.5
        table = table.mul_(0.33).add_(centres[torch.randint(0, len(centres), (args.entities,), generator=generator)])
    queries = table[torch.randint(0, args.entities, (args.queries,), generator=generator)]
    paths = {"chunked top-k (before)": chunked_topk, "fused score-and-top-k (best_answers)": best_answers}
    index_record = None
    if args.approximate:
        scorer = make_scorer("distmult", args.width // 2, 12.0, 2.0)     # the Dot kernel's scorer
        index, index_record = answer_index(table, scorer, generator)
        paths["answer index (approximate)"] = lambda kernels, q, t, k: index.answers(scorer, kernels, q, t, k)
    speeds = {name: [] for name in paths}
    answers = {}
    for _ in range(args.rounds):
        for name, path in paths.items():
            qps, answers[name] = timed(path, table, queries, args.batch, args.k)
            speeds[name].append(qps)
            print(f"{name}: {qps:.1f} queries/s", flush=True)
    before, after = answers["chunked top-k (before)"], answers["fused score-and-top-k (best_answers)"]
    agree = float((before.sort(1).values == after.sort(1).values).all(1).float().mean())
    if index_record is not None:
        kth = (queries * table[after[:, -1]]).sum(-1, keepdim=True)        # the exact k-th score
        found = answers["answer index (approximate)"]
        right = (queries.unsqueeze(1) * table[found]).sum(-1) >= kth - 1e-5
        index_record["recall_at_k_on_timed_queries"] = round(float(right.float().mean()), 4)
        print(f"answer index: recall@{args.k} on the timed queries {index_record['recall_at_k_on_timed_queries']}")
    summary = {name: {"queries_per_s": v, "mean": mean_std(v)[0], "std": mean_std(v)[1]} for name, v in speeds.items()}
    ratio = summary["fused score-and-top-k (best_answers)"]["mean"] / summary["chunked top-k (before)"]["mean"]
    print(f"fused / chunked: {ratio:.2f}x; queries with identical top-{args.k}: {agree:.4f}")
    command = "python benchmarks/answer_speed.py " + " ".join(sys.argv[1:])
    out = results_dir("answer_speed" + ("_clustered" if args.table == "clustered" else ""))
    write_json(os.path.join(out, "answer_speed.json"), {"machine": machine(), "command": command,
                                                         "settings": vars(args), "summary": summary,
                                                         "fused_over_chunked": ratio, "identical_answers": agree,
                                                         "answer_index": index_record})
    lines = [f"`{command}`", "", "| path | queries/s per round | mean ± std |", "|---|---|---|"]
    lines += [f"| {name} | {' / '.join(f'{v:.1f}' for v in s['queries_per_s'])} | {s['mean']:.1f} ± {s['std']:.1f} |"
              for name, s in summary.items()]
    write_report(os.path.join(out, "answer_speed.md"), lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
