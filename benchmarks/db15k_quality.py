"""DB15K quality run: structure-only RotatE at the paper's dim/negatives, learning curve and final test.

The curve is measured on the test split (filtered, realistic ties): DB15K's valid file repeats training
triples, so valid MRR is inflated; no model selection uses the curve (the last epoch is reported,
as in the paper's protocol).

    python benchmarks/db15k_quality.py [--src ../shared/datasets/DB15K] [--epochs 40] [--lr 1e-3]

Writes results/db15k_quality/{curve.json,curve.png,summary.json}. Skips (exit 0, message) when the
dataset folder is absent.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

from _common import REPO, SHARED_DATASETS, machine, new_plot, results_dir, save_plot, write_json
from mmkgc_dist.config import load_config
from mmkgc_dist.data.openke import read_openke
from mmkgc_dist.compose import local_trainer


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--src", default=os.path.join(SHARED_DATASETS, "DB15K"))
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--eval-every", type=int, default=5)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    if not os.path.exists(os.path.join(args.src, "train2id.txt")):
        print(f"skip: {args.src} not found (DB15K OpenKE folder)")
        return 0
    torch.set_num_threads(args.threads)
    out = results_dir("db15k_quality")
    data = read_openke(args.src, "DB15K")
    cfg = load_config(os.path.join(REPO, "configs", "db15k.yaml"), [("model.modalities", "[]"), ("mat.enabled", "false"),
                                            ("train.lr", str(args.lr)), ("train.epochs", "1")])
    trainer = local_trainer(cfg, data, run_dir=None, show_progress=sys.stderr.isatty())
    curve, t0 = [], time.time()
    for epoch in range(1, args.epochs + 1):
        cfg.train.epochs = epoch
        trainer.fit()
        if epoch % args.eval_every == 0 or epoch == args.epochs:
            t_eval = time.time()
            m = trainer.evaluate("test")
            curve.append({"epoch": epoch, "seconds": round(time.time() - t0, 1), "test_mrr": m["mrr"],
                          "test_hits@10": m["hits@10"], "eval_seconds": round(time.time() - t_eval, 1)})
            print(curve[-1], flush=True)
            write_json(os.path.join(out, "curve.json"), curve)
    train_seconds = time.time() - t0 - sum(c.get("eval_seconds", 0) for c in curve)
    test = trainer.evaluate("test")
    summary = {"config": "configs/db15k.yaml, structure-only RotatE", "lr": args.lr, "epochs": args.epochs,
               "train_seconds": round(train_seconds, 1), "test": test, "machine": machine(),
               "paper_rotate_mrr": 0.2928}
    write_json(os.path.join(out, "summary.json"), summary)
    print(f"test MRR {test['mrr']:.4f} Hits@1 {test['hits@1']:.4f} Hits@10 {test['hits@10']:.4f} "
          f"(ties={test['ties']}) after {args.epochs} epochs, {train_seconds:.0f}s")
    plot(curve, os.path.join(out, "curve.png"))
    return 0


def plot(curve: list[dict], path: str) -> None:
    fig, ax = new_plot()
    ax.plot([c["epoch"] for c in curve], [c["test_mrr"] for c in curve], marker="o", label="test MRR (ours)")
    ax.axhline(0.2928, ls="--", c="gray", label="paper RotatE (test)")
    save_plot(fig, ax, path, "epoch", "filtered MRR (realistic ties)",
              "DB15K, structure-only RotatE, d=250, 128 negatives")


if __name__ == "__main__":
    sys.exit(main())
