"""Real Slurm: a one-node cluster on localhost runs the project's sbatch script (via the submit helper)
with 2 ranks; the job's metrics and results files are checked."""
import json
import os
import re
import subprocess
import sys

import pytest

from slurm_cluster import LocalSlurm, slurm_available

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    why = slurm_available()
    if why:
        pytest.skip(why)
    c = LocalSlurm(str(tmp_path_factory.mktemp("slurm"))).start()
    yield c
    c.stop()


@pytest.mark.slow
def test_sbatch_two_ranks(cluster, tmp_path):
    run_dir = tmp_path / "run"
    res = subprocess.run([sys.executable, os.path.join(REPO, "launch", "slurm", "submit.py"), "--nodes", "1",
                          "--nproc-per-node", "2", "--cpus-per-task", "2", "--time", "00:15:00",
                          "--partition", "debug", "--run-dir", str(run_dir), "--",
                          "--data.synthetic.num_entities=400", "--data.synthetic.num_triples=3000",
                          "--model.dim=16", "--train.epochs=2", "--train.batch_size=256",
                          "--train.num_negatives=8", "--mat.hidden=32", "--train.compile=false"],
                         env=cluster.env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    job_id = re.search(r"submitted job (\d+)", res.stdout).group(1)
    state = cluster.wait_job(job_id, timeout=600)
    log = open(run_dir / f"slurm-{job_id}.out").read() if (run_dir / f"slurm-{job_id}.out").exists() else ""
    assert state == "COMPLETED", log[-3000:]
    assert "2 rank(s)" in log
    records = [json.loads(l) for l in open(run_dir / "metrics.jsonl")]
    assert any(r["kind"] == "train" for r in records) and any(r["kind"] == "eval" for r in records)
    results = json.load(open(run_dir / "results.json"))
    assert "over 2 ranks" in results["test"]["protocol"]


@pytest.mark.slow
def test_submit_rejects_bad_config(cluster, tmp_path):
    res = subprocess.run([sys.executable, os.path.join(REPO, "launch", "slurm", "submit.py"), "--run-dir",
                          str(tmp_path / "x"), "--", "--train.lrr=1"], env=cluster.env, capture_output=True, text=True)
    assert res.returncode == 2 and "train.lrr: unknown key" in res.stderr


@pytest.mark.slow
def test_tune_array_job_workers_share_one_study(cluster, tmp_path):
    """launch/slurm/tune.py: an array job of 2 tune workers on one SQLite study; each ran trials of it."""
    optuna = pytest.importorskip("optuna")
    space = tmp_path / "space.yaml"
    space.write_text("train.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}\n")
    study_dir = tmp_path / "study"
    res = subprocess.run([sys.executable, os.path.join(REPO, "launch", "slurm", "tune.py"), str(space),
                          str(study_dir), "--workers", "2", "--trials", "4", "--cpus-per-task", "1",
                          "--time", "00:15:00", "--partition", "debug", "--seed", "3", "--pruner", "none", "--",
                          "--data.synthetic.num_entities=300", "--data.synthetic.num_triples=2400", "--model.dim=8",
                          "--train.epochs=2", "--eval.every_epochs=1", "--train.batch_size=128",
                          "--train.num_negatives=8", "--mat.hidden=16", "--train.compile=false"],
                         env=cluster.env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    job_id = re.search(r"submitted array job (\d+)", res.stdout).group(1)
    states = cluster.wait_array(job_id, 2, timeout=600)
    logs = "".join(p.read_text() for p in study_dir.glob("slurm-*.out"))
    assert states == ["COMPLETED", "COMPLETED"], logs[-3000:]
    study = optuna.load_study(study_name="study", storage=f"sqlite:///{study_dir / 'study.db'}")
    trials = study.get_trials(deepcopy=False)
    assert sum(t.state.name == "COMPLETE" for t in trials) >= 4
    assert len({t.user_attrs["worker_pid"] for t in trials}) == 2, logs[-3000:]
    assert (study_dir / "best.yaml").exists() and (study_dir / "job.sbatch").exists()
    res = subprocess.run([sys.executable, os.path.join(REPO, "launch", "slurm", "tune.py"), str(space),
                          str(tmp_path / "bad"), "--dry-run", "--", "--train.lrr=1"], env=cluster.env,
                         capture_output=True, text=True)
    assert res.returncode == 2 and "train.lrr: unknown key" in res.stderr and not (tmp_path / "bad").exists()
