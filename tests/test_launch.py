"""Launch paths for real: torchrun elastic restart after kill -9, and two torchrun agents (multi-node) over
a c10d rendezvous on 127.0.0.1."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from support import TINY as BASE, settings

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
TINY = settings(BASE, "--eval.splits=[test]")


def env():
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_cmd(run_dir, *extra, torchrun_args=("--standalone", "--nproc_per_node=2")):
    where = ["--run-dir", str(run_dir)] if run_dir else []
    return [os.path.join(BIN, "torchrun"), *torchrun_args, os.path.join(REPO, "launch", "train.py"),
            *where, *TINY, *extra]


def records(run_dir):
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    return [json.loads(line) for line in open(path) if line.strip()]


@pytest.mark.slow
def test_kill_one_rank_restarts_and_resumes(tmp_path):
    extra = ["--train.epochs=6", "--train.checkpoint_every_steps=5"]
    reference = tmp_path / "reference"
    res = subprocess.run(train_cmd(reference, *extra), env=env(), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]

    # No run named: the job's default (timestamped) run folder records torchrun's job id, so the restart
    # continues that run instead of starting a new one from step 0.
    parent = tmp_path / "runs"
    proc = subprocess.Popen(train_cmd(None, *extra, f"--run.out_dir={parent}",
                                      torchrun_args=("--standalone", "--nproc_per_node=2", "--max-restarts=1")),
                            env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    killed, faulty = None, None
    while time.time() < deadline and faulty is None:
        faulty = next((parent / d for d in os.listdir(parent)), None) if parent.exists() else None
        time.sleep(0.05)
    while time.time() < deadline and killed is None:
        steps = [r["step"] for r in records(faulty) if r["kind"] == "train"]
        ckpts = [r for r in records(faulty) if r["kind"] == "checkpoint"]
        if ckpts and steps and steps[-1] >= 27 and steps[-1] % 11:          # 11 steps per epoch: mid-epoch
            workers = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
            if len(workers) == 2:
                killed = int(workers[-1])
                os.kill(killed, signal.SIGKILL)
        time.sleep(0.05)
    assert killed is not None, "training ended before a worker could be killed"
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, "\n".join(l for l in err.splitlines() if "Error" in l or "error" in l)[-3000:]
    assert "resumed at epoch" in out and os.listdir(parent) == [faulty.name]
    final = json.load(open(faulty / "results.json"))["test"]
    expect = json.load(open(reference / "results.json"))["test"]
    # Stated tolerance: resume is exact (cursor + RNG + optimizer state), so metrics agree to 1e-6.
    for key in ("mrr", "mr", "hits@1", "hits@10"):
        assert final[key] == pytest.approx(expect[key], abs=1e-6)


@pytest.mark.slow
def test_two_torchrun_agents_multinode(tmp_path):
    port = free_port()
    run_dir = tmp_path / "multi"
    args = ("--nnodes=2", "--nproc_per_node=1", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}",
            "--rdzv-id=mmkgc-test", "--max-restarts=0")
    agents = [subprocess.Popen(train_cmd(run_dir, "--train.epochs=2", torchrun_args=args), env=env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [a.communicate(timeout=600) for a in agents]
    for agent, (out, err) in zip(agents, outs):
        assert agent.returncode == 0, err[-3000:]
    results = json.load(open(run_dir / "results.json"))
    assert "over 2 ranks" in results["test"]["protocol"] and results["test"]["count"] > 0


@pytest.mark.slow
def test_sigterm_to_torchrun_checkpoints_on_every_rank_and_resumes(tmp_path):
    """torchrun forwards SIGTERM to its workers: the ranks agree on the stop at the next logging step (the flag
    rides on the metrics' all-reduce), write one checkpoint together and exit; --resume continues from it."""
    run = tmp_path / "run"
    extra = ["--train.epochs=50", "--train.log_every=2"]
    proc = subprocess.Popen(train_cmd(run, *extra), env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 300
    while time.time() < deadline and len([r for r in records(run) if r["kind"] == "train"]) < 3:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode != 0
    stopped = [r for r in records(run) if r["kind"] == "interrupted"]
    saved = [n for n in os.listdir(run / "checkpoints") if n.startswith("step-")]
    assert len(stopped) == 1 and saved == [f"step-{stopped[0]['step']:09d}"], (stopped, saved, err[-2000:])
    assert "stopped by SIGTERM" in err
    res = subprocess.run(train_cmd(run, "--resume", f"--train.max_steps={stopped[0]['step'] + 2}"), env=env(),
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0 and f"step {stopped[0]['step']}" in res.stdout, res.stderr[-3000:]
