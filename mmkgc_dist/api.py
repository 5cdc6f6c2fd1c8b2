"""The Python API: the command line's ``train``, ``evaluate`` and ``tune`` as functions, with results as objects
and pandas DataFrames. Under torchrun the same calls run on every rank (the runtime is chosen as the command
line chooses it).

>>> import mmkgc_dist
>>> result = mmkgc_dist.train(overrides={"data.synthetic.num_entities": 300, "data.synthetic.num_triples": 2000,
...                                      "model.dim": 8, "train.epochs": 2, "train.compile": False,
...                                      "mat.hidden": 16, "eval.every_epochs": 1},
...                           run_dir=f"{scratch}/run", progress=False)            # doctest: +ELLIPSIS
fusing: structure + visual (128-d, 71.3% of entities) + text (64-d, 76.0% of entities) with AdaMF; MAT on ...off (train.compile=false)
dataset synthetic-seed7: 300 entities, ...
>>> sorted(result.metrics)
['test']
>>> result.selection["selected"]["epoch"] in (1, 2)
True
>>> frame = result.to_frame()                  # one row per split: mrr, mr, hits@k, count, ...
>>> list(frame.index), bool(frame.loc["test", "mrr"] == result.metrics["test"]["mrr"])
(['test'], True)
>>> answers = result.predict(head=0, relation=0, k=3)
>>> [p.rank for p in answers], list(answers.to_frame().columns)
([1, 2, 3], ['rank', 'id', 'name', 'score', 'known', 'head', 'relation', 'tail'])
>>> again = mmkgc_dist.evaluate(result.run_dir, splits=["valid"])
>>> sorted(again), int(again.to_frame().loc["valid", "count"])     # 100 triples: a head and a tail rank each
(['valid'], 200)
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from .config import Config, config_from
from .errors import ConfigError

log = logging.getLogger("mmkgc_dist")


def _path_arg(value, name: str, optional: bool = False):
    """A folder argument of the API: a path (str or os.PathLike) as str; ConfigError for anything else."""
    if value is None and optional:
        return None
    if not isinstance(value, (str, os.PathLike)) or not os.fspath(value):
        raise ConfigError(f"{name}={value!r}; expected a path")
    return os.fspath(value)


def _flag_arg(value, name: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{name}={value!r}; expected True or False")
    return value


class Metrics(dict):
    """{split: metrics} as ``evaluate --output`` writes it; ``to_frame()``: one row per split, the scalar metrics
    as columns (breakdowns per relation stay in the dict)."""

    def to_frame(self):
        import pandas as pd
        rows = {split: {k: v for k, v in m.items() if not isinstance(v, (dict, list))} for split, m in self.items()}
        frame = pd.DataFrame.from_dict(rows, orient="index")
        frame.index.name = "split"
        return frame


@dataclass
class TrainResult:
    """What ``train`` returns: the run folder, its config, ``results.json`` as a dict, and the trained model."""
    run_dir: str
    config: Config
    results: dict
    _model: object = field(default=None, repr=False)

    @property
    def metrics(self) -> Metrics:
        """{split: metrics} of the splits tested after training (eval.splits)."""
        return Metrics({k: v for k, v in self.results.items() if isinstance(v, dict) and "mrr" in v})

    @property
    def selection(self) -> dict | None:
        """Model selection's record: the selected checkpoint, the metric, the validation history."""
        return self.results.get("selection")

    @property
    def stopped(self) -> dict | None:
        """Set when a validation hook (a study's pruner) stopped the run: epoch, step, why."""
        return self.results.get("stopped")

    @property
    def model(self):
        """The trained model in this process (``load_run``): predict, score, neighbours."""
        if self._model is None:
            from .serving.predict import load_run
            self._model = load_run(self.run_dir, device=self.config.train.device)
        return self._model

    def predict(self, head=None, relation=None, tail=None, k: int = 10, known: str = "mark"):
        """``load_run(run_dir).predict(...)``: the top-k tails or heads, with ``.to_frame()``."""
        return self.model.predict(head=head, relation=relation, tail=tail, k=k, known=known)

    def to_frame(self):
        """The tested splits' metrics, one row per split."""
        return self.metrics.to_frame()


def train(config=None, overrides=None, run_dir: str | None = None, resume: bool = False, overwrite: bool = False,
          distributed: bool | None = None, on_validation=(), progress: bool = True) -> TrainResult:
    """Train a run, as ``mmkgc-dist train`` does, and return its ``TrainResult``.

    ``config``: None (the built-in defaults: the generated graph), a YAML path, a mapping of sections, or a
    ``Config``; ``overrides``: ``{"train.lr": 3e-3, ...}`` (or ``--key=value`` strings). ``run_dir``: the run
    folder (default run.out_dir/run.name). ``resume``/``overwrite`` as the command line's flags.
    ``distributed``: None = the distributed runtime when launched with WORLD_SIZE > 1. ``on_validation``:
    callables ``hook(epoch, step, metrics)`` called after each validation run on rank 0; one returning a reason
    (a string) stops training there and the run is not tested (``result.stopped``)."""
    run_dir = _path_arg(run_dir, "run_dir", optional=True)
    resume, overwrite, progress = (_flag_arg(v, n) for v, n in ((resume, "resume"), (overwrite, "overwrite"),
                                                                 (progress, "progress")))
    if distributed is not None:
        _flag_arg(distributed, "distributed")
    if not all(callable(h) for h in (on_validation or ())):
        raise ConfigError("on_validation: expected callables hook(epoch, step, metrics)")
    cfg = config_from(config, overrides)          # a bad key or value is refused before torch is imported
    from .compose import run_training
    from .parallel.env import world_size_from_environment

    distributed = world_size_from_environment() > 1 if distributed is None else distributed
    path, results = run_training(cfg, run_dir, resume, overwrite, distributed, on_validation, progress,
                                 config=config, overrides=overrides)
    return TrainResult(path, cfg, results)


def evaluate(run_dir: str, splits=None, checkpoint: str | None = None, ties: str | None = None, overrides=None,
             distributed: bool | None = None, output: str | None = None) -> Metrics:
    """Rank ``splits`` (default: the run's eval.splits) with a run folder's model — the checkpoint model
    selection chose, else the newest verified — as ``mmkgc-dist evaluate`` does; {split: metrics}."""
    from .eval.evaluator import check_request

    run_dir, checkpoint = _path_arg(run_dir, "run_dir"), _path_arg(checkpoint, "checkpoint", optional=True)
    output = _path_arg(output, "output", optional=True)
    splits = [splits] if isinstance(splits, str) else splits
    check_request(splits or [], ties, splits or [])              # the options, before the model is loaded
    if output:
        from .outputs import check_output_file
        check_output_file(output, "--output", _evaluation_output)
    model = _trained(run_dir, checkpoint, overrides, distributed)
    wanted = list(splits or model.cfg.eval.splits)
    check_request(wanted, ties, model.data.splits)        # every split, before the first is ranked
    metrics = Metrics({split: model.evaluate(split, ties=ties) for split in wanted})
    if output and model.runtime.is_main:
        import json

        from .outputs import write_atomic
        write_atomic(output, json.dumps(metrics, indent=2))
    return metrics


def export(run_dir: str, out: str, checkpoint: str | None = None, overrides=None, neighbour_index: bool = False,
           overwrite: bool = False, distributed: bool | None = None) -> dict:
    """Every entity's structural and joint rows and every relation's vector as Parquet in ``out`` (one part per
    rank), with export.json, as ``mmkgc-dist export`` does; ``neighbour_index``: and a FAISS index of the joint
    rows. Returns export.json's record."""
    from .outputs import check_output

    run_dir, out = _path_arg(run_dir, "run_dir"), _path_arg(out, "out")
    checkpoint = _path_arg(checkpoint, "checkpoint", optional=True)
    _flag_arg(neighbour_index, "neighbour_index"), _flag_arg(overwrite, "overwrite")
    check_output(out, "export", (run_dir, checkpoint or ""), overwrite)
    return _trained(run_dir, checkpoint, overrides, distributed).export(out, neighbour_index=neighbour_index)


def _trained(run_dir: str, checkpoint: str | None, overrides, distributed: bool | None):
    """A run folder's trained model, in this process or on the ranks this was launched on."""
    from .config import override_pairs
    from .parallel.env import world_size_from_environment
    from .serving.trained import load_trained

    pairs = override_pairs(overrides)
    distributed = world_size_from_environment() > 1 if distributed is None else _flag_arg(distributed, "distributed")
    return load_trained(run_dir, checkpoint, pairs, distributed)


def _evaluation_output(path: str) -> bool:
    """An earlier evaluation output (replaced without asking): a JSON object of {split: metrics with 'mrr'}."""
    import json
    try:
        with open(path) as fh:
            found = json.load(fh)
    except (OSError, ValueError):
        return False
    return isinstance(found, dict) and bool(found) and all(isinstance(v, dict) and "mrr" in v
                                                           for v in found.values())


def compare(*paths, plot: str | None = "compare.png") -> list[dict]:
    """Runs side by side (``mmkgc-dist compare``): a row per run (a study folder stands for its trials) with
    what it fused, its protocol, its selected epoch and its metrics; their validation curves into ``plot``."""
    from .serving.compare import compare as compare_runs
    if not paths or not all(isinstance(p, (str, os.PathLike)) for p in paths):
        raise ConfigError(f"compare: expected run or study folders, got {paths!r}")
    return compare_runs(paths, plot)[0]


def verify(path: str) -> dict:
    """Every file of a dataset folder, a run folder or an export against the bytes and SHA-256 recorded when it
    was written (digests computed afresh, not from the cache), as ``mmkgc-dist verify`` does:
    {kind, path, checked: files compared, problems: one line each}. A run folder: its checkpoints, and the dataset
    it trains on (the version its dataset.json records)."""
    from .errors import DataError, UserError
    if not isinstance(path, (str, os.PathLike)):
        raise ConfigError(f"verify: path={path!r}; expected a folder path")
    path = os.fspath(path)
    if os.path.isfile(os.path.join(path, "export.json")):
        from .serving.export import export_problems
        checked, problems = export_problems(path)
        return {"kind": "export", "path": path, "checked": checked, "problems": problems}
    if os.path.isfile(os.path.join(path, "config.yaml")):
        return _verify_run(path)
    from .data.format import dataset_problems, read_manifest
    try:
        manifest = read_manifest(path)
    except UserError:
        raise DataError(f"verify {path}: not a dataset (manifest.json), a run folder (config.yaml) or an export "
                        f"(export.json)") from None
    checked, problems = dataset_problems(path, manifest, use_cache=False, progress=True)
    return {"kind": "dataset", "path": path, "checked": checked, "problems": problems}


def _verify_run(path: str) -> dict:
    import json

    from .checkpoint import list_checkpoints, verify as verify_checkpoint
    from .data.format import dataset_identity, dataset_problems, read_manifest
    from .errors import UserError
    from .run_folder import DATASET_RECORD, created_config

    problems, checked = [], 0
    for ckpt in list_checkpoints(os.path.join(path, "checkpoints")):
        checked += 1
        why = verify_checkpoint(ckpt)
        if why:
            problems.append(f"{ckpt.path}: {why}")
    cfg = created_config(path)
    if cfg is not None and cfg.data.source == "parquet":
        try:
            manifest = read_manifest(cfg.data.path)
            files, found = dataset_problems(cfg.data.path, manifest, use_cache=False, progress=True)
            checked, problems = checked + files, problems + found
            with open(os.path.join(path, DATASET_RECORD)) as fh:
                want = json.load(fh).get("identity")
            if want and want != dataset_identity(manifest):
                problems.append(f"{cfg.data.path}: not the dataset version {path} trained on (its {DATASET_RECORD})")
        except (UserError, OSError, ValueError) as exc:
            problems.append(f"{cfg.data.path}: the run's dataset cannot be checked ({' '.join(str(exc).split())})")
    return {"kind": "run", "path": path, "checked": checked, "problems": problems}


@dataclass
class StudyResult:
    """What ``tune`` returns: the study folder, the Optuna study, the best trial and its config."""
    study_dir: str
    study: object
    base: Config
    params: list

    @property
    def best(self) -> dict | None:
        """{trial, value, params, run_dir} of the best complete trial, or None."""
        from .tuning.report import best_trial
        t = best_trial(self.study)
        return None if t is None else {"trial": t.number, "value": t.value, "params": dict(t.params),
                                       "run_dir": os.path.join(self.study_dir, t.user_attrs.get("run_dir", ""))}

    @property
    def best_config(self) -> Config | None:
        from .tuning.report import best_config
        return best_config(self.study, self.base)

    def to_frame(self):
        """One row per trial (the study folder's trials.csv)."""
        from .tuning.report import trials_frame
        return trials_frame(self.study, self.params)


def tune(space, study_dir: str, config=None, overrides=None, trials: int = 20, **options) -> StudyResult:
    """Run a worker of a hyperparameter study, as ``mmkgc-dist tune`` does: trials until the study (in
    ``study_dir``'s SQLite file, or ``storage=URL``) has ``trials`` finished ones. ``space``: a YAML path or a
    mapping {dotted key: distribution} (tuning/space.py). ``options``: ``tuning.study.TuneOptions`` fields
    (storage, pruner, sampler, seed, nproc_per_trial, ...)."""
    from .tuning.space import parse_space, read_space
    from .tuning.study import TuneOptions, run_worker

    opts = TuneOptions.of(trials=trials, **options)             # checked before any work
    if not isinstance(study_dir, (str, os.PathLike)):
        raise ConfigError(f"tune: study_dir={study_dir!r}; expected a folder path")
    study_dir = os.fspath(study_dir)
    params = read_space(os.fspath(space)) if isinstance(space, (str, os.PathLike)) else parse_space(space)
    base = config_from(config, overrides)
    study = run_worker(study_dir, params, base, opts)
    return StudyResult(study_dir, study, config_from(os.path.join(study_dir, "base.yaml")), params)
