"""Trust, second pass: one rule per class of defect, each tested through the command line a user runs.

- resume resumes or stops; a run keeps the config it was created with; overwrite removes all of the old run
  that can influence a result (best.json included);
- every dataset version has an identity, recorded in the run and checked wherever the run is used;
- a run folder is the marker or nothing; the tool never deletes or writes through a symbolic link;
- a checkpoint is the files inside its folder, all verified, or nothing; best.json names one of them or is refused;
- SIGTERM stops training at a step boundary with a checkpoint (exit 143), and the run resumes from it.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from mmkgc_dist.errors import CheckpointError, DataError, OutputError
from mmkgc_dist.data.format import KGData, load_dataset, write_dataset
from mmkgc_dist.checkpoint import Checkpoint, read_selection, verify
from support import HERE, TINY, cli

RUN = ["--run-dir", "r", *TINY]


def fails(res, *needles):
    """Exit 2 with one error line naming what is wrong, no traceback."""
    assert res.returncode == 2, (res.returncode, res.stderr[-2000:])
    assert "Traceback" not in res.stderr, res.stderr[-2000:]
    line = res.stderr.strip().splitlines()[-1]
    assert line.startswith("error: ") and all(n in line for n in needles), line
    return line


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run on a prepared dataset, with model selection (best.json) and two checkpoints."""
    w = tmp_path_factory.mktemp("trust")
    made = cli("prepare", "synthetic", w / "ds", "--num_entities=300", "--num_triples=2400", cwd=w)
    assert made.returncode == 0, made.stderr[-2000:]
    res = cli("train", *RUN, "--data.source=parquet", f"--data.path={w / 'ds'}", "--eval.every_epochs=1",
              "--train.keep_checkpoints=4", cwd=w)
    assert res.returncode == 0, res.stderr[-3000:]
    return w


def copy_run(trained, tmp_path):
    import shutil
    shutil.copytree(trained / "r", tmp_path / "r", symlinks=True)
    return tmp_path / "r"


@pytest.mark.slow
def test_overwrite_removes_the_selection_record_of_the_old_run(trained, tmp_path):
    run = copy_run(trained, tmp_path)
    assert (run / "checkpoints" / "best.json").exists()
    res = cli("train", *RUN, "--overwrite", "--data.source=parquet", f"--data.path={trained / 'ds'}", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert not (run / "checkpoints" / "best.json").exists()
    assert "selection" not in json.load(open(run / "results.json"))


@pytest.mark.slow
def test_resume_takes_the_runs_own_config_and_refuses_a_changed_model(trained, tmp_path):
    run = copy_run(trained, tmp_path)
    created = (run / "config.yaml").read_text()
    # no --config, no overrides but a longer run: the run's own config (parquet data, dim 8), not the defaults
    longer = cli("train", "--run-dir", "r", "--resume", "--train.epochs=3", cwd=tmp_path)
    assert longer.returncode == 0 and "resumed at epoch 2" in longer.stdout, longer.stderr[-2000:]
    assert (run / "config.yaml").read_text() == created
    changed = cli("train", "--run-dir", "r", "--resume", "--model.dim=16", "--train.lr=0.5", cwd=tmp_path)
    fails(changed, "model.dim: 8 -> 16", "train.lr")
    assert (run / "config.yaml").read_text() == created          # refused before anything was written


@pytest.mark.slow
def test_resume_with_only_damaged_checkpoints_stops(trained, tmp_path):
    run = copy_run(trained, tmp_path)
    for name in os.listdir(run / "checkpoints"):
        if name.startswith("step-"):
            with open(run / "checkpoints" / name / "meta.json", "a") as fh:
                fh.write("garbage")
    metrics = (run / "metrics.jsonl").read_text()
    fails(cli("train", "--run-dir", "r", "--resume", cwd=tmp_path), "no checkpoint", "verifies", "--overwrite")
    assert (run / "metrics.jsonl").read_text() == metrics          # nothing trained over the run


@pytest.mark.slow
def test_resume_of_a_run_without_checkpoints_stops(trained, tmp_path):
    run = copy_run(trained, tmp_path)
    import shutil
    for name in os.listdir(run / "checkpoints"):
        shutil.rmtree(run / "checkpoints" / name) if name.startswith("step-") else None
    fails(cli("train", "--run-dir", "r", "--resume", cwd=tmp_path), "no checkpoint to resume from")


@pytest.mark.slow
def test_a_re_prepared_dataset_is_refused_by_the_runs_of_the_old_one(trained, tmp_path):
    import shutil
    shutil.copytree(trained / "ds", tmp_path / "ds")
    run = copy_run(trained, tmp_path)
    config = (run / "config.yaml").read_text().replace(str(trained / "ds"), str(tmp_path / "ds"))
    (run / "config.yaml").write_text(config)
    assert cli("evaluate", "r", cwd=tmp_path).returncode == 0        # the same version: accepted
    again = cli("prepare", "synthetic", "ds", "--overwrite", "--num_entities=300", "--num_triples=2400",
                "--seed=8", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    for command in (("evaluate", "r"), ("predict", "r", "--head", "entity_000001", "--relation", "relation_0001"),
                    ("export", "r", "emb"), ("train", "--run-dir", "r", "--resume", "--train.epochs=3")):
        fails(cli(*command, cwd=tmp_path), "is not the dataset version", "trained on")
    assert not (tmp_path / "emb").exists()


def test_the_stream_stops_when_its_dataset_changes(tmp_path):
    from mmkgc_dist.data.stream import StreamingTriples
    rng = np.random.default_rng(0)
    triples = np.stack([rng.integers(0, 50, 400), rng.integers(0, 3, 400), rng.integers(0, 50, 400)], 1)
    data = KGData(50, 3, {"train": triples}, [f"e{i}" for i in range(50)], ["a", "b", "c"])
    write_dataset(data, str(tmp_path / "ds"), row_group_rows=50)
    stream = StreamingTriples(str(tmp_path / "ds"), batch_size=20, window_rows=50, prefetch=0)
    batches = iter(stream)
    next(batches)
    data.splits["train"] = triples[::-1].copy()
    write_dataset(data, str(tmp_path / "ds"), row_group_rows=50, overwrite=True)
    with pytest.raises(DataError, match="changed while it was being streamed"):
        list(batches)


def test_every_dataset_write_records_file_digests_in_its_identity(tmp_path):
    data = KGData(3, 1, {"train": np.array([[0, 0, 1], [1, 0, 2]])}, ["a", "b", "c"], ["r"])
    write_dataset(data, str(tmp_path / "one"))
    write_dataset(data, str(tmp_path / "two"))
    data.splits["train"] = np.array([[0, 0, 2], [1, 0, 2]])
    write_dataset(data, str(tmp_path / "three"))
    manifest = json.load(open(tmp_path / "one" / "manifest.json"))
    assert set(manifest["files"]) == {"entities.parquet", "relations.parquet", "triples/train/part-00000.parquet"}
    a, b, c = (load_dataset(str(tmp_path / n)).identity for n in ("one", "two", "three"))
    assert a == b != c                                 # the same content, the same identity; other triples, other


def test_duplicate_entity_names_are_refused(tmp_path):
    data = KGData(3, 1, {"train": np.array([[0, 0, 1]])}, ["a", "b", "a"], ["r"])
    with pytest.raises(DataError, match=r"entity name 'a' is given to ids 0 and 2"):
        write_dataset(data, str(tmp_path / "ds"))
    assert not (tmp_path / "ds").exists()


@pytest.mark.slow
def test_an_empty_training_split_is_refused(tmp_path):
    data = KGData(3, 1, {"train": np.zeros((0, 3), np.int64), "test": np.array([[0, 0, 1]])}, ["a", "b", "c"],
                  ["r"])
    write_dataset(data, str(tmp_path / "ds"))
    res = cli("train", "--run-dir", "r", "--data.source=parquet", "--data.path=ds", "--model.modalities=[]",
              "--mat.enabled=false", "--train.compile=false", cwd=tmp_path)
    fails(res, "training split is empty")
    assert not (tmp_path / "r" / "results.json").exists()


@pytest.mark.slow
def test_a_folder_without_the_marker_is_never_taken_for_a_run(tmp_path):
    mine = tmp_path / "r"
    (mine / "checkpoints").mkdir(parents=True)
    (mine / "config.yaml").write_text("my: own\n")
    (mine / "checkpoints" / "notes").write_text("keep")
    fails(cli("train", *RUN, "--overwrite", cwd=tmp_path), "not made by mmkgc-dist")
    assert (mine / "checkpoints" / "notes").read_text() == "keep" and not (mine / ".mmkgc-dist").exists()


@pytest.mark.slow
def test_overwrite_never_deletes_through_a_symbolic_link(trained, tmp_path):
    run = copy_run(trained, tmp_path)
    other = copy_run(trained, tmp_path / "other")
    import shutil
    shutil.rmtree(run / "checkpoints")
    os.symlink(other / "checkpoints", run / "checkpoints")
    before = sorted(os.listdir(other / "checkpoints"))
    fails(cli("train", *RUN, "--overwrite", cwd=tmp_path), "symbolic link")
    assert sorted(os.listdir(other / "checkpoints")) == before


def test_a_checkpoint_is_its_own_files_all_verified(trained, tmp_path):
    run = copy_run(trained, tmp_path)
    step = sorted(n for n in os.listdir(run / "checkpoints") if n.startswith("step-"))[-1]
    ckpt = Checkpoint(str(run / "checkpoints" / step), int(step[5:]))
    assert verify(ckpt) is None
    meta = json.load(open(run / "checkpoints" / step / "meta.json"))
    (run / "checkpoints" / step / "extra.pt").write_bytes(b"x")
    assert "not among the files recorded" in verify(ckpt)
    os.remove(run / "checkpoints" / step / "extra.pt")
    without = {k: v for k, v in meta.items() if k != "files"}
    (run / "checkpoints" / step / "meta.json").write_text(json.dumps(without))
    assert "records no file digests" in verify(ckpt)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["/etc", "../../r2/checkpoints/step-000000001", "step-1"])
def test_best_json_names_one_of_the_runs_checkpoints_or_is_refused(trained, tmp_path, name):
    run = copy_run(trained, tmp_path)
    path = run / "checkpoints" / "best.json"
    record = json.load(open(path))
    record["best"]["checkpoint"] = name
    path.write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match="expected the name of one of the run's own checkpoints"):
        read_selection(str(run / "checkpoints"))
    fails(cli("train", "--run-dir", "r", "--resume", "--train.epochs=3", cwd=tmp_path), "best.json")
    path.write_text("{not json")
    fails(cli("train", "--run-dir", "r", "--resume", "--train.epochs=3", cwd=tmp_path), "best.json")


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_at_a_step_boundary_and_the_run_resumes(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.path.dirname(HERE))
    args = [sys.executable, "-m", "mmkgc_dist.cli", "train", *RUN, "--train.epochs=200", "--train.log_every=1",
            "--run.mlflow_uri=file:./mlruns"]
    proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "r" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count('"train"') >= 3):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert "stopped by SIGTERM" in err and "continue with --resume" in err and "Traceback" not in err, err[-2000:]
    saved = [n for n in os.listdir(tmp_path / "r" / "checkpoints") if n.startswith("step-")]
    assert len(saved) == 1
    step = int(saved[0][5:])
    assert json.loads(metrics.read_text().splitlines()[-1])["kind"] == "interrupted"
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.tracking import MlflowClient
    client = MlflowClient(f"file:{tmp_path / 'mlruns'}")
    (tracked,) = client.search_runs([client.get_experiment_by_name("mmkgc-dist").experiment_id])
    assert tracked.info.status == "KILLED"                  # not left RUNNING
    res = cli("train", "--run-dir", "r", "--resume", "--train.max_steps=" + str(step + 2), cwd=tmp_path)
    assert res.returncode == 0 and f"step {step}" in res.stdout, res.stderr[-2000:]


def test_a_feature_import_refuses_an_input_inside_the_dataset(trained, tmp_path):
    import shutil
    shutil.copytree(trained / "ds", tmp_path / "ds")
    inside = tmp_path / "ds" / "features" / "text-0123abcd.parquet"
    shutil.copy(next((tmp_path / "ds" / "features").glob("*.parquet")), inside)
    res = cli("prepare", "features", "ds", "--modality", "text", inside, cwd=tmp_path)
    fails(res, "is inside the dataset")
    assert inside.exists()


@pytest.mark.slow
def test_dataset_overwrite_refuses_a_folder_holding_a_users_files(tmp_path):
    assert cli("prepare", "synthetic", "ds", "--num_entities=50", "--num_triples=200", cwd=tmp_path).returncode == 0
    (tmp_path / "ds" / "notes.txt").write_text("mine")
    res = cli("prepare", "synthetic", "ds", "--overwrite", "--num_entities=50", "--num_triples=200", cwd=tmp_path)
    fails(res, "notes.txt", "did not write")
    assert (tmp_path / "ds" / "notes.txt").read_text() == "mine"


@pytest.mark.slow
def test_outputs_never_land_inside_a_dataset(trained, tmp_path):
    import shutil
    shutil.copytree(trained / "ds", tmp_path / "ds")
    manifest = (tmp_path / "ds" / "manifest.json").read_text()
    fails(cli("train", "--run-dir", "ds/run", "--data.source=parquet", "--data.path=ds", cwd=tmp_path),
          "overlaps the dataset")
    copy_run(trained, tmp_path)
    fails(cli("evaluate", "r", "--data.path=ds", "--output", "ds/manifest.json", cwd=tmp_path),
          "inside the mmkgc-dist dataset")
    (tmp_path / "mine.json").write_text('{"not": "metrics"}')
    fails(cli("evaluate", "r", "--output", "mine.json", cwd=tmp_path), "not an earlier output")
    assert (tmp_path / "ds" / "manifest.json").read_text() == manifest
    assert (tmp_path / "mine.json").read_text() == '{"not": "metrics"}'


def test_local_urls_are_checked_like_paths(tmp_path):
    from mmkgc_dist.outputs import check_output
    (tmp_path / "src").mkdir()
    with pytest.raises(OutputError, match="overlaps the input"):
        check_output(str(tmp_path / "src" / "out"), "dataset", (f"local://{tmp_path / 'src'}",))


def test_a_folder_that_appears_before_the_swap_is_left_alone(tmp_path):
    from mmkgc_dist.outputs import OutputBuilder
    builder = OutputBuilder(str(tmp_path / "out"), "dataset").create()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "theirs.txt").write_text("keep")     # created after the command checked OUT
    with pytest.raises(OutputError, match="changed while"):
        builder.commit()
    assert (tmp_path / "out" / "theirs.txt").read_text() == "keep" and os.path.isdir(builder.tmp)


def _take_lock(folder, queue):
    from mmkgc_dist.outputs import FolderLock
    try:
        FolderLock(folder).acquire()
        queue.put("won")
        time.sleep(5)                    # hold it while the others try
    except OutputError as exc:
        queue.put(str(exc))


@pytest.mark.slow
def test_a_stale_lock_is_broken_by_exactly_one_of_racing_writers(tmp_path):
    import multiprocessing
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / ".lock").write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname(),
                                                "since": "then"}))
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_take_lock, args=(str(tmp_path), queue)) for _ in range(6)]
    for p in procs:
        p.start()
    outcomes = [queue.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert outcomes.count("won") == 1, outcomes
    assert all("in use by pid" in o for o in outcomes if o != "won"), outcomes


def test_an_unreadable_lock_names_the_file_not_a_pid_of_none(tmp_path):
    from mmkgc_dist.outputs import FolderLock
    (tmp_path / ".lock").write_text("")
    with pytest.raises(OutputError) as err:
        FolderLock(str(tmp_path), "run folder").acquire()
    assert "None" not in str(err.value) and str(tmp_path / ".lock") in str(err.value)


def test_resume_without_naming_the_run_is_refused(tmp_path):
    fails(cli("train", "--resume", *TINY, cwd=tmp_path), "--resume: which run?")
    assert not (tmp_path / "runs").exists()


def test_a_feature_import_never_writes_through_a_link(trained, tmp_path):
    import shutil
    shutil.copytree(trained / "ds", tmp_path / "ds")
    shutil.move(tmp_path / "ds" / "features", tmp_path / "elsewhere")
    os.symlink(tmp_path / "elsewhere", tmp_path / "ds" / "features")
    np.save(tmp_path / "t.npy", np.ones((300, 3), np.float32))
    before = sorted(os.listdir(tmp_path / "elsewhere"))
    fails(cli("prepare", "features", "ds", "--modality", "text", "t.npy", cwd=tmp_path), "symbolic link")
    assert sorted(os.listdir(tmp_path / "elsewhere")) == before
