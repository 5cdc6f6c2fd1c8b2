"""Runs side by side (``mmkgc-dist compare RUN|STUDY ...``): one row per run — what it trained on and fused, under
which protocol it was tested, which epoch model selection chose, its metrics — and one plot of the runs'
validation curves. A study folder stands for its trials' runs. Nothing is loaded but results.json."""
from __future__ import annotations

import json
import os

from ..errors import OutputError
from ..outputs import atomic_file

METRICS = ("mrr", "mr", "hits@1", "hits@3", "hits@10")


def run_folders(paths) -> list[str]:
    """Run folders of ``paths``: a run (its results.json), or a study (its trials' runs, in trial order)."""
    found = []
    for path in map(os.fspath, paths):
        if os.path.isfile(os.path.join(path, "results.json")):
            found.append(path)
        elif os.path.isdir(os.path.join(path, "trials")):
            trials = sorted((t for t in os.listdir(os.path.join(path, "trials")) if t.isdigit()), key=int)
            found += [os.path.join(path, "trials", t) for t in trials
                      if os.path.isfile(os.path.join(path, "trials", t, "results.json"))]
            if not trials:
                raise OutputError(f"{path}: a study folder without trials yet")
        else:
            raise OutputError(f"{path}: neither a run folder (no results.json: still training, or not a run) nor a "
                              f"study folder (no trials/)")
    return found


def read_results(run_dir: str) -> dict:
    try:
        with open(os.path.join(run_dir, "results.json")) as fh:
            results = json.load(fh)
    except (OSError, ValueError) as exc:
        raise OutputError(f"{run_dir}/results.json: not readable ({exc})")
    if not isinstance(results, dict):
        raise OutputError(f"{run_dir}/results.json: not a run's results")
    return results


def row(run_dir: str, results: dict) -> dict:
    """One run's line of the table."""
    model = results.get("model") or {}
    test = next((results[s] for s in ("test", "valid") if isinstance(results.get(s), dict)), {})
    selected = (results.get("selection") or {}).get("selected") or {}
    fused = model.get("fused")
    return {"run": run_dir, "dataset": (results.get("run") or {}).get("dataset", "?"),
            "model": f"{model.get('scoring', '?')} d={model.get('dim', '?')}",
            "fused": "?" if fused is None else (", ".join(fused) or "structure"),
            "mat": {True: "on", False: "off"}.get(model.get("mat"), "?"),
            "split": test.get("split", "-"), "protocol": test.get("protocol", "-"), "ties": test.get("ties", "-"),
            "selected epoch": selected.get("epoch", "-"),
            **{m: test.get(m) for m in METRICS}}


def table(rows: list[dict]) -> str:
    """Aligned text columns; metrics to 4 places (MR to 1)."""
    def cell(key, value):
        if value is None:
            return "-"
        if key in METRICS:
            return f"{value:.1f}" if key == "mr" else f"{value:.4f}"
        return str(value)
    keys = list(rows[0])
    cells = [[cell(k, r[k]) for k in keys] for r in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    line = lambda values: "  ".join(v.ljust(w) for v, w in zip(values, widths)).rstrip()  # noqa: E731
    return "\n".join([line(keys), line(["-" * w for w in widths])] + [line(c) for c in cells])


def plot_curves(runs: list[tuple[str, dict]], out: str) -> int:
    """The validation curves (model selection's history) of the runs into a PNG; how many curves."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    drawn, metric = 0, None
    for name, results in runs:
        selection = results.get("selection") or {}
        history = selection.get("history") or []
        if history:
            metric = selection.get("metric", metric)
            ax.plot([h["epoch"] for h in history], [h["value"] for h in history], marker="o", label=name)
            drawn += 1
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"validation {metric or 'metric'}")
    ax.set_title("validation curves")
    if drawn:
        ax.legend(fontsize="small")
    fig.tight_layout()
    with atomic_file(out) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return drawn


def compare(paths, plot: str | None = "compare.png") -> tuple[list[dict], str]:
    """(rows, printable table) of the runs of ``paths``; their validation curves into ``plot``."""
    folders = run_folders(paths)
    if not folders:
        raise OutputError(f"{', '.join(map(str, paths))}: no finished run to compare")
    runs = [(folder, read_results(folder)) for folder in folders]
    rows = [row(folder, results) for folder, results in runs]
    if plot:
        plot_curves(runs, plot)
    return rows, table(rows)
