"""Shared helpers of the benchmark scripts: results folder, machine facts, atomic JSON."""
from __future__ import annotations

import json
import os
import platform
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATASETS = os.path.join(os.path.dirname(REPO), "shared", "datasets")


def results_dir(name: str) -> str:
    path = os.path.join(REPO, "results", name)
    os.makedirs(path, exist_ok=True)
    return path


def machine() -> dict:
    import torch
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d %H:%M")}


def peak_rss_mib() -> float:
    """This process's own peak resident memory since exec (VmHWM), MiB; not rusage's ru_maxrss, which for a
    child starts from the parent's RSS at fork time."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def write_json(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(obj, fh, indent=2)
    os.replace(tmp, path)


def write_report(path: str, lines: list[str]) -> None:
    """A benchmark's markdown table: written to ``path`` and printed."""
    with open(path, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    print("\n".join(lines))


def new_plot(size=(6, 4)):
    """A figure and axes on the non-interactive backend (benchmarks run headless)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=size)


def save_plot(fig, ax, path: str, xlabel: str, ylabel: str, title: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


VARIANTS = ("rotate", "adamf", "adamf-mat")          # configs/variants/<name>.yaml


def variant_overrides(name: str) -> list[tuple[str, str]]:
    """A model variant (configs/variants/NAME.yaml) as dotted config overrides, to lay over a recipe."""
    import yaml

    path = os.path.join(REPO, "configs", "variants", f"{name}.yaml")
    if not os.path.isfile(path):
        known = sorted(f[:-5] for f in os.listdir(os.path.dirname(path)) if f.endswith(".yaml"))
        raise SystemExit(f"unknown variant {name!r}; configs/variants has {', '.join(known)}")
    with open(path) as fh:
        tree = yaml.safe_load(fh) or {}

    def leaves(node, prefix=""):
        for key, value in node.items():
            if isinstance(value, dict):
                yield from leaves(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", json.dumps(value)
    return list(leaves(tree))


def mean_std(values) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof = 1; 0 for a single value) — what every ± in BENCHMARKS.md means."""
    import numpy as np

    values = np.asarray(list(values), dtype=float)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0
