"""The run lifecycle, for one process and N ranks alike: open the run folder (rank 0, lock held; the others
learn its name or the error through the runtime), build the trainer on the runtime it is handed, resume, fit,
save, evaluate, write ``results.json``. ``cli.py`` only parses arguments and picks the runtime
(``parallel.make_runtime``); a trained model for evaluate/export/predict is ``mmkgc_dist.serving.trained``."""
from __future__ import annotations

import json
import logging
import os

from ..config import Config, compile_on
from ..errors import CheckpointError, DataError, UserError
from ..data.format import KGData
from ..eval.metrics import format_metrics, markdown_report
from ..checkpoint import list_checkpoints, newest_verified
from ..outputs import write_atomic
from ..run_folder import (check_dataset, dataset_location, holds_run, open_for_training, record_config,
                          record_dataset)
from .trainer import Trainer

log = logging.getLogger("mmkgc_dist")


def write_json(path: str, obj) -> None:
    write_atomic(path, json.dumps(obj, indent=2))


def describe_dataset(data: KGData) -> str:
    mods = ", ".join(f"{m} {int(f.present.sum())}/{data.num_entities}" for m, f in data.features.items()) or "none"
    splits = ", ".join(f"{s} {len(t)}" for s, t in data.splits.items())
    return f"dataset {data.name}: {data.num_entities} entities, {data.num_relations} relations, {splits}; modalities {mods}"


def fusion_record(cfg: Config, data: KGData, modalities: list[str], use_mat: bool, device) -> dict:
    """What a run fuses (results.json ``model``): each modality's width and coverage (share of entities that
    have the feature), and whether MAT trains against it."""
    fused = {m: {"dim": int(data.features[m].dim), "entities": int(data.features[m].present.sum()),
                 "coverage": round(float(data.features[m].present.sum()) / max(data.num_entities, 1), 4)}
             for m in modalities}
    return {"scoring": cfg.model.scoring, "dim": cfg.model.dim, "asked": cfg.model.modalities, "fused": fused,
            "mat": use_mat, "compiled": compile_on(cfg, device), "compile_setting": cfg.train.compile}


def fusion_line(record: dict) -> str:
    """The run's first line: what is fused, how wide, for how many entities."""
    parts = [f"{m} ({v['dim']}-d, {v['coverage']:.1%} of entities)" for m, v in record["fused"].items()]
    compiled = f"; torch.compile {'on' if record['compiled'] else 'off'} (train.compile={str(record['compile_setting']).lower()})"
    if not parts:
        why = "model.modalities=[]" if record["asked"] == [] else "the dataset has no modality features"
        return f"fusing: structure only ({why}); scoring {record['scoring']}{compiled}"
    return (f"fusing: structure + {' + '.join(parts)} with AdaMF" + ("; MAT on" if record["mat"] else "; MAT off") +
            f" (model.modalities={record['asked']}); scoring {record['scoring']}{compiled}")


def open_run_folder(cfg: Config, runtime, run_dir: str | None, resume: bool, overwrite: bool):
    """Rank 0 creates/checks the run folder and takes its lock; every rank gets its name or the error.
    Returns (run folder, lock or None)."""
    outcome, lock = None, None
    if runtime.is_main:
        try:
            inputs = (cfg.data.path,) if cfg.data.source == "parquet" else ()
            path, lock = open_for_training(run_dir, cfg.run.out_dir, cfg.run.name, resume, overwrite, inputs)
            outcome = ("ok", path)
        except UserError as exc:
            outcome = ("error", exc)
    outcome = runtime.share(outcome)
    if outcome[0] == "error":
        raise outcome[1]
    return outcome[1], lock


def train_run(cfg: Config, data: KGData, runtime, run_dir: str | None, resume: str | None, overwrite: bool,
              validation_hooks=(), show_progress: bool = True) -> tuple[str, dict]:
    """The whole training run; returns (run folder, results), the results also written to RUN/results.json by
    rank 0. ``resume``: None, "explicit" (--resume) or "restart" (an elastic restart). ``validation_hooks``:
    ``Trainer.validation_hooks`` (a study's pruner); a run they stop is not tested (``results["stopped"]``)."""
    run_dir, lock = open_run_folder(cfg, runtime, run_dir, bool(resume), overwrite)
    try:
        # decided before anything is written into the run: rank 0 reads the folder, every rank gets the outcome
        # (a refusal on rank 0 alone would leave the others waiting in a collective)
        verdict, problem = None, None
        if runtime.is_main:
            try:
                verdict = nothing_to_resume(run_dir, explicit=resume == "explicit") if resume else None
                if verdict is not None and verdict[0] == "refuse":
                    raise CheckpointError(verdict[1])
                check_dataset(run_dir, data, dataset_location(cfg))
                record_dataset(run_dir, data, dataset_location(cfg))
                record_config(run_dir, cfg)
            except UserError as exc:
                problem = exc                  # shared as it is: every rank raises the same class
        verdict, problem = runtime.share((verdict, problem))
        if problem:
            raise problem
        trainer = Trainer(cfg, data, runtime, run_dir, show_progress)
        trainer.logger                         # the run's trackers start now: a plugin's fault stops it here
        trainer.validation_hooks.extend(validation_hooks)
        if trainer.batches_per_epoch() == 0:      # an untrained model's metrics are not a result
            raise DataError(f"{dataset_location(cfg)}: the training split is empty; nothing to train")
        say = print if runtime.is_main else (lambda *a, **k: None)
        fusion = fusion_record(cfg, data, trainer.modalities, trainer.use_mat, runtime.device)
        say(fusion_line(fusion))
        plan = runtime.plan_report()
        if plan and runtime.is_main:
            say(plan[0])
            write_atomic(os.path.join(run_dir, "sharding_plan.json"), plan[1])
        say(describe_dataset(data))
        if trainer.stream is not None:
            say(f"train: streamed from {cfg.data.path}: {trainer.stream.total_rows} triples in "
                f"{len(trainer.stream.groups)} row groups, {trainer.batches_per_epoch()} steps per epoch")
        if resume and verdict is None:
            trainer.resume()
            say(f"resumed at epoch {trainer.epoch}, batch {trainer.batch_in_epoch}, step {trainer.step}")
        elif resume:
            say(verdict[1])
        summary = trainer.fit()
        trainer.save()
        say(f"trained {summary['steps']} steps in {summary['seconds']:.1f}s; run folder {run_dir}")
        results = {"run": {"name": os.path.basename(os.path.normpath(run_dir)), "dataset": data.name,
                           "data": dataset_location(cfg), "entities": data.num_entities,
                           "relations": data.num_relations, "dataset_identity": data.identity},
                   "model": fusion, "train": summary}
        if trainer.selection.active:
            results["selection"] = select_best(trainer, run_dir, say)
        if trainer.stopped_by:
            results["stopped"] = {"epoch": trainer.epoch, "step": trainer.step, "why": trainer.stopped_by}
        for split in cfg.eval.splits if not trainer.stopped_by else ():
            metrics = trainer.evaluate(split)
            trainer.logger.log("eval", epoch=trainer.epoch, step=trainer.step,
                               **{k: v for k, v in metrics.items() if not isinstance(v, dict)})
            results[split] = metrics
            say(format_metrics(split, metrics))
        if runtime.is_main:
            write_json(os.path.join(run_dir, "results.json"), results)
            write_atomic(os.path.join(run_dir, "results.md"), markdown_report(results))
        trainer.logger.close()
        return run_dir, results
    finally:
        if lock is not None:
            lock.release()


def nothing_to_resume(run_dir: str, explicit: bool) -> tuple[str, str] | None:
    """None when the run has a verified checkpoint to resume from; else ("start", notice) when starting at step
    0 loses nothing, or ("refuse", reason). Resume resumes or stops: a run whose checkpoints are all damaged,
    or (asked for explicitly) one that trained and kept none, is never silently trained over from step 0."""
    directory = os.path.join(run_dir, "checkpoints")
    if newest_verified(directory) is not None:
        return None
    damaged = [c.path for c in list_checkpoints(directory)]
    if damaged:
        return ("refuse", f"--resume: no checkpoint of {run_dir} verifies ({len(damaged)} damaged, newest "
                          f"{os.path.basename(damaged[-1])}; see the warnings above); refusing to train over the run "
                          f"from step 0 — restore a checkpoint, or pass --overwrite to start the run again")
    if explicit and holds_run(run_dir):
        return ("refuse", f"--resume: {run_dir} holds an earlier run's metrics but no checkpoint to resume from; "
                          f"pass --overwrite to start the run again")
    return ("start", f"--resume: {run_dir} has no checkpoint yet; starting the run at step 0")


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
