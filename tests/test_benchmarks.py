"""Smoke runs of benchmark scripts on real data (they are not timed here; they must just keep working)."""
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_quality_script_smoke(tmp_path, db15k):
    mkgw = os.path.join(os.path.dirname(db15k), "MKG-W")
    res = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "quality.py"), "--data", f"mkgw={mkgw}",
                          "--variants", "rotate,adamf-mat", "--seeds", "1", "--max-steps", "2", "--epochs", "1",
                          "--device", "cpu", "--set", "eval.max_queries=200", "--out", str(tmp_path)],
                         env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.load(open(tmp_path / "quality.json"))
    assert {r["variant"] for r in report["rows"]} == {"rotate", "adamf-mat"}
    # MKG-W has neither names nor images: AdaMF has nothing to fuse and must say so, not invent features.
    assert all(r["fused_modalities"] == [] for r in report["runs"])


@pytest.mark.slow
def test_sampling_benchmark_smoke(tmp_path):
    """benchmarks/sampling.py at toy sizes: the ranks' slices must equal the global draw, and it reports a share."""
    res = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "sampling.py"), "--ranks", "2",
                          "--positives", "256", "--negatives", "16", "--repeats", "1", "--step-positives", "128",
                          "--step-steps", "1", "--eager", "--out", str(tmp_path)],
                         env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=600,
                         cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.load(open(tmp_path / "sampling.json"))
    assert report["slices_equal_global_draw"] is True and 0 < report["sampling_share_at_step_size"] < 1


@pytest.mark.slow
def test_a_training_step_waits_for_the_device_a_bounded_number_of_times(tmp_path):
    """benchmarks/step_overhead.py counts host syncs per single-process step (on a GPU each is a wait for the
    device). The step's syncs are bounded by its structure, not by the data: one ``unique_ids`` per id set (4 with
    MAT) and per trainable table at most 3 (its touched rows, their runs' offsets and first rows)."""
    res = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "step_overhead.py"), "--graph", "small",
                          "--modes", "structure,exact", "--steps", "2", "--out", str(tmp_path)],
                         env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = {r["mode"]: r for r in json.load(open(tmp_path / "step_overhead.json"))["rows"]}
    structure, exact = rows["structure"]["step"], rows["exact"]["step"]
    assert 1 <= structure["syncs"] <= 1 + 2 * 3, structure["sync_sites"]        # entity + relation tables
    assert 4 <= exact["syncs"] <= 4 + 4 * 3, exact["sync_sites"]                # + visual and text feature tables
    assert exact["ops"] > structure["ops"] > 50


def test_scaling_model_reads_the_saved_measurements(tmp_path):
    res = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "scaling_model.py"), "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.load(open(tmp_path / "scaling_model.json"))
    for mode in ("exact", "scalable"):
        one, eight, thirty_two = report["modes"][mode]["predictions"]
        assert one["efficiency"] == 1 and 0 < thirty_two["efficiency"] <= eight["efficiency"] < 1


@pytest.mark.slow
def test_model_space_script_smoke(tmp_path):
    """benchmarks/model_space.py on the generated graph, one step per variant: every row carries its protocol and
    the JSON its runs (both regimes and a baseline)."""
    res = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "model_space.py"), "--seeds", "1,2",
                          "--epochs", "1", "--scorers", "complex", "--fusions", "structure", "--baselines", "tbkgc",
                          "--set", "train.max_steps=2", "--set", "train.compile=false", "--set", "train.threads=1",
                          "--out", str(tmp_path)],
                         cwd=os.path.join(REPO, "benchmarks"), env=dict(os.environ, OMP_NUM_THREADS="1"),
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.load(open(tmp_path / "model_space.json"))
    assert set(report["summary"]) == {"complex / structure / today", "complex / structure / lacroix",
                                      "tbkgc (baseline)"}
    assert all(row["n"] == 2 for row in report["summary"].values())
    lacroix = [r for r in report["runs"] if r["variant"].endswith("lacroix")]
    assert "1-vs-all cross-entropy" in lacroix[0]["protocol"] and "reciprocal True" in lacroix[0]["protocol"]
    assert "± " in open(tmp_path / "model_space.md").read()
