"""Fault injection: kill -9 or SIGTERM at a random moment of train / resume / export / feature import / prepare,
50 seeded trials. Afterwards every output is the old complete version or a new complete one, and every run
resumes or refuses in one line.

Each trial forks this (already imported) process to run the command's own entry point, so a trial costs the
command's work, not an interpreter start; the moment of the signal is drawn uniformly over the command's
measured duration, so trials land in reading, training, checkpointing, writing and swapping alike.
"""
import multiprocessing
import os
import signal
import time

import numpy as np
import pytest

from mmkgc_dist.data.format import dataset_identity, manifest_files, read_manifest
from mmkgc_dist.serving.export import read_embeddings
from mmkgc_dist.checkpoint import list_checkpoints, verify
from mmkgc_dist.checkpoint.catalogue import sha256
from mmkgc_dist.outputs import resolve_output
from support import MINI, settings

TRIALS = int(os.environ.get("FAULT_TRIALS", 50))
SMALL = settings(MINI, "--train.batch_size=64", "--eval.max_queries=40", "--train.log_every=1")


def _child(argv, cwd, log):
    import logging
    import sys
    os.chdir(cwd)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    # pytest's capture replaced the Python-level streams and the root logger's handlers: the command's own
    # output goes to the log, as in a terminal
    sys.stdout = open(1, "w", buffering=1, closefd=False)
    sys.stderr = open(2, "w", buffering=1, closefd=False)
    logging.getLogger().handlers.clear()
    # tqdm's write lock is a semaphore shared with the parent across fork: a child killed while holding it would
    # leave every later progress bar of the test process (torch.compile's among them) waiting forever
    import threading

    from tqdm import tqdm
    tqdm.set_lock(threading.RLock())
    from mmkgc_dist.cli import main
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    os._exit(code or 0)


def run(argv, cwd, kill_after=None, sig=signal.SIGKILL):
    """(exit code, output) of ``mmkgc-dist ARGV`` in a forked child; signalled after ``kill_after`` seconds."""
    log = os.path.join(cwd, f".trial-{time.time_ns()}.log")
    open(log, "w").close()                   # exists even when the child dies before it opens it
    child = multiprocessing.get_context("fork").Process(target=_child, args=(argv, str(cwd), log))
    child.start()
    if kill_after is not None:
        child.join(kill_after)
        if child.is_alive():
            os.kill(child.pid, sig)
    child.join(300)
    if child.is_alive():               # a hung fork of this process must not outlive the test (it holds its pipes)
        child.kill()
        child.join()
        raise AssertionError(f"{argv} hung")
    with open(log) as fh:
        out = fh.read()
    os.remove(log)
    return child.exitcode, out


def complete_dataset(root) -> str:
    """The dataset's identity, after checking every file its manifest names against the recorded digest."""
    root = resolve_output(str(root))          # between the two moves of a swap: the complete old version
    manifest = read_manifest(root)
    for rel in manifest_files(manifest):
        path = os.path.join(root, rel)
        want = manifest["files"][rel]
        assert os.path.isfile(path) and sha256(path) == want["sha256"], f"{root}: {rel} incomplete"
    return dataset_identity(manifest)


def complete_export(path) -> str:
    path = resolve_output(str(path))
    emb = read_embeddings(path)
    assert len(emb.entity_names) == 120 and np.isfinite(emb.joint).all()
    return open(os.path.join(path, "export.json")).read()


def one_line_refusal_or_success(code, out):
    if code == 0:
        return
    errors = [l for l in out.splitlines() if l.startswith("error: ")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in out, (code, out[-2000:])


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = tmp_path_factory.mktemp("faults")
    started = {}
    for name, argv in (("prepare", ["prepare", "synthetic", "ds", "--num_entities=120", "--num_triples=900"]),
                       ("train", ["train", "--run-dir", "r", *SMALL, "--train.epochs=2",
                                  "--train.checkpoint_every_steps=4"]),
                       ("export", ["export", "r", "emb"])):
        t0 = time.time()
        code, out = run(argv, w)
        assert code == 0, out[-3000:]
        started[name] = time.time() - t0
    np.save(w / "text.npy", np.random.default_rng(0).normal(size=(120, 6)).astype(np.float32))
    return w, started


@pytest.mark.slow
def test_kill_at_random_points_leaves_old_or_new_complete_versions(world):
    w, seconds = world[0], dict(world[1])
    rng = np.random.default_rng(2026)
    identity, export, epochs = complete_dataset(w / "ds"), complete_export(w / "emb"), 2
    outcomes = {"killed": 0, "finished": 0}
    for trial in range(TRIALS):
        op = ["train", "prepare", "features", "export", "new-run"][trial % 5]
        sig = signal.SIGKILL if rng.random() < 0.5 else signal.SIGTERM
        if op == "train":
            epochs += 1
            argv = ["train", "--run-dir", "r", "--resume", *SMALL, f"--train.epochs={epochs}",
                    "--train.checkpoint_every_steps=4"]
        elif op == "new-run":
            argv = ["train", "--run-dir", f"n{trial}", *SMALL, "--train.epochs=1", "--train.checkpoint_every_steps=3"]
        elif op == "prepare":
            argv = ["prepare", "synthetic", "ds", "--overwrite", "--num_entities=120", "--num_triples=900",
                    f"--seed={trial}"]
        elif op == "features":
            argv = ["prepare", "features", "ds", "--modality", "text", "text.npy"]
        else:
            argv = ["export", "r", "emb", "--overwrite"]
        kind = "prepare" if op in ("prepare", "features") else "export" if op == "export" else "train"
        t0 = time.time()
        code, out = run(argv, w, kill_after=rng.uniform(0, 1.2 * seconds[kind]), sig=sig)
        outcomes["finished" if code in (0, 2) else "killed"] += 1
        if code == 0:         # the machine got faster (the load of the fixture's runs is gone): aim at this speed
            seconds[kind] = min(seconds[kind], time.time() - t0)
        assert "Traceback" not in out, (trial, op, out[-3000:])
        # every output: the old complete version or a new complete one
        now = complete_dataset(w / "ds")
        if now != identity:
            assert code == 0 or op in ("prepare", "features"), (trial, op)
            identity = now
        export_now = complete_export(w / "emb")
        assert export_now == export or op == "export", trial
        export = export_now
        for run_dir in [w / "r"] + [w / f"n{t}" for t in range(trial + 1) if (w / f"n{t}").exists()]:
            for ckpt in list_checkpoints(str(run_dir / "checkpoints")):
                assert verify(ckpt) is None, (trial, op, ckpt.path, verify(ckpt))
        # every run resumes, or refuses in one line
        if op in ("train", "new-run"):
            target = "r" if op == "train" else f"n{trial}"
            code, out = run(["train", "--run-dir", target, "--resume", "--train.max_steps=1"], w)
            one_line_refusal_or_success(code, out)
    print(f"{TRIALS} trials: {outcomes}")
    assert outcomes["killed"] >= TRIALS // 4          # the signals did land mid-command


@pytest.mark.slow
def test_kill_tune_workers_at_random_points_accounts_for_every_trial(tmp_path, monkeypatch):
    """kill -9 or SIGTERM of a study worker at random moments (creating the study, sampling, training a trial,
    writing the report), then a worker that finishes: every trial complete, pruned or failed with a reason; no
    trial number or folder used twice; the report lists every trial."""
    import csv

    import optuna
    import yaml

    from mmkgc_dist.tuning import study as study_module
    monkeypatch.setattr(study_module, "UNREGISTERED_GRACE_S", 2.0)      # the forked workers inherit it
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(
        {"train.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}, "model.dim": [4, 8]}))
    base = [*SMALL, "--train.epochs=2", "--eval.every_epochs=1"]

    def worker(trials):
        return ["tune", "space.yaml", "study", "--trials", str(trials), "--pruner", "none", "--seed", "1", *base]

    t0 = time.time()
    code, out = run(worker(1), tmp_path)
    assert code == 0, out[-3000:]
    duration = time.time() - t0
    rng = np.random.default_rng(31)
    target, outcomes = 1, {"killed": 0, "finished": 0}
    for trial in range(TRIALS):
        target += 1
        sig = signal.SIGKILL if rng.random() < 0.5 else signal.SIGTERM
        code, out = run(worker(target), tmp_path, kill_after=rng.uniform(0, 1.5 * duration), sig=sig)
        outcomes["finished" if code == 0 else "killed"] += 1
        assert "Traceback" not in out or code in (-9, 143, -15), (trial, out[-3000:])
        assert code in (0, -9, -15, 143), (trial, code, out[-3000:])
    time.sleep(2.5)                                      # unclaimed trials of killed workers are now orphans
    code, out = run(worker(target + 1), tmp_path)
    assert code == 0, out[-3000:]

    trials = optuna.load_study(study_name="study", storage=f"sqlite:///{tmp_path}/study/study.db").get_trials()
    assert [t.number for t in trials] == list(range(len(trials)))                  # no number used twice
    for t in trials:
        assert t.state.name in ("COMPLETE", "PRUNED", "FAIL"), (t.number, t.state)
        assert t.state.name != "FAIL" or t.user_attrs.get("failure"), t.number
    assert sum(t.state.name in ("COMPLETE", "PRUNED") for t in trials) >= target + 1
    run_dirs = [t.user_attrs["run_dir"] for t in trials if "run_dir" in t.user_attrs]
    assert len(run_dirs) == len(set(run_dirs))                                      # no folder shared
    folders = {int(n) for n in os.listdir(tmp_path / "study" / "trials")}
    assert folders <= {t.number for t in trials}                                    # no stray trial folder
    with open(tmp_path / "study" / "trials.csv") as fh:
        listed = [int(row["trial"]) for row in csv.DictReader(fh)]
    assert listed == [t.number for t in trials]                                     # the report lists every one
    print(f"{TRIALS} kills: {outcomes}; {len(trials)} trials, "
          f"{sum(t.state.name == 'FAIL' for t in trials)} failed (interrupted)")
    assert outcomes["killed"] >= TRIALS // 4
