"""Run folders: where a training run writes, and who may write there.

    RUN/.mmkgc-dist      marker: made by this tool, kind "run"
    RUN/.lock            pid + host of the one process writing (outputs.FolderLock)
    RUN/config.yaml, metrics.jsonl, checkpoints/, results.json, results.md, tensorboard/, sharding_plan.json,
    mlflow_run_id

Rules: a default name is unique even for runs started in the same second (the folder is created with an
atomic mkdir, suffixed -2, -3, ... when taken); ``run.name`` is a plain name inside ``run.out_dir``; a folder
that holds another run's results is refused unless ``--resume`` (continue it) or ``--overwrite`` (delete its
results — only the files a run writes, never anything else in the folder); a second writer is refused while
the first holds the lock. Partial checkpoints of a crashed run are removed when the next writer starts.
"""
from __future__ import annotations

import json
import logging
import os
import time

from .checkpoint import BEST, clean_temporaries, delete, list_checkpoints
from .config import config_yaml, load_config
from .errors import DataError, OutputError
from .outputs import (FolderLock, default_mode, local_path, marker_field, marker_kind, real_path, refuse_links,
                       remove_owned, within, write_atomic, write_marker)

log = logging.getLogger("mmkgc_dist")
RUN_FILES = ("results.json", "results.md", "metrics.jsonl", "config.yaml", "sharding_plan.json", "mlflow_run_id",
             "dataset.json")
CHECKPOINT_FILES = (BEST,)          # besides the step-N checkpoints: model selection's record
RUN_FOLDERS = ("tensorboard", "known-index", "neighbour-index", "answer-index")   # predict's indexes


def _make_folder(path: str, what: str) -> None:
    try:
        os.makedirs(path, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise OutputError(f"{what} {path}: a file is in the way; expected a folder")
    except PermissionError:
        raise OutputError(f"{what} {path}: permission denied")


def elastic_job() -> str | None:
    """torchrun's id of this job (the same across its restarts), or None outside torchrun."""
    return os.environ.get("TORCHELASTIC_RUN_ID") or None


def folder_of_job(parent: str, job: str) -> str | None:
    """The run folder under ``parent`` that the elastic job ``job`` created (its marker records the id)."""
    if not os.path.isdir(parent):
        return None
    found = [os.path.join(parent, e) for e in sorted(os.listdir(parent))
             if marker_kind(os.path.join(parent, e)) == "run" and marker_field(os.path.join(parent, e), "job") == job]
    return found[-1] if found else None


def new_unique_folder(parent: str, job: str | None = None) -> str:
    """parent/<timestamp>[-k]: created atomically, so concurrent runs never share one. ``job``: the elastic job
    id, kept in the marker so a restart of the job finds its run again."""
    _make_folder(parent, "run.out_dir")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for k in range(1, 10000):
        path = os.path.join(parent, stamp if k == 1 else f"{stamp}-{k}")
        try:
            os.mkdir(path)
        except FileExistsError:
            continue
        default_mode(path)
        write_marker(path, "run", **({"job": job} if job else {}))
        return path
    raise OutputError(f"run.out_dir {parent}: no free run name for {stamp}")


def holds_run(path: str) -> bool:
    return bool(list_checkpoints(os.path.join(path, "checkpoints"))) or any(
        os.path.exists(os.path.join(path, f)) for f in ("metrics.jsonl", "results.json"))


def open_for_training(run_dir: str | None, out_dir: str, name: str, resume: bool,
                      overwrite: bool, inputs: tuple[str, ...] = ()) -> tuple[str, FolderLock]:
    """The run folder to train in, created or checked, with its lock held. It may not overlap an input (the
    dataset): a later ``prepare --overwrite`` would delete a run inside it."""
    target = run_dir or (os.path.join(out_dir, name) if name else out_dir)
    for source in inputs:
        src = local_path(source) if source else None
        if src is not None and (within(real_path(target), real_path(src)) or within(real_path(src), real_path(target))):
            raise OutputError(f"{'--run-dir' if run_dir else 'run.out_dir'} {target}: overlaps the dataset {source}; "
                              f"keep runs outside the dataset folder")
    if not run_dir and not name:
        # an elastic restart continues the run its job created (resume=True then), never a new timestamped one
        earlier = folder_of_job(out_dir, elastic_job()) if resume and elastic_job() else None
        path = earlier or new_unique_folder(out_dir, elastic_job())
        lock = FolderLock(path, "run folder").acquire()
        clean_temporaries(os.path.join(path, "checkpoints"))
        return path, lock
    path = run_dir or os.path.join(out_dir, name)
    what = "--run-dir" if run_dir else "run.out_dir/run.name"
    if os.path.lexists(path) and not os.path.isdir(path):
        raise OutputError(f"{what} {path}: exists and is not a folder; expected a run folder")
    if os.path.isdir(path) and os.listdir(path):
        kind = marker_kind(path)          # the marker or nothing: no guessing from the files inside
        if kind is None:
            raise OutputError(f"{what} {path}: folder is not empty and was not made by mmkgc-dist; refusing to "
                              f"write a run into it — give a new folder")
        elif kind != "run":
            raise OutputError(f"{what} {path}: holds an mmkgc-dist {kind}, not a run")
    else:
        _make_folder(path, what)
        write_marker(path, "run")
    lock = FolderLock(path, "run folder").acquire()
    try:
        refuse_links(path, RUN_FILES + RUN_FOLDERS + ("checkpoints",))
        if holds_run(path) and not (resume or overwrite):
            steps = [c.step for c in list_checkpoints(os.path.join(path, "checkpoints"))]
            held = f"checkpoints up to step {max(steps)}" if steps else "metrics of an earlier run"
            raise OutputError(f"{what} {path}: holds another run ({held}); pass --resume to continue it or "
                              f"--overwrite to replace its results")
        if overwrite and not resume:
            remove_run_results(path)
        clean_temporaries(os.path.join(path, "checkpoints"))
    except BaseException:
        lock.release()
        raise
    return path, lock


def remove_run_results(path: str) -> None:
    """Everything of the earlier run that can influence a result — its checkpoints, the selection record
    (best.json), its config, metrics and results — and nothing else (a user's files in the folder stay)."""
    removed = []
    checkpoints = os.path.join(path, "checkpoints")
    for ckpt in list_checkpoints(checkpoints):
        delete(ckpt)
        removed.append(ckpt.path)
    clean_temporaries(checkpoints)
    for f in CHECKPOINT_FILES:
        if os.path.lexists(os.path.join(checkpoints, f)):
            remove_owned(os.path.join(checkpoints, f))
            removed.append(f"checkpoints/{f}")
    for f in RUN_FILES + RUN_FOLDERS:
        if os.path.lexists(os.path.join(path, f)):
            remove_owned(os.path.join(path, f))
            removed.append(f)
    if removed:
        log.warning("--overwrite: removed the earlier run's results in %s (%d items)", path, len(removed))


def record_config(run_dir: str, cfg) -> None:
    """config.yaml is written once, when the run is created: a resumed run keeps the config it was created with
    (``config.resumed_config`` refuses changes to the model or data), so evaluate/predict/export of the run
    always rebuild the model it trained."""
    path = os.path.join(run_dir, "config.yaml")
    if not os.path.lexists(path):
        write_atomic(path, config_yaml(cfg))


DATASET_RECORD = "dataset.json"


def record_dataset(run_dir: str, data, path: str) -> None:
    """The identity of the dataset version a run trains on (``data.format.dataset_identity``), recorded once,
    when the run is created."""
    record = os.path.join(run_dir, DATASET_RECORD)
    if not os.path.lexists(record):
        write_atomic(record, json.dumps({"name": data.name, "path": path, "identity": data.identity}, indent=2))


def check_dataset(run_dir: str, data, path: str) -> None:
    """Refuse (DataError, one line) a dataset other than the version the run trained on: resuming, evaluating,
    exporting or predicting with another graph under the same name would silently give another model's
    numbers. Runs from before the record: nothing to compare."""
    record = os.path.join(run_dir, DATASET_RECORD)
    if not os.path.lexists(record):
        return
    try:
        with open(record) as fh:
            recorded = json.load(fh)
        want = recorded["identity"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{record}: unreadable dataset record ({exc}); expected the JSON this tool writes")
    if want != data.identity:
        raise DataError(f"{path}: is not the dataset version {run_dir} trained on (identity {want[:12]} recorded "
                        f"in {DATASET_RECORD}, {data.identity[:12]} now — it was re-prepared or changed since); "
                        f"give that version with --data.path=..., or train a new run")


def created_config(path: str):
    """The config a run folder was created with, or None when ``path`` holds no run of ours."""
    config = os.path.join(path, "config.yaml")
    if marker_kind(path) != "run" or not os.path.isfile(config):
        return None
    return load_config(config)


def open_for_reading(run_dir: str) -> str:
    """A run folder to evaluate or export from: must exist and hold a run's config."""
    if not os.path.isdir(run_dir):
        raise OutputError(f"{run_dir}: not a run folder ({'a file' if os.path.exists(run_dir) else 'not found'})")
    if not os.path.isfile(os.path.join(run_dir, "config.yaml")):
        raise OutputError(f"{run_dir}: no config.yaml; is this a run folder written by `mmkgc-dist train`?")
    return run_dir


def dataset_location(cfg) -> str:
    """How a run's dataset is named in messages: its path, or the generated graph."""
    return cfg.data.path if cfg.data.source == "parquet" else "the generated graph (data.synthetic)"
