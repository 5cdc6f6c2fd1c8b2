"""Safety behaviours that need more than one command: crash-safe replacement under kills at every point, stale
temporaries, run-folder locks and lifecycle, checkpoint pruning, verification and fallback, payloads planted
in every kind of checkpoint file, disk full, and the doubtful inputs a user may allow (counted)."""
import json
import os
import shutil
import socket
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch

from support import MINI, MINI_GRAPH, REPO, Payload, cli, snapshot

from mmkgc_dist.data.format import load_dataset, read_manifest
from mmkgc_dist.outputs import FolderLock, resolve_output
from mmkgc_dist.run_folder import new_unique_folder


def _one_error(res, text):
    errors = [l for l in res.stderr.splitlines() if l.startswith("error:")]
    assert res.returncode == 2 and len(errors) == 1 and text in errors[0], res.stderr[-3000:]
    assert "Traceback" not in res.stderr, res.stderr[-3000:]


# ------------------------------------------------------------------------------ crash-safe replacement
@pytest.mark.slow
@pytest.mark.parametrize("point", ["built", "aside", "swapped"])
def test_replacement_killed_at_each_point_leaves_one_complete_version(tmp_path, point):
    old = cli("prepare", "synthetic", "ds", "--num_entities=100", "--num_triples=600", cwd=tmp_path)
    assert old.returncode == 0, old.stderr
    killed = cli("prepare", "synthetic", "ds", "--overwrite", "--num_entities=150", "--num_triples=900",
                 cwd=tmp_path, env={"MMKGC_DIST_FAULT_AT": point})
    assert killed.returncode == 137, killed.stderr
    # At this instant one complete version loads: the old one until the new one has moved in.
    data = load_dataset(resolve_output(str(tmp_path / "ds")))
    assert data.num_entities == (150 if point == "swapped" else 100)
    again = cli("prepare", "synthetic", "ds", "--overwrite", "--num_entities=150", "--num_triples=900", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    notice = {"built": "removed stale temporary", "aside": "restored", "swapped": "the old version left by an "
              "interrupted replacement"}[point]
    assert notice in again.stderr, again.stderr
    assert load_dataset(str(tmp_path / "ds")).num_entities == 150
    assert sorted(os.listdir(tmp_path)) == ["ds"]          # nothing left behind


def test_dataset_folder_has_ordinary_permissions(tmp_path):
    res = cli("prepare", "synthetic", "ds", *MINI_GRAPH, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert os.stat(tmp_path / "ds").st_mode & 0o777 == 0o777 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ------------------------------------------------------------------------------ features
@pytest.mark.slow
def test_feature_import_deletes_only_its_own_files(tmp_path):
    assert cli("prepare", "synthetic", "ds", *MINI_GRAPH, cwd=tmp_path).returncode == 0
    np.save(tmp_path / "v.npy", np.ones((120, 3), np.float32))
    before = read_manifest(str(tmp_path / "ds"))["modalities"]["visual"]["file"]
    (tmp_path / "ds" / "features" / "visual-deadbeef.parquet").write_bytes(b"orphan of a crashed import")
    (tmp_path / "ds" / "features" / "mine.parquet").write_bytes(b"a user's file")
    res = cli("prepare", "features", "ds", "--modality", "visual", "v.npy", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "visual-deadbeef.parquet, left by an interrupted feature import" in res.stderr
    after = read_manifest(str(tmp_path / "ds"))["modalities"]["visual"]
    assert after["dim"] == 3 and after["file"] != before
    assert not (tmp_path / "ds" / before).exists()           # the replaced file was the tool's own
    assert (tmp_path / "ds" / "features" / "mine.parquet").read_bytes() == b"a user's file"


@pytest.mark.slow
def test_feature_import_holds_the_dataset_lock(tmp_path):
    assert cli("prepare", "synthetic", "ds", *MINI_GRAPH, cwd=tmp_path).returncode == 0
    np.save(tmp_path / "v.npy", np.ones((120, 3), np.float32))
    with FolderLock(str(tmp_path / "ds"), "dataset"):
        res = cli("prepare", "features", "ds", "--modality", "visual", "v.npy", cwd=tmp_path)
    _one_error(res, f"dataset is in use by pid {os.getpid()} on {socket.gethostname()}")


# ------------------------------------------------------------------------------ run folders
def test_lock_refuses_a_live_writer_and_replaces_a_stale_one(tmp_path, caplog):
    lock = FolderLock(str(tmp_path)).acquire()
    child = subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]);"
                            "from mmkgc_dist.outputs import FolderLock; FolderLock(sys.argv[2]).acquire()",
                            REPO, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert child.returncode != 0 and f"in use by pid {os.getpid()}" in child.stderr
    lock.release()
    gone = subprocess.Popen(["true"])
    gone.wait()
    (tmp_path / ".lock").write_text(json.dumps({"pid": gone.pid, "host": socket.gethostname(), "since": "x"}))
    FolderLock(str(tmp_path)).acquire().release()
    assert "removed a stale lock" in caplog.text
    assert not (tmp_path / ".lock").exists()


def test_default_run_names_are_unique_within_one_second(tmp_path):
    made = []
    threads = [threading.Thread(target=lambda: made.append(new_unique_folder(str(tmp_path)))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(made)) == 3 and all(os.path.isdir(p) for p in made)


@pytest.mark.slow
def test_run_folder_lifecycle_overwrite_resume_and_pruning(tmp_path):
    args = ["--run-dir", "r", *MINI, "--train.checkpoint_every_steps=2", "--train.keep_checkpoints=2",
            "--train.epochs=2"]
    first = cli("train", *args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    ckpts = sorted(f for f in os.listdir(tmp_path / "r" / "checkpoints"))
    assert len(ckpts) == 2 and all(f.startswith("step-") for f in ckpts), ckpts
    (tmp_path / "r" / "notes.txt").write_text("mine")
    resumed = cli("train", *args, "--resume", "--train.epochs=3", cwd=tmp_path)
    assert resumed.returncode == 0 and "resumed at epoch 2" in resumed.stdout, resumed.stderr
    over = cli("train", *args, "--overwrite", "--train.epochs=1", cwd=tmp_path)
    assert over.returncode == 0, over.stderr
    assert "removed the earlier run's results" in over.stderr
    results = json.load(open(tmp_path / "r" / "results.json"))
    assert results["train"]["epochs"] == 1
    assert (tmp_path / "r" / "notes.txt").read_text() == "mine"
    steps = sorted(int(f[5:14]) for f in os.listdir(tmp_path / "r" / "checkpoints"))
    assert steps[-1] == results["train"]["steps"] and len(steps) <= 2


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A single-process run with three checkpoints."""
    w = tmp_path_factory.mktemp("trained")
    res = cli("train", "--run-dir", "r", *MINI, "--train.checkpoint_every_steps=3", "--train.epochs=2",
              "--train.keep_checkpoints=3", cwd=w)
    assert res.returncode == 0, res.stderr
    return w


def _ckpts(run):
    return sorted(os.listdir(os.path.join(run, "checkpoints")))


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncate", "empty", "flip"])
def test_damaged_newest_checkpoint_falls_back_with_a_warning(trained, tmp_path, damage):
    run = tmp_path / "r"
    shutil.copytree(trained / "r", run)
    ckpts = _ckpts(run)
    newest, older = run / "checkpoints" / ckpts[-1], run / "checkpoints" / ckpts[-2]
    data_file = newest / "dcp" / "__0_0.distcp"
    data = data_file.read_bytes()
    data_file.write_bytes({"truncate": data[:len(data) // 2], "empty": b"",
                        "flip": data[:100] + bytes([data[100] ^ 1]) + data[101:]}[damage])
    ev = cli("evaluate", str(run), "--output", str(tmp_path / "m.json"), cwd=tmp_path)
    assert ev.returncode == 0, ev.stderr
    assert f"checkpoint {newest} is damaged" in ev.stderr
    ref = cli("evaluate", str(run), "--checkpoint", str(older), "--output", str(tmp_path / "ref.json"), cwd=tmp_path)
    assert ref.returncode == 0, ref.stderr
    assert json.load(open(tmp_path / "m.json")) == json.load(open(tmp_path / "ref.json"))
    res = cli("train", "--run-dir", str(run), *MINI, "--train.epochs=2", "--resume", cwd=tmp_path)
    assert res.returncode == 0 and f"checkpoint {newest} is damaged" in res.stderr, res.stderr
    exp = cli("export", str(run), str(tmp_path / "emb"), "--checkpoint", str(older), cwd=tmp_path)
    assert exp.returncode == 0, exp.stderr


@pytest.mark.slow
def test_planted_payload_never_runs(trained, tmp_path):
    """A payload planted in the newest checkpoint: its digests do not match, so it is skipped with a warning;
    with forged digests (the attacker rewrote meta.json too) the weights-only load refuses it."""
    run = tmp_path / "r"
    shutil.copytree(trained / "r", run)
    marker = tmp_path / "PWNED"
    planted = run / "checkpoints" / "step-000000999"
    shutil.copytree(run / "checkpoints" / _ckpts(run)[-1], planted)
    torch.save({"state": Payload(str(marker))}, planted / "dense_optimizer.pt")
    ev = cli("evaluate", str(run), cwd=tmp_path)
    assert ev.returncode == 0 and "step-000000999 is damaged (dense_optimizer.pt" in ev.stderr, \
        ev.stderr
    _forge_digests(planted)
    _one_error(cli("train", "--run-dir", str(run), *MINI, "--resume", cwd=tmp_path), "refused to load")
    assert not marker.exists()


# ------------------------------------------------------------------------------ distributed checkpoints
@pytest.fixture(scope="module")
def dist_run(tmp_path_factory):
    """A distributed (TorchRec + DeepSpeed) run of one process: its checkpoint is a DCP folder."""
    w = tmp_path_factory.mktemp("dist")
    res = cli("train", "--distributed", "--run-dir", "r", *MINI, "--train.max_steps=3", "--parallel.zero_stage=2",
              cwd=w, timeout=600)        # ZeRO 2: the generator checkpoint has its optimizer-state file too
    assert res.returncode == 0, res.stderr[-3000:]
    return w


def _forge_digests(ckpt):
    from mmkgc_dist.checkpoint.catalogue import digests
    meta = json.loads((ckpt / "meta.json").read_text())
    meta["files"] = digests(str(ckpt), skip=("meta.json",))
    (ckpt / "meta.json").write_text(json.dumps(meta))


@pytest.mark.slow
@pytest.mark.parametrize("target", ["dcp/.metadata", "generator.pt", "dense_optimizer.pt", "rng-rank0.pt",
                                    "generator/generator/mp_rank_00_model_states.pt",
                                    "generator/generator/zero_pp_rank_0_mp_rank_00_optim_states.pt"])
def test_payload_in_each_distributed_checkpoint_file(dist_run, tmp_path, target):
    """Each file a checkpoint holds, replaced by a payload: refused by its digest, and with forged digests by
    the restricted loaders — evaluation reads the model files, resuming reads every file."""
    run = tmp_path / "r"
    shutil.copytree(dist_run / "r", run)
    ckpt = run / "checkpoints" / sorted(os.listdir(run / "checkpoints"))[-1]
    marker = tmp_path / "PWNED"
    path = ckpt / target
    assert path.exists(), sorted(os.listdir(ckpt))
    if target.endswith(".metadata"):
        import pickle
        path.write_bytes(pickle.dumps(Payload(str(marker))))
    else:
        torch.save({"state": Payload(str(marker))}, path)
    _one_error(cli("evaluate", str(run), "--checkpoint", str(ckpt), cwd=tmp_path),
               "checkpoint failed verification")
    _forge_digests(ckpt)
    # evaluation reads the tables and fusion weights only (no generators); resuming reads every file — the
    # generators' own file where no DeepSpeed engine of the same ZeRO stage does (one process)
    ranks = [] if target == "generator.pt" else ["--distributed"]
    args = ["evaluate", str(run), "--checkpoint", str(ckpt)] if target == "dcp/.metadata" else \
        ["train", *ranks, "--run-dir", str(run), *MINI, "--train.max_steps=4", "--parallel.zero_stage=2",
         "--resume"]
    _one_error(cli(*args, cwd=tmp_path, timeout=600), "refused")
    assert not marker.exists()


def test_dcp_byte_items_load_weights_only(tmp_path):
    """DCP stores non-tensor items as torch.save bytes inside its data files; our planner loads them weights-only."""
    import io
    import pickle
    from torch.distributed.checkpoint.metadata import MetadataIndex
    from torch.distributed.checkpoint.planner import LoadItemType, ReadItem
    from mmkgc_dist.errors import CheckpointError
    from mmkgc_dist.checkpoint.safe_load import dcp_reader_and_planner
    _, planner = dcp_reader_and_planner(str(tmp_path))
    marker = tmp_path / "PWNED"
    buf = io.BytesIO()
    torch.save({"x": Payload(str(marker))}, buf)
    item = ReadItem(LoadItemType.BYTE_IO, MetadataIndex("x"), torch.Size([0]), MetadataIndex("x"),
                    torch.Size([0]), torch.Size([0]))
    buf.seek(0)
    with pytest.raises(CheckpointError, match="refused to load"):
        planner.load_bytes(item, buf)
    raw = io.BytesIO(pickle.dumps(Payload(str(marker))))
    with pytest.raises(CheckpointError):
        planner.load_bytes(item, raw)
    assert not marker.exists()


@pytest.mark.slow
def test_distributed_checkpoint_loads_weights_only(dist_run, tmp_path):
    """The unmodified checkpoint loads through the restricted readers (DCP metadata, DeepSpeed, RNG)."""
    res = cli("evaluate", str(dist_run / "r"), "--output", str(tmp_path / "m.json"), cwd=tmp_path, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.load(open(tmp_path / "m.json"))["test"]["count"] > 0


# ------------------------------------------------------------------------------ disk full
@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True,
                         text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({res.stderr.strip() or 'mount failed'}); the disk-full "
                    f"cases need one")
    yield mount
    subprocess.run(["umount", "--lazy", str(mount)], capture_output=True)    # lazy: a closed-late handle cannot pin it


def _fill(mount, leave: int):
    stat = os.statvfs(mount)
    free = stat.f_bavail * stat.f_frsize
    with open(mount / "filler", "wb") as fh:
        fh.write(b"\0" * max(0, free - leave))


@pytest.mark.parametrize("leave,message", [(48 << 10, "could not write the checkpoint (disk full)"),
                                           (0, "No space left on device")])
def test_disk_full_is_one_line_and_leaves_no_partial_file(small_disk, tmp_path, leave, message):
    _fill(small_disk, leave)
    res = cli("train", "--run-dir", str(small_disk / "r"), *MINI, cwd=tmp_path)
    _one_error(res, message)
    leftovers = [f for f in os.listdir(small_disk / "r" / "checkpoints")] \
        if (small_disk / "r" / "checkpoints").exists() else []
    assert not [f for f in leftovers if f.endswith(".tmp")], leftovers


# ------------------------------------------------------------------------------ doubtful inputs allowed
@pytest.mark.slow
def test_allowed_duplicates_overlap_and_stripped_labels_are_counted(tmp_path):
    (tmp_path / "train.tsv").write_text("a\tr\tb\n c \tr\td \na\tr\tb\n")
    (tmp_path / "test.tsv").write_text("a\tr\tb\nb\tr\tc\n")
    res = cli("prepare", "triples", "ds", "--train", "train.tsv", "--test", "test.tsv", "--allow-duplicates",
              "--allow-overlap", "--strip-labels", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    manifest = read_manifest(str(tmp_path / "ds"))
    assert manifest["checks"]["duplicates"]["train"] == 1
    assert manifest["checks"]["overlap"]["test_in_train"] == 1
    assert manifest["conversion"]["train"]["labels_stripped"] == 2
    assert "stripped surrounding whitespace from 2 labels" in res.stdout
    assert "train: 1 duplicate rows kept" in res.stderr
    data = load_dataset(str(tmp_path / "ds"))
    assert "c" in data.entity_names and len(data.splits["train"]) == 3       # nothing dropped


def test_quoted_newline_across_a_block_boundary(tmp_path, monkeypatch):
    from mmkgc_dist.data import convert
    monkeypatch.setattr(convert, "BLOCK_BYTES", 64)
    rows = [f"e{i},r,e{i + 1}" for i in range(30)]
    rows[5] = '"multi\nline",r,e6'           # a quoted label with a line break, across several 64-byte blocks
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    manifest = convert.convert_triples(str(tmp_path / "ds"), {"train": str(tmp_path / "t.csv")}, progress=False)
    assert manifest["splits"]["train"]["rows"] == 30
    assert "multi\nline" in load_dataset(str(tmp_path / "ds")).entity_names


@pytest.mark.slow
def test_overwrite_replaces_only_the_tools_own_dataset(tmp_path):
    assert cli("prepare", "synthetic", "ds", "--num_entities=100", "--num_triples=600", cwd=tmp_path).returncode == 0
    res = cli("prepare", "synthetic", "ds", "--overwrite", "--num_entities=150", "--num_triples=900", cwd=tmp_path)
    assert res.returncode == 0 and load_dataset(str(tmp_path / "ds")).num_entities == 150
    assert sorted(os.listdir(tmp_path)) == ["ds"]
    assert snapshot(str(tmp_path))


def test_pruning_keeps_the_checkpoint_just_written_and_the_newest_verified(tmp_path):
    from mmkgc_dist.checkpoint.catalogue import digests, list_checkpoints, prune

    def save(step: int) -> str:
        path = tmp_path / f"step-{step:09d}"
        path.mkdir(exist_ok=True)
        (path / "data").write_bytes(bytes([step]) * 10)
        (path / "meta.json").write_text(json.dumps({"format": 2, "files": digests(str(path), skip=("meta.json",))}))
        return str(path)
    for step in (1, 2, 3):
        save(step)
    (tmp_path / "step-000000003" / "data").write_bytes(b"damaged")    # newest damaged
    assert [c.step for c in list_checkpoints(str(tmp_path))] == [1, 2, 3]
    prune(str(tmp_path), keep=1)                                       # keeps 3 (newest) and 2 (newest verified)
    assert [c.step for c in list_checkpoints(str(tmp_path))] == [2, 3]
    # After a fallback to 2 the run saves step 2 again, with the damaged 3 still there:
    written = save(2)
    prune(str(tmp_path), keep=1, just_written=written)
    assert os.path.exists(written)


def test_saving_a_step_again_swaps_the_folder_crash_safely(tmp_path):
    """The same step saved again (after a resume) replaces the old folder only once the new one is in place;
    a crash between the two renames leaves both complete, and the next run puts the old one back."""
    from mmkgc_dist.checkpoint import clean_temporaries
    from mmkgc_dist.outputs import swap_in

    def folder(name: str, content: bytes) -> str:
        (tmp_path / name).mkdir()
        (tmp_path / name / "meta.json").write_bytes(content)
        return str(tmp_path / name)
    final = folder("step-000000002", b"old")
    swap_in(folder(".tmp-step-000000002", b"new"), final)
    assert sorted(os.listdir(tmp_path)) == ["step-000000002"]
    assert open(os.path.join(final, "meta.json"), "rb").read() == b"new"
    # crashed after the old folder moved aside, before the new one moved in:
    os.replace(final, tmp_path / ".step-000000002.previous")
    folder(".tmp-step-000000002", b"newer")
    clean_temporaries(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["step-000000002"]
    assert open(os.path.join(final, "meta.json"), "rb").read() == b"new"
    # crashed after the new one moved in, before the old one was deleted:
    folder(".step-000000002.previous", b"older")
    clean_temporaries(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["step-000000002"]
    assert open(os.path.join(final, "meta.json"), "rb").read() == b"new"


def test_a_kill_while_pruning_never_leaves_a_listed_checkpoint_with_files_missing(tmp_path, monkeypatch):
    """Pruning renames a checkpoint out of the checkpoint names before removing its files: killed half-way
    (here: the removal stops after one file), the checkpoint is no longer listed, and the next run clears it."""
    import mmkgc_dist.checkpoint.catalogue as catalogue
    from mmkgc_dist.checkpoint import clean_temporaries, list_checkpoints
    for step in (1, 2):
        (tmp_path / f"step-00000000{step}" / "dcp").mkdir(parents=True)
        (tmp_path / f"step-00000000{step}" / "meta.json").write_text("{}")
        (tmp_path / f"step-00000000{step}" / "dcp" / "__0_0.distcp").write_bytes(b"x")

    def killed_half_way(path):
        os.remove(os.path.join(path, "dcp", "__0_0.distcp"))
        raise KeyboardInterrupt("killed")
    monkeypatch.setattr(catalogue, "remove_owned", killed_half_way)
    with pytest.raises(KeyboardInterrupt):
        catalogue.delete(list_checkpoints(str(tmp_path))[0])
    assert [c.step for c in list_checkpoints(str(tmp_path))] == [2]
    assert sorted(os.listdir(tmp_path)) == [".step-000000001.deleting", "step-000000002"]
    monkeypatch.undo()
    clean_temporaries(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["step-000000002"]


def test_a_checkpoint_never_replaces_a_folder_the_tool_did_not_write(tmp_path):
    from mmkgc_dist.config import load_config
    from mmkgc_dist.errors import OutputError
    from mmkgc_dist.data.synthetic import generate
    from mmkgc_dist.compose import local_trainer
    cfg = load_config(None, [("data.synthetic.num_entities", "100"), ("data.synthetic.num_triples", "600"),
                             ("model.dim", "8"), ("train.compile", "false"), ("train.threads", "1")])
    trainer = local_trainer(cfg, generate(cfg.data.synthetic), str(tmp_path / "run"), show_progress=False)
    mine = tmp_path / "run" / "checkpoints" / "step-000000000"
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("a user's file")
    with pytest.raises(OutputError, match="step-000000000: exists and is not a checkpoint written by mmkgc-dist"):
        trainer.save()
    assert os.listdir(mine) == ["notes.txt"] and sorted(os.listdir(mine.parent)) == ["step-000000000"]
