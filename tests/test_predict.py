"""From a trained run to answers: load_run, predict (tails and heads, names or ids, batches, known triples),
score, neighbours, and the `mmkgc-dist predict` command; a 2-rank checkpoint answers the same in one process."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from mmkgc_dist import load_run
from mmkgc_dist.errors import QueryError

from support import HERE, TINY, cli


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    w = tmp_path_factory.mktemp("predict")
    res = cli("train", "--run-dir", "r", *TINY, cwd=w)
    assert res.returncode == 0, res.stderr[-3000:]
    return w / "r"


@pytest.fixture(scope="module")
def model(run):
    return load_run(str(run))


@pytest.mark.slow
def test_predict_tails_and_heads_rank_by_score(model):
    tails = model.predict(head="entity_000010", relation="relation_0003", k=7)
    assert [p.rank for p in tails] == list(range(1, 8))
    scores = [p.score for p in tails]
    assert scores == sorted(scores, reverse=True)
    # the scores are the model's own f(h, r, t)
    direct = model.score([("entity_000010", "relation_0003", p.name) for p in tails])
    assert np.allclose(direct, scores, atol=1e-5)
    heads = model.predict(relation="relation_0003", tail="entity_000010", k=5)
    direct = model.score([(p.name, "relation_0003", "entity_000010") for p in heads])
    assert np.allclose(direct, [p.score for p in heads], atol=1e-5)
    # ids work as names do, and a batch answers each query as a single one does
    assert model.predict(head=10, relation=3, k=7) == tails
    batch = model.predict(head=["entity_000010", "entity_000011"], relation=["relation_0003", "relation_0001"], k=7)
    assert batch[0] == tails and batch[1] == model.predict(head="entity_000011", relation="relation_0001", k=7)


def test_known_answers_marked_or_filtered(model):
    train = model.model.evaluator.known_triples()
    h, r, t = (int(x) for x in train[0])
    everything = model.predict(head=h, relation=r, k=300, known="mark")
    known = {p.id for p in everything if p.known}
    expected = {int(row[2]) for row in train if row[0] == h and row[1] == r}
    assert t in known and known == expected
    filtered = model.predict(head=h, relation=r, k=300, known="filter")
    assert not any(p.known for p in filtered) and {p.id for p in filtered} == {p.id for p in everything} - known
    assert [p.rank for p in filtered] == list(range(1, len(filtered) + 1))


def test_neighbours(model):
    for space in ("joint", "structural"):
        near = model.neighbours("entity_000005", k=4, space=space)
        assert len(near) == 4 and all(p.name != "entity_000005" for p in near)
        assert [p.score for p in near] == sorted((p.score for p in near), reverse=True)
    table = model.structural
    d = (table - table[5]).unflatten(-1, (2, -1)).pow(2).sum(1).sqrt().sum(-1)
    d[5] = float("inf")
    expected = torch.topk(d, 4, largest=False).indices.tolist()
    assert [p.id for p in model.neighbours(5, k=4, space="structural")] == expected


def test_bad_queries_are_one_line_errors(model):
    with pytest.raises(QueryError, match=r"unknown entity 'entity_00001' .*closest known: 'entity_000010'"):
        model.predict(head="entity_00001", relation="relation_0003")
    with pytest.raises(QueryError, match="unknown relation 'relation_3'"):
        model.predict(head="entity_000001", relation="relation_3")
    with pytest.raises(QueryError, match="exactly one of head"):
        model.predict(head="entity_000001", tail="entity_000002", relation="relation_0003")
    with pytest.raises(QueryError, match=r"entity id 300: out of range \[0, 300\)"):
        model.predict(head=300, relation=0)
    with pytest.raises(QueryError, match="space="):
        model.neighbours(0, space="visual")


@pytest.mark.slow
def test_predict_command(run):
    res = cli("predict", run, "--head", "entity_000010", "--relation", "relation_0003", "--top", "5",
              cwd=run.parent)
    assert res.returncode == 0, res.stderr
    lines = [l for l in res.stdout.splitlines() if l.strip()]
    assert lines[0].startswith("top 5 tails of (entity_000010, relation_0003, ?)")
    assert len(lines) == 6 and all(l.split()[-1].startswith("entity_") for l in lines[1:])
    as_json = cli("predict", run, "--tail", "entity_000010", "--relation", "relation_0003", "--top", "3", "--json",
                  cwd=run.parent)
    assert as_json.returncode == 0, as_json.stderr
    found = json.loads(as_json.stdout)["predictions"]
    assert [p["rank"] for p in found] == [1, 2, 3] and {"id", "name", "score", "known"} <= set(found[0])
    elsewhere = run.parent / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    moved = cli("predict", run, "--head", "entity_000010", "--relation", "relation_0003", "--data.source=parquet",
                "--data.path=ds", cwd=elsewhere)
    assert moved.returncode == 2 and "trained on data.path=ds, which is not found from here" in moved.stderr and \
        "--data.path=" in moved.stderr, moved.stderr
    bad = cli("predict", run, "--head", "entity_10", "--relation", "relation_0003", cwd=run.parent)
    errors = [l for l in bad.stderr.splitlines() if l.startswith("error:")]
    assert bad.returncode == 2 and len(errors) == 1 and "unknown entity 'entity_10'" in errors[0], bad.stderr


@pytest.mark.slow
def test_two_rank_checkpoint_answers_the_same_in_one_process(tmp_path):
    """The bar of the workflow issue: a checkpoint written by 2 gloo ranks, loaded in one process, gives the
    top-10 the 2-rank job computes from its own (gathered) tables."""
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", os.path.join(HERE, "dist_worker.py"),
                          str(tmp_path), "--run-dir", str(tmp_path / "run"), "--save", "--train.max_steps=6"],
                         env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    written = json.load(open(tmp_path / "rank-0.json"))
    model = load_run(str(tmp_path / "run"))
    queries = np.array(written["queries"])
    found = model.predict(head=queries[:, 0], relation=queries[:, 1], k=10, known="keep")
    assert [[p.id for p in q] for q in found] == written["top_ids"]
    assert np.allclose([[p.score for p in q] for q in found], written["top_scores"], atol=1e-4)


@pytest.mark.slow
def test_export_holds_the_whole_model_and_reads_back(run, model):
    """Relations beside entities, export.json's scoring function: a user scoring outside the package with
    numpy gets the model's own scores."""
    from mmkgc_dist import read_embeddings
    out = run.parent / "export"
    res = cli("export", run, out, cwd=run.parent)
    assert res.returncode == 0, res.stderr
    emb = read_embeddings(str(out))
    assert emb.entity_names == model.entities.names and emb.relation_names == model.relations.names
    assert emb.info["scoring"]["gamma"] == model.scoring.scorer.gamma and emb.info["scoring"]["name"] == "rotate"
    assert emb.phases.shape == (len(emb.relation_names), 8)
    triples = model.model.evaluator.known_triples()[:50]
    outside = emb.score(triples[:, 0], triples[:, 1], triples[:, 2])
    assert np.allclose(outside, model.score(triples.tolist()), atol=1e-4)
    assert np.allclose(emb.joint, model.joint.numpy(), atol=1e-6)


@pytest.mark.slow
def test_streamed_run_marks_training_answers(tmp_path):
    """A run whose training split streamed from disk: predict finds the training answers of its queries on disk."""
    assert cli("prepare", "synthetic", "ds", "--num_entities=200", "--num_triples=1600", cwd=tmp_path).returncode == 0
    res = cli("train", "--run-dir", "r", *TINY[2:], "--data.source=parquet", "--data.path=ds", "--data.loader=stream",
              "--train.filter_negatives=false", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    from mmkgc_dist.data.format import load_dataset
    train = load_dataset(str(tmp_path / "ds")).splits["train"]
    model = load_run(str(tmp_path / "r"), overrides=[f"--data.path={tmp_path / 'ds'}"])
    h, r = int(train[0, 0]), int(train[0, 1])
    marked = {p.id for p in model.predict(head=h, relation=r, k=200) if p.known}
    assert {int(t) for t in train[(train[:, 0] == h) & (train[:, 1] == r), 2]} <= marked
    t = int(train[0, 2])
    marked = {p.id for p in model.predict(relation=r, tail=t, k=200) if p.known}
    assert {int(x) for x in train[(train[:, 2] == t) & (train[:, 1] == r), 0]} <= marked


def test_load_run_predicts_without_the_trainer_or_deepspeed(run):
    """A trained model is loaded and asked without building a trainer: neither the training package (train/)
    nor DeepSpeed (nor TorchRec's distributed runtime) is imported in the process."""
    code = ("import sys; from mmkgc_dist import load_run; m = load_run(sys.argv[1]); "
            "p = m.predict(head='entity_000010', relation='relation_0003', k=3); assert len(p) == 3; "
            "loaded = [n for n in ('deepspeed', 'mmkgc_dist.training.trainer', 'mmkgc_dist.parallel.distributed', "
            "'mmkgc_dist.training') if n in sys.modules]; assert not loaded, loaded; print('ok')")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.path.dirname(HERE))
    res = subprocess.run([sys.executable, "-c", code, str(run)], env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-3000:]
