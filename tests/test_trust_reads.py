"""Trust, third pass — reads: remote reads bounded in time, hostile input bounded in memory, batch answers written
atomically, and a run read while it trains or from a read-only folder."""
import json
import os
import shutil
import socket
import subprocess
import threading
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mmkgc_dist import api, checkpoint
from mmkgc_dist.config import load_config
from mmkgc_dist.data.format import read_manifest, write_dataset
from mmkgc_dist.data.synthetic import generate
from mmkgc_dist.errors import CheckpointError, ConfigError, DataError, QueryError, UserError
from mmkgc_dist.serving.export import read_embeddings
from mmkgc_dist.serving.predict import load_run
from support import MINI, MINI_GRAPH_CONFIG, overrides, pairs

GRAPH = pairs(MINI_GRAPH_CONFIG)
TRAIN = overrides(MINI, "--train.epochs=2", "--eval.splits=[test]", "--train.checkpoint_every_steps=3",
                  "--train.keep_checkpoints=2")


@pytest.fixture(scope="module")
def streamed_run(tmp_path_factory):
    """A run whose training split streams from Parquet: its known answers need an on-disk index."""
    w = tmp_path_factory.mktemp("reads")
    write_dataset(generate(load_config(None, GRAPH).data.synthetic), str(w / "ds"), source="synthetic")
    api.train(overrides={**TRAIN, "data.source": "parquet", "data.path": str(w / "ds"), "data.loader": "stream",
                         "train.filter_negatives": False},
              run_dir=str(w / "r"), progress=False)
    return w


# ------------------------------------------------------------------------------------------ remote reads
def test_remote_reads_are_bounded_in_time(monkeypatch):
    monkeypatch.setenv("MMKGC_DIST_CONNECT_TIMEOUT", "1")
    monkeypatch.setenv("MMKGC_DIST_READ_TIMEOUT", "0.5")
    silent = socket.socket()                   # accepts every connection and never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    held = []
    threading.Thread(target=lambda: [held.append(silent.accept()) for _ in iter(int, 1)], daemon=True).start()
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()
    cases = [(f"http://127.0.0.1:{silent.getsockname()[1]}/ds", "no answer within the time limit"),
             (f"http://127.0.0.1:{closed_port}/ds", "cannot connect")]
    try:
        import s3fs  # noqa: F401
    except ImportError:
        cases.append(("s3://bucket/ds", "install the s3 extra"))
    for url, message in cases:
        for read in (read_manifest, read_embeddings):
            t0 = time.time()
            with pytest.raises(DataError) as err:
                read(url)
            assert message in str(err.value) and url in str(err.value), str(err.value)
            assert time.time() - t0 < 20
    silent.close()


# ------------------------------------------------------------------------------------------ hostile input
def test_hostile_input_stays_bounded_in_memory(tmp_path):
    levels = ['a: &a ["x", "x", "x", "x", "x", "x", "x", "x", "x"]'] + \
        [f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]" for i in range(8)]
    (tmp_path / "c.yaml").write_text("\n".join(levels) + "\n")                # 9^9 strings once expanded
    with pytest.raises(ConfigError, match="alias \\*a refused"):
        load_config(str(tmp_path / "c.yaml"))
    (tmp_path / "space.yaml").write_text("train.lr: &a [0.1, 0.2]\nmodel.dim: *a\n")
    with pytest.raises(ConfigError, match="search space .* alias \\*a refused"):
        api.tune(str(tmp_path / "space.yaml"), str(tmp_path / "s"))
    with pytest.raises(ConfigError, match="alias"):
        load_config(None, [("model.modalities", "[&a [1], *a]")])
    # a converter input with no line end: refused at a bounded size, not read whole
    from mmkgc_dist.data.convert import MAX_RECORD_BYTES, BLOCK_BYTES, convert_triples
    with open(tmp_path / "one-line.tsv", "wb") as fh:
        fh.write(b"x" * (max(BLOCK_BYTES, MAX_RECORD_BYTES) + (1 << 20)))
    with pytest.raises(DataError, match="line 1: over .* MiB without a line end"):
        convert_triples(str(tmp_path / "out"), {"train": str(tmp_path / "one-line.tsv")})
    assert not (tmp_path / "out").exists()
    # an error message quoting a huge input is cut, saying so
    long = str(UserError("bad value " + "y" * 100_000 + " end"))
    assert len(long) < 2100 and "characters cut" in long and long.endswith("end")
    with pytest.raises(ConfigError) as err:
        load_config(None, [("train.lr", "[" * 50_000)])
    assert len(str(err.value)) < 2100


# ------------------------------------------------------------------------------------------ batch answers
def test_batch_answers_are_written_atomically(streamed_run, tmp_path):
    model = load_run(str(streamed_run / "r"))
    # integer ids, asked as numbers, go to Parquet and JSON lines alike
    queries = pa.table({"head": pa.array([0, None, 5], pa.int64()), "relation": pa.array([1, 2, 3], pa.int64()),
                        "tail": pa.array([None, 7, None], pa.int64())})
    pq.write_table(queries, tmp_path / "q.parquet")
    for out in ("a.parquet", "a.jsonl"):
        report = model.predict_file(str(tmp_path / "q.parquet"), str(tmp_path / out), k=3, progress=False)
        assert report["queries"] == 3 and report["answers"] == 9
    rows = pq.read_table(tmp_path / "a.parquet").to_pylist()
    assert rows[0]["head"] == "0" and rows[0]["asked"] == "tail" and rows[3]["tail"] == "7"
    assert json.loads((tmp_path / "a.jsonl").read_text().splitlines()[0])["head"] == 0
    # a damaged query file is one line
    (tmp_path / "bad.parquet").write_bytes(b"PAR1" + os.urandom(200) + b"PAR1")
    with pytest.raises(DataError, match="not a readable Parquet query file"):
        model.predict_file(str(tmp_path / "bad.parquet"), str(tmp_path / "b.jsonl"), progress=False)
    # a failure after the first chunk leaves neither the output nor a temporary behind
    model.batch_size = 2
    (tmp_path / "late.tsv").write_text("head\trelation\ttail\nentity_000000\trelation_0001\t\n"
                                      "entity_000001\trelation_0001\t\nnobody\trelation_0001\t\n")
    for out in ("late.parquet", "late.jsonl"):
        with pytest.raises(QueryError, match="data row 3 .*unknown entity 'nobody'"):
            model.predict_file(str(tmp_path / "late.tsv"), str(tmp_path / out), progress=False, strict=True)
    assert sorted(os.listdir(tmp_path)) == ["a.jsonl", "a.parquet", "bad.parquet", "late.tsv", "q.parquet"]


# ------------------------------------------------------------------------------------------ runs being read
def test_a_checkpoint_pruned_under_a_reader_is_chosen_again(streamed_run, tmp_path, monkeypatch):
    run = tmp_path / "r"
    shutil.copytree(streamed_run / "r", run)
    (run / "checkpoints" / "best.json").unlink(missing_ok=True)     # no selection: the newest verified is chosen
    newest = checkpoint.list_checkpoints(str(run / "checkpoints"))[-1].path
    real_load = checkpoint.load

    def pruned_first(runtime, path, *args, **kwargs):      # the training run prunes it between choice and load
        if path == newest and os.path.isdir(path):
            shutil.rmtree(path)
        return real_load(runtime, path, *args, **kwargs)
    monkeypatch.setattr(checkpoint, "load", pruned_first)
    model = load_run(str(run))
    assert model.model.source != newest and os.path.isdir(model.model.source)
    # a run training with no verified checkpoint yet: said so, not "not found"
    for ckpt in checkpoint.list_checkpoints(str(run / "checkpoints")):
        shutil.rmtree(ckpt.path)
    (run / ".lock").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    with pytest.raises(CheckpointError, match="the run is training .* has not written a verified checkpoint"):
        load_run(str(run))


def read_only_copy(src, dst):
    """``dst``: a read-only view of ``src`` (a read-only bind mount; as a non-root user, permissions)."""
    shutil.copytree(src, dst / "rw", ignore=shutil.ignore_patterns("known-index", "neighbour-index"))
    (dst / "ro").mkdir()
    if os.geteuid() != 0:
        subprocess.run(["chmod", "-R", "a-w", str(dst / "rw")], check=True)
        return dst / "rw"
    mounted = subprocess.run(["mount", "--bind", str(dst / "rw"), str(dst / "ro")], capture_output=True)
    if mounted.returncode != 0 or subprocess.run(["mount", "-o", "remount,ro,bind", str(dst / "ro")],
                                                 capture_output=True).returncode != 0:
        pytest.skip(f"a read-only bind mount is not permitted here: {mounted.stderr.decode().strip()}")
    return dst / "ro"


def test_a_read_only_run_answers_without_writing(streamed_run, tmp_path, monkeypatch):
    monkeypatch.setenv("MMKGC_DIST_CACHE", str(tmp_path / "cache"))
    run = read_only_copy(streamed_run / "r", tmp_path)
    try:
        assert not os.access(run, os.W_OK)
        model = load_run(str(run))
        answers = model.predict(head=0, relation=1, k=5)             # known answers: an index built in the cache
        assert len(answers) == 5 and (tmp_path / "cache" / "derived").is_dir()
        assert len(model.neighbours(0, k=4, approximate=True)) == 4
        assert "test" in api.evaluate(str(run))
        model.model.export(str(tmp_path / "emb"))
        assert len(read_embeddings(str(tmp_path / "emb")).entity_names) == 120
        again = load_run(str(run))                                    # the cached indexes are found again
        assert again.known_index().identity == model.known_index().identity
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", "-l", str(tmp_path / "ro")], check=False)   # lazily: indexes are mapped
