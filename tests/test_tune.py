"""`mmkgc-dist tune`: search space files, an SQLite study continued by a second invocation, two workers at
once, pruning, failed and interrupted trials, best.yaml reproducing the best trial, multi-rank trials."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import yaml

from support import REPO, TINY, cli

optuna = pytest.importorskip("optuna")

from mmkgc_dist.config import load_config  # noqa: E402
from mmkgc_dist.errors import ConfigError  # noqa: E402
from mmkgc_dist.tuning.space import base_values, check_space, parse_space, sample  # noqa: E402

# Trials of a few seconds: validation every epoch, so the pruner has a curve to read.
BASE = [*TINY, "--train.epochs=4", "--eval.every_epochs=1", "--train.lr=1e-3"]
SPACE = {"train.lr": {"type": "float", "low": 1.0e-5, "high": 3.0e-2, "log": True},
         "model.dim": {"type": "int", "low": 4, "high": 16, "step": 4},
         "model.regularizer": ["none", "n3"],
         "model.regularizer_weight": {"type": "float", "low": 1.0e-4, "high": 0.1, "log": True,
                                      "when": {"model.regularizer": ["n3"]}}}


def write_space(folder, space=SPACE) -> str:
    path = os.path.join(folder, "space.yaml")
    with open(path, "w") as fh:
        yaml.safe_dump(space, fh, sort_keys=False)
    return path


def trials_of(study_dir: str):
    study = optuna.load_study(study_name=os.path.basename(study_dir),
                              storage=f"sqlite:///{os.path.join(study_dir, 'study.db')}")
    return study.get_trials(deepcopy=False)


# ------------------------------------------------------------------------------------------ the space
def test_space_file_kinds_conditions_and_errors():
    params = parse_space(SPACE)
    assert [p.type for p in params] == ["float", "int", "categorical", "float"]
    base = load_config(None, [("model.dim", "8")])
    check_space(params, base)
    assert base_values(params, base) == {"train.lr": 1e-3, "model.dim": 8, "model.regularizer": "none"}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(30):
        values = sample(study.ask(), params, base)
        assert ("model.regularizer_weight" in values) == (values["model.regularizer"] == "n3")
        assert 1e-5 <= values["train.lr"] <= 3e-2 and values["model.dim"] in (4, 8, 12, 16)
        seen.add(values["model.regularizer"])
    assert seen == {"none", "n3"}

    bad = [({"train.lrr": [1, 2]}, "train.lrr: not a config key"),
           ({"lr": {"type": "float", "low": 1, "high": 2}}, "did you mean mat.lr or train.lr?"),
           ({"train.lr": {"type": "gaussian"}}, "type 'gaussian'"),
           ({"train.lr": {"type": "float", "low": 0.1, "high": 0.01}}, "low (0.1) must be below high"),
           ({"train.lr": {"type": "float", "low": 0, "high": 1, "log": True}}, "log scale needs low > 0"),
           ({"model.dim": {"type": "int", "low": 0, "high": 8}}, "model.dim = 0 makes an invalid config"),
           ({"model.dim": {"type": "int", "low": 8, "high": 16, "stp": 2}}, "unknown option(s) ['stp']"),
           ({"model.scoring": ["rotate", "hole"]}, "unknown scoring function(s) ['hole']"),
           ({"train.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "when": {"train.nope": [1]}}},
            "when: train.nope is not a config key")]
    for space, message in bad:
        with pytest.raises(ConfigError, match=None) as err:
            check_space(parse_space(space), base)
        assert message in str(err.value), (space, str(err.value))
    with pytest.raises(ConfigError, match="base config's value 8 is not in \\[12, 16\\]"):
        base_values(parse_space({"model.dim": {"type": "int", "low": 12, "high": 16}}), base)


@pytest.mark.slow
def test_bad_space_and_foreign_folder_fail_in_one_line_before_writing(tmp_path):
    space = write_space(str(tmp_path), {"train.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
                                        "model.dim": {"type": "int", "low": 4, "high": 8}})
    res = cli("tune", space, "study", "--trials", "1", *BASE, cwd=tmp_path)     # base dim 8, lr 1e-3: inside
    assert res.returncode == 0, res.stderr[-2000:]
    res = cli("tune", space, "other", *BASE, "--model.dim=32", cwd=tmp_path)
    assert res.returncode == 2 and res.stderr.count("\n") == 1
    assert "model.dim: the base config's value 32 is not in [4, 8]" in res.stderr
    assert not (tmp_path / "other").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    res = cli("tune", space, "mine", "--trials", "1", *BASE, cwd=tmp_path)
    assert res.returncode == 2 and "not empty and not an mmkgc-dist study" in res.stderr
    assert os.listdir(tmp_path / "mine") == ["notes.txt"]
    res = cli("tune", space, "other", "--heartbeat", "-1", cwd=tmp_path)
    assert res.returncode == 2 and "--heartbeat: expected a whole number >= 0" in res.stderr


def test_python_tune_options_are_checked(tmp_path):
    import mmkgc_dist
    for options, message in (({"pruner": "asha"}, "pruner='asha'; expected one of median, hyperband, none"),
                             ({"trials": 0}, "trials=0; expected a whole number >= 1"),
                             ({"timeout": -5}, "timeout=-5; expected seconds > 0")):
        with pytest.raises(ConfigError, match=re.escape(message)):
            mmkgc_dist.tune(SPACE, str(tmp_path / "s"), **{"trials": 2, **options})
    assert not (tmp_path / "s").exists()


# ------------------------------------------------------------------------------------------ studies
@pytest.mark.slow
def test_study_runs_continues_prunes_and_best_yaml_reproduces(tmp_path):
    space = write_space(str(tmp_path))
    res = cli("tune", space, "study", "--trials", "6", "--seed", "3", "--pruner-startup", "2", *BASE, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    trials = trials_of(str(tmp_path / "study"))
    states = [t.state.name for t in trials]
    assert len(trials) == 6 and states.count("PRUNED") >= 1 and states.count("COMPLETE") >= 2, states
    assert trials[0].user_attrs["baseline"] and trials[0].params["train.lr"] == 1e-3
    for t in trials:                       # every trial an ordinary run folder
        run = tmp_path / "study" / t.user_attrs["run_dir"]
        results = json.load(open(run / "results.json"))
        assert [h["value"] for h in results["selection"]["history"]] == \
            [t.intermediate_values[e] for e in sorted(t.intermediate_values)]
        assert ("stopped" in results) == (t.state.name == "PRUNED")
        kept = sorted(f for f in os.listdir(run / "checkpoints") if f.startswith("step-"))
        assert kept == [results["selection"]["selected"]["checkpoint"]]      # a trial keeps its selected one
    summary = (tmp_path / "study" / "summary.md").read_text()
    assert "Hand-set config (trial 0" in summary and "| pruned |" in summary
    for plot in ("history", "importances", "parallel"):
        assert (tmp_path / "study" / "plots" / f"{plot}.png").read_bytes()[:4] == b"\x89PNG"

    # a second invocation continues the same study
    res = cli("tune", space, "study", "--trials", "8", "--seed", "4", "--pruner-startup", "2", *BASE, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "6 of 8 trials finished" in res.stdout
    trials = trials_of(str(tmp_path / "study"))
    assert [t.number for t in trials] == list(range(8))
    assert sum(t.user_attrs.get("baseline", False) for t in trials) == 1
    # ... only with the same base config
    res = cli("tune", space, "study", "--trials", "9", *BASE, "--train.batch_size=32", cwd=tmp_path)
    assert res.returncode == 2 and "another base config (train.batch_size: 64 -> 32)" in res.stderr

    # best.yaml trains the best trial again: the same validation metric
    best = max((t for t in trials if t.state.name == "COMPLETE"), key=lambda t: t.value)
    res = cli("train", "--config", "study/best.yaml", "--run-dir", "again", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    again = json.load(open(tmp_path / "again" / "results.json"))
    assert again["selection"]["selected"]["value"] == pytest.approx(best.value, abs=1e-6)
    assert "test" in again                 # best.yaml keeps the base's eval.splits (trials are not tested)


@pytest.mark.slow
def test_two_workers_at_once_run_distinct_trials_and_a_failed_trial_is_recorded(tmp_path):
    # model.scoring=ikrl with MAT on is refused when the trial starts: a failed trial, and the study goes on
    space = write_space(str(tmp_path), {**SPACE, "model.scoring": ["rotate", "ikrl"]})
    args = ["tune", space, "study", "--trials", "6", "--pruner", "none", *BASE]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO, TQDM_DISABLE="1")
    workers = [subprocess.Popen([sys.executable, "-m", "mmkgc_dist.cli", *args, "--seed", "5", "--worker", str(w)],
                                cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for w in range(2)]
    outputs = [w.communicate(timeout=600) for w in workers]
    assert [w.returncode for w in workers] == [0, 0], [o[1][-2000:] for o in outputs]
    trials = trials_of(str(tmp_path / "study"))
    finished = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert 6 <= len(finished) <= 7                # a worker may start one more while the other finishes the 6th
    assert len({t.number for t in trials}) == len(trials)
    assert len({t.user_attrs["worker_pid"] for t in trials}) == 2          # both worked on the one study
    assert len({t.user_attrs["run_dir"] for t in trials}) == len(trials)   # distinct run folders
    failed = [t for t in trials if t.state.name == "FAIL"]
    assert all(t.params["model.scoring"] == "ikrl" for t in failed)
    assert all("mat.enabled: MAT fuses generated modalities" in t.user_attrs["failure"] for t in failed)
    if failed:
        assert "MAT fuses generated modalities" in (tmp_path / "study" / "summary.md").read_text()


@pytest.mark.slow
def test_kill_9_of_a_worker_mid_trial_then_restart_completes_the_study(tmp_path):
    space = write_space(str(tmp_path))
    args = ["tune", space, "study", "--trials", "4", "--pruner", "none", "--seed", "2", *BASE,
            "--train.epochs=8"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO, TQDM_DISABLE="1")
    worker = subprocess.Popen([sys.executable, "-m", "mmkgc_dist.cli", *args], cwd=tmp_path, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    victim, deadline = None, time.time() + 300
    while victim is None and time.time() < deadline and worker.poll() is None:
        time.sleep(0.2)
        if not (tmp_path / "study" / "study.db").exists():
            continue
        try:
            running = [t for t in trials_of(str(tmp_path / "study"))
                       if t.state.name == "RUNNING" and t.number >= 1 and len(t.intermediate_values) >= 2]
        except Exception:                      # the schema is still being created
            continue
        victim = running[0].number if running else None
    assert victim is not None, "no trial reached its second validation run"
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    assert trials_of(str(tmp_path / "study"))[victim].state.name == "RUNNING"

    res = cli("tune", *args[1:], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    trials = trials_of(str(tmp_path / "study"))
    assert trials[victim].state.name == "FAIL"
    assert trials[victim].user_attrs["failure"].startswith("interrupted: its worker (pid")
    assert sum(t.state.name == "COMPLETE" for t in trials) == 4
    assert [t.number for t in trials] == list(range(len(trials))) and len(trials) == 5   # no duplicate
    assert not any(t.state.name == "RUNNING" for t in trials)
    assert "interrupted" in (tmp_path / "study" / "summary.md").read_text()


@pytest.mark.slow
def test_multi_rank_trials_report_to_the_pruner_through_the_storage(tmp_path):
    space = write_space(str(tmp_path), {"train.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}})
    res = cli("tune", space, "study", "--trials", "2", "--nproc-per-trial", "2", "--seed", "1", *BASE,
              "--train.epochs=2", cwd=tmp_path, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    trials = trials_of(str(tmp_path / "study"))
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    for t in trials:
        assert sorted(t.intermediate_values) == [1, 2]          # rank 0 reported each validation run
        run = tmp_path / "study" / t.user_attrs["run_dir"]
        assert json.load(open(run / "sharding_plan.json"))      # trained on the distributed runtime
        selected = json.load(open(run / "results.json"))["selection"]["selected"]
        assert selected["value"] == pytest.approx(t.value)


@pytest.mark.slow
def test_journal_storage_on_a_shared_file(tmp_path):
    """--storage journal:FILE (Optuna's journal file, for workers on a shared filesystem): the study lives in the
    file, study.yaml records its kind, a worker with another storage is refused."""
    import mmkgc_dist
    journal = tmp_path / "shared" / "study.journal"
    journal.parent.mkdir()
    overrides = {k[2:].split("=")[0]: v for k, v in (a.split("=", 1) for a in BASE)}
    study = mmkgc_dist.tune({"train.lr": [1e-3, 3e-3]}, str(tmp_path / "s"), overrides=overrides, trials=2,
                            storage=f"journal:{journal}", pruner="none", show_progress=False)
    assert journal.exists() and not (tmp_path / "s" / "study.db").exists()
    assert len(study.to_frame()) == 2 and yaml.safe_load(open(tmp_path / "s" / "study.yaml"))["storage"] == \
        f"journal: {os.path.realpath(journal)}"
    with pytest.raises(ConfigError, match="created with storage journal: .*study.journal"):
        mmkgc_dist.tune({"train.lr": [1e-3, 3e-3]}, str(tmp_path / "s"), overrides=overrides, trials=3)
