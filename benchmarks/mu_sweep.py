"""Does MAT help, and at which μ? AdaMF (MAT off) against AdaMF-MAT at each μ, same seeds and budget, filtered test
MRR with realistic and optimistic ties side by side (optimistic: the reference Tester's rule).

    python benchmarks/mu_sweep.py                                   # the generated default graph
    python benchmarks/mu_sweep.py --data db15k=data/db15k --seeds 1,2,3 --epochs 40 --device cuda

--mus lists the μ values (default 1e-4,1e-3,1e-2,1e-1; 0 keeps the generators training without the adversarial
term, which separates the term's effect from MAT's side effects); --rate drops text for that fraction of entities
(the paper's claim is about missing modalities); --select-every K validates every K epochs and tests the best
validation-MRR checkpoint (the users' workflow, train.early_stopping.patience applies; 0 tests the last model);
--set KEY=VALUE applies to every run. A μ "helps" when its mean MRR
beats MAT off by more than twice the larger seed standard deviation. Writes results/mu_sweep/{runs.jsonl,
mu_sweep.json, mu_sweep.md, mu_sweep.png}.
"""
from __future__ import annotations

import json
import os
import shlex
import sys
import tempfile
import time


from _common import machine, mean_std, new_plot, results_dir, save_plot, variant_overrides, write_json
from mmkgc_dist.config import load_config
from mmkgc_dist.training.lifecycle import select_best
from mmkgc_dist.compose import local_trainer
from modality import drop_text, sweep_arguments, sweep_data

TIES = ("realistic", "optimistic")
BASELINES = ("rotate", "off")      # the variants without MAT; every other key is a μ


def overrides_of(key: str) -> list[tuple[str, str]]:
    """``key``: "rotate" (structure only), "off" (AdaMF, MAT off) or repr(μ) (AdaMF-MAT at μ); configs/variants."""
    if key in ("rotate", "off"):
        return variant_overrides("rotate" if key == "rotate" else "adamf")
    return variant_overrides("adamf-mat") + [("mat.mu", key)]


def label(key: str) -> str:
    return {"rotate": "RotatE (structure only)", "off": "AdaMF (MAT off)"}.get(key, f"AdaMF-MAT, μ = {key}")


def train_and_test(args, data, recipe: str | None, key: str, seed: int) -> dict:
    """One run of variant ``key`` (overrides_of); test metrics under both tie rules."""
    overrides = overrides_of(key) + [("train.seed", str(seed)), ("train.device", args.device)] + \
        ([("train.epochs", str(args.epochs))] if args.epochs else []) + [tuple(s.split("=", 1)) for s in args.set]
    if args.select_every:
        overrides.append(("eval.every_epochs", str(args.select_every)))
    with tempfile.TemporaryDirectory(prefix="mu_sweep_run_") as run_dir:   # the selection's checkpoints
        trainer = local_trainer(load_config(recipe, overrides), drop_text(data, args.rate, seed),
                                run_dir if args.select_every else None, show_progress=sys.stderr.isatty())
        start = time.time()
        fit = trainer.fit()
        result = {"variant": key, "mu": None if key in BASELINES else float(key), "seed": seed,
                  "text_missing_rate": args.rate,
                  "train_seconds": round(time.time() - start, 1), "epochs_trained": fit["epochs"]}
        if args.select_every:
            report = select_best(trainer, run_dir, lambda line: print(line, file=sys.stderr))
            result["selected"] = {k: (report["selected"] or {}).get(k) for k in ("epoch", "value")}
            result["valid_history"] = [(h["epoch"], h["value"]) for h in report["history"]]
        for ties in TIES:
            test = trainer.evaluate("test", ties=ties, breakdown=False)
            result[ties] = {k: test[k] for k in ("mrr", "hits@1", "hits@10")}
    return result


def summarise(runs: list[dict], keys: list[str]) -> dict:
    """Mean ± sample std (ddof = 1) of test MRR per variant and tie rule; the gain of each AdaMF-MAT μ over MAT
    off."""
    def stats(key, ties):
        values = [r[ties]["mrr"] for r in runs if r["variant"] == key]
        mean, std = mean_std(values)
        return {"mean": mean, "std": std, "n": len(values)}
    out = {}
    for ties in TIES:
        off = stats("off", ties) if "off" in keys else None
        rows = {}
        for key in keys:
            rows[key] = stats(key, ties)
            if key not in BASELINES and off is not None:
                gain = rows[key]["mean"] - off["mean"]
                rows[key].update(gain=gain, helps=rows[key]["n"] > 1 and off["n"] > 1   # one seed has no spread
                                and gain > 2 * max(rows[key]["std"], off["std"]))
        out[ties] = rows
    return out


def main() -> int:
    ap = sweep_arguments(__doc__)
    ap.add_argument("--mus", default="1e-4,1e-3,1e-2,1e-1")
    ap.add_argument("--rate", type=float, default=0.0, help="fraction of entities whose text is dropped")
    ap.add_argument("--select-every", type=int, default=0,
                    help="validate every K epochs and test the best checkpoint (0: test the last model)")
    ap.add_argument("--rotate", action="store_true", help="add structure-only RotatE with the same budget")
    ap.add_argument("--no-off", action="store_true",
                    help="leave out AdaMF with MAT off (run in another invocation; no gains are computed)")
    args = ap.parse_args()
    name, recipe, data = sweep_data(args)
    mus = [float(m) for m in args.mus.split(",") if m.strip()]   # "": the baselines only
    keys = (["rotate"] if args.rotate else []) + ([] if args.no_off else ["off"]) + list(map(repr, mus))
    seeds = [int(s) for s in args.seeds.split(",")]
    out = args.out or results_dir("mu_sweep")
    os.makedirs(out, exist_ok=True)
    runs = []
    for key in keys:
        for seed in seeds:
            result = train_and_test(args, data, recipe, key, seed)
            runs.append(result)
            print(json.dumps(result), flush=True)
            with open(os.path.join(out, "runs.jsonl"), "a") as fh:
                fh.write(json.dumps(result) + "\n")
    summary = summarise(runs, keys)
    lines = [f"{name}, text missing for {100 * args.rate:.0f}% of entities, seeds {seeds}; filtered test MRR, "
             f"mean ± std (gain: AdaMF-MAT − AdaMF; helps: gain > 2 × the larger std)", "",
             "| variant | MRR (realistic ties) | gain | helps | MRR (optimistic ties) | gain | helps | selected epoch |",
             "|---|---|---|---|---|---|---|---|"]
    for key in keys:
        cells = []
        for ties in TIES:
            row = summary[ties][key]
            cells += [f"{row['mean']:.4f} ± {row['std']:.4f}",
                      f"{row['gain']:+.4f}" if "gain" in row else "—",
                      ("yes" if row["helps"] else "no") if "helps" in row else "—"]
        selected = [str(r["selected"]["epoch"]) for r in runs if r["variant"] == key and r.get("selected")]
        lines.append(f"| {label(key)} | " + " | ".join(cells) + f" | {', '.join(selected) or '—'} |")
    table = "\n".join(lines)
    print(table)
    write_json(os.path.join(out, "mu_sweep.json"), {
        "machine": machine(), "dataset": name, "mus": mus, "seeds": seeds, "rate": args.rate, "overrides": args.set,
        "command": shlex.join(["python", "benchmarks/mu_sweep.py", *sys.argv[1:]]), "runs": runs, "summary": summary})
    with open(os.path.join(out, "mu_sweep.md"), "w") as fh:
        fh.write(table + "\n")
    shown = [m for m in mus if m > 0]          # a log axis: μ = 0 is in the table only
    if shown:
        plot_sweep(summary, shown, name, os.path.join(out, "mu_sweep.png"))
    return 0


def plot_sweep(summary: dict, shown: list[float], name: str, path: str) -> None:
    fig, ax = new_plot()
    for ties, style in (("realistic", "o-"), ("optimistic", "s--")):
        ax.errorbar(shown, [summary[ties][repr(m)]["mean"] for m in shown],
                    yerr=[summary[ties][repr(m)]["std"] for m in shown], fmt=style, label=f"AdaMF-MAT ({ties})")
        for key, color in (("off", "gray"), ("rotate", "tab:red")):
            if key in summary[ties]:
                ax.axhline(summary[ties][key]["mean"], linestyle=":" if ties == "realistic" else "-.", color=color,
                           label=f"{label(key)} ({ties})")
    ax.set_xscale("log")
    save_plot(fig, ax, path, "μ (weight of the adversarial term)", "test MRR (filtered)", f"μ sweep, {name}")


if __name__ == "__main__":
    sys.exit(main())
