"""Dataset format, converters and bad-input errors (each names file and row/field)."""
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from mmkgc_dist.config import SyntheticConfig
from mmkgc_dist.errors import DataError
from mmkgc_dist.data.features import load_features
from mmkgc_dist.data.format import FORMAT_VERSION, load_dataset, read_manifest, write_dataset
from mmkgc_dist.data.openke import read_openke, readable_name
from mmkgc_dist.data.sampling import NegativeSampler, triple_index
from mmkgc_dist.data.statistics import exact_relation_table, head_probability
from mmkgc_dist.data.synthetic import generate

SMALL = SyntheticConfig(num_entities=200, num_relations=5, num_triples=1500, seed=3)


def write_openke(root, train="2\n0 1 0\n1 2 1\n", entities=3, relations=2):
    os.makedirs(root, exist_ok=True)
    (root / "entity2id.txt").write_text(f"{entities}\n" + "".join(f"<http://x.org/resource/E_{i}> {i}\n"
                                                                  for i in range(entities)))
    (root / "relation2id.txt").write_text(f"{relations}\n" + "".join(f"r{i} {i}\n" for i in range(relations)))
    (root / "train2id.txt").write_text(train)
    (root / "valid2id.txt").write_text("1\n0 2 1\n")
    (root / "test2id.txt").write_text("1\n2 0 0\n")
    return root


def test_synthetic_is_deterministic_and_roundtrips(tmp_path):
    a, b = generate(SMALL), generate(SMALL)
    assert all(np.array_equal(a.splits[s], b.splits[s]) for s in a.splits)
    write_dataset(a, str(tmp_path / "ds"))
    c = load_dataset(str(tmp_path / "ds"))
    assert all(np.array_equal(a.splits[s], c.splits[s]) for s in a.splits)
    for m in a.features:
        assert np.array_equal(a.features[m].present, c.features[m].present)
        assert np.allclose(a.features[m].values, c.features[m].values)
    manifest = read_manifest(str(tmp_path / "ds"))
    assert manifest["format_version"] == FORMAT_VERSION == 2 and manifest["modalities"]["visual"]["dim"] == SMALL.visual_dim
    missing = 1 - a.features["visual"].present.mean()
    assert abs(missing - SMALL.visual_missing) < 0.1


def test_memory_url_reads_like_local(tmp_path):
    import fsspec
    data = generate(SMALL)
    write_dataset(data, str(tmp_path / "ds"))
    mem = fsspec.filesystem("memory")
    for dirpath, _, files in os.walk(tmp_path / "ds"):
        for f in files:
            rel = os.path.relpath(os.path.join(dirpath, f), tmp_path / "ds")
            mem.pipe(f"/ds/{rel}", open(os.path.join(dirpath, f), "rb").read())
    remote = load_dataset("memory://ds")
    assert np.array_equal(remote.splits["train"], data.splits["train"])


def test_openke_conversion(tmp_path):
    data = read_openke(str(write_openke(tmp_path / "ok")))
    assert data.splits["train"].tolist() == [[0, 0, 1], [1, 1, 2]]   # file order is head tail relation
    assert readable_name(data.entity_names[1]) == "E 1"
    assert readable_name("<http://dbpedia.org/resource/Franciaorsz%C3%A1g>") == "Franciaország"


@pytest.mark.parametrize("train, message", [
    ("2\n0 1 0\n", "train2id.txt: line 1 declares 2 records, the file holds 1"),
    ("2\n0 1 0\n1 x 1\n", "train2id.txt: line 3: expected three non-negative ids"),
    ("2\n0 1 0\n1 7 1\n", "train2id.txt: line 3: tail id 7 out of range"),
    ("2\n0 1 0\n1 2 5\n", "train2id.txt: line 3: relation id 5 out of range"),
    ("two\n0 1 0\n", "train2id.txt: line 1: expected the record count"),
])
def test_openke_bad_input(tmp_path, train, message):
    with pytest.raises(DataError, match=message):
        read_openke(str(write_openke(tmp_path / "bad", train=train)))


def test_missing_file_is_named(tmp_path):
    root = write_openke(tmp_path / "ok")
    os.remove(root / "valid2id.txt")
    with pytest.raises(DataError, match="valid2id.txt: file not found"):
        read_openke(str(root))


def test_failed_write_leaves_previous_output(tmp_path):
    data = generate(SMALL)
    out = str(tmp_path / "ds")
    write_dataset(data, out)
    data.splits["train"][0, 0] = 10 ** 6                          # out of range: write must refuse
    with pytest.raises(DataError, match="split 'train' row 0: head id 1000000 out of range"):
        write_dataset(data, out)
    assert load_dataset(out).splits["train"][0, 0] != 10 ** 6     # old dataset intact
    assert [p for p in os.listdir(tmp_path) if p.startswith(".tmp")] == []


def test_manifest_count_mismatch(tmp_path):
    data = generate(SMALL)
    write_dataset(data, str(tmp_path / "ds"))
    path = tmp_path / "ds" / "manifest.json"
    path.write_text(path.read_text().replace(f'"rows": {len(data.splits["test"])}', '"rows": 3'))
    with pytest.raises(DataError, match="split '(valid|test)' declares 3 rows, files hold"):
        load_dataset(str(tmp_path / "ds"))


def test_feature_formats_and_masks(tmp_path):
    n, dim = 4, 3
    dense = np.arange(n * dim, dtype=np.float32).reshape(n, dim)
    dense[2] = np.nan                                            # all-NaN row = missing
    np.save(tmp_path / "f.npy", dense)
    f = load_features(str(tmp_path / "f.npy"), n)
    assert f.present.tolist() == [True, True, False, True] and f.values[2].sum() == 0
    torch.save({"features": torch.ones(2, dim), "ids": torch.tensor([3, 0])}, tmp_path / "f.pt")
    assert load_features(str(tmp_path / "f.pt"), n).present.tolist() == [True, False, False, True]
    pq.write_table(pa.table({"id": [1], "feature": [[1.0, 2.0, 3.0]]}), tmp_path / "f.parquet")
    assert load_features(str(tmp_path / "f.parquet"), n).values[1].tolist() == [1.0, 2.0, 3.0]
    np.save(tmp_path / "mask.npy", np.array([True, False, True, True]))
    assert load_features(str(tmp_path / "f.npy"), n, str(tmp_path / "mask.npy")).present.tolist() == \
        [True, False, False, True]


@pytest.mark.parametrize("make, message", [
    (lambda p: np.save(p / "x.npy", np.array([[1.0, np.inf], [0.0, 0.0]], np.float32)), "row 0 .entity 0.: feature holds NaN/Inf"),
    (lambda p: np.save(p / "x.npy", np.ones((3, 2), np.float32)), r"expected shape \(2, dim\), got \(3, 2\)"),
    (lambda p: pq.write_table(pa.table({"id": [0, 5], "feature": [[1.0], [2.0]]}), p / "x.parquet"), "row 1: entity id 5 out of range"),
    (lambda p: pq.write_table(pa.table({"id": [0, 1], "feature": [[1.0], [2.0, 3.0]]}), p / "x.parquet"), "row 1: feature has 2 values, row 0 has 1"),
    (lambda p: pq.write_table(pa.table({"id": [0, 0], "feature": [[1.0], [2.0]]}), p / "x.parquet"), r"row 1: entity id 0 appears again \(2 times\)"),
])
def test_bad_features(tmp_path, make, message):
    make(tmp_path)
    path = next(str(tmp_path / f) for f in os.listdir(tmp_path) if f.startswith("x."))
    with pytest.raises(DataError, match=message):
        load_features(path, 2)


def test_bernoulli_probabilities_and_filtering():
    # relation 0: one head, three tails (1-to-N) → corrupt the head rarely? tph=3, hpt=1 → P(head)=0.75
    train = np.array([[0, 0, 1], [0, 0, 2], [0, 0, 3], [4, 1, 5]])
    assert head_probability(exact_relation_table(train, 2))[0] == pytest.approx(0.75)
    sampler = NegativeSampler(train, 6, 2, num_negatives=50, filter_negatives=True)
    batch = train[:3]
    neg = sampler.sample(batch, (0, 0))
    keys = set(triple_index(train, 6, 2).tolist())
    assert neg.head_mode.shape == neg.entities.shape                 # a side per negative (the default)
    for i, (h, r, t) in enumerate(batch):
        for j, e in enumerate(neg.entities[i]):
            cand = (e, r, t) if neg.head_mode[i, j] else (h, r, e)
            assert triple_index(np.array([cand]), 6, 2)[0] not in keys or neg.false_negatives > 0


def test_corruption_side_per_negative_follows_the_bernoulli_probabilities():
    """Each negative draws its own side with P(head | r); the fraction per relation matches it within 4
    binomial standard deviations, and every positive mixes both sides (per_positive: one side per row)."""
    train = np.array([[0, 0, 1], [0, 0, 2], [0, 0, 3], [4, 1, 5], [2, 1, 5], [3, 1, 5], [1, 1, 5]])
    p = head_probability(exact_relation_table(train, 2))
    batch = np.array([[0, 0, 1], [4, 1, 5]] * 400)
    neg = NegativeSampler(train, 6, 2, num_negatives=64, filter_negatives=False).sample(batch, (0, 3))
    for r in (0, 1):
        sides = neg.head_mode[torch.from_numpy(batch[:, 1] == r)].double()
        n = sides.numel()
        assert abs(sides.mean().item() - p[r]) < 4 * np.sqrt(p[r] * (1 - p[r]) / n), (r, sides.mean(), p[r])
    assert (neg.head_mode.any(1) & ~neg.head_mode.all(1)).double().mean() > 0.9
    per_positive = NegativeSampler(train, 6, 2, num_negatives=64, filter_negatives=False, side="per_positive")
    assert per_positive.sample(batch, (0, 3)).head_mode.shape == (len(batch),)


def test_lazy_features_read_only_the_requested_rows(tmp_path):
    """Distributed ranks read their own rows of a feature file (row groups outside the range are skipped)."""
    from mmkgc_dist.data.synthetic import generate
    from mmkgc_dist.config import load_config, parse_overrides
    data = generate(load_config(None, parse_overrides(["--data.synthetic.num_entities=300",
                                                       "--data.synthetic.num_triples=1500"])).data.synthetic)
    write_dataset(data, str(tmp_path / "ds"))
    lazy = load_dataset(str(tmp_path / "ds"), feature_values=False)
    for m, f in data.features.items():
        assert lazy.features[m].values is None and lazy.features[m].dim == f.dim
        assert np.array_equal(lazy.features[m].present, f.present)
        for lo, hi in ((0, 300), (0, 150), (150, 300), (17, 18), (299, 300)):
            assert np.array_equal(lazy.features[m].rows(lo, hi), f.values[lo:hi]), (m, lo, hi)
