"""Plugins: a scoring function and a tracker from an installed distribution (entry points), found by name by
the command line on 2 torchrun ranks (train, export), by predict and by tune."""
import json
import os
import shutil
import subprocess
import sys
import tomllib

import pytest
import yaml

from support import REPO, TINY, settings

EXAMPLE = os.path.join(REPO, "examples", "plugin")


def install_example(site) -> None:
    """The example plugin as pip installs it: its module and a dist-info folder with its entry points."""
    shutil.copy(os.path.join(EXAMPLE, "mmkgc_example_plugin.py"), site)
    project = tomllib.load(open(os.path.join(EXAMPLE, "pyproject.toml"), "rb"))["project"]
    info = site / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
    (info / "entry_points.txt").write_text("".join(
        f"[{group}]\n" + "".join(f"{name} = {target}\n" for name, target in points.items()) + "\n"
        for group, points in project["entry-points"].items()))


def run(*args, cwd, env, timeout=600):
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.slow
def test_a_plugin_scorer_and_tracker_work_everywhere_a_name_is_resolved(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    install_example(site)
    env = dict(os.environ, PYTHONPATH=f"{site}{os.pathsep}{REPO}", OMP_NUM_THREADS="1", TQDM_DISABLE="1")
    base = settings(TINY, "--model.scoring=transe-l2", "--mat.enabled=false", "--train.epochs=1")
    ranks = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "mmkgc_dist.cli"]
    r = run(*ranks, "train", "--run-dir", "r", *base, "--run.trackers=[csv]", cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "scoring transe-l2" in r.stdout
    assert "train," in (tmp_path / "r" / "records.csv").read_text()             # the plugin tracker's rows
    r = run(*ranks, "export", "r", "out", cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.load(open(tmp_path / "out" / "export.json"))["scoring"]["name"] == "transe-l2"
    r = run("-m", "mmkgc_dist.cli", "predict", "r", "--head", "entity_000001", "--relation", "relation_0001",
            "--json", cwd=tmp_path, env=env)
    assert r.returncode == 0 and len(json.loads(r.stdout)["predictions"]) == 10, r.stderr[-3000:]
    (tmp_path / "space.yaml").write_text(yaml.safe_dump({"train.lr": {"type": "float", "low": 1e-4, "high": 1e-2,
                                                                      "log": True}}))
    r = run("-m", "mmkgc_dist.cli", "tune", "space.yaml", "study", "--trials", "2", *base, "--eval.every_epochs=1",
            cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    # without the plugin on the path, the name is unknown and the message says where plugins come from
    bare = dict(env, PYTHONPATH=REPO)
    r = run("-m", "mmkgc_dist.cli", "train", "--run-dir", "x", *base, cwd=tmp_path, env=bare)
    assert r.returncode == 2 and "unknown scoring function 'transe-l2'" in r.stderr
    assert "entry-point group 'mmkgc_dist.scorers'" in r.stderr
