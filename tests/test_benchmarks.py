"""Smoke runs of benchmark scripts on real data (they are not timed here; they must just keep working)."""
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_quality_script_smoke(tmp_path, db15k):
    mkgw = os.path.join(os.path.dirname(db15k), "MKG-W")
    res = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "quality.py"), "--data", f"mkgw={mkgw}",
                          "--variants", "rotate,adamf-mat", "--seeds", "1", "--max-steps", "2", "--epochs", "1",
                          "--device", "cpu", "--out", str(tmp_path)],
                         env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.load(open(tmp_path / "quality.json"))
    assert {r["variant"] for r in report["rows"]} == {"rotate", "adamf-mat"}
    # MKG-W has neither names nor images: AdaMF has nothing to fuse and must say so, not invent features.
    assert all(r["fused_modalities"] == [] for r in report["runs"])
