"""The user's workflow on DB15K, end to end through the command line: recipe → train with model selection and
early stopping → test the selected model → predict → export.

Structure-only RotatE at the paper's d = 250 with 128 negatives and Adam 1e-3 (configs/db15k.yaml otherwise);
validation every --every epochs by filtered MRR over the valid triples that are not training triples;
early stopping after --patience validation runs without a gain.

    python benchmarks/db15k_selection.py [--src ../shared/datasets] [--epochs 40] [--every 2] [--patience 3]
    python benchmarks/db15k_selection.py --resume --epochs 120      # continue that run (selection state kept)
    python benchmarks/db15k_selection.py --report-only                 # predict, export, summarise it again

Writes results/db15k_selection/{selection.json, results.md, predict.txt, validation.png}. Skips (exit 0,
message) when the DB15K folder is absent.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys

from _common import REPO, SHARED_DATASETS, machine, new_plot, results_dir, save_plot, write_json

CLI = [sys.executable, "-m", "mmkgc_dist.cli"]


def run(*args, capture=False) -> str:
    print("$ mmkgc-dist " + " ".join(map(str, args)), flush=True)
    res = subprocess.run([*CLI, *map(str, args)], cwd=REPO, text=True,
                         stdout=subprocess.PIPE if capture else None)
    if res.returncode != 0:
        raise SystemExit(f"failed ({res.returncode}): mmkgc-dist {' '.join(map(str, args))}")
    return res.stdout or ""


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--src", default=SHARED_DATASETS, help="folder (or URL) holding DB15K/")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--every", type=int, default=2)
    ap.add_argument("--patience", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--resume", action="store_true",
                    help="continue the run in results/db15k_selection/work to --epochs (selection state included)")
    ap.add_argument("--report-only", action="store_true",
                    help="no training: predict, export and summarise the run in results/db15k_selection/work")
    args = ap.parse_args()
    if not os.path.exists(os.path.join(args.src, "DB15K", "train2id.txt")):
        print(f"skip: {args.src}/DB15K not found")
        return 0
    out = results_dir("db15k_selection")
    work = os.path.join(out, "work")
    dataset, run_dir = os.path.join(work, "db15k"), os.path.join(work, "run")
    os.environ["MMKGC_DIST_HOME"] = os.path.join(work, "home")
    if not (args.resume or args.report_only):
        shutil.rmtree(work, ignore_errors=True)
        os.makedirs(work)
        run("prepare", "dataset", "DB15K", dataset, "--base-url", args.src, "--no-text-features")
    train = [] if args.report_only else [
        "train", "--config", "configs/db15k.yaml", "--run-dir", run_dir, f"--data.path={dataset}",
        "--model.modalities=[]", "--mat.enabled=false", "--train.lr=1e-3", f"--train.epochs={args.epochs}",
        f"--eval.every_epochs={args.every}", f"--train.early_stopping.patience={args.patience}",
        f"--train.threads={args.threads}", "--eval.splits=[valid,test]", "--train.keep_checkpoints=2",
        *(["--resume"] if args.resume else [])]
    if train:
        run(*train)
    results = json.load(open(os.path.join(run_dir, "results.json")))
    selection = results["selection"]
    best = selection["selected"]
    query = ("<http://dbpedia.org/resource/Barack_Obama>", "<http://dbpedia.org/ontology/party>")
    predicted = run("predict", run_dir, "--head", query[0], "--relation", query[1], "--top", "10", capture=True)
    print(predicted)
    with open(os.path.join(out, "predict.txt"), "w") as fh:
        fh.write(predicted)
    run("export", run_dir, os.path.join(work, "export"), "--overwrite")
    shutil.copy(os.path.join(run_dir, "results.md"), os.path.join(out, "results.md"))
    summary = {"command": "python benchmarks/db15k_selection.py " + " ".join(sys.argv[1:]),
               "config": "configs/db15k.yaml, structure-only RotatE, d=250, 128 negatives, Adam 1e-3",
               "selection": selection, "trained_epochs": results["train"]["epochs"],
               "train_seconds_last_invocation": round(results["train"]["seconds"], 1),
               "selected_valid_mrr": best["value"] if best else None,
               "test": {k: results["test"][k] for k in ("mrr", "mr", "hits@1", "hits@3", "hits@10", "amri", "count",
                                                        "protocol")},
               "test_per_category": {c: {k: v[k] for k in ("mrr", "hits@10", "count")}
                                     for c, v in results["test"]["per_category"].items()},
               "valid_all_triples": {k: results["valid"][k] for k in ("mrr", "hits@10", "count")},
               "machine": machine()}
    write_json(os.path.join(out, "selection.json"), summary)
    fig, ax = new_plot()
    history = selection["history"]
    ax.plot([h["epoch"] for h in history], [h["value"] for h in history], marker="o", label="valid MRR (not in train)")
    if best:
        ax.axvline(best["epoch"], color="gray", linestyle="--", label=f"selected: epoch {best['epoch']}")
    save_plot(fig, ax, os.path.join(out, "validation.png"), "epoch", "filtered MRR", "DB15K model selection")
    print(json.dumps({k: summary[k] for k in ("trained_epochs", "selected_valid_mrr", "test")}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
