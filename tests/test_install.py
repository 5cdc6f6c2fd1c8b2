"""The wheel stands alone: it holds the package, its recipes, its launchers and Slurm commands, declares its
dependencies and licence; installed apart from the checkout, it runs the main job and finds a recipe by name."""
import os
import subprocess
import sys
import zipfile

import pytest

from support import REPO


@pytest.mark.slow
def test_the_built_wheel_holds_the_product_and_runs_the_main_job_apart_from_the_checkout(tmp_path):
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", REPO,
                            "-w", str(tmp_path / "dist")], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-2000:]
    wheel = next((tmp_path / "dist").glob("mmkgc_dist-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for needed in ("mmkgc_dist/cli.py", "mmkgc_dist/data/recipes.json", "mmkgc_dist/configs/db15k.yaml",
                   "mmkgc_dist/configs/variants/rotate.yaml", "mmkgc_dist/launch/train.py",
                   "mmkgc_dist/launch/slurm/submit.py", "mmkgc_dist/launch/slurm/train.sbatch",
                   "mmkgc_dist/launch/slurm/tune.sbatch"):
        assert needed in names, needed
    info = next(n for n in names if n.endswith(".dist-info/METADATA"))
    metadata = zipfile.ZipFile(wheel).read(info).decode()
    assert "Requires-Dist: torch==" in metadata and "Requires-Dist: deepspeed==" in metadata
    assert "License-File: LICENSE" in metadata or any(n.endswith("licenses/LICENSE") for n in names)
    points = zipfile.ZipFile(wheel).read(info.replace("METADATA", "entry_points.txt")).decode()
    for target in ("mmkgc_dist.cli:main", "mmkgc_dist.launch.slurm.submit:main", "mmkgc_dist.launch.slurm.tune:main"):
        assert target in points, points

    site = tmp_path / "site"                        # the wheel alone, away from the checkout
    installed = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site),
                                str(wheel)], capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr[-2000:]
    env = dict(os.environ, PYTHONPATH=str(site), OMP_NUM_THREADS="1", TQDM_DISABLE="1")
    where = subprocess.run([sys.executable, "-c", "import mmkgc_dist, mmkgc_dist.config as c; "
                            "print(mmkgc_dist.__file__); print(c.config_path('db15k'))"],
                           cwd=tmp_path, env=env, capture_output=True, text=True)
    assert where.stdout.splitlines()[0].startswith(str(site)), where.stdout + where.stderr
    assert where.stdout.splitlines()[1] == str(site / "mmkgc_dist" / "configs" / "db15k.yaml")
    job = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
                          "-m", "mmkgc_dist.launch.train", "--run-dir", "run", "--train.epochs=1",
                          "--data.synthetic.num_entities=300", "--data.synthetic.num_triples=2000"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert job.returncode == 0, job.stderr[-3000:]
    assert "test [filtered" in job.stdout and (tmp_path / "run" / "results.json").exists()
    version = subprocess.run([sys.executable, "-m", "mmkgc_dist.cli", "--version"], cwd=tmp_path, env=env,
                             capture_output=True, text=True)
    assert version.stdout.startswith("mmkgc-dist 0.1.0")
    submit = subprocess.run([sys.executable, "-m", "mmkgc_dist.launch.slurm.submit", "--help"], cwd=tmp_path,
                            env=env, capture_output=True, text=True)
    assert submit.returncode == 0 and "--nproc-per-node" in submit.stdout
