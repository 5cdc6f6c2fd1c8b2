"""Quality on real multi-modal KGs: structure-only RotatE, AdaMF (μ=0) and AdaMF-MAT (μ>0) with the same
budget and seeds, beside the paper's numbers.

    python benchmarks/quality.py --data db15k=data/db15k --data mkgw=data/mkgw --seeds 1,2,3 --epochs 20

--data NAME=PATH takes a prepared dataset (``mmkgc-dist prepare openke`` + ``mmkgc-dist features text``)
or an OpenKE folder (converted on the fly, without text features). Default: the OpenKE folders in
../shared/datasets. Visual features are missing for every entity in these splits (the paper's image
features are not public), and MKG-W has no entity names, so its text modality is missing too: there AdaMF
has nothing to fuse and reduces to RotatE. "AdaMF (μ=0)" runs with MAT off: with μ=0 the generator never
reaches the model, so the model is the same and the generator's time is saved.

Writes results/quality/{runs.jsonl,quality.json,quality.md} (runs.jsonl grows as runs finish).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time


from _common import SHARED_DATASETS, machine, mean_std, results_dir, variant_overrides, write_json
from mmkgc_dist.config import load_config
from mmkgc_dist.data.format import load_dataset
from mmkgc_dist.data.openke import read_openke
from mmkgc_dist.compose import local_trainer

PAPER = {  # filtered MRR / Hits@1 / Hits@10 from docs/method.md
    "db15k": {"rotate": (0.2928, 0.1787, 0.4966), "adamf-mat": (0.3514, 0.2530, 0.5292)},
    "mkgw": {"rotate": (0.3271, None, None), "adamf-mat": (0.3585, 0.2904, 0.4842)},
}
RECIPES = {"db15k": "db15k.yaml", "mkgw": "mkgw.yaml"}


def load(path: str, name: str):
    if os.path.exists(os.path.join(path, "train2id.txt")):
        return read_openke(path, name)
    return load_dataset(path)


def run_one(name: str, data, variant: str, seed: int, args) -> dict:
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    recipe = os.path.join(repo, "configs", RECIPES.get(name, "db15k.yaml"))
    overrides = variant_overrides(variant) + [("train.seed", str(seed)), ("train.epochs", str(args.epochs)),
                                     ("train.lr", str(args.lr)), ("train.device", args.device),
                                     ("train.max_steps", str(args.max_steps))] + \
        [tuple(item.split("=", 1)) for item in args.set]
    cfg = load_config(recipe, overrides)
    trainer = local_trainer(cfg, data, None, show_progress=sys.stderr.isatty())
    start = time.time()
    trainer.fit()
    seconds = time.time() - start
    test = trainer.evaluate("test")
    return {"dataset": name, "variant": variant, "seed": seed, "epochs": args.epochs, "lr": args.lr,
            "train_seconds": round(seconds, 1), "fused_modalities": trainer.modalities,
            "mrr": test["mrr"], "mr": test["mr"], "hits@1": test["hits@1"], "hits@3": test["hits@3"],
            "hits@10": test["hits@10"], "ties": test["ties"]}


def summarize(runs: list[dict]) -> list[dict]:
    rows = []
    for (name, variant) in sorted({(r["dataset"], r["variant"]) for r in runs}):
        group = [r for r in runs if r["dataset"] == name and r["variant"] == variant]
        row = {"dataset": name, "variant": variant, "seeds": len(group)}
        for k in ("mrr", "hits@1", "hits@3", "hits@10"):
            row[k], row[k + "_std"] = mean_std(r[k] for r in group)
        rows.append(row)
    return rows


def markdown(rows: list[dict], args) -> str:
    out = [f"Filtered test metrics, realistic ties, {args.epochs} epochs, lr {args.lr}, mean ± sample std "
           f"(ddof = 1) over seeds.\n",
           "| dataset | variant | seeds | MRR | Hits@1 | Hits@3 | Hits@10 | paper MRR |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        paper = PAPER.get(r["dataset"], {}).get(r["variant"], (None,))[0]
        cell = lambda k: f"{r[k]:.4f} ± {r[k + '_std']:.4f}"
        out.append(f"| {r['dataset']} | {r['variant']} | {r['seeds']} | {cell('mrr')} | {cell('hits@1')} | "
                   f"{cell('hits@3')} | {cell('hits@10')} | {paper if paper is not None else '—'} |")
    return "\n".join(out) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", action="append", help="NAME=PATH (prepared dataset or OpenKE folder)")
    ap.add_argument("--variants", default="rotate,adamf,adamf-mat")
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--rotate-seeds", default="", help="seeds for the rotate variant (default: --seeds)")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--max-steps", type=int, default=0, help="cap each run (smoke tests)")
    ap.add_argument("--set", action="append", default=[], help="KEY=VALUE config override for every run")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    specs = args.data or [f"db15k={os.path.join(SHARED_DATASETS, 'DB15K')}",
                          f"mkgw={os.path.join(SHARED_DATASETS, 'MKG-W')}"]
    out = args.out or results_dir("quality")
    os.makedirs(out, exist_ok=True)
    runs = []
    for spec in specs:
        name, path = spec.split("=", 1)
        if not os.path.exists(path):
            print(f"skip {name}: {path} not found")
            continue
        data = load(path, name)
        print(f"{name}: modalities {sorted(data.features)}", flush=True)
        for variant in args.variants.split(","):
            seeds = args.rotate_seeds if variant == "rotate" and args.rotate_seeds else args.seeds
            for seed in map(int, seeds.split(",")):
                result = run_one(name, data, variant, seed, args)
                runs.append(result)
                print(json.dumps(result), flush=True)
                with open(os.path.join(out, "runs.jsonl"), "a") as fh:
                    fh.write(json.dumps(result) + "\n")
    rows = summarize(runs)
    write_json(os.path.join(out, "quality.json"), {"machine": machine(), "rows": rows, "runs": runs,
                                                   "epochs": args.epochs, "lr": args.lr})
    with open(os.path.join(out, "quality.md"), "w") as fh:
        fh.write(markdown(rows, args))
    print(markdown(rows, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
