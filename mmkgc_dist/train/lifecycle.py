"""The run lifecycle, for one process and N ranks alike: open the run folder (rank 0, lock held; the others
learn its name or the error through the runtime), build the trainer on the runtime it is handed, resume, fit,
save, evaluate, write ``results.json``; and, for ``evaluate``/``export``, a trained model from a run folder.
``cli.py`` only parses arguments and picks the runtime (``trainers.py``)."""
from __future__ import annotations

import json
import logging
import os

from ..config import Config, load_config
from ..data.errors import DataError
from ..data.format import KGData
from ..eval.metrics import markdown_report, metric_keys
from ..integrity import checkpoint_at, newest_verified, selected_checkpoint
from ..outputs import local_path, resolve_output
from .run_folder import open_for_reading, open_for_training
from .trainer import Trainer

log = logging.getLogger("mmkgc_dist")


def write_text(path: str, text: str) -> None:
    """Written under a temporary name, then renamed: readers see the old file or the new one."""
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def write_json(path: str, obj) -> None:
    write_text(path, json.dumps(obj, indent=2))


def format_metrics(split: str, m: dict) -> str:
    hits = "  ".join(f"Hits@{k[5:]} {m[k]:.4f}" for k in metric_keys(m) if k.startswith("hits@"))
    amri = f"  AMRI {m['amri']:.4f}" if "amri" in m else ""
    return (f"{split:>5} [{m['protocol']}, ties={m['ties']}]  MRR {m['mrr']:.4f}  MR {m['mr']:.1f}  {hits}{amri}  "
            f"({m['count']} ranks)")


def describe(data: KGData) -> str:
    mods = ", ".join(f"{m} {int(f.present.sum())}/{data.num_entities}" for m, f in data.features.items()) or "none"
    splits = ", ".join(f"{s} {len(t)}" for s, t in data.splits.items())
    return f"dataset {data.name}: {data.num_entities} entities, {data.num_relations} relations, {splits}; modalities {mods}"


def open_run_folder(cfg: Config, runtime, run_dir: str | None, resume: bool, overwrite: bool):
    """Rank 0 creates/checks the run folder and takes its lock; every rank gets its name or the error.
    Returns (run folder, lock or None)."""
    outcome, lock = None, None
    if runtime.is_main:
        try:
            path, lock = open_for_training(run_dir, cfg.run.out_dir, cfg.run.name, resume, overwrite)
            outcome = ("ok", path)
        except DataError as exc:
            outcome = ("error", str(exc))
    outcome = runtime.share(outcome)
    if outcome[0] == "error":
        raise DataError(outcome[1])
    return outcome[1], lock


def train_run(cfg: Config, data: KGData, runtime, run_dir: str | None, resume: bool, overwrite: bool) -> dict:
    """The whole training run; returns results (also written to RUN/results.json by rank 0)."""
    run_dir, lock = open_run_folder(cfg, runtime, run_dir, resume, overwrite)
    try:
        trainer = Trainer(cfg, data, runtime, run_dir)
        say = print if runtime.is_main else (lambda *a, **k: None)
        plan = runtime.plan_report()
        if plan and runtime.is_main:
            say(plan[0])
            write_text(os.path.join(run_dir, "sharding_plan.json"), plan[1])
        say(describe(data))
        if trainer.stream is not None:
            say(f"train: streamed from {cfg.data.path}: {trainer.stream.total_rows} triples in "
                f"{len(trainer.stream.groups)} row groups, {trainer.batches_per_epoch()} steps per epoch")
        if resume and trainer.resume():
            say(f"resumed at epoch {trainer.epoch}, batch {trainer.batch_in_epoch}, step {trainer.step}")
        summary = trainer.fit()
        trainer.save()
        say(f"trained {summary['steps']} steps in {summary['seconds']:.1f}s; run folder {run_dir}")
        results = {"train": summary}
        if trainer.selection.active:
            results["selection"] = select_best(trainer, run_dir, say)
        for split in cfg.eval.splits:
            metrics = trainer.evaluate(split)
            trainer.logger.log("eval", epoch=trainer.epoch, step=trainer.step,
                               **{k: v for k, v in metrics.items() if not isinstance(v, dict)})
            results[split] = metrics
            say(format_metrics(split, metrics))
        if runtime.is_main:
            write_json(os.path.join(run_dir, "results.json"), results)
            write_text(os.path.join(run_dir, "results.md"), markdown_report(results))
        trainer.logger.close()
        return results
    finally:
        if lock is not None:
            lock.release()


def select_best(trainer: Trainer, run_dir: str, say) -> dict:
    """Load the model selection's best checkpoint (the model tested next); its record for results.json."""
    report = trainer.selection.report()
    best = report["selected"]
    if best is None or best.get("checkpoint") is None:
        say("model selection: no validation run happened; testing the last model")
        return report
    path = os.path.join(run_dir, "checkpoints", best["checkpoint"])
    if best["step"] != trainer.step:
        trainer.resume(path, optimizer=False)
    say(f"selected {best['checkpoint']} (epoch {best['epoch']}, valid {report['metric']} {best['value']:.4f}): "
        f"{report['why']}")
    return report


def trained_checkpoint(run_dir: str, checkpoint: str | None, overrides):
    """(config, verified checkpoint) of a run folder: the given checkpoint, else the one model selection chose
    (best.json), else the newest verified one."""
    open_for_reading(run_dir)
    cfg = load_config(os.path.join(run_dir, "config.yaml"), overrides)
    path = cfg.data.path
    local = local_path(path)
    if cfg.data.source == "parquet" and local is not None and not os.path.exists(local_path(resolve_output(path))):
        raise DataError(f"{run_dir}: trained on data.path={path}, which is not found from here (a path relative "
                        f"to where training ran?); give the dataset's location with --data.path=...")
    if checkpoint is not None:
        return cfg, checkpoint_at(checkpoint)
    directory = os.path.join(run_dir, "checkpoints")
    best = selected_checkpoint(directory)
    if best is not None:                 # the model the run's selection chose, and tested
        try:
            ckpt = checkpoint_at(os.path.join(directory, best))
            log.info("using %s, the checkpoint model selection chose (checkpoints/best.json; --checkpoint for "
                     "another)", ckpt.path)
            return cfg, ckpt
        except DataError as exc:
            log.warning("the selected checkpoint cannot be used (%s); using the newest verified one", exc)
    ckpt = newest_verified(directory)
    if ckpt is None:
        raise DataError(f"{run_dir}/checkpoints: no complete, verified checkpoint found")
    return cfg, ckpt


def load_trained(cfg: Config, data: KGData, runtime, ckpt) -> Trainer:
    """A trainer holding the checkpoint's model (tables, fusion, generators; no optimizer state), for
    evaluation and export; the checkpoint may come from any world size."""
    trainer = Trainer(cfg, data, runtime, run_dir=None)
    trainer.resume(ckpt.path, optimizer=False)
    return trainer
