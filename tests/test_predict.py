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
from mmkgc_dist.errors import ConfigError, QueryError

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
    with pytest.raises(QueryError, match="give two of head, relation and tail"):
        model.predict(head="entity_000001", tail="entity_000002", relation="relation_0003")
    with pytest.raises(QueryError, match="give two of head, relation and tail"):
        model.predict(head="entity_000001")
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


def test_export_with_a_neighbour_index_answers_neighbours_without_the_run(run, model):
    """export --neighbour-index: the FAISS index of the joint rows inside the export, its recall in export.json;
    read_embeddings(...).neighbours answers as load_run's do, exactly and through the index."""
    pytest.importorskip("faiss")
    from mmkgc_dist import read_embeddings
    out = run.parent / "export-indexed"
    res = cli("export", run, out, "--neighbour-index", cwd=run.parent)
    assert res.returncode == 0, res.stderr
    emb = read_embeddings(str(out))
    record = emb.info["neighbour_index"]
    assert record["kind"] == "hnsw" and record["metric"] == "complex_l1" and record["recall_at_k"] >= 0.95
    assert os.path.isfile(out / record["folder"] / "index.faiss")
    entities = ["entity_000010", "entity_000020", "entity_000030"]
    ids, distances = emb.neighbours(entities, k=10)
    expected = model.neighbours(entities, k=10)
    assert ids.tolist() == [[p.id for p in e] for e in expected]
    assert np.allclose(-distances, [[p.score for p in e] for e in expected], atol=1e-5)
    approximate, _ = emb.neighbours(entities, k=10, approximate=True)
    assert sum(len(set(a) & set(e)) for a, e in zip(approximate.tolist(), ids.tolist())) >= 0.9 * 30
    emb.info = {key: value for key, value in emb.info.items() if key != "neighbour_index"}    # an export without
    with pytest.raises(ValueError, match="no neighbour index"):
        emb.neighbours(entities, approximate=True)


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


# ------------------------------------------------------------------------------------------ answers at scale
def test_known_index_on_disk_matches_the_triples(tmp_path):
    """The sorted-key index (two passes, buckets split again past the memory bound) answers every (anchor,
    relation) query and membership test exactly as the triples do, for heavy-tailed anchors."""
    from mmkgc_dist.serving.known_index import KnownIndex, build_known_index
    rng = np.random.default_rng(0)
    n, r = 700, 9
    triples = np.stack([np.minimum(rng.zipf(1.2, 30000) - 1, n - 1), rng.integers(0, r, 30000),
                        rng.integers(0, n, 30000)], axis=1)
    index = build_known_index(str(tmp_path / "ix"), [triples[:11000], triples[11000:], triples[:50]], n, r, "id",
                              bucket_rows=300)
    assert index.meta["keys"]["tail"] == index.meta["keys"]["head"] == len(np.unique(triples, axis=0))
    assert sorted(os.listdir(tmp_path)) == ["ix"] and sorted(os.listdir(tmp_path / "ix")) == \
        ["head.u64", "meta.json", "tail.u64"]
    again, memory = KnownIndex(str(tmp_path / "ix")), KnownIndex.of(triples, n, r)
    truth = {(h, rel, t) for h, rel, t in triples.tolist()}
    queries = np.concatenate([triples[:300], rng.integers(0, [n, r, n], (300, 3))])
    for direction, (a, b) in (("tail", (0, 2)), ("head", (2, 0))):
        for idx in (again, memory):
            rows, answers = idx.pairs(direction, queries[:, a], queries[:, 1])
            found = {(int(q), int(e)) for q, e in zip(rows, answers)}
            expected = {(q, int(row[b])) for q in range(len(queries)) for row in
                        triples[(triples[:, a] == queries[q, a]) & (triples[:, 1] == queries[q, 1])]}
            assert found == expected
    member = np.array([tuple(q) in truth for q in queries.tolist()])
    assert (again.contains(queries[:, 0], queries[:, 1], queries[:, 2]) == member).all()
    assert member[:300].all() and not member[300:].all()


def test_chunked_scoring_keeps_the_exact_top_k(model):
    """predict scores entities in chunks with a running top-k (bounded memory): the answers do not depend on the
    chunk size, with known answers marked or filtered."""
    queries = dict(head=["entity_000010", "entity_000020", "entity_000030"],
                   relation=["relation_0003", "relation_0001", "relation_0002"], k=40)
    whole = {known: model.predict(**queries, known=known) for known in ("mark", "filter")}
    try:
        model.entity_chunk = 37
        for known, expected in whole.items():
            assert model.predict(**queries, known=known) == expected
    finally:
        model.entity_chunk = None


def test_approximate_neighbours_recall_and_reuse(model):
    """neighbours(approximate=True): an HNSW graph built once into the run folder, its recall@10 against exact
    measured at build, answers re-ranked by the exact distance (scores equal exact ones where they agree)."""
    pytest.importorskip("faiss")
    entities = ["entity_000010", "entity_000020", "entity_000030", "entity_000040"]
    exact = model.neighbours(entities, k=10)
    approximate = model.neighbours(entities, k=10, approximate=True)
    index = model.neighbour_index("joint")
    assert index.meta["recall_k"] == 10 and index.meta["recall_sample"] == 300 and index.meta["recall_at_k"] >= 0.95
    assert index.meta["step"] == model.step and index.meta["dataset"] == model.model.identity
    hits = sum(len({p.id for p in a} & {p.id for p in e}) for a, e in zip(approximate, exact))
    assert hits >= 0.9 * 40
    for a, e in zip(approximate, exact):
        same = {p.id: p.score for p in e}
        assert all(abs(p.score - same[p.id]) < 1e-5 for p in a if p.id in same)
        assert model.entities.id(a.head) not in {p.id for p in a}
    folder = os.path.join(model.model.run_dir, "neighbour-index", "joint")
    built = os.stat(os.path.join(folder, "index.faiss")).st_mtime_ns
    again = load_run(model.model.run_dir)
    assert again.neighbours("entity_000010", k=10, approximate=True) == approximate[0]
    assert os.stat(os.path.join(folder, "index.faiss")).st_mtime_ns == built


def test_inverted_file_index_calibrates_nprobe_to_the_recall_target(model, tmp_path):
    """The IVF kind (what 10^7 entities use): k-means cells, nprobe the smallest of a doubling sweep that reaches
    the recall target on the build's sample; a fresh sample measures close to it; a bad kind is one line."""
    pytest.importorskip("faiss")
    from mmkgc_dist.serving.neighbour_index import build_neighbour_index, exact_answers, exact_nearest, measure_recall
    table = model.joint
    index = build_neighbour_index(str(tmp_path / "ivf"), table, {"step": 1}, kind="ivf", metric="euclidean",
                                  sample=200)
    meta = index.meta
    assert meta["kind"] == "ivf" and meta["knob_name"] == "nprobe" and meta["cells"] == index.index.nlist > 1
    knobs = [s["knob"] for s in meta["sweep"]]
    assert knobs == sorted(knobs) and meta["knob"] == knobs[-1] == index.index.nprobe
    assert meta["recall_at_k"] >= 0.95 and all(s["recall_at_k"] < 0.95 for s in meta["sweep"][:-1])
    rows = np.random.default_rng(7).choice(len(table), 100, replace=False)
    assert measure_recall(index, table, 10, rows, exact_answers(table, rows, 10, "euclidean"))["recall_at_k"] >= 0.9
    distance, found = exact_nearest(table, table[:3], 5, metric="euclidean", chunk=17)
    assert torch.allclose(distance, torch.cdist(table[:3], table, compute_mode="donot_use_mm_for_euclid_dist").topk(5, largest=False).values,
                          atol=1e-5)
    with pytest.raises(ConfigError, match="kind='annoy'; expected hnsw, ivf or auto"):
        build_neighbour_index(str(tmp_path / "bad"), table, {}, kind="annoy")
    assert not (tmp_path / "bad").exists()


def test_approximate_answers_agree_with_exact_and_filter_known(model):
    """predict(approximate=True): an answer index built once into the run folder, calibrated to recall@10 ≥ 0.95
    against the exact path; answers carry the exact scores; known="filter" still leaves every known answer out."""
    pytest.importorskip("faiss")
    heads = [f"entity_{i:06d}" for i in range(10, 50, 4)]
    exact = model.predict(head=heads, relation="relation_0003", k=10)
    approximate = model.predict(head=heads, relation="relation_0003", k=10, approximate=True)
    index = model.answer_index()
    assert index.meta["recall_at_k"] >= 0.95 and index.meta["recall_queries"] == 1000
    assert index.meta["scoring"] == model.scoring.scorer.name and index.meta["search"] == "l2"
    hits = sum(len({p.id for p in a} & {p.id for p in e}) for a, e in zip(approximate, exact))
    assert hits >= 0.9 * 100
    for a in approximate:
        direct = model.score([(a.head, "relation_0003", p.name) for p in a])
        assert np.allclose(direct, [p.score for p in a], atol=1e-5)
    train = model.model.evaluator.known_triples()
    h, r = (int(x) for x in train[0][:2])
    known = {int(row[2]) for row in train if row[0] == h and row[1] == r}
    filtered = model.predict(head=h, relation=r, k=20, known="filter", approximate=True)
    assert len(filtered) == 20 and not {p.id for p in filtered} & known
    built = os.stat(os.path.join(model.model.run_dir, "answer-index", "index.faiss")).st_mtime_ns
    assert load_run(model.model.run_dir).answer_index().meta == index.meta
    assert os.stat(os.path.join(model.model.run_dir, "answer-index", "index.faiss")).st_mtime_ns == built


def test_inner_product_answer_index_and_exact_fallback(tmp_path):
    """Dot-product scorers (ComplEx, DistMult) search an inner-product index (HNSW and IVF); a query whose
    excluded answers leave fewer than k candidates is answered exactly; a scorer without a vector form refuses."""
    pytest.importorskip("faiss")
    from mmkgc_dist.model.scorers.base import make_scorer
    from mmkgc_dist.serving.answer_index import build_answer_index
    from mmkgc_dist.serving.exact_answers import best_answers
    scorer = make_scorer("distmult", 8, 12.0, 2.0)
    kernels = scorer.kernels()
    rng = np.random.default_rng(0)
    table = torch.from_numpy(rng.normal(size=(3000, 16)).astype(np.float32))
    queries = torch.from_numpy(rng.normal(size=(200, 16)).astype(np.float32))
    exact_d, exact_e = best_answers(kernels, queries[:20], table, 10)
    for kind in ("hnsw", "ivf"):
        index = build_answer_index(str(tmp_path / kind), table, {}, scorer, kernels, queries, kind=kind)
        assert index.meta["search"] == "inner_product" and index.meta["recall_at_k"] >= 0.95
        d, e = index.answers(scorer, kernels, queries[:20], table, 10)
        assert (d <= exact_d[:, -1:] + 1e-4).float().mean() >= 0.95
    # query 0 may not have 2,995 of the rows, the index's candidates among them: the 5 worst rows are left, which
    # no search fetches — they are its answers, found exactly, then nothing
    worst = (table @ queries[0]).argsort()[:5].numpy()
    rows = np.setdiff1d(np.arange(3000), worst)
    excluded = (np.zeros(len(rows), dtype=np.int64), rows)
    d, e = index.answers(scorer, kernels, queries[:2], table, 10, excluded)
    assert set(e[0, :5].tolist()) == set(worst.tolist()) and torch.isinf(d[0, 5:]).all()
    assert torch.isfinite(d[1]).all() and index.fallbacks == 1
    with pytest.raises(ConfigError, match="no single-vector query form"):
        build_answer_index(str(tmp_path / "views"), table, {}, make_scorer("ikrl", 8, 12.0, 2.0), kernels, queries)
    assert not (tmp_path / "views").exists()


def test_relation_prediction_ranks_relations_by_score(model):
    head, tail = "entity_000010", "entity_000042"
    found = model.predict(head=head, tail=tail, k=50)
    relations = model.relations.names
    assert [p.rank for p in found] == list(range(1, len(relations) + 1)) and {p.name for p in found} == set(relations)
    direct = model.score([(head, p.name, tail) for p in found])
    assert np.allclose(direct, [p.score for p in found], atol=1e-5)
    known = model.model.evaluator.known_triples()
    h, r, t = (int(x) for x in known[0])
    marked = {p.id for p in model.predict(head=h, tail=t, k=50) if p.known}
    assert marked == {int(x[1]) for x in known if x[0] == h and x[2] == t} and r in marked
    assert r not in {p.id for p in model.predict(head=h, tail=t, k=50, known="filter")}
    frame = found.to_frame()
    assert list(frame["relation"].isna()) == [True] * len(found) and set(frame["head"]) == {head}


def test_predict_file_answers_every_query_as_single_queries_do(model, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from mmkgc_dist.errors import DataError
    queries = [("entity_000010", "relation_0003", ""), ("", "relation_0001", "entity_000005"),
               ("entity_000002", "?", "entity_000007"), ("entity_000011", "relation_0000", "?")]
    src = tmp_path / "q.tsv"
    src.write_text("head\trelation\ttail\n" + "".join("\t".join(q) + "\n" for q in queries))
    done = model.predict_file(str(src), str(tmp_path / "a.parquet"), k=4, progress=False)
    assert done["queries"] == 4 and done["answers"] == 16
    table = pq.read_table(tmp_path / "a.parquet").to_pylist()
    expected = [model.predict(head="entity_000010", relation="relation_0003", k=4),
                model.predict(relation="relation_0001", tail="entity_000005", k=4),
                model.predict(head="entity_000002", tail="entity_000007", k=4),
                model.predict(head="entity_000011", relation="relation_0000", k=4)]
    for q, answers in enumerate(expected):
        rows = [row for row in table if row["query"] == q]
        assert [row["answer"] for row in rows] == [p.name for p in answers]
        assert [row["known"] for row in rows] == [p.known for p in answers]
        assert np.allclose([row["score"] for row in rows], [p.score for p in answers], atol=1e-4)
        assert rows[0]["asked"] == ("tail", "head", "relation", "tail")[q] and rows[0][rows[0]["asked"]] is None
    # JSON lines, and the same from a Parquet query file; an earlier answers file is replaced
    rows = [dict(zip(("head", "relation", "tail"), [None if v in ("", "?") else v for v in q])) for q in queries]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "q.parquet")
    model.predict_file(str(tmp_path / "q.parquet"), str(tmp_path / "a.jsonl"), k=4, progress=False)
    model.predict_file(str(tmp_path / "q.parquet"), str(tmp_path / "a.jsonl"), k=4, progress=False)
    lines = [json.loads(l) for l in open(tmp_path / "a.jsonl")]
    assert [l["answer"] for l in lines] == [row["answer"] for row in table]
    assert model.predict_queries([(q[0] or None, q[1] if q[1] != "?" else None, q[2] or None) for q in queries],
                                 k=4)[2] == expected[2]

    # a query that cannot be answered is listed with its row and reason; the others are answered
    src.write_text("head\trelation\ttail\nentity_000010\trelation_0003\t\nentity_10\trelation_0003\t\n"
                   "entity_000010\t\t\n")
    done = model.predict_file(str(src), str(tmp_path / "p.jsonl"), progress=False)
    assert (done["queries"], done["answered"], done["unknown"]) == (3, 1, 2)
    listed = [json.loads(line) for line in open(tmp_path / "p.unknown.jsonl")]
    assert [(u["row"], u["head"]) for u in listed] == [(2, "entity_10"), (3, "entity_000010")]
    assert listed[0]["reason"].startswith("unknown entity 'entity_10'")
    assert "exactly one of head, relation, tail" in listed[1]["reason"]
    assert {json.loads(line)["query"] for line in open(tmp_path / "p.jsonl")} == {0}
    # strict: the first such query refuses the file, naming its row, and nothing is written
    with pytest.raises(QueryError, match=r"q.tsv: data row 2 \(line 3\): unknown entity 'entity_10'"):
        model.predict_file(str(src), str(tmp_path / "b.jsonl"), progress=False, strict=True)
    src.write_text("head\trelation\ttail\nentity_000010\t\t\n")
    with pytest.raises(QueryError, match=r"data row 1 \(line 2\): .*exactly one of head, relation, tail"):
        model.predict_file(str(src), str(tmp_path / "b.jsonl"), progress=False, strict=True)
    src.write_text("subject\trelation\ttail\nentity_000010\trelation_0003\t\n")
    with pytest.raises(DataError, match=r"no column\(s\) \['head'\]"):
        model.predict_file(str(src), str(tmp_path / "b.jsonl"), progress=False)
    assert not [f for f in os.listdir(tmp_path) if f.startswith("b.jsonl")]
    (tmp_path / "mine.jsonl").write_text("my notes\n")
    from mmkgc_dist.errors import OutputError
    with pytest.raises(OutputError):
        model.predict_file(str(tmp_path / "q.parquet"), str(tmp_path / "mine.jsonl"), progress=False)
    assert (tmp_path / "mine.jsonl").read_text() == "my notes\n"


@pytest.mark.slow
def test_predict_batch_and_relations_from_the_command_line(run, tmp_path):
    (tmp_path / "q.csv").write_text("head,relation,tail\nentity_000010,relation_0003,\n,relation_0001,entity_000005\n")
    res = cli("predict", run, "--batch", tmp_path / "q.csv", "--output", tmp_path / "a.jsonl", "--top", "3",
              cwd=tmp_path)
    assert res.returncode == 0 and "answered 2 of 2 queries (6 answers" in res.stdout, res.stderr[-2000:]
    approximate = cli("predict", run, "--batch", tmp_path / "q.csv", "--output", tmp_path / "b.jsonl", "--top", "3",
                      "--approximate", cwd=tmp_path)
    assert approximate.returncode == 0 and "answered 2 of 2 queries" in approximate.stdout, approximate.stderr[-2000:]
    answer_ids = lambda path: {(r["query"], r["answer_id"]) for r in map(json.loads, open(path))}
    assert len(answer_ids(tmp_path / "a.jsonl") & answer_ids(tmp_path / "b.jsonl")) >= 5
    by_id = cli("predict", run, "--head", "10", "--relation", "3", "--ids", "--json", cwd=tmp_path)
    by_name = cli("predict", run, "--head", "entity_000010", "--relation", "relation_0003", "--json", cwd=tmp_path)
    by_short = cli("predict", run, "--head", "Entity 000010", "--relation", "relation_0003", "--json", cwd=tmp_path)
    answers = [json.loads(r.stdout)["predictions"] for r in (by_id, by_name, by_short)]
    assert answers[0] == answers[1] == answers[2] and len(answers[0]) == 10
    res = cli("predict", run, "--head", "entity_000010", "--tail", "entity_000042", "--json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert len(json.loads(res.stdout)["predictions"]) == 10
    res = cli("predict", run, "--head", "entity_000010", cwd=tmp_path)
    assert res.returncode == 2 and "give two of --head, --relation, --tail" in res.stderr


@pytest.mark.slow
def test_streamed_two_rank_run_answers_from_an_on_disk_index(tmp_path):
    """A run trained on 2 ranks from a streamed split: predict builds the known-triple index in the run folder
    once (later loads reuse it) and marks exactly the known answers, in batches and for relations."""
    assert cli("prepare", "synthetic", "ds", "--num_entities=200", "--num_triples=1600", cwd=tmp_path).returncode == 0
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.path.dirname(HERE), TQDM_DISABLE="1")
    res = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", "-m", "mmkgc_dist.cli", "train",
                          "--run-dir", "r", *TINY[2:], "--data.source=parquet", "--data.path=ds",
                          "--data.loader=stream", "--train.filter_negatives=false"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    from mmkgc_dist.data.format import load_dataset
    data = load_dataset(str(tmp_path / "ds"))
    everything = np.concatenate([data.splits[s] for s in ("train", "valid", "test")])
    model = load_run(str(tmp_path / "r"), overrides=[f"--data.path={tmp_path / 'ds'}"])
    queries = [(int(h), int(r), None) for h, r, _ in everything[:20]] + \
        [(None, int(r), int(t)) for _, r, t in everything[20:40]] + \
        [(int(h), None, int(t)) for h, _, t in everything[40:60]]
    found = model.predict_queries(queries, k=300)
    for (h, r, t), answers in zip(queries, found):
        marked = {p.id for p in answers if p.known}
        if t is None:
            assert marked == {int(x[2]) for x in everything if x[0] == h and x[1] == r}
        elif h is None:
            assert marked == {int(x[0]) for x in everything if x[2] == t and x[1] == r}
        else:
            assert marked == {int(x[1]) for x in everything if x[0] == h and x[2] == t}
    index = tmp_path / "r" / "known-index" / "tail.u64"
    built = index.stat().st_mtime_ns
    again = load_run(str(tmp_path / "r"), overrides=[f"--data.path={tmp_path / 'ds'}"])
    assert again.predict_queries(queries[:3], k=300) == found[:3] and index.stat().st_mtime_ns == built


def test_short_names_resolve_when_one_name_has_them_and_list_the_candidates_otherwise():
    from mmkgc_dist.serving.predict import Vocabulary
    names = ["<http://dbpedia.org/resource/Paris>", "<http://example.org/city#Paris>",
             "<http://dbpedia.org/resource/Barack_Obama>", "<http://dbpedia.org/resource/S%C3%A3o_Paulo>"]
    vocabulary = Vocabulary("entity", names)
    assert vocabulary.id("Barack_Obama") == vocabulary.id("barack obama") == vocabulary.id(names[2]) == 2
    assert vocabulary.id("São Paulo") == 3 and vocabulary.id(1) == 1
    with pytest.raises(QueryError, match=r"entity 'Paris' is ambiguous: 2 names .*resource/Paris.*city#Paris"):
        vocabulary.id("Paris")
    with pytest.raises(QueryError, match=r"unknown entity 'Barack Obamaa'.*closest known"):
        vocabulary.id("Barack Obamaa")


def test_fused_top_k_is_the_brute_force_top_k_with_exclusions_blocks_and_workers():
    """serving.exact_answers.best_answers against a full score matrix: every block size, one or two workers, filtered
    pairs left out, k over a block's rows."""
    import torch

    from mmkgc_dist.serving.exact_answers import best_answers

    class Dot:
        @staticmethod
        def all_pairs(query, rows):
            return query @ rows.T

    generator = torch.Generator().manual_seed(0)
    table, query = torch.randn(3001, 8, generator=generator), torch.randn(70, 8, generator=generator)
    excluded = (np.repeat(np.arange(70), 5), np.random.default_rng(0).integers(0, 3001, 350))
    full = query @ table.T
    full[torch.from_numpy(excluded[0]), torch.from_numpy(excluded[1])] = float("-inf")
    expected = torch.topk(full, 40, dim=1)
    threads = torch.get_num_threads()
    try:
        for workers, block in ((1, 64), (2, 256), (1, 5000), (2, 7)):
            torch.set_num_threads(workers)
            distance, rows = best_answers(Dot, query, table, 40, excluded, block)
            assert torch.equal(rows, expected.indices) and torch.allclose(-distance, expected.values)
    finally:
        torch.set_num_threads(threads)
