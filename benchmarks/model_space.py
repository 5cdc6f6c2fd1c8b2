"""The model space on one dataset, every variant with the same budget and protocol: scoring functions ×
{structure-only, AdaMF, AdaMF-MAT} × {today's regime, reciprocal + N3 + 1-vs-all}, plus the multi-modal baselines
(IKRL, TBKGC), each trained, selected on validation and tested.

    python benchmarks/model_space.py                                  # the generated default graph
    python benchmarks/model_space.py --data db15k=data/db15k --seeds 1,2,3 --epochs 32 --select-every 4

--scorers, --fusions (structure, adamf, adamf-mat), --regimes (today, lacroix) and --baselines pick the grid;
--set KEY=VALUE applies to every run, --lacroix-set KEY=VALUE to the reciprocal + N3 + 1-vs-all regime only.
Each row states its protocol (features, epochs and selection, corruption side, tie policy, learning rate,
negatives); ± is the sample standard deviation (ddof = 1) over seeds. Writes results/model_space/{runs.jsonl,
model_space.json, model_space.md}; runs.jsonl is appended run by run, so an interrupted grid keeps its runs.
"""
from __future__ import annotations

import json
import os
import shlex
import sys
import tempfile
import time

from _common import machine, mean_std, results_dir, variant_overrides, write_json
from mmkgc_dist.config import load_config
from mmkgc_dist.training.lifecycle import select_best
from mmkgc_dist.compose import local_trainer
from modality import sweep_arguments, sweep_data

FUSIONS = {"structure": "rotate", "adamf": "adamf", "adamf-mat": "adamf-mat"}     # configs/variants/<name>.yaml


def grid(args) -> list[tuple[str, list[tuple[str, str]]]]:
    """(label, overrides) of every variant asked for."""
    cells = []
    for regime in args.regimes.split(","):
        extra = variant_overrides("lacroix") + [tuple(s.split("=", 1)) for s in args.lacroix_set] \
            if regime == "lacroix" else []         # configs/variants/lacroix.yaml
        for fusion in args.fusions.split(","):
            for scorer in args.scorers.split(","):
                cells.append((f"{scorer} / {fusion} / {regime}",
                              variant_overrides(FUSIONS[fusion]) + [("model.scoring", scorer)] + extra))
    for baseline in filter(None, args.baselines.split(",")):
        cells.append((f"{baseline} (baseline)", variant_overrides("adamf") + [("model.scoring", baseline)]))
    return cells


def protocol(cfg, args, fused: list[str]) -> str:
    """What a row's number depends on besides the model, in one line (``fused``: the modalities the run fused,
    which ``model.modalities: auto`` leaves to the dataset)."""
    features = ", ".join(fused) if fused else "none (structure only)"
    selection = f"best of validation every {args.select_every} epochs" if args.select_every else "last model"
    negatives = "1-vs-all cross-entropy" if cfg.train.negatives == "all" else \
        f"{cfg.train.num_negatives} {cfg.train.negatives} negatives, self-adversarial"
    tested = f"a seeded sample of {cfg.eval.max_queries} test triples" if cfg.eval.max_queries else "every test triple"
    return (f"features: {features}; {cfg.train.epochs} epochs, {selection}; {tested}; corruption side "
            f"{cfg.train.corruption_side}; ties {cfg.eval.ties}; lr {cfg.train.lr}; {negatives}; "
            f"reciprocal {cfg.model.reciprocal}; regularizer {cfg.model.regularizer} {cfg.model.regularizer_weight}")


def run(args, data, recipe, label: str, overrides, seed: int) -> dict:
    overrides = overrides + [("train.seed", str(seed)), ("train.device", args.device)] + \
        ([("train.epochs", str(args.epochs))] if args.epochs else []) + [tuple(s.split("=", 1)) for s in args.set]
    if args.select_every:
        overrides.append(("eval.every_epochs", str(args.select_every)))
    cfg = load_config(recipe, overrides)
    with tempfile.TemporaryDirectory(prefix="model_space_run_") as run_dir:
        trainer = local_trainer(cfg, data, run_dir if args.select_every else None, show_progress=sys.stderr.isatty())
        start = time.time()
        fit = trainer.fit()
        result = {"variant": label, "seed": seed, "protocol": protocol(cfg, args, trainer.modalities), "overrides": overrides,
                  "train_seconds": round(time.time() - start, 1), "epochs_trained": fit["epochs"]}
        if args.select_every:
            report = select_best(trainer, run_dir, lambda line: print(line, file=sys.stderr))
            result["selected"] = {k: (report["selected"] or {}).get(k) for k in ("epoch", "value")}
            result["valid_history"] = [(h["epoch"], h["value"]) for h in report["history"]]
        test = trainer.evaluate("test", breakdown=False)
        result["test"] = {k: test[k] for k in ("mrr", "hits@1", "hits@3", "hits@10")}
    return result


def table(runs: list[dict], labels: list[str]) -> tuple[str, dict]:
    summary, lines = {}, ["| variant | seeds | test MRR | Hits@1 | Hits@10 | selected epochs | train s / run | "
                          "protocol |", "|---|---|---|---|---|---|---|---|"]
    for label in labels:
        rows = [r for r in runs if r["variant"] == label]
        if not rows:
            continue
        mrr, std = mean_std(r["test"]["mrr"] for r in rows)
        h1, _ = mean_std(r["test"]["hits@1"] for r in rows)
        h10, _ = mean_std(r["test"]["hits@10"] for r in rows)
        summary[label] = {"mrr": mrr, "std": std, "n": len(rows), "hits@1": h1, "hits@10": h10}
        selected = ", ".join(str((r.get("selected") or {}).get("epoch", "—")) for r in rows)
        seconds = sum(r["train_seconds"] for r in rows) / len(rows)
        lines.append(f"| {label} | {len(rows)} | {mrr:.4f} ± {std:.4f} | {h1:.3f} | {h10:.3f} | {selected} | "
                     f"{seconds:.0f} | {rows[0]['protocol']} |")
    return "\n".join(lines), summary


def main() -> int:
    ap = sweep_arguments(__doc__)
    ap.add_argument("--scorers", default="rotate,transe,distmult,complex")
    ap.add_argument("--fusions", default="structure,adamf,adamf-mat")
    ap.add_argument("--regimes", default="today,lacroix")
    ap.add_argument("--baselines", default="ikrl,tbkgc")
    ap.add_argument("--select-every", type=int, default=0,
                    help="validate every K epochs and test the best checkpoint (0: test the last model)")
    ap.add_argument("--lacroix-set", action="append", default=[], help="KEY=VALUE for the lacroix regime only")
    args = ap.parse_args()
    name, recipe, data = sweep_data(args)
    seeds = [int(s) for s in args.seeds.split(",")]
    out = args.out or results_dir("model_space")
    os.makedirs(out, exist_ok=True)
    cells, runs = grid(args), []
    for label, overrides in cells:
        for seed in seeds:
            result = run(args, data, recipe, label, list(overrides), seed)
            runs.append(result)
            print(json.dumps(result), flush=True)
            with open(os.path.join(out, "runs.jsonl"), "a") as fh:
                fh.write(json.dumps(result) + "\n")
    text, summary = table(runs, [label for label, _ in cells])
    text = f"{name}, seeds {seeds}; filtered test MRR, mean ± sample std (ddof = 1)\n\n{text}"
    print(text)
    write_json(os.path.join(out, "model_space.json"), {
        "machine": machine(), "dataset": name, "seeds": seeds, "command": shlex.join(
            ["python", "benchmarks/model_space.py", *sys.argv[1:]]), "runs": runs, "summary": summary})
    with open(os.path.join(out, "model_space.md"), "w") as fh:
        fh.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
