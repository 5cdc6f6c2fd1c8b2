"""End to end through the real entry points: torchrun + launch/train.py, launch/evaluate.py, the CLI."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from support import TINY as BASE, settings

VENV_BIN = os.path.dirname(sys.executable)
TINY = settings(BASE, "--train.epochs=2")


def run(args, cwd, timeout=600):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def torchrun(repo, *args):
    return run([os.path.join(VENV_BIN, "torchrun"), "--standalone", "--nproc_per_node=1",
                os.path.join(repo, "launch", "train.py"), *args], cwd=repo)


@pytest.mark.slow
def test_torchrun_train_then_evaluate(repo, tmp_path):
    run_dir = str(tmp_path / "run")
    res = torchrun(repo, "--run-dir", run_dir, *TINY, "--run.tensorboard=true")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "MRR" in res.stdout
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(os.path.join(run_dir, "tensorboard")))
    results = json.load(open(os.path.join(run_dir, "results.json")))
    records = [json.loads(l) for l in open(os.path.join(run_dir, "metrics.jsonl"))]
    assert any(r["kind"] == "train" and "positives_per_s" in r for r in records)
    assert any(r["kind"] == "eval" for r in records)
    assert os.path.exists(os.path.join(run_dir, "config.yaml"))
    ev = run([sys.executable, os.path.join(repo, "launch", "evaluate.py"), run_dir, "--output",
              str(tmp_path / "eval.json")], cwd=repo)
    assert ev.returncode == 0, ev.stderr[-3000:]
    again = json.load(open(tmp_path / "eval.json"))
    assert again["test"]["mrr"] == pytest.approx(results["test"]["mrr"], abs=1e-9)
    opt = run([sys.executable, os.path.join(repo, "launch", "evaluate.py"), run_dir, "--ties", "optimistic",
               "--output", str(tmp_path / "opt.json")], cwd=repo)
    assert opt.returncode == 0 and json.load(open(tmp_path / "opt.json"))["test"]["mrr"] >= again["test"]["mrr"]


@pytest.mark.slow
def test_default_job_learns(repo, tmp_path):
    """The README's main command with no arguments (run folder aside): MRR ≥ 5× an untrained model's."""
    run_dir = str(tmp_path / "default")
    res = torchrun(repo, "--run-dir", run_dir)
    assert res.returncode == 0, res.stderr[-3000:]
    trained = json.load(open(os.path.join(run_dir, "results.json")))["test"]["mrr"]
    from mmkgc_dist.config import load_config
    from mmkgc_dist.data.synthetic import generate
    from mmkgc_dist.compose import local_trainer
    cfg = load_config()
    untrained = local_trainer(cfg, generate(cfg.data.synthetic), None, show_progress=False).evaluate("test")["mrr"]
    assert trained >= 5 * untrained, (trained, untrained)


@pytest.mark.slow
def test_bad_config_key_exits_2(repo, tmp_path):
    res = torchrun(repo, "--run-dir", str(tmp_path / "x"), "--train.lrr=1")
    assert res.returncode != 0 and "train.lrr: unknown key" in res.stderr


def mmkgc(repo, *args):
    return run([os.path.join(VENV_BIN, "mmkgc-dist"), *args], cwd=repo)


def test_prepare_bad_openke_writes_nothing(repo, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "entity2id.txt").write_text("2\na 0\nb 1\n")
    (src / "relation2id.txt").write_text("1\nr 0\n")
    (src / "train2id.txt").write_text("1\n0 1 0\n")
    (src / "valid2id.txt").write_text("1\n0 1 0\n")
    (src / "test2id.txt").write_text("1\n0 9 0\n")
    res = mmkgc(repo, "prepare", "openke", str(src), str(tmp_path / "out"))
    assert res.returncode == 2
    assert "test2id.txt: line 2: tail id 9 out of range [0, 2)" in res.stderr
    assert not os.path.exists(tmp_path / "out")


def test_prepare_db15k_and_features(repo, tmp_path, db15k):
    out = str(tmp_path / "db15k")
    res = mmkgc(repo, "prepare", "openke", db15k, out)
    # every problem at once: its file, count, first row and the flag that accepts it, in one line
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "3 problem(s) in the splits" in res.stderr and "8719 valid rows also in train" in res.stderr
    assert "valid2id.txt: 2423 duplicate rows in valid, the first data row 12" in res.stderr
    assert "test2id.txt: 824 test rows also in valid" in res.stderr
    assert "pass --allow-duplicates and --allow-overlap" in res.stderr
    assert not os.path.exists(out)
    res = mmkgc(repo, "prepare", "openke", db15k, out, "--allow-duplicates")
    assert res.returncode == 2 and "824 test rows also in valid" in res.stderr and "duplicate" not in res.stderr
    res = mmkgc(repo, "prepare", "openke", db15k, out, "--allow-duplicates", "--allow-overlap")
    assert res.returncode == 0, res.stderr
    manifest = json.load(open(os.path.join(out, "manifest.json")))
    assert (manifest["num_entities"], manifest["num_relations"]) == (12842, 279)
    assert manifest["splits"]["train"]["rows"] == 79222 and manifest["splits"]["valid"]["rows"] == 9904
    # DB15K's valid split repeats rows (9,904 rows, 7,481 distinct), 6,584 of its distinct triples are train
    # triples and 824 test triples are valid triples: kept, counted, reported.
    assert manifest["checks"]["duplicates"] == {"train": 0, "valid": 2423, "test": 0}
    assert manifest["checks"]["overlap"]["test_in_valid"] == 824 and manifest["checks"]["overlap"]["test_in_train"] == 0
    feats = np.random.default_rng(0).normal(size=(12842, 8)).astype(np.float32)
    feats[:100] = np.nan
    np.save(tmp_path / "v.npy", feats)
    res = mmkgc(repo, "prepare", "features", out, "--modality", "visual", str(tmp_path / "v.npy"))
    assert res.returncode == 0, res.stderr
    assert json.load(open(os.path.join(out, "manifest.json")))["modalities"]["visual"]["present"] == 12742


@pytest.mark.slow
def test_text_features_from_names(tmp_path):
    pytest.importorskip("sentence_transformers")
    from mmkgc_dist.data.openke import readable_name
    from mmkgc_dist.data.text import TextEncoder
    values, _ = TextEncoder(cache=False).encode([readable_name(f"<http://dbpedia.org/resource/{n}>")
                                                 for n in ("Paris", "France", "Banana")])
    assert values.shape == (3, 384)
    cos = values @ values.T / np.outer(np.linalg.norm(values, axis=1), np.linalg.norm(values, axis=1))
    assert cos[0, 1] > cos[0, 2]          # Paris is closer to France than to Banana


def test_console_script_exit_codes(repo, tmp_path):
    """What the console script itself pins (every other command-line test runs ``cli.entry`` in process): a bad
    key is one line and 2 — read before torch is imported, so refused at once —, a reader that left the pipe is
    141, success is 0."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=repo)
    script = [sys.executable, "-m", "mmkgc_dist.cli"]
    res = subprocess.run([*script, "train", "--train.lr=inf"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 2 and res.stderr == "error: train.lr: must be a finite number, got inf\n", res.stderr
    imported = subprocess.run([*script, "train", "--train.lr=inf"], cwd=tmp_path, capture_output=True, text=True,
                              env=dict(env, PYTHONPROFILEIMPORTTIME="1"), timeout=60).stderr
    modules = [line.rsplit("|", 1)[-1].strip() for line in imported.splitlines() if line.startswith("import time")]
    assert "yaml" in modules and "torch" not in modules            # the config is refused before torch loads
    read, write = os.pipe()
    os.close(read)                               # the reader is gone before the first line is written
    proc = subprocess.run([*script, "config"], cwd=tmp_path, env=env, stdout=write, stderr=subprocess.PIPE,
                          timeout=60)
    os.close(write)
    assert proc.returncode == 141 and not proc.stderr, proc.stderr
    ok = subprocess.run([*script, "config"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and ok.stdout.startswith("data.source = ")
