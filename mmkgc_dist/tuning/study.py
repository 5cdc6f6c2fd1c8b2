"""`mmkgc-dist tune`: a hyperparameter study on Optuna, run by one or many workers on one storage.

A worker samples a trial's values from the search space (``space.py``), trains an ordinary run folder
``STUDY/trials/N`` from the study's base config plus those values — in this process, or under torchrun with
``nproc_per_trial`` ranks — and reports each validation run (``eval.every_epochs``) to the pruner, which may
stop the trial there. The objective is model selection's metric on validation (``eval.select_by``, without the
validation triples seen in training). Workers on other machines or Slurm array tasks join the same study
through a shared storage (an RDB URL, or a journal file on a shared filesystem); the default is an SQLite file
in the study folder. The study folder holds the summary table, the best config as YAML and the plots
(``report.py``).

Interruptions: a worker killed mid-trial leaves that trial RUNNING; the next worker to start on the same host
finds its process gone and marks it failed ("interrupted"), and on RDB storages Optuna's heartbeat does the
same for any host. A trial that fails (bad values, divergence) is recorded with its one-line reason and the
study goes on.
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import uuid
from dataclasses import dataclass

import yaml

from ..checkpoint import keep_selected
from ..config import Config, _leaves, config_from, config_yaml, read_yaml_text
from ..errors import ConfigError, OutputError, RunInterrupted, TrialFailed, TrialsFailed, UserError
from ..outputs import MARKER, marker_kind, pid_alive, write_atomic, write_marker
from .space import Param, base_values, check_space, sample
from .storage import STUDY_UID, StorageRef, open_storage, storage_faults, storage_ref

log = logging.getLogger("mmkgc_dist")
TRIALS = "trials"
STUDY_FILE = "study.yaml"
BASE_FILE = "base.yaml"
PRUNERS = ("median", "hyperband", "none")
SAMPLERS = ("tpe", "random")
KEEP = ("selected", "all")          # what a finished trial keeps of its checkpoints


@dataclass
class TuneOptions:
    """How a worker runs (``mmkgc-dist tune --help`` explains each)."""
    trials: int = 20
    storage: str = ""
    study_name: str = ""
    pruner: str = "median"
    pruner_startup: int = 3
    sampler: str = "tpe"
    seed: int | None = None
    worker: int | None = None
    nproc_per_trial: int = 1
    heartbeat: int = 60
    timeout: float | None = None
    max_failures: int = 0
    baseline: bool = True
    show_progress: bool = True
    keep_checkpoints: str = "selected"        # "selected": a finished trial keeps only its selected checkpoint

    @classmethod
    def of(cls, **options) -> "TuneOptions":
        """Options by name, checked: an unknown name is a ConfigError listing the known ones."""
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in options if k not in known]
        if unknown:
            raise ConfigError(f"tune: unknown option(s) {unknown}; known: {', '.join(known)}")
        return cls(**options).check()

    def check(self) -> "TuneOptions":
        """ConfigError naming the option that cannot be used (the Python API has no argparse in front)."""
        if self.keep_checkpoints not in KEEP:
            raise ConfigError(f"tune: keep_checkpoints={self.keep_checkpoints!r}; expected one of {', '.join(KEEP)}")
        for name in ("storage", "study_name", "pruner", "sampler"):
            if not isinstance(getattr(self, name), str):
                raise ConfigError(f"tune: {name}={getattr(self, name)!r}; expected a string")
        for name in ("baseline", "show_progress"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"tune: {name}={getattr(self, name)!r}; expected true or false")
        for name in ("seed", "worker"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                raise ConfigError(f"tune: {name}={value!r}; expected a whole number >= 0 (or None)")
        if self.timeout is not None and (isinstance(self.timeout, bool) or
                                         not isinstance(self.timeout, (int, float))):
            raise ConfigError(f"tune: timeout={self.timeout!r}; expected seconds > 0 (or None)")
        if self.pruner not in PRUNERS:
            raise ConfigError(f"tune: pruner={self.pruner!r}; expected one of {', '.join(PRUNERS)}")
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"tune: sampler={self.sampler!r}; expected one of {', '.join(SAMPLERS)}")
        for name in ("trials", "nproc_per_trial"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"tune: {name}={getattr(self, name)!r}; expected a whole number >= 1")
        for name in ("pruner_startup", "heartbeat", "max_failures"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"tune: {name}={getattr(self, name)!r}; expected a whole number >= 0")
        if self.timeout is not None and not self.timeout > 0:
            raise ConfigError(f"tune: timeout={self.timeout!r}; expected seconds > 0")
        return self


# ------------------------------------------------------------------------------------------ the study folder
def prepare_study_folder(study_dir: str, base: Config) -> Config:
    """Check (or create, empty) the study folder; returns the base config its trials use. Binds nothing: the
    folder is bound to its study only once the storage holds it (``bind_study``)."""
    if os.path.islink(study_dir):
        raise OutputError(f"study folder {study_dir}: is a symbolic link; give the folder itself")
    if os.path.lexists(study_dir) and not os.path.isdir(study_dir):
        raise OutputError(f"study folder {study_dir}: exists and is not a folder")
    if os.path.isdir(study_dir) and os.listdir(study_dir) and marker_kind(study_dir) != "study":
        raise OutputError(f"study folder {study_dir}: not empty and not an mmkgc-dist study (no {MARKER} marker of "
                          f"kind study); give a new folder")
    if base.eval.every_epochs == 0:
        log.info("tune: eval.every_epochs=0 in the base config; trials validate every epoch (eval.every_epochs=1)")
        base = config_from(base, {"eval.every_epochs": 1})
    os.makedirs(os.path.join(study_dir, TRIALS), exist_ok=True)
    if marker_kind(study_dir) != "study":
        write_marker(study_dir, "study")
    return base


def study_record(params: list[Param], base: Config, ref: StorageRef, name: str) -> dict:
    """What study.yaml records: the space, the objective, the storage's identity and the study's name."""
    return {"space": {p.key: p.describe() for p in params},
            "objective": {"metric": f"valid {base.eval.select_by}", "direction": direction(base)},
            "storage": ref.identity, "study_name": name}


def read_record(study_dir: str) -> dict | None:
    """study.yaml, or None for a folder not yet bound to a study."""
    path = os.path.join(study_dir, STUDY_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as fh:
        created = read_yaml_text(fh)
    if not isinstance(created, dict):
        raise ConfigError(f"study folder {study_dir}: {STUDY_FILE} is not a mapping (damaged?); start a new folder")
    return created


def check_same_study(study_dir: str, created: dict, record: dict, base_text: str) -> None:
    """A bound folder continues only with the space, base config, storage and study name it was created with."""
    what = f"study folder {study_dir}: created with"
    if created.get("space") != record["space"]:
        keys = sorted(set(created.get("space", {})) ^ set(record["space"]) |
                      {k for k in record["space"] if created.get("space", {}).get(k) != record["space"][k]})
        raise ConfigError(f"{what} another search space (differs at {', '.join(keys)}); continue it with the same "
                          f"space file, or start a new study folder")
    if created.get("storage") != record["storage"]:
        raise ConfigError(f"{what} storage {created.get('storage')}, not {record['storage']}; pass the same "
                          f"--storage to continue it")
    if created.get("study_name", record["study_name"]) != record["study_name"]:
        raise ConfigError(f"{what} study name {created['study_name']!r}, not {record['study_name']!r}; pass "
                          f"--study-name {created['study_name']} (or nothing) to continue it")
    with open(os.path.join(study_dir, BASE_FILE)) as fh:
        created_base = read_yaml_text(fh) or {}
    before, after = _leaves(created_base), _leaves(yaml.safe_load(base_text))
    changed = [k for k in sorted(set(before) | set(after)) if before.get(k) != after.get(k)]
    if changed:
        shown = "; ".join(f"{k}: {before.get(k)!r} -> {after.get(k)!r}" for k in changed[:3])
        raise ConfigError(f"{what} another base config ({shown}); continue it with the same --config and "
                          f"overrides (its {BASE_FILE}), or start a new study folder")


def direction(cfg: Config) -> str:
    return "minimize" if cfg.eval.select_by == "mr" else "maximize"


def make_pruner(name: str, startup: int, max_resource: int):
    """The pruner; its steps are epochs (each validation run is reported at its epoch)."""
    import optuna
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=startup, n_warmup_steps=0)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(max_resource, 1))
    return optuna.pruners.NopPruner()


def make_sampler(name: str, seed: int | None):
    import optuna
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, constant_liar=True, n_startup_trials=5)


@contextlib.contextmanager
def _setup_lock(study_dir: str):
    """Workers starting at once create the SQLite schema and the study one at a time."""
    import fcntl
    with open(os.path.join(study_dir, ".setup.lock"), "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


PENDING = ".binding"          # the id of a study being created, until study.yaml records it


def load_study(study_dir: str, base: Config, params: list[Param], opts: TuneOptions):
    """The study the folder is bound to, binding a new folder to a new study. Refuses, in one line, a storage
    that no longer holds the folder's study (lost, emptied, replaced, or another file), another study name,
    and a new folder whose study name the storage already holds."""
    import optuna
    created = read_record(study_dir)
    name = opts.study_name or (created or {}).get("study_name") or os.path.basename(os.path.abspath(study_dir))
    ref = storage_ref(study_dir, opts.storage)
    record, base_text = study_record(params, base, ref, name), config_yaml(base)
    if created is not None:
        check_same_study(study_dir, created, record, base_text)
    seed = None if opts.seed is None else opts.seed + worker_index(opts)
    with _setup_lock(study_dir):
        storage = open_storage(ref, opts.heartbeat)
        created = read_record(study_dir)                    # another worker may have bound it meanwhile
        with storage_faults(ref):
            if created is None:
                _create_and_bind(study_dir, storage, name, base, record, base_text)
            study = optuna.load_study(storage=storage, study_name=name, sampler=make_sampler(opts.sampler, seed),
                                      pruner=make_pruner(opts.pruner, opts.pruner_startup, base.train.epochs)) \
                if _holds(storage, name) else None
            if study is None:
                raise ConfigError(f"--storage {ref.identity}: holds no study {name!r}, which study folder "
                                  f"{study_dir} is bound to (its storage was lost, emptied or replaced, or "
                                  f"--storage names another file); restore the storage, or start a new study folder")
            _check_uid(study_dir, study, created, ref)
            _check_folders_known(study_dir, study)
            if opts.baseline:         # the hand-set config, trained once, compared with the best found
                study.enqueue_trial(base_values(params, base), user_attrs={"baseline": True}, skip_if_exists=True)
    return study


def _holds(storage, name: str) -> bool:
    return any(s.study_name == name for s in storage.get_all_studies())


def _create_and_bind(study_dir: str, storage, name: str, base: Config, record: dict, base_text: str) -> None:
    """A new study in the storage, marked with a unique id; then study.yaml records it (the binding). A worker
    killed in between leaves the id in ``.binding``, so the next one adopts its own half-made study."""
    import optuna
    pending = os.path.join(study_dir, PENDING)
    uid = open(pending).read().strip() if os.path.exists(pending) else uuid.uuid4().hex
    write_atomic(pending, uid)
    if _holds(storage, name):
        held = optuna.load_study(storage=storage, study_name=name)
        theirs = held.user_attrs.get(STUDY_UID)
        if theirs != uid and not (theirs is None and not held.get_trials(deepcopy=False)):
            raise ConfigError(f"--storage {record['storage']}: already holds a study named {name!r} "
                              f"({len(held.get_trials(deepcopy=False))} trials) that is not this folder's; give "
                              f"another --study-name, or continue that study from its own study folder")
    else:
        optuna.create_study(storage=storage, study_name=name, direction=direction(base))
    optuna.load_study(storage=storage, study_name=name).set_user_attr(STUDY_UID, uid)
    write_atomic(os.path.join(study_dir, BASE_FILE), base_text)
    write_atomic(os.path.join(study_dir, STUDY_FILE), yaml.safe_dump({**record, "uid": uid}, sort_keys=False))
    os.remove(pending)


def _check_uid(study_dir: str, study, created: dict | None, ref: StorageRef) -> None:
    created = created or read_record(study_dir) or {}
    theirs, ours = study.user_attrs.get(STUDY_UID), created.get("uid")
    if ours is None:                       # a folder bound before study ids: bind it now
        if theirs is None:
            study.set_user_attr(STUDY_UID, uuid.uuid4().hex)
            theirs = study.user_attrs.get(STUDY_UID)
        write_atomic(os.path.join(study_dir, STUDY_FILE), yaml.safe_dump({**created, "uid": theirs}, sort_keys=False))
        return
    if theirs != ours:
        raise ConfigError(f"--storage {ref.identity}: its study {study.study_name!r} is another study than the one "
                          f"study folder {study_dir} is bound to (study id {theirs} ≠ {ours}: the storage was "
                          f"replaced or recreated); restore the storage, or start a new study folder")


def _check_folders_known(study_dir: str, study) -> None:
    """Every trials/N folder is a trial the storage knows: a storage older than the folder (restored from a copy)
    would hand its numbers out again."""
    known = {t.number for t in study.get_trials(deepcopy=False)}
    strays = sorted(int(n) for n in os.listdir(os.path.join(study_dir, TRIALS)) if n.isdigit() and int(n) not in known)
    if strays:
        raise ConfigError(f"study folder {study_dir}: trials/{strays[0]} is not a trial of its storage's study "
                          f"({len(known)} trials there): the storage is older than the folder (restored from a "
                          f"copy?); restore the newest storage, or start a new study folder")


def worker_index(opts: TuneOptions) -> int:
    if opts.worker is not None:
        return opts.worker
    return int(os.environ.get("SLURM_ARRAY_TASK_ID", "0") or 0)


UNREGISTERED_GRACE_S = 30.0     # a RUNNING trial no worker claimed this long after it started: its worker died


def fail_orphaned_trials(study) -> list[int]:
    """RUNNING trials whose worker is gone, marked FAIL with why: a worker on this host that is no longer alive
    (killed mid-trial), or none at all — a worker killed between taking the trial and claiming it (the first
    thing a trial does) leaves it unclaimed, and a live worker claims its trial within milliseconds."""
    import datetime

    from optuna.trial import TrialState
    here, failed = socket.gethostname(), []
    now = datetime.datetime.now()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        host, pid = t.user_attrs.get("worker_host"), t.user_attrs.get("worker_pid")
        if host is None or not isinstance(pid, int):       # killed before (or while) claiming it
            age = (now - t.datetime_start).total_seconds() if t.datetime_start else 0.0
            if age < UNREGISTERED_GRACE_S:
                continue
            why = (f"interrupted: no worker claimed it {age:.0f} s after it started (its worker stopped before "
                   f"the trial began); nothing was trained")
        elif host != here or pid_alive(pid):
            continue
        else:
            last = max(t.intermediate_values) if t.intermediate_values else None
            why = (f"interrupted: its worker (pid {pid} on {host}) stopped mid-trial"
                   f"{f' after epoch {last}' if last is not None else ''}; its run folder "
                   f"{t.user_attrs.get('run_dir', '')} can be resumed with train --resume")
        try:
            study._storage.set_trial_user_attr(t._trial_id, "failure", why)
            study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
            failed.append(t.number)
            log.warning("tune: trial %d %s", t.number, why)
        except Exception:                                   # noqa: BLE001 — another worker marked it first
            continue
    return failed


# ------------------------------------------------------------------------------------------ one trial
class PruningHook:
    """A trainer validation hook: report the trial's validation metric per epoch; a reason when to stop."""

    def __init__(self, trial, metric: str):
        self.trial, self.metric = trial, metric

    def __call__(self, epoch: int, step: int, metrics: dict) -> str | None:
        value = float(metrics[self.metric])
        self.trial.report(value, epoch)
        if self.trial.should_prune():
            return f"pruned at epoch {epoch} (valid {self.metric} {value:.4f})"
        return None


class Objective:
    def __init__(self, study_dir: str, base: Config, params: list[Param], opts: TuneOptions):
        self.study_dir, self.base, self.params, self.opts = study_dir, base, params, opts

    def __call__(self, trial) -> float:
        import optuna
        run_dir = os.path.join(self.study_dir, TRIALS, str(trial.number))
        for key, value in (("worker_host", socket.gethostname()), ("worker_pid", os.getpid()),
                           ("run_dir", os.path.join(TRIALS, str(trial.number)))):
            trial.set_user_attr(key, value)                # claimed first: see fail_orphaned_trials
        fail_orphaned_trials(trial.study)
        if os.path.lexists(run_dir):     # a trial number handed out twice would mix two trials in one folder
            reason = (f"its folder {run_dir} already exists: the storage handed out a trial number the study "
                      f"folder has used (was the storage restored from an older copy?)")
            trial.set_user_attr("failure", reason)
            raise TrialFailed(reason)
        values = sample(trial, self.params, self.base)
        log.info("tune: trial %d %s", trial.number, json.dumps(values))
        try:
            results = (self._in_process(trial, values, run_dir) if self.opts.nproc_per_trial == 1
                       else self._on_ranks(trial, values, run_dir))
        except RunInterrupted as exc:
            trial.set_user_attr("failure", f"interrupted: {_one_line(str(exc))}")
            raise
        except TrialFailed:
            raise
        except Exception as exc:                     # noqa: BLE001 — the study goes on; the reason stays
            reason = _one_line(str(exc))
            if not isinstance(exc, UserError):                  # a bug or a library's error: name its kind
                reason = f"{type(exc).__name__}: {reason}"
            trial.set_user_attr("failure", reason)
            raise TrialFailed(reason) from exc
        if self.opts.keep_checkpoints == "selected":       # a study's disk grows by one checkpoint per trial
            removed = keep_selected(os.path.join(run_dir, "checkpoints"))
            log.info("tune: trial %d keeps its selected checkpoint (%d others removed; --keep-checkpoints all "
                     "keeps them)", trial.number, len(removed))
        selected = (results.get("selection") or {}).get("selected")
        if results.get("stopped"):
            trial.set_user_attr("stopped", results["stopped"]["why"])
            raise optuna.TrialPruned(results["stopped"]["why"])
        if not selected:
            reason = "no validation run happened (train.epochs < eval.every_epochs?)"
            trial.set_user_attr("failure", reason)
            raise TrialFailed(reason)
        trial.set_user_attr("epoch", selected["epoch"])
        return float(selected["value"])

    def trial_config(self, values: dict) -> Config:
        return config_from(self.base, {**values, "eval.splits": []})     # trials are selected, never tested

    def _in_process(self, trial, values: dict, run_dir: str) -> dict:
        from ..compose import run_training
        cfg = self.trial_config(values)
        return run_training(cfg, run_dir, validation_hooks=[PruningHook(trial, cfg.eval.select_by)],
                            show_progress=self.opts.show_progress)[1]

    def _on_ranks(self, trial, values: dict, run_dir: str) -> dict:
        """The trial under torchrun (``tuning/trial.py``): rank 0 reports to the same trial through the storage."""
        overrides = [f"--{k}={v if isinstance(v, str) else json.dumps(v)}"
                     for k, v in {**values, "eval.splits": []}.items()]
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={self.opts.nproc_per_trial}", "-m", "mmkgc_dist.cli", "tune-trial",
               "--storage", storage_ref(self.study_dir, self.opts.storage).url, "--study", trial.study.study_name,
               "--trial-id", str(trial._trial_id), "--run-dir", run_dir,
               "--config", os.path.join(self.study_dir, BASE_FILE), *overrides]
        code, tail = _run_relaying(cmd)
        if code == 143:
            raise RunInterrupted(f"trial {trial.number} stopped by SIGTERM; checkpoint in {run_dir}")
        if code != 0:
            errors = [line for line in tail if line.startswith("error: ")]
            reason = errors[-1][len("error: "):] if errors else (tail[-1] if tail else f"exit code {code}")
            trial.set_user_attr("failure", _one_line(reason))
            raise TrialFailed(reason)
        with open(os.path.join(run_dir, "results.json")) as fh:
            return json.load(fh)


def _run_relaying(cmd: list[str]) -> tuple[int, list[str]]:
    """Run ``cmd`` with its stderr relayed to ours; (exit code, its last lines). The child gets SIGTERM when
    this worker dies (Linux), so a killed worker leaves no trial training behind."""
    def die_with_parent():
        try:
            import ctypes
            import signal
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)     # PR_SET_PDEATHSIG
        except OSError:
            pass
    tail: collections.deque = collections.deque(maxlen=40)
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, preexec_fn=die_with_parent)

    def relay():
        for line in proc.stderr:
            sys.stderr.write(line)
            tail.append(line.rstrip("\n"))
    reader = threading.Thread(target=relay, daemon=True)
    reader.start()
    code = proc.wait()
    reader.join(timeout=10)
    return code, [line for line in tail if line.strip()]


def _one_line(text: str) -> str:
    return " ".join(text.split())


# ------------------------------------------------------------------------------------------ the worker
def open_worker_study(study_dir: str, params: list[Param], base: Config, opts: TuneOptions):
    """(the trials' base config, the study) as a worker starts: the storage named, the folder checked, the study
    opened or created and the folder bound to it."""
    storage_ref(study_dir, opts.storage)            # an unusable --storage is refused before the folder is made
    base = prepare_study_folder(study_dir, base)
    return base, load_study(study_dir, base, params, opts)


def run_worker(study_dir: str, params: list[Param], base: Config, opts: TuneOptions):
    """Run trials until the study has ``opts.trials`` finished ones (complete or pruned, over all workers);
    then write the study's report. Returns the Optuna study."""
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    from .report import write_report

    opts.check()
    check_space(params, base)
    if opts.baseline:
        base_values(params, base)            # refused before anything is written when outside the space
    base, study = open_worker_study(study_dir, params, base, opts)
    fail_orphaned_trials(study)
    done = (TrialState.COMPLETE, TrialState.PRUNED)
    finished = len(study.get_trials(deepcopy=False, states=done))
    failures = FailureLimit(opts.max_failures or max(opts.trials, 1))
    if finished < opts.trials:
        print(f"tune: study {study.study_name}: {finished} of {opts.trials} trials finished; this worker runs "
              f"trials until the study has {opts.trials}")
        study.optimize(Objective(study_dir, base, params, opts), n_trials=None, timeout=opts.timeout,
                       catch=(TrialFailed,),
                       callbacks=[MaxTrialsCallback(opts.trials, states=done), failures,
                                  lambda s, t: write_report(s, study_dir, params, base, plots=False)])
    else:
        print(f"tune: study {study.study_name} already has {finished} finished trials (--trials {opts.trials})")
    write_report(study, study_dir, params, base, plots=True)
    mine = failures.states
    if mine and all(state == TrialState.FAIL for state, _ in mine):
        reasons = collections.Counter(_one_line(why or "no reason recorded")[:160] for _, why in mine)
        counted = "; ".join(f"{n}x {why}" for why, n in reasons.most_common(3))
        raise TrialsFailed(f"tune: every trial of this worker failed ({len(mine)}): {counted}"
                           f"{'; ...' if len(reasons) > 3 else ''} (summary.md in {study_dir} lists them)")
    return study


class FailureLimit:
    """Stop this worker after ``limit`` failed trials of its own (a space that cannot train is not searched
    forever)."""

    def __init__(self, limit: int):
        self.limit, self.count = limit, 0
        self.states: list = []                # (state, failure reason) of each trial this worker ran

    def __call__(self, study, trial) -> None:
        from optuna.trial import TrialState
        self.states.append((trial.state, trial.user_attrs.get("failure")))
        if trial.state == TrialState.FAIL:
            self.count += 1
            if self.count >= self.limit:
                log.warning("tune: %d trials of this worker failed; stopping it (--max-failures)", self.count)
                study.stop()
