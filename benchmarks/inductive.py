"""Entities the graph does not hold (issue #35): DB15K with name text, a seeded 10% of the entities held out with
all their triples (``mmkgc-dist prepare inductive``), one split per seed; on each:

- **AdaMF, structure dropout** (name text; ``model.structure_dropout``, default 0.5; MAT off): the fusion learned
  to place entities from their text alone, as an unseen entity is placed;
- **AdaMF without structure dropout**: the same model never trained to go without structure (does dropout help?);
- **structure only** (RotatE): an unseen entity's structural row is its initial draw, moved only when drawn as a
  negative — it can only guess;
- **content only**: the nearest seen entity by name text (cosine) stands in for each unseen entity, and a query is
  answered with the stand-in's training answers (score 1 for a training triple of the stand-ins, 0 otherwise);
- **structure filled from text** (``--variants filled``): the structure-dropout model, then each unseen entity's
  structural row predicted from its text by a ridge map fitted on the seen entities (their text rows → their
  trained structural rows) and fused as a present structure instead of a masked one — does filling the missing
  structure help, against masking it? The same model's masked result is recorded beside it. (MAT's generators map
  structure + noise to a modality, the other direction: they cannot fill a missing structure as they are.)

Trained rows share the recipe (configs/db15k.yaml: batch 1024, 128 negatives, self-adversarial, RotatE) with
``--dim``, ``--lr`` and ``--epochs`` the same for all; the last model is tested. Protocol, every row: the test
triples of the split (each touches exactly one unseen entity), both directions asked, filtered ranking over all
entities (seen and unseen; known triples of every split removed), ties realistic; ± is the sample std
(ddof = 1) over the seeds.

    python benchmarks/inductive.py --data data/db15k --seeds 1,2,3 --epochs 5

Writes results/inductive/{runs.jsonl,inductive.json,inductive.md}; runs.jsonl grows run by run.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import torch

from _common import REPO, machine, mean_std, results_dir, write_json, write_report
from mmkgc_dist.config import load_config
from mmkgc_dist.compose import local_trainer
from mmkgc_dist.data.build import build_dataset
from mmkgc_dist.data.format import load_dataset
from mmkgc_dist.data.inductive import prepare_inductive

VARIANTS = {"dropout": ("AdaMF, structure dropout", [("mat.enabled", "false")]),
            "filled": ("AdaMF, structure dropout, unseen structure filled from text (ridge)",
                       [("mat.enabled", "false")]),
            "adamf": ("AdaMF, no structure dropout", [("mat.enabled", "false"), ("model.structure_dropout", "0")]),
            "structure": ("structure only (RotatE)", [("mat.enabled", "false"), ("model.modalities", "[]"),
                                                      ("model.structure_dropout", "0")])}


def trained(args, path: str, variant: str, seed: int) -> dict:
    label, extra = VARIANTS[variant]
    overrides = [("data.path", path), ("train.epochs", str(args.epochs)), ("train.lr", str(args.lr)),
                 ("model.dim", str(args.dim)), ("train.seed", str(seed)), ("train.threads", str(args.threads)),
                 ("model.structure_dropout", str(args.dropout)), ("eval.splits", "[test]"), *extra]
    cfg = load_config(os.path.join(REPO, "configs", "db15k.yaml"), overrides)
    trainer = local_trainer(cfg, build_dataset(cfg), None, show_progress=sys.stderr.isatty())
    start = time.time()
    trainer.fit()
    seconds = time.time() - start
    metrics = lambda test: {k: test[k] for k in ("mrr", "hits@1", "hits@3", "hits@10", "count")}
    test = metrics(trainer.evaluate("test", breakdown=False))
    shown = [("data.path", f"<prepare inductive, seed {seed}>")] + overrides[1:]      # no machine path in records
    extra = {}
    if variant == "filled":
        extra = {"masked_test": test, "fill": fill_structure_from_text(trainer, args.ridge)}
        test = metrics(trainer.evaluate("test", breakdown=False))
    return {"variant": label, "seed": seed, "overrides": shown, "train_seconds": round(seconds, 1), "test": test,
            **extra}


@torch.no_grad()
def fill_structure_from_text(trainer, ridge: float) -> dict:
    """Each unseen entity with a text gets a structural row predicted from it — a ridge map (with a bias) from
    text rows to trained structural rows, fitted on the seen entities — and its structure is no longer masked."""
    tables = trainer.runtime.tables
    unseen = torch.from_numpy(trainer.data.unseen)
    text = tables.modality_rows("text", torch.arange(len(unseen))).double()
    structure = tables.entity.weight
    present = tables.present_text.bool()
    fit, fill = present & ~unseen, present & unseen
    x = torch.cat([text, torch.ones(len(text), 1, dtype=torch.float64)], 1)
    a = x[fit].T @ x[fit] + ridge * len(x[fit]) * torch.eye(x.shape[1], dtype=torch.float64)
    weights = torch.linalg.solve(a, x[fit].T @ structure[fit].double())
    residual = (x[fit] @ weights - structure[fit].double()).pow(2).sum() / structure[fit].double().pow(2).sum()
    structure[fill] = (x[fill] @ weights).to(structure.dtype)
    mask = torch.ones(len(unseen), dtype=torch.bool)
    mask[unseen & ~present] = False            # an unseen entity without a text stays without structure
    tables.structure = mask.to(tables.entity.weight.device)
    return {"ridge": ridge, "fitted_on": int(fit.sum()), "filled": int(fill.sum()),
            "relative_residual_on_seen": round(float(residual), 4)}


def content_only(path: str, seed: int, batch: int = 512) -> dict:
    """The nearest seen entity by text stands in for each unseen one; answers are the stand-ins' training answers."""
    import torch

    from mmkgc_dist.eval.metrics import summarize
    from mmkgc_dist.eval.ranking import DIRECTIONS, FilterIndex, ranks_from_distances

    data = load_dataset(path)
    text = data.features["text"]
    vectors = text.values / np.maximum(np.linalg.norm(text.values, axis=1, keepdims=True), 1e-12)
    seen = np.flatnonzero(~data.unseen & text.present)
    proxy = np.arange(data.num_entities)
    for start in range(0, data.num_entities, 4096):
        block = np.arange(start, min(start + 4096, data.num_entities))
        block = block[data.unseen[block]]
        if len(block):
            proxy[block] = seen[np.argmax(vectors[block] @ vectors[seen].T, axis=1)]
    test, train = data.splits["test"], data.splits["train"]
    known = np.concatenate([t for t in data.splits.values() if len(t)])
    ranks = []
    for _, anchor_col, answer_col, _ in DIRECTIONS:
        answers_of = FilterIndex(train, data.num_relations, anchor_col, answer_col)
        filters = FilterIndex(known, data.num_relations, anchor_col, answer_col)
        for lo in range(0, len(test), batch):
            chunk = test[lo:lo + batch]
            rows, answers = answers_of.pairs(proxy[chunk[:, anchor_col]], chunk[:, 1])
            hit = np.zeros((len(chunk), data.num_entities), bool)
            hit[rows, answers] = True
            score = hit[:, proxy]                       # a candidate scores by its stand-in
            f_rows, f_cols = filters.pairs(chunk[:, anchor_col], chunk[:, 1])
            ranks.append(ranks_from_distances(torch.from_numpy(-score.astype(np.float32)),
                                              torch.from_numpy(chunk[:, answer_col]), torch.from_numpy(f_rows),
                                              torch.from_numpy(f_cols), "realistic").numpy())
    metrics = summarize(np.concatenate(ranks))
    return {"variant": "content only (nearest seen entity by text)", "seed": seed, "train_seconds": 0.0,
            "test": {k: metrics[k] for k in ("mrr", "hits@1", "hits@3", "hits@10", "count")}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=os.path.join(REPO, "data", "db15k"), help="a prepared DB15K with text features")
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--share", type=float, default=0.1)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--dropout", type=float, default=0.5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--variants", default="dropout,adamf,structure", help=f"of {', '.join(VARIANTS)}")
    ap.add_argument("--ridge", type=float, default=1e-3, help="the fill's ridge penalty per fitted entity")
    args = ap.parse_args()
    if not os.path.exists(os.path.join(args.data, "manifest.json")):
        print(f"skip: {args.data} is not a prepared dataset (mmkgc-dist prepare openke ../shared/datasets/DB15K "
              f"data/db15k --allow-duplicates --allow-overlap && mmkgc-dist features text data/db15k)")
        return 0
    out = results_dir("inductive")
    log = os.path.join(out, "runs.jsonl")
    runs, splits = [], {}
    with tempfile.TemporaryDirectory(prefix="inductive-") as work:
        for seed in [int(s) for s in args.seeds.split(",")]:
            path = os.path.join(work, f"seed-{seed}")
            splits[seed] = prepare_inductive(args.data, path, args.share, seed)
            todo = [lambda: content_only(path, seed)] + \
                [lambda v=v: trained(args, path, v, seed) for v in args.variants.split(",")]
            for run in todo:
                runs.append(run())
                print(json.dumps(runs[-1]), flush=True)
                with open(log, "a") as fh:
                    fh.write(json.dumps(runs[-1]) + "\n")
    labels = list(dict.fromkeys(r["variant"] for r in runs))
    summary = {}
    lines = [f"`python benchmarks/inductive.py {' '.join(sys.argv[1:])}`", "",
             "| model | seeds | test MRR | Hits@1 | Hits@10 | train s / run |", "|---|---|---|---|---|---|"]
    for label in labels:
        rows = [r for r in runs if r["variant"] == label]
        mrr, std = mean_std(r["test"]["mrr"] for r in rows)
        h1, _ = mean_std(r["test"]["hits@1"] for r in rows)
        h10, _ = mean_std(r["test"]["hits@10"] for r in rows)
        summary[label] = {"mrr": mrr, "std": std, "hits@1": h1, "hits@10": h10, "n": len(rows)}
        lines.append(f"| {label} | {len(rows)} | {mrr:.4f} ± {std:.4f} | {h1:.4f} | {h10:.4f} | "
                     f"{np.mean([r['train_seconds'] for r in rows]):.0f} |")
    protocol = (f"DB15K ({os.path.relpath(args.data, REPO)}), prepare inductive --share {args.share} per seed; {args.epochs} epochs, d={args.dim}, "
                f"lr {args.lr}, structure dropout {args.dropout} (first row); test triples touching one unseen entity, "
                f"both directions, filtered over all entities, ties realistic; last model")
    write_json(os.path.join(out, "inductive.json"), {"machine": machine(), "command": lines[0], "protocol": protocol,
                                                     "splits": splits, "summary": summary, "runs": runs})
    write_report(os.path.join(out, "inductive.md"), lines + ["", protocol])
    return 0


if __name__ == "__main__":
    sys.exit(main())
