"""A study's report in its folder: ``summary.md`` (every trial, the best against the hand-set config),
``trials.csv``, ``best.yaml`` (a config ``train --config`` accepts: the base config with the best trial's
values) and PNG plots (optimisation history, parameter importances, parallel coordinates)."""
from __future__ import annotations

import io
import logging
import os
import warnings

from ..config import Config, config_from, config_yaml
from ..outputs import write_atomic
from .space import Param

log = logging.getLogger("mmkgc_dist")
PLOTS = ("history", "importances", "parallel")


def best_trial(study):
    """The best complete trial, or None."""
    from optuna.trial import TrialState
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return None
    pick = max if study.direction.name == "MAXIMIZE" else min
    return pick(complete, key=lambda t: t.value)


def best_config(study, base: Config) -> Config | None:
    best = best_trial(study)
    return None if best is None else config_from(base, dict(best.params))


def write_report(study, study_dir: str, params: list[Param], base: Config, plots: bool = True) -> None:
    frame = trials_frame(study, params)
    write_atomic(os.path.join(study_dir, "trials.csv"), frame.to_csv(index=False))
    write_atomic(os.path.join(study_dir, "summary.md"), summary(study, frame, base))
    cfg = best_config(study, base)
    if cfg is not None:
        write_atomic(os.path.join(study_dir, "best.yaml"),
                     f"# the best trial of study {study.study_name} (trial {best_trial(study).number}): the study's "
                     f"base config with its values\n" + config_yaml(cfg))
    if plots:
        write_plots(study, os.path.join(study_dir, "plots"))


def trials_frame(study, params: list[Param]):
    """One row per trial: number, state, value, the parameters, epochs, the reason it stopped, its run folder."""
    import pandas as pd
    rows = []
    for t in study.get_trials(deepcopy=False):
        row = {"trial": t.number, "state": t.state.name.lower(), "value": t.value,
               "baseline": bool(t.user_attrs.get("baseline", False))}
        row.update({p.key: t.params.get(p.key) for p in params})
        row["epochs_validated"] = len(t.intermediate_values)
        row["selected_epoch"] = t.user_attrs.get("epoch")
        row["seconds"] = round(t.duration.total_seconds(), 1) if t.duration else None
        row["note"] = t.user_attrs.get("failure") or t.user_attrs.get("stopped") or ""
        row["run_dir"] = t.user_attrs.get("run_dir", "")
        rows.append(row)
    return pd.DataFrame(rows, columns=["trial", "state", "value", "baseline", *[p.key for p in params],
                                       "epochs_validated", "selected_epoch", "seconds", "note", "run_dir"])


def summary(study, frame, base: Config) -> str:
    metric = f"valid {base.eval.select_by}"
    counts = frame["state"].value_counts().to_dict() if len(frame) else {}
    out = io.StringIO()
    out.write(f"# Study {study.study_name}\n\nObjective: {study.direction.name.lower()} {metric} (model selection's "
              f"metric; validation triples seen in training excluded when eval.exclude_train_overlap). "
              f"Trials: {len(frame)} ({', '.join(f'{v} {k}' for k, v in sorted(counts.items())) or 'none'}).\n\n")
    best = best_trial(study)
    base_rows = frame[frame["baseline"] & (frame["state"] == "complete")] if len(frame) else frame
    if best is not None:
        out.write(f"Best: trial {best.number}, {metric} **{best.value:.4f}** "
                  f"(`train --config best.yaml` trains it again).\n")
        if len(base_rows):
            hand = base_rows.iloc[0]
            out.write(f"Hand-set config (trial {int(hand['trial'])}, the base config's values): {metric} "
                      f"{hand['value']:.4f}; best − hand-set = {best.value - hand['value']:+.4f}.\n")
        out.write("\n")
    shown = frame.drop(columns=["baseline"]).copy() if len(frame) else frame
    if len(shown):
        shown.insert(1, "", ["hand-set" if b else "" for b in frame["baseline"]])
        out.write(_markdown(shown))
    return out.getvalue()


def _markdown(frame) -> str:
    def cell(v):
        if v is None or (isinstance(v, float) and v != v):
            return ""
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v).replace("|", "\\|")
    head = "| " + " | ".join(frame.columns) + " |\n|" + "---|" * len(frame.columns) + "\n"
    return head + "".join("| " + " | ".join(cell(v) for v in row) + " |\n"
                          for row in frame.itertuples(index=False))


def write_plots(study, folder: str) -> dict[str, str]:
    """The three PNGs (matplotlib, headless); a plot Optuna cannot draw yet (too few complete trials) is
    skipped with a note in the log. Returns {plot: note} for the skipped ones."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as vis
    os.makedirs(folder, exist_ok=True)
    skipped = {}
    draw = {"history": vis.plot_optimization_history, "importances": vis.plot_param_importances,
            "parallel": vis.plot_parallel_coordinate}
    for name in PLOTS:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                warnings.simplefilter("ignore", UserWarning)
                axes = draw[name](study)
            figure = (axes.flat[0] if hasattr(axes, "flat") else axes).figure
            figure.set_size_inches(9, 5.5)
            figure.tight_layout()
            buffer = io.BytesIO()
            figure.savefig(buffer, format="png", dpi=110)
            plt.close(figure)
            write_atomic(os.path.join(folder, f"{name}.png"), buffer.getvalue())
        except (ValueError, RuntimeError, ZeroDivisionError, ImportError) as exc:
            skipped[name] = " ".join(str(exc).split())
            log.info("tune: plot %s skipped: %s", name, skipped[name])
    return skipped
