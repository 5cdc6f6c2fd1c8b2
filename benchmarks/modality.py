"""The paper's two analyses on our data: a modality-missing sweep and the modality-weight case study.

Missing sweep: text features are dropped for a seeded fraction (0/20/40/60/80%) of all entities; each
rate trains AdaMF (MAT off) and AdaMF-MAT with the same budget and seeds; structure-only RotatE does not
read features, so it is trained once per seed and drawn as the reference line. Case study: AdaMF's
per-entity attention weights (structure / visual / text) at rate 0, with and without MAT, as histograms.

    python benchmarks/modality.py                                  # the generated default graph, ~25 min
    python benchmarks/modality.py --data db15k=data/db15k --seeds 1,2,3 --epochs 20 --device cuda

--data NAME=PATH takes a prepared dataset (with text features, see BENCHMARKS.md); "synthetic" (default)
uses the generated graph with every entity's text present before dropping (visual stays 30% missing).
--set KEY=VALUE applies config overrides to every run. Writes results/modality/{runs.jsonl,
modality.json, modality.md, missing_sweep.png, modality_weights.png}.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

import numpy as np

from _common import REPO, machine, mean_std, new_plot, results_dir, save_plot, variant_overrides, write_json
from mmkgc_dist.config import load_config
from mmkgc_dist.data.build import build_dataset
from mmkgc_dist.data.format import Features, load_dataset
from mmkgc_dist.compose import local_trainer



def drop_text(data, rate: float, seed: int):
    """A copy of ``data`` whose text modality is missing for a seeded ``rate`` of all entities."""
    if "text" not in data.features or rate == 0:
        return data
    text = data.features["text"]
    drop = np.random.default_rng([seed, 1234]).random(data.num_entities) < rate
    present = text.present & ~drop
    values = np.where(present[:, None], text.values, 0).astype(np.float32)
    return dataclasses.replace(data, features={**data.features, "text": Features(values, present)})


def sweep_arguments(doc: str) -> argparse.ArgumentParser:
    """The options every sweep over the dataset takes (this one and mu_sweep.py)."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--data", default="synthetic", help="NAME=PATH of a prepared dataset, or 'synthetic'")
    ap.add_argument("--seeds", default="1,2")
    ap.add_argument("--epochs", type=int, default=0, help="0: the recipe's")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--set", action="append", default=[], help="KEY=VALUE config override for every run")
    ap.add_argument("--out", default="")
    return ap


def sweep_data(args):
    """(name, recipe config or None, dataset) of ``--data``: "synthetic" is the generated default graph with
    every entity's text present before dropping (its override is appended to ``args.set``), NAME=PATH a prepared
    dataset with configs/NAME.yaml as its recipe when there is one."""
    if args.data == "synthetic":
        args.set = ["data.synthetic.text_missing=0", *args.set]
        return "synthetic", None, build_dataset(load_config(None, [("data.synthetic.text_missing", "0")]))
    name, path = args.data.split("=", 1)
    recipe = os.path.join(REPO, "configs", f"{name}.yaml")
    return name, (recipe if os.path.exists(recipe) else None), load_dataset(path)


def modality_weights(trainer) -> dict[str, np.ndarray]:
    """AdaMF attention weight of each source for every entity (weights of missing modalities are 0)."""
    names = ["structure", *trainer.modalities]
    parts = [w.detach().cpu().numpy() for _, _, _, w in trainer.runtime.embedding_chunks() if w is not None]
    if not parts:
        return {}
    weights = np.concatenate(parts)
    return {name: weights[:, i] for i, name in enumerate(names)}


def run_one(args, data, variant: str, rate: float, seed: int, recipe: str | None):
    overrides = variant_overrides(variant) + [("train.seed", str(seed)), ("train.device", args.device)] + \
        ([("train.epochs", str(args.epochs))] if args.epochs else []) + \
        ([("train.lr", str(args.lr))] if args.lr else []) + [tuple(s.split("=", 1)) for s in args.set]
    cfg = load_config(recipe, overrides)
    trainer = local_trainer(cfg, drop_text(data, rate, seed), None, show_progress=sys.stderr.isatty())
    start = time.time()
    trainer.fit()
    seconds = time.time() - start
    test = trainer.evaluate("test")
    text = trainer.data.features.get("text")
    result = {"variant": variant, "text_missing_rate": rate, "seed": seed, "train_seconds": round(seconds, 1),
              "text_present": int(text.present.sum()) if text is not None else 0,
              **{k: test[k] for k in ("mrr", "hits@1", "hits@10")}}
    return result, (modality_weights(trainer) if rate == 0 and variant != "rotate" else {})


def plot_sweep(runs, rates, path):
    fig, ax = new_plot()
    for variant, style in (("adamf", "o-"), ("adamf-mat", "s-")):
        means = [np.mean([r["mrr"] for r in runs if r["variant"] == variant and r["text_missing_rate"] == x])
                 for x in rates]
        ax.plot([100 * x for x in rates], means, style, label=variant)
    if any(r["variant"] == "rotate" for r in runs):
        base = np.mean([r["mrr"] for r in runs if r["variant"] == "rotate"])
        ax.axhline(base, color="gray", linestyle="--", label="structure-only RotatE")
    save_plot(fig, ax, path, "entities without text features (%)", "test MRR (filtered, realistic)",
              "Modality-missing sweep")


def plot_weights(weights: dict[str, dict[str, np.ndarray]], path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(weights), figsize=(5 * len(weights), 3.6), sharey=True, squeeze=False)
    for ax, (variant, w) in zip(axes[0], weights.items()):
        for name, values in w.items():
            shown = values[values > 0]          # a missing modality has weight 0 by construction
            ax.hist(shown, bins=40, range=(0, 1), alpha=0.55, label=f"{name} (mean {shown.mean():.2f})")
        ax.set_title(f"{variant}: AdaMF weights per entity")
        ax.set_xlabel("attention weight")
        ax.legend()
    axes[0][0].set_ylabel("entities")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    ap = sweep_arguments(__doc__)
    ap.add_argument("--rates", default="0,0.2,0.4,0.6,0.8")
    ap.add_argument("--lr", type=float, default=0.0, help="0: the recipe's")
    ap.add_argument("--variants", default="rotate,adamf,adamf-mat", help="subset of rotate,adamf,adamf-mat")
    args = ap.parse_args()
    name, recipe, data = sweep_data(args)
    rates = [float(x) for x in args.rates.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    out = args.out or results_dir("modality")
    os.makedirs(out, exist_ok=True)
    runs, weights = [], {}
    variants = args.variants.split(",")
    jobs = [("rotate", 0.0, s) for s in seeds if "rotate" in variants] + \
        [(v, r, s) for r in rates for v in ("adamf", "adamf-mat") if v in variants for s in seeds]
    for variant, rate, seed in jobs:
        result, w = run_one(args, data, variant, rate, seed, recipe)
        result["dataset"] = name
        runs.append(result)
        if w and seed == seeds[0]:
            weights[variant] = w
        print(json.dumps(result), flush=True)
        with open(os.path.join(out, "runs.jsonl"), "a") as fh:
            fh.write(json.dumps(result) + "\n")
    plot_sweep(runs, rates, os.path.join(out, "missing_sweep.png"))
    if weights:
        plot_weights(weights, os.path.join(out, "modality_weights.png"))
    summary = {v: {m: {"mean": float(x[x > 0].mean()), "p10": float(np.quantile(x[x > 0], 0.1)),
                       "p90": float(np.quantile(x[x > 0], 0.9))} for m, x in w.items()} for v, w in weights.items()}
    table = ["| text missing | AdaMF MRR | AdaMF-MAT MRR | RotatE MRR |", "|---|---|---|---|"]
    rotate = [r["mrr"] for r in runs if r["variant"] == "rotate"]
    base = f"{np.mean(rotate):.4f}" if rotate else "—"
    for rate in rates:
        cell = lambda v: " ± ".join(f"{x:.4f}" for x in mean_std(
            r["mrr"] for r in runs if r["variant"] == v and r["text_missing_rate"] == rate))
        table.append(f"| {100 * rate:.0f}% | {cell('adamf')} | {cell('adamf-mat')} | {base} |")
    md = f"{name}, seeds {seeds}, filtered test MRR (realistic ties), mean ± sample std (ddof = 1)\n\n" + \
        "\n".join(table) + \
        "\n\nAdaMF weights at 0% missing (mean, p10–p90 over entities with the modality):\n\n" + \
        "\n".join(f"- {v}: " + ", ".join(f"{m} {s['mean']:.3f} ({s['p10']:.2f}–{s['p90']:.2f})"
                                         for m, s in w.items()) for v, w in summary.items()) + "\n"
    write_json(os.path.join(out, "modality.json"), {"machine": machine(), "dataset": name, "rates": rates,
                                                     "seeds": seeds, "runs": runs, "weights": summary,
                                                     "overrides": args.set, "command": " ".join(
                                                         ["python", "benchmarks/modality.py", *sys.argv[1:]])})
    with open(os.path.join(out, "modality.md"), "w") as fh:
        fh.write(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
