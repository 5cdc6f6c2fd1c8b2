"""Trackers: where a run's records go. One interface — ``log(kind, **fields)`` and ``close()`` — with
``Trackers`` fanning each record out to every configured tracker:

- JSONL (always): one JSON object per line in RUN/metrics.jsonl, flushed as written (tail -f friendly);
- TensorBoard (``run.tensorboard=true``; needs the ``tensorboard`` package): the numeric fields as scalars;
- MLflow (``run.mlflow_uri``, e.g. ``file:./mlruns`` or a tracking server; needs ``mlflow-skinny``): the config
  as parameters, numeric fields as metrics, results.json/results.md as artifacts. A resumed run continues the
  same MLflow run (its id is kept in RUN/mlflow_run_id). A ``file:`` URI uses MLflow's file store, which MLflow 3
  keeps behind ``MLFLOW_ALLOW_FILE_STORE``: it is switched on for this process, and the log says so.

TensorBoard and MLflow name a series ``kind/name``, or ``kind/split/name`` when the record names a split, so
validation and test metrics are never one series (``eval/valid/mrr``, ``eval/test/mrr``).
"""
from __future__ import annotations

import errno
import json
import logging
import os
import re
import time

log = logging.getLogger("mmkgc_dist")


class JsonlTracker:
    def __init__(self, path: str):
        self.path = path
        self._fh = open(path, "a")
        self._start = time.time()

    def log(self, kind: str, **fields) -> None:
        record = {"kind": kind, "time": round(time.time() - self._start, 3), **fields}
        try:
            self._fh.write(json.dumps(record) + "\n")
            self._fh.flush()
        except OSError as exc:
            from ..errors import OutputError
            reason = "disk full" if exc.errno == errno.ENOSPC else exc.strerror or str(exc)
            raise OutputError(f"{self.path}: could not write metrics ({reason})") from exc

    def close(self) -> None:
        self._fh.close()


def _series(kind: str, fields: dict) -> dict:
    """{series name: value} of a record's numeric fields; the split, when the record names one, is part of the
    name (validation and test are different series)."""
    prefix = f"{kind}/{fields['split']}" if isinstance(fields.get("split"), str) else kind
    return {f"{prefix}/{k}": v for k, v in fields.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("step", "epoch")}


class TensorBoardTracker:
    def __init__(self, folder: str):
        from torch.utils.tensorboard import SummaryWriter   # raises if tensorboard is not installed
        self._writer = SummaryWriter(folder)

    def log(self, kind: str, **fields) -> None:
        if "step" in fields:
            for name, value in _series(kind, fields).items():
                self._writer.add_scalar(name, value, fields["step"])

    def close(self) -> None:
        self._writer.close()


class MLflowTracker:
    def __init__(self, uri: str, experiment: str, run_dir: str, params: dict):
        if (uri.startswith("file:") or "://" not in uri) and "MLFLOW_ALLOW_FILE_STORE" not in os.environ:
            # MLflow 3 keeps its file store in maintenance mode behind this switch; it is the offline option.
            os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
            log.info("run.mlflow_uri=%s: MLflow's file store (maintenance mode in MLflow 3) switched on for this "
                     "process (MLFLOW_ALLOW_FILE_STORE=true); use a tracking server URI to avoid it", uri)
        import mlflow

        self._mlflow, self.run_dir = mlflow, run_dir
        mlflow.set_tracking_uri(uri)
        mlflow.set_experiment(experiment)
        id_file = os.path.join(run_dir, "mlflow_run_id")
        run_id = open(id_file).read().strip() if os.path.isfile(id_file) else None
        self.run = mlflow.start_run(run_id=run_id, run_name=os.path.basename(os.path.abspath(run_dir)))
        if run_id is None:
            with open(id_file, "w") as fh:
                fh.write(self.run.info.run_id)
            mlflow.log_params({_name(k): str(v)[:500] for k, v in params.items()})

    def log(self, kind: str, **fields) -> None:
        series = _series(kind, fields)
        if series:
            self._mlflow.log_metrics({_name(k): float(v) for k, v in series.items()}, step=int(fields.get("step", 0)))

    def close(self, status: str = "FINISHED") -> None:
        for name in ("results.json", "results.md"):
            path = os.path.join(self.run_dir, name)
            if os.path.isfile(path) and status == "FINISHED":
                self._mlflow.log_artifact(path)
        self._mlflow.end_run(status=status)


def _name(key: str) -> str:
    """An MLflow-valid key: hits@10 → hits_at_10; other characters MLflow refuses → _."""
    return re.sub(r"[^A-Za-z0-9_\-. :/]", "_", key.replace("@", "_at_"))


class Trackers:
    """Every configured tracker, behind one ``log``/``close``; none on ranks other than 0 (run_dir None)."""

    def __init__(self, trackers: list):
        self.trackers = trackers

    def log(self, kind: str, **fields) -> None:
        for tracker in self.trackers:
            tracker.log(kind, **fields)

    def close(self, status: str = "FINISHED") -> None:
        """``status``: FINISHED, or KILLED (stopped by a signal) / FAILED — MLflow shows the run as such."""
        for tracker in self.trackers:
            tracker.close(status) if isinstance(tracker, MLflowTracker) else tracker.close()
        self.trackers = []


PLUGIN_GROUP = "mmkgc_dist.trackers"     # entry points of installed distributions: name = module:TrackerClass


def plugin_tracker(name: str, run_dir: str, params: dict):
    """An installed plugin's tracker (``run.trackers``), built as ``Class(run_dir, params)``."""
    from importlib.metadata import entry_points

    from ..errors import ConfigError
    found = {ep.name: ep for ep in entry_points(group=PLUGIN_GROUP)}
    if name not in found:
        raise ConfigError(f"run.trackers: unknown tracker {name!r}; installed: {sorted(found) or 'none'} "
                          f"(plugins declare the entry-point group {PLUGIN_GROUP!r})")
    try:
        tracker = found[name].load()(run_dir, params)
    except Exception as exc:       # noqa: BLE001 — a plugin can fail in any way
        raise ConfigError(f"run.trackers: the tracker {name!r} ({found[name].value}) failed to start: "
                          f"{type(exc).__name__}: {exc}")
    if not (callable(getattr(tracker, "log", None)) and callable(getattr(tracker, "close", None))):
        raise ConfigError(f"run.trackers: {name!r} ({found[name].value}) has no log(kind, **fields) and close()")
    return tracker


def make_trackers(run_dir: str | None, run_cfg, params: dict) -> Trackers:
    if not run_dir:
        return Trackers([])
    trackers = [JsonlTracker(os.path.join(run_dir, "metrics.jsonl"))]
    if run_cfg.tensorboard:
        trackers.append(TensorBoardTracker(os.path.join(run_dir, "tensorboard")))
    if run_cfg.mlflow_uri:
        trackers.append(MLflowTracker(run_cfg.mlflow_uri, run_cfg.mlflow_experiment, run_dir, params))
    trackers += [plugin_tracker(name, run_dir, params) for name in run_cfg.trackers]
    return Trackers(trackers)
