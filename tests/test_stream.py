"""The streaming pipeline for large graphs: out-of-core converter, rank-sharded streaming loader, statistics,
degree-proportional negatives and the sampled evaluation protocol — on real files (gzip, Parquet, memory://)."""
import gzip
import json
import os
import subprocess
import sys

import fsspec
import numpy as np
import torch
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mmkgc_dist.config import load_config, parse_overrides
from mmkgc_dist.data.convert import TextLayout, convert_triples
from mmkgc_dist.errors import DataError
from mmkgc_dist.data.format import (KGData, load_dataset, read_manifest, read_training_statistics, write_dataset,
                                    write_manifest)
from mmkgc_dist.data.sampling import DegreeDistribution, NegativeSampler
from mmkgc_dist.data.statistics import TripleStatistics, exact_relation_table, head_probability
from mmkgc_dist.data.stream import StreamingTriples, rows_answering
from mmkgc_dist.data.synthetic import generate
from support import TINY, settings

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def labeled(n, entities=500, relations=12, seed=0):
    rng = np.random.default_rng(seed)
    h, r, t = rng.integers(0, entities, n), rng.integers(0, relations, n), rng.integers(0, entities, n)
    return [(f"ent/{a}", f"rel:{b}", f"ent/{c}") for a, b, c in zip(h, r, t)]


def write_lines(path, rows, sep="\t", header=None):
    text = ((header + "\n") if header else "") + "".join(sep.join(row) + "\n" for row in rows)
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "wt") as fh:
        fh.write(text)


def read_ids(root, split="train"):
    manifest = read_manifest(root)
    parts = [pq.read_table(os.path.join(root, f)) for f in manifest["splits"][split]["files"]]
    return np.concatenate([np.stack([p.column(c).to_numpy() for c in ("head", "relation", "tail")], 1)
                           for p in parts])


def as_set(rows):
    return sorted(map(tuple, np.asarray(rows).tolist()))


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    base = tmp_path_factory.mktemp("convert")
    train, test = labeled(20_000), labeled(300, seed=1) + [("ent/new", "rel:0", "ent/1")]
    write_lines(str(base / "train.tsv.gz"), train)
    write_lines(str(base / "test.csv"), test, sep=",", header="h,r,t")
    layout = TextLayout(header=False, allow_duplicates=True)      # random triples repeat a few: kept, counted
    convert_triples(str(base / "ds"), {"train": str(base / "train.tsv.gz")}, layout, progress=False,
                    row_group_rows=1000)
    # files with a header line, one of them CSV: the header handling and the delimiter inference
    write_lines(str(base / "train-header.tsv"), train, header="head\trelation\ttail")
    convert_triples(str(base / "ds_test"), {"train": str(base / "train-header.tsv"), "test": str(base / "test.csv")},
                    TextLayout(header=True, allow_duplicates=True, allow_overlap=True), progress=False,
                    row_group_rows=1000)
    return base, train, test


# ------------------------------------------------------------------------------------------ converter
def test_converter_ids_dictionaries_and_row_groups(converted):
    base, train, test = converted
    root = str(base / "ds_test")
    manifest = read_manifest(root)
    names = pq.read_table(os.path.join(root, "entities.parquet")).column("name").to_pylist()
    rels = pq.read_table(os.path.join(root, "relations.parquet")).column("name").to_pylist()
    ids = read_ids(root)
    decoded = [(names[h], rels[r], names[t]) for h, r, t in ids.tolist()]
    assert decoded == train                                   # order kept, every row mapped back exactly
    test_ids = read_ids(root, "test")
    assert [(names[h], rels[r], names[t]) for h, r, t in test_ids.tolist()] == test   # header skipped
    assert names[test_ids[-1, 0]] == "ent/new" and manifest["num_entities"] == len(set(names))
    meta = pq.ParquetFile(os.path.join(root, manifest["splits"]["train"]["files"][0])).metadata
    assert meta.num_row_groups == 20 and meta.row_group(0).num_rows == 1000


def test_converter_statistics_match_in_memory_computation(converted):
    base, _, _ = converted
    root = str(base / "ds")
    manifest = read_manifest(root)
    ids = read_ids(root)
    relations, degree = read_training_statistics(root, manifest)
    # the converter held the ids (below its check budget), so it counted exactly
    exact = exact_relation_table(ids, manifest["num_relations"])
    assert manifest["statistics"]["distinct_per_relation"] == "exact"
    for key in ("distinct_heads", "distinct_tails", "tails_per_head", "heads_per_tail"):
        assert np.array_equal(relations[key], exact[key]), key
    assert np.array_equal(degree, np.bincount(ids[:, [0, 2]].ravel(), minlength=manifest["num_entities"]))
    assert np.array_equal(relations["count"], np.bincount(ids[:, 1], minlength=manifest["num_relations"]))


def test_distinct_sketch_is_close_beyond_its_exact_range():
    rng = np.random.default_rng(3)
    triples = np.stack([rng.integers(0, 200_000, 400_000), rng.integers(0, 3, 400_000),
                        rng.integers(0, 50, 400_000)], 1)
    stats = TripleStatistics()
    for start in range(0, len(triples), 65536):
        stats.update(triples[start:start + 65536])
    table = stats.relation_table(3)
    for r in range(3):
        rows = triples[triples[:, 1] == r]
        assert table["distinct_heads"][r] == pytest.approx(len(np.unique(rows[:, 0])), rel=0.25)   # ~4 sigma of a k=256 sketch
        assert table["distinct_tails"][r] == len(np.unique(rows[:, 2]))                            # exact: < k


def test_estimated_distinct_counts_respect_their_bounds():
    """A relation with few triples over many distinct heads: the sketch may overshoot, the table may not —
    1 <= distinct <= triples, so tails-per-head and heads-per-tail stay >= 1."""
    rng = np.random.default_rng(5)
    for n in (300, 555, 2000):
        triples = np.stack([rng.permutation(10 ** 6)[:n], np.zeros(n, np.int64), rng.integers(0, 10 ** 6, n)], 1)
        stats = TripleStatistics()
        stats.update(triples)
        table = stats.relation_table(1)
        assert 1 <= table["distinct_heads"][0] <= n and 1 <= table["distinct_tails"][0] <= n
        assert table["tails_per_head"][0] >= 1 and table["heads_per_tail"][0] >= 1


def test_format_v1_statistics_are_computed_by_streaming(tmp_path):
    data = generate(load_config(None, parse_overrides(["--data.synthetic.num_entities=200",
                                                       "--data.synthetic.num_triples=1500"])).data.synthetic)
    write_dataset(data, str(tmp_path / "ds"))
    manifest = read_manifest(str(tmp_path / "ds"))
    rel_path = tmp_path / "ds" / "relations.parquet"
    pq.write_table(pq.read_table(rel_path, columns=["id", "name"]), rel_path)     # as a v1 dataset has it
    with pytest.raises(DataError, match="relations.parquet: .* bytes, .* records"):    # not as its record says
        read_training_statistics(str(tmp_path / "ds"), manifest)
    manifest.pop("files")                                    # a dataset written before file records
    relations, degree = read_training_statistics(str(tmp_path / "ds"), manifest)
    assert np.allclose(head_probability(relations),
                       head_probability(exact_relation_table(data.splits["train"], data.num_relations)))


@pytest.mark.parametrize("content, expect", [
    ("a\tr\tb\nc\tr\nd\tr\te\n", "line 2"),                         # a row with too few fields
    ("a\tr\tb\na\tr\tb\tx\n", "line 2"),                            # too many fields
    ("a\tr\tb\n\tr\tb\n", "empty head label"),
])
def test_malformed_rows_name_file_and_line_and_write_nothing(tmp_path, content, expect):
    (tmp_path / "t.tsv").write_text(content)
    with pytest.raises(DataError) as err:
        convert_triples(str(tmp_path / "out"), {"train": str(tmp_path / "t.tsv")}, progress=False)
    assert "t.tsv" in str(err.value) and expect in str(err.value)
    assert not os.path.exists(tmp_path / "out") and [p.name for p in tmp_path.iterdir()] == ["t.tsv"]


def test_skip_malformed_counts_and_reports(tmp_path):
    (tmp_path / "t.tsv").write_text("a\tr\tb\nc\tr\nd\tr\te\nbroken\n")
    manifest = convert_triples(str(tmp_path / "out"), {"train": str(tmp_path / "t.tsv")},
                               TextLayout(skip_malformed=True), progress=False)
    report = manifest["conversion"]["train"]
    assert report["malformed_skipped"] == 2 and report["rows"] == 2 and manifest["splits"]["train"]["rows"] == 2
    assert report["first_skipped"][0].startswith("line 2")


def test_truncated_gzip_and_unreadable_url_are_errors(tmp_path):
    write_lines(str(tmp_path / "full.tsv.gz"), labeled(50_000))
    blob = (tmp_path / "full.tsv.gz").read_bytes()
    (tmp_path / "cut.tsv.gz").write_bytes(blob[:len(blob) // 2])
    with pytest.raises(DataError, match="cut.tsv.gz.*truncated or corrupt"):
        convert_triples(str(tmp_path / "o1"), {"train": str(tmp_path / "cut.tsv.gz")}, progress=False)
    with pytest.raises(DataError, match="missing.tsv: file not found"):
        convert_triples(str(tmp_path / "o2"), {"train": str(tmp_path / "missing.tsv")}, progress=False)
    with pytest.raises(DataError, match="nosuchproto://x.tsv: cannot open"):
        convert_triples(str(tmp_path / "o3"), {"train": "nosuchproto://x.tsv"}, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.tsv.gz", "full.tsv.gz"]


@pytest.mark.slow
def test_prepare_triples_cli(tmp_path):
    write_lines(str(tmp_path / "t.tsv"), [("x", "r", "y"), ("x", "r", "z"), ("oops", "r")])
    cli = [sys.executable, "-m", "mmkgc_dist.cli", "prepare", "triples", str(tmp_path / "ds"),
           "--train", str(tmp_path / "t.tsv")]
    res = subprocess.run(cli, capture_output=True, text=True)
    assert res.returncode == 2 and "t.tsv: line 3: malformed row" in res.stderr
    res = subprocess.run(cli + ["--skip-malformed"], capture_output=True, text=True)
    assert res.returncode == 0 and "skipped 1 malformed rows" in res.stdout and "3 entities" in res.stdout


# ------------------------------------------------------------------------------------------ loader
def loader(root, rank=0, world=1, **kw):
    kw = {"batch_size": 700, "seed": 5, "window_rows": 2500, **kw}
    return StreamingTriples(root, rank=rank, world_size=world, **kw)


@pytest.mark.parametrize("world", [1, 2, 3])
def test_every_edge_exactly_once_per_epoch_across_ranks(converted, world):
    root = str(converted[0] / "ds")
    everything = read_ids(root)
    for epoch in range(2):
        seen, steps = [], []
        for rank in range(world):
            stream = loader(root, rank, world)
            stream.load_state_dict({"epoch": epoch, "batch": 0})
            batches = list(stream)
            steps.append(len(batches))
            seen.append(np.concatenate(batches))
            assert stream.state_dict() == {"epoch": epoch + 1, "batch": 0}
        assert len(set(steps)) == 1                                 # equal step counts: collectives line up
        assert as_set(np.concatenate(seen)) == as_set(everything)   # no loss, no duplicates
        if epoch == 0:
            first = seen
    assert not np.array_equal(first[0][:100], seen[0][:100])        # reshuffled each epoch


@pytest.mark.parametrize("rows, world", [(1, 2), (3, 4), (5, 2)])
def test_fewer_rows_than_ranks_still_give_every_rank_every_step(tmp_path, rows, world):
    """A split smaller than the world: every rank takes the same number of steps (empty batches where it holds
    no rows; the collectives line up) and the ranks' shares of each step sum to one."""
    triples = np.stack([np.arange(rows), np.zeros(rows, np.int64), (np.arange(rows) + 1) % (rows + 1)], 1)
    data = generate(load_config(None, parse_overrides(["--data.synthetic.num_entities=10"])).data.synthetic)
    data.splits = {"train": triples}
    data.features = {}
    write_dataset(data, str(tmp_path / "tiny"))
    streams = [loader(str(tmp_path / "tiny"), rank, world, batch_size=1) for rank in range(world)]
    batches = [list(s) for s in streams]
    assert len({len(b) for b in batches}) == 1
    assert as_set(np.concatenate([np.concatenate(b) for b in batches])) == as_set(triples)
    for index in range(len(batches[0])):
        assert sum(s.batch_share(index) for s in streams) == pytest.approx(1.0)
        for s, b in zip(streams, batches):
            assert (s.batch_share(index) == 0) == (len(b[index]) == 0)


@pytest.mark.parametrize("world", [1, 3])
def test_row_groups_larger_than_the_window_are_read_in_window_sized_pieces(tmp_path, world):
    """Memory follows data.shuffle_window_rows, not the file's row-group size: a 5,000-row group streamed with a
    700-row window fills buffers of at most 700 rows, and every edge still comes exactly once per epoch."""
    rng = np.random.default_rng(3)
    triples = np.stack([rng.integers(0, 400, 5000), rng.integers(0, 7, 5000), rng.integers(0, 400, 5000)], 1)
    data = KGData(400, 7, {"train": triples}, [f"e{i}" for i in range(400)], [f"r{i}" for i in range(7)])
    write_dataset(data, str(tmp_path / "ds"), row_group_rows=5000)
    seen = []
    for rank in range(world):
        stream = loader(str(tmp_path / "ds"), rank, world, window_rows=700, batch_size=128)
        assert max(sum(p.stop - p.start for p in w) for w in stream.windows(0)) <= 700
        seen += list(stream)
    assert len(np.concatenate(seen)) == 5000 and as_set(np.concatenate(seen)) == as_set(triples)


def test_resumed_loader_yields_exactly_the_remaining_edges(converted):
    root = str(converted[0] / "ds")
    full = list(loader(root, 1, 2))
    for stop in (1, 4, 9, len(full) - 1):
        stream = loader(root, 1, 2)
        it = iter(stream)
        taken = [next(it) for _ in range(stop)]
        state = stream.state_dict()
        it.close()
        resumed = loader(root, 1, 2)
        resumed.load_state_dict(json.loads(json.dumps(state)))      # the cursor survives a JSON round trip
        rest = list(resumed)
        assert len(taken) + len(rest) == len(full)
        assert all(np.array_equal(a, b) for a, b in zip(taken + rest, full))


def test_memory_url_and_file_give_identical_batches(converted):
    root = str(converted[0] / "ds")
    fs = fsspec.filesystem("memory")
    for dirpath, _, files in os.walk(root):
        for name in files:
            rel = os.path.relpath(os.path.join(dirpath, name), root)
            with open(os.path.join(dirpath, name), "rb") as src, fs.open(f"/stream-test/{rel}", "wb") as dst:
                dst.write(src.read())
    for rank in range(2):
        a, b = list(loader(root, rank, 2)), list(loader("memory://stream-test", rank, 2))
        assert len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


def test_loader_rejects_schema_mismatch_and_short_row_groups(tmp_path, converted):
    root = tmp_path / "ds"
    import shutil
    shutil.copytree(converted[0] / "ds", root)
    part = root / read_manifest(str(root))["splits"]["train"]["files"][0]
    table = pq.read_table(part)
    pq.write_table(table.set_column(1, "relation", table.column("relation").cast(pa.int32())), part)
    with pytest.raises(DataError, match="part-00000.parquet: .* bytes, .* records"):   # another file than recorded
        loader(str(root))
    rerecord = read_manifest(str(root))           # a manifest whose records match the bad files: their contents
    write_manifest(str(root), rerecord)
    with pytest.raises(DataError, match="part-00000.parquet: schema"):
        loader(str(root))
    pq.write_table(table.slice(0, 5000), part, row_group_size=1000)
    write_manifest(str(root), read_manifest(str(root)))
    with pytest.raises(DataError, match="declares 20000 rows, its row groups hold 5000"):
        loader(str(root))


def test_rows_answering_is_the_filter_set(converted):
    root = str(converted[0] / "ds")
    everything = read_ids(root)
    queries = everything[::997]
    found = np.concatenate([rows_answering(root, "train", queries, 12, rank=r, world_size=2) for r in range(2)])
    tail_keys = set(zip(queries[:, 0], queries[:, 1]))
    head_keys = set(zip(queries[:, 2], queries[:, 1]))
    expect = [row for row in everything.tolist() if (row[0], row[1]) in tail_keys or (row[2], row[1]) in head_keys]
    assert as_set(found) == as_set(expect)


# ------------------------------------------------------------------------------------------ negatives
def test_degree_proportional_negatives_follow_degrees():
    degree = np.array([0, 1, 3, 6, 0, 10])
    draws = DegreeDistribution(degree).draw(np.random.default_rng(0), 200_000)
    freq = np.bincount(draws, minlength=6) / len(draws)
    assert np.allclose(freq, degree / degree.sum(), atol=0.005) and freq[0] == freq[4] == 0
    sampler = NegativeSampler(None, 6, 2, 5, head_prob=np.array([0.2, 0.9]), degree=degree,
                              filter_negatives=False)
    neg = sampler.sample(np.array([[1, 0, 2], [3, 1, 5]] * 500), (0, 0))
    assert set(neg.entities.unique().tolist()) <= {1, 2, 3, 5}
    freq = torch.bincount(neg.entities.ravel(), minlength=6).double() / neg.entities.numel()
    assert np.allclose(freq.numpy(), degree / degree.sum(), atol=0.01)
    sides = neg.head_mode.double()
    assert 0.1 < sides[0::2].mean() < 0.3 and sides[1::2].mean() > 0.8


# ------------------------------------------------------------------------------------------ trainers
SMALL = settings(TINY, "--data.synthetic.num_triples=3000", "--model.dim=16", "--train.batch_size=128",
                 "--train.num_negatives=16", "--mat.hidden=32")


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("small") / "ds"
    cfg = load_config(None, parse_overrides(SMALL))
    write_dataset(generate(cfg.data.synthetic), str(root), row_group_rows=500)
    return str(root)


def make_trainer(root, *extra):
    from mmkgc_dist.data.build import build_dataset
    from mmkgc_dist.compose import local_trainer
    cfg = load_config(None, parse_overrides(SMALL + ["--data.source=parquet", f"--data.path={root}", *extra]))
    return local_trainer(cfg, build_dataset(cfg), show_progress=False)


def test_streamed_training_keeps_train_on_disk_and_filters_exactly(small_dataset):
    memory = make_trainer(small_dataset)
    stream = make_trainer(small_dataset, "--data.loader=stream", "--train.filter_negatives=false")
    assert "train" not in stream.data.splits and stream.batches_per_epoch() == memory.batches_per_epoch()
    # Same initial model: exact filtered evaluation must agree although train was never loaded.
    a, b = memory.evaluate("test"), stream.evaluate("test")
    assert a["mrr"] == pytest.approx(b["mrr"], abs=1e-12) and a["mr"] == pytest.approx(b["mr"], abs=1e-9)
    stream.cfg.train.max_steps = 12
    summary = stream.fit()
    assert summary["steps"] == 12 and np.isfinite(summary["loss"])


def test_sampled_evaluation_orders_models_like_exact_evaluation(small_dataset):
    results = []
    for epochs in (1, 8):
        trainer = make_trainer(small_dataset, f"--train.epochs={epochs}", "--mat.enabled=false")
        trainer.fit()
        exact = trainer.evaluate("test")
        trainer.cfg.eval.protocol = "sampled"
        trainer.cfg.eval.sampled_uniform = trainer.cfg.eval.sampled_degree = 40
        sampled = trainer.evaluate("test")
        assert "sampled: 40 uniform + 40 degree-proportional" in sampled["protocol"]
        assert exact["protocol"] == "filtered, all entities"
        assert sampled["mrr"] >= exact["mrr"]            # fewer competitors, never a worse rank
        results.append((exact["mrr"], sampled["mrr"]))
    (weak_exact, weak_sampled), (strong_exact, strong_sampled) = results
    assert strong_exact > weak_exact and strong_sampled > weak_sampled


def read_export(folder):
    info = json.load(open(os.path.join(folder, "export.json")))
    table = pa.concat_tables([pq.read_table(os.path.join(folder, f)) for f in info["files"]])
    return info, table.sort_by("id")


@pytest.mark.slow
def test_two_rank_streaming_run_and_sharded_export(small_dataset, tmp_path):
    bin_dir = os.path.dirname(sys.executable)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    two_ranks = [os.path.join(bin_dir, "torchrun"), "--standalone", "--nproc_per_node=2"]
    cmd = two_ranks + [os.path.join(REPO, "launch", "train.py"), "--run-dir", str(tmp_path / "run"), *SMALL,
                       "--data.source=parquet", f"--data.path={small_dataset}", "--data.loader=stream",
                       "--train.filter_negatives=false", "--train.epochs=2", "--eval.protocol=sampled",
                       "--eval.sampled_uniform=50", "--eval.sampled_degree=50", "--train.negative_entities=degree"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    results = json.load(open(tmp_path / "run" / "results.json"))
    assert results["train"]["steps"] == 2 * -(-2700 // 128)
    assert "sampled" in results["test"]["protocol"] and "2 ranks" in results["test"]["protocol"]
    assert 0 < results["test"]["mrr"] <= 1

    # export by 2 rank shards, and by one process from the same (resharded) checkpoint: the same table
    res = subprocess.run(two_ranks + ["-m", "mmkgc_dist.cli", "export", str(tmp_path / "run"), str(tmp_path / "e2")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    res = subprocess.run([os.path.join(bin_dir, "mmkgc-dist"), "export", str(tmp_path / "run"), str(tmp_path / "e1")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    (info2, two), (info1, one) = read_export(tmp_path / "e2"), read_export(tmp_path / "e1")
    assert info2["rows_per_rank"] == [150, 150] and info1["rows_per_rank"] == [300]
    assert two.column("id").to_pylist() == list(range(300))
    assert two.column("name").to_pylist() == one.column("name").to_pylist()
    for col in ("structural", "joint", "weight_structure", "weight_text"):
        a, b = (np.asarray(t.column(col).combine_chunks().flatten() if col in ("structural", "joint")
                           else t.column(col)) for t in (two, one))
        assert np.allclose(a, b, atol=1e-6), col
    weights = np.stack([np.asarray(two.column(f"weight_{m}")) for m in info2["modality_weights"]], 1)
    assert np.allclose(weights.sum(1), 1, atol=1e-5)
    assert not os.path.exists(str(tmp_path / "e2") + ".tmp-export")


def test_sampled_candidates_exclude_answers_known_answers_and_repeats():
    from mmkgc_dist.eval.ranking import FilterIndex, excluded_candidates
    index = FilterIndex(np.array([[0, 0, 5], [1, 0, 2]]), 1, 0, 2)
    cand = np.array([[3, 5, 3, 3, 7], [2, 2, 9, 1, 1]])
    excluded = excluded_candidates(index, np.array([0, 1]), np.array([0, 0]), np.array([7, 9]), cand)
    assert excluded.tolist() == [[False, True, True, True, True], [True, True, True, False, True]]


# ------------------------------------------------------------------------------------------ features, streamed
def dataset_copy(tmp_path, converted):
    import shutil
    root = tmp_path / "ds"
    shutil.copytree(converted[0] / "ds", root)
    names = pq.read_table(root / "entities.parquet").column("name").to_pylist()
    return str(root), names


def test_features_by_name_stream_into_the_dataset(tmp_path, converted):
    from mmkgc_dist.data.features import add_features
    root, names = dataset_copy(tmp_path, converted)
    triples_before = read_ids(root)
    rng = np.random.default_rng(0)
    chosen = rng.choice(len(names), 300, replace=False)
    vectors = rng.normal(size=(300, 5)).astype(np.float32)
    pq.write_table(pa.table({"name": [names[i] for i in chosen], "feature": vectors.tolist()}),
                   tmp_path / "f.parquet", row_group_size=64)
    entry = add_features(root, "visual", str(tmp_path / "f.parquet"))
    assert entry["present"] == 300 and entry["dim"] == 5
    data = load_dataset(root)
    assert np.allclose(data.features["visual"].values[chosen], vectors)
    assert data.features["visual"].present.sum() == 300
    entities = read_manifest(root)["entities"]                       # a new file: the manifest switches to it
    assert pq.read_table(os.path.join(root, entities)).column("has_visual").to_numpy().sum() == 300
    assert np.array_equal(read_ids(root), triples_before)            # the triples were not rewritten
    # replacing the modality leaves exactly one feature file and one entity table behind
    add_features(root, "visual", str(tmp_path / "f.parquet"))
    assert len(os.listdir(os.path.join(root, "features"))) == 1
    assert [f for f in os.listdir(root) if f.startswith("entities")] == [read_manifest(root)["entities"]]


def test_feature_errors_name_rows_and_leave_the_dataset_unchanged(tmp_path, converted):
    from mmkgc_dist.data.features import add_features
    root, names = dataset_copy(tmp_path, converted)
    before = {f: open(os.path.join(root, f), "rb").read() for f in ("manifest.json", "entities.parquet")}
    rows = [[1.0, 2.0]] * 200
    labels = names[:200]
    labels[150] = "no-such-entity"
    pq.write_table(pa.table({"name": labels, "feature": rows}), tmp_path / "unknown.parquet", row_group_size=50)
    with pytest.raises(DataError, match=r"unknown.parquet: row 150: entity name 'no-such-entity' is not in"):
        add_features(root, "text", str(tmp_path / "unknown.parquet"))
    dup = names[:100] + names[:1]
    pq.write_table(pa.table({"name": dup, "feature": [[1.0, 2.0]] * 101}), tmp_path / "dup.parquet",
                   row_group_size=50)
    with pytest.raises(DataError, match=r"dup.parquet: row 100: entity id \d+ appears again"):
        add_features(root, "text", str(tmp_path / "dup.parquet"))
    pq.write_table(pa.table({"key": [1], "feature": [[1.0]]}), tmp_path / "schema.parquet")
    with pytest.raises(DataError, match=r"schema.parquet: expected columns 'id' \(or 'name'\) and 'feature'"):
        add_features(root, "text", str(tmp_path / "schema.parquet"))
    assert {f: open(os.path.join(root, f), "rb").read() for f in before} == before
    assert not os.path.exists(os.path.join(root, "features")) or not os.listdir(os.path.join(root, "features"))
    entry = add_features(root, "text", str(tmp_path / "unknown.parquet"), skip_unknown=True)
    assert entry["unknown_skipped"] == 1 and entry["present"] == 199


def test_large_npy_features_are_memory_mapped_in_chunks(tmp_path, converted):
    from mmkgc_dist.data import features as F
    root, names = dataset_copy(tmp_path, converted)
    n = len(names)
    dense = np.random.default_rng(1).normal(size=(n, 3)).astype(np.float32)
    dense[::3] = np.nan                                               # missing entities
    np.save(tmp_path / "v.npy", dense)
    chunks = list(F.feature_chunks(str(tmp_path / "v.npy"), n, chunk_rows=100))
    assert len(chunks) == -(-n // 100)
    F.add_features(root, "visual", str(tmp_path / "v.npy"))
    got = load_dataset(root).features["visual"]
    assert np.array_equal(got.present, ~np.isnan(dense).all(1)) and np.allclose(got.values[got.present],
                                                                               dense[got.present])


@pytest.mark.parametrize("extra, message", [
    (["--data.loader=stream"], "data.loader: 'stream' reads a prepared dataset"),
    (["--data.loader=stream", "--data.source=parquet", "--data.path=x"], "train.filter_negatives: exact filtering"),
    (["--data.loader=stream", "--data.source=parquet", "--data.path=x", "--train.filter_negatives=false",
      "--eval.splits=[train]"], "eval.splits: with data.loader=stream"),
    (["--eval.protocol=sampled", "--eval.sampled_uniform=0", "--eval.sampled_degree=0"], "the sampled protocol needs"),
])
def test_streaming_config_errors_name_the_key(extra, message):
    from mmkgc_dist.errors import ConfigError
    with pytest.raises(ConfigError, match=message):
        load_config(None, parse_overrides(extra))


@pytest.mark.parametrize("shards", [1, 3])
def test_sharded_dictionary_gives_dense_stable_ids(shards):
    from mmkgc_dist.data.convert import Dictionary
    d = Dictionary(shards=shards)
    blocks = [["a", "bb", "a", "ccc", "x"], ["x", "dd", "bb", "e"], ["e", "a"]]
    ids = [d.encode(pa.array(b, pa.large_string())) for b in blocks]
    d.close()
    labels = [x for b in blocks for x in b]
    flat = np.concatenate(ids)
    assert sorted(set(flat.tolist())) == list(range(len(d))) == list(range(6))     # dense
    names = d.names().to_pylist()
    assert [names[i] for i in flat] == labels                                        # consistent across blocks


def test_converter_reads_any_fsspec_url(tmp_path):
    rows = labeled(3000, seed=4)
    with fsspec.open("memory://convert-src/train.tsv.gz", "wt", compression="gzip") as fh:
        fh.write("".join("\t".join(r) + "\n" for r in rows))
    manifest = convert_triples(str(tmp_path / "ds"), {"train": "memory://convert-src/train.tsv.gz"},
                               TextLayout(allow_duplicates=True), progress=False)
    assert manifest["splits"]["train"]["rows"] == 3000
    names = pq.read_table(tmp_path / "ds" / "entities.parquet").column("name").to_pylist()
    rels = pq.read_table(tmp_path / "ds" / "relations.parquet").column("name").to_pylist()
    assert [(names[h], rels[r], names[t]) for h, r, t in read_ids(str(tmp_path / "ds")).tolist()] == rows


def range_handler(directory):
    """http.server's file handler plus byte ranges (what object stores, CDNs and nginx serve; Parquet readers
    fetch footers and row groups by range)."""
    import http.server

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=directory, **kwargs)

        def log_message(self, *args):
            pass

        def do_GET(self):
            spec = self.headers.get("Range")
            path = self.translate_path(self.path)
            if not spec or not os.path.isfile(path):
                return super().do_GET()
            size = os.path.getsize(path)
            first, _, last = spec.removeprefix("bytes=").partition("-")
            start, end = int(first), min(int(last) if last else size - 1, size - 1)
            with open(path, "rb") as fh:
                fh.seek(start)
                body = fh.read(end - start + 1)
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            self.wfile.write(body)
    return Handler


@pytest.fixture
def http_root(converted):
    """A real HTTP server on a free port serving the converted dataset's folder."""
    import http.server
    import threading
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), range_handler(str(converted[0])))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_http_url_streams_and_converts_like_local_files(converted, http_root, tmp_path):
    root = str(converted[0] / "ds")
    for rank in range(2):
        a, b = list(loader(root, rank, 2)), list(loader(f"{http_root}/ds", rank, 2))
        assert len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))
    convert_triples(str(tmp_path / "web"), {"train": f"{http_root}/train.tsv.gz"}, TextLayout(allow_duplicates=True),
                    progress=False)
    assert np.array_equal(read_ids(str(tmp_path / "web")), read_ids(root))
    with pytest.raises(DataError, match="missing.tsv: file not found|missing.tsv: cannot open"):
        convert_triples(str(tmp_path / "w2"), {"train": f"{http_root}/missing.tsv"}, progress=False)


@pytest.mark.parametrize("stop", [7, 29])            # mid-epoch in epoch 0 and in epoch 1 (22 steps/epoch)
def test_streamed_training_resumes_exactly(small_dataset, tmp_path, stop):
    """A streamed run stopped mid-epoch and resumed from its checkpoint lands on the same parameters as an
    uninterrupted run: the loader cursor plus the derived negative seeds are the whole data state."""
    from mmkgc_dist.data.build import build_dataset
    from mmkgc_dist.compose import local_trainer

    def trainer(run_dir, *extra):
        cfg = load_config(None, parse_overrides(SMALL + ["--data.source=parquet", f"--data.path={small_dataset}",
                                                         "--data.loader=stream", "--train.filter_negatives=false",
                                                         "--train.epochs=2", "--data.shuffle_window_rows=700",
                                                         *extra]))
        return local_trainer(cfg, build_dataset(cfg), run_dir=str(run_dir), show_progress=False)

    straight = trainer(tmp_path / "a")
    straight.fit()
    first = trainer(tmp_path / "b", f"--train.max_steps={stop}")
    first.fit()
    first.save()
    second = trainer(tmp_path / "b")
    assert second.resume() and second.step == stop
    second.fit()
    assert second.step == straight.step == 2 * straight.batches_per_epoch()
    import torch
    a, b = straight.runtime.tables.state_dict(), second.runtime.tables.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_converter_refuses_an_empty_split(tmp_path):
    """An empty file given as a split is a mistake (a wrong path, a failed export), not a dataset."""
    write_lines(str(tmp_path / "t.tsv"), [("x", "r", "y"), ("y", "r", "z")])
    (tmp_path / "empty.tsv").write_text("")
    with pytest.raises(DataError, match="empty.tsv: no triples"):
        convert_triples(str(tmp_path / "ds"), {"train": str(tmp_path / "t.tsv"),
                                               "valid": str(tmp_path / "empty.tsv")}, progress=False)
    assert not os.path.exists(tmp_path / "ds")
