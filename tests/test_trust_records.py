"""Trust, third pass — files checked against their records (dataset manifests, exports, neighbour indexes), no
invalid id from an approximate answer or at any entry point, and the Python API checking its arguments before it
does any work. One tiny dataset and one tiny run, trained in this process, serve every case."""
import json
import os
import shutil

import numpy as np
import pytest
import torch

from mmkgc_dist import api
from mmkgc_dist.config import load_config
from mmkgc_dist.data.format import load_dataset, read_manifest, verify_dataset, write_dataset
from mmkgc_dist.data.synthetic import generate
from mmkgc_dist.errors import ConfigError, DataError, QueryError, UserError
from mmkgc_dist.serving.export import read_embeddings
from mmkgc_dist.serving.neighbour_index import build_neighbour_index
from mmkgc_dist.serving.predict import load_run
from support import MINI, MINI_GRAPH_CONFIG, overrides, pairs

GRAPH = pairs(MINI_GRAPH_CONFIG)
TRAIN = overrides(MINI, "--train.epochs=1", "--eval.splits=[test]")


def flip_a_byte(path) -> None:
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0xFF
    with open(path, "r+b") as fh:          # same file, same size: only the content differs
        fh.write(data)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = tmp_path_factory.mktemp("records")
    before = os.environ.get("MMKGC_DIST_CACHE")
    os.environ["MMKGC_DIST_CACHE"] = str(w / "cache")
    write_dataset(generate(load_config(None, GRAPH).data.synthetic), str(w / "ds"), source="synthetic")
    api.train(overrides={**TRAIN, "data.source": "parquet", "data.path": str(w / "ds")}, run_dir=str(w / "r"),
              progress=False)
    load_run(str(w / "r")).model.export(str(w / "emb"), neighbour_index=True)
    yield w
    if before is None:
        os.environ.pop("MMKGC_DIST_CACHE")
    else:
        os.environ["MMKGC_DIST_CACHE"] = before


def test_dataset_files_are_checked_against_the_manifest(world, tmp_path):
    ds = tmp_path / "ds"
    shutil.copytree(world / "ds", ds)
    manifest = read_manifest(str(ds))
    assert verify_dataset(str(ds), manifest) == len(manifest["files"])
    cached = json.load(open(world / "cache" / "digests.json"))
    assert any(str(ds.resolve()) in key for key in cached)             # hashed once per version of a file
    # a part file replaced by another (another size): refused at open, digests or not
    valid, test = (ds / manifest["splits"][s]["files"][0] for s in ("valid", "test"))
    shutil.copy(ds / manifest["splits"]["train"]["files"][0], valid)
    with pytest.raises(DataError, match="bytes, .*manifest.json records .* replaced or cut short"):
        load_dataset(str(ds))
    shutil.copy(world / "ds" / manifest["splits"]["valid"]["files"][0], valid)
    load_dataset(str(ds))
    # the same size, another content: the digest differs — `verify`, and before a run starts
    stat = os.stat(test)
    flip_a_byte(test)
    os.utime(test, ns=(stat.st_atime_ns, stat.st_mtime_ns))           # even with its modification time put back
    with pytest.raises(DataError, match="SHA-256 differs"):
        verify_dataset(str(ds))
    report = api.verify(str(ds))
    assert report["kind"] == "dataset" and len(report["problems"]) == 1 and "test" in report["problems"][0]
    with pytest.raises(DataError, match="SHA-256 differs"):
        api.train(overrides={**TRAIN, "data.source": "parquet", "data.path": str(ds)}, run_dir=str(tmp_path / "r"),
                  progress=False)
    assert not (tmp_path / "r").exists()                               # refused before the run folder is made
    # a run folder: its checkpoints and its dataset
    assert api.verify(str(world / "r"))["problems"] == []
    ckpt = sorted((world / "r" / "checkpoints").glob("step-*"))[-1]
    shutil.copytree(world / "r", tmp_path / "r2")
    victim = next(p for p in (tmp_path / "r2" / "checkpoints" / ckpt.name).rglob("*") if p.is_file()
                  and p.name != "meta.json")
    flip_a_byte(victim)
    problems = api.verify(str(tmp_path / "r2"))["problems"]
    assert len(problems) == 1 and "does not match the digest" in problems[0]
    # records that are not records, a recorded file that is gone, a recorded path that leaves the folder
    shutil.copytree(world / "ds", tmp_path / "ds3")
    manifest = json.load(open(tmp_path / "ds3" / "manifest.json"))
    entities, relations = manifest["entities"], manifest["relations"]
    manifest["files"][entities] = "not a record"
    manifest["files"]["../outside.parquet"] = {"bytes": 1, "sha256": "0" * 64}
    (tmp_path / "ds3" / "manifest.json").write_text(json.dumps(manifest))
    os.remove(tmp_path / "ds3" / relations)
    problems = api.verify(str(tmp_path / "ds3"))["problems"]
    assert any("is not {bytes, sha256}" in p for p in problems) and any("relations.parquet: missing" in p
                                                                         for p in problems)
    assert any("'../outside.parquet' leaves the folder; not read" in p for p in problems)


def test_exports_are_checked_and_an_index_is_bound_to_its_vectors(world, tmp_path):
    emb = read_embeddings(str(world / "emb"))
    ids, _ = emb.neighbours([0, 1], k=5, approximate=True)
    assert ids.shape == (2, 5) and (ids >= 0).all()
    assert api.verify(str(world / "emb"))["problems"] == []
    info = json.load(open(world / "emb" / "export.json"))
    assert set(info["records"]) >= {*info["files"], "relations.parquet", "neighbour-index/index.faiss"}
    cases = {"tampered": lambda e: flip_a_byte(e / "relations.parquet"),
             "cut short": lambda e: open(e / info["files"][0], "r+b").truncate(100),
             "swapped": lambda e: shutil.copy(e / "relations.parquet", e / info["files"][0]),
             "not JSON": lambda e: (e / "export.json").write_text("{oops"),
             "no part list": lambda e: (e / "export.json").write_text(json.dumps({**info, "files": "x"})),
             "a path outside": lambda e: (e / "export.json").write_text(json.dumps({**info, "files": ["../x"]})),
             "entities not a count": lambda e: (e / "export.json").write_text(json.dumps({**info, "entities": "9"})),
             "relations not a file": lambda e: (e / "export.json").write_text(json.dumps({**info, "relations": 3})),
             "records not a map": lambda e: (e / "export.json").write_text(json.dumps({**info, "records": [1]})),
             "not an object": lambda e: (e / "export.json").write_text("[1, 2]"),
             "no export.json": lambda e: (e / "export.json").unlink()}
    for name, damage in cases.items():
        e = tmp_path / name.replace(" ", "-")
        shutil.copytree(world / "emb", e)
        damage(e)
        with pytest.raises(DataError) as err:
            read_embeddings(str(e))
        assert "\n" not in str(err.value) and str(e) in str(err.value), (name, str(err.value))
    # the run's own index: rebuilt when the vectors are not the ones it was built from
    model = load_run(str(world / "r"))
    built = model.neighbour_index().meta["vectors_sha256"]
    model.joint = model.joint + 1.0
    model._neighbour_indexes.clear()
    assert model.neighbour_index().meta["vectors_sha256"] != built


def test_approximate_answers_never_return_invalid_ids(world, tmp_path):
    # an inverted file with many near-empty cells searched in one cell: FAISS pads with -1
    table = torch.from_numpy(np.random.default_rng(0).normal(size=(60, 8)).astype(np.float32))
    index = build_neighbour_index(str(tmp_path / "ivf"), table, {}, kind="ivf", metric="euclidean", sample=20)
    index.set_knob(1)
    queries = np.arange(60)
    for k in (5, 30, 59):
        distance, found = index.nearest(table, table[torch.from_numpy(queries)], k, exclude=queries)
        assert found.shape == (60, k) and ((found >= 0) & (found < 60)).all()
        assert (found != torch.from_numpy(queries).unsqueeze(1)).all() and torch.isfinite(distance).all()
    assert index.fallbacks > 0
    # ids out of range are refused at every entry point, never read from the end of a table
    model, emb = load_run(str(world / "r")), read_embeddings(str(world / "emb"))
    for call in (lambda: model.predict(head=-1, relation=0), lambda: model.predict(head=0, relation=10 ** 6),
                 lambda: model.neighbours(-1), lambda: model.score([(0, -2, 1)]),
                 lambda: emb.score([-1], [0], [1]), lambda: emb.score([0], [0], [120]),
                 lambda: emb.neighbours([-1]), lambda: emb.neighbours([1.5])):
        with pytest.raises(QueryError, match="out of range|expected whole numbers|unknown"):
            call()


def test_the_python_api_checks_arguments_before_work(world, tmp_path):
    model = load_run(str(world / "r"))
    for call, message in ((lambda: model.predict_queries(5), "expected a list of (head, relation, tail) rows"),
                          (lambda: model.predict_queries([(0, 1)]), "query 0: expected a (head, relation, tail) row"),
                          (lambda: model.predict_file(5, "x.jsonl"), "src=5; expected a file path"),
                          (lambda: model.score(None), "score: expected a non-empty list"),
                          (lambda: model.predict(head=0, relation=0, k="3"), "k='3'; expected a whole number"),
                          (lambda: model.predict(head=0, relation=0, k=0), "k=0"),
                          (lambda: model.predict(head=0, relation=0, k=True), "k=True"),
                          (lambda: model.predict(head=0, relation=0, known="drop"), "known='drop'"),
                          (lambda: model.neighbours(0, k=2.5), "k=2.5"),
                          (lambda: model.predict_queries([(0, 0, None)], k=-1), "k=-1")):
        with pytest.raises(QueryError, match=None) as err:
            call()
        assert message in str(err.value)
    for kwargs, message in (({"ties": "random"}, "ties='random'; expected one of"),
                            ({"splits": ["nope"]}, "split 'nope' is not in the dataset"),
                            ({"splits": 3}, "splits=3; expected a list of split names")):
        with pytest.raises(QueryError, match=None) as err:
            api.evaluate(str(world / "r"), **kwargs)
        assert message in str(err.value)
    for kwargs, message in (({"pruner_startp": 1}, "unknown option(s) ['pruner_startp']"),
                            ({"storage": 5}, "storage=5; expected a string"),
                            ({"seed": "1"}, "seed='1'"), ({"baseline": "no"}, "baseline='no'"),
                            ({"trials": 2.0}, "trials=2.0")):
        with pytest.raises(ConfigError, match=None) as err:
            api.tune({"train.lr": [1e-3]}, str(tmp_path / "s"), **kwargs)
        assert message in str(err.value)
    assert not (tmp_path / "s").exists()
    for call, message in ((lambda: api.train(overrides=5), "overrides: expected a mapping"),
                          (lambda: api.train(run_dir=3), "run_dir=3; expected a path"),
                          (lambda: api.train(resume="yes"), "resume='yes'"),
                          (lambda: api.evaluate(str(world / "r"), checkpoint=5), "checkpoint=5"),
                          (lambda: load_run(None), "run_dir=None"),
                          (lambda: load_run(str(world / "r"), overrides="--model.dim=4"), "overrides=")):
        with pytest.raises(UserError, match=None) as err:
            call()
        assert message in str(err.value)
