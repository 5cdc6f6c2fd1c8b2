"""Text features from any text: a table of descriptions (long texts, several rows, empty and unknown keys),
encodings cached by content (a second run encodes nothing), long texts truncated or chunked and counted."""
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from support import MINI_GRAPH, cli

pytest.importorskip("sentence_transformers")


def _dataset(tmp_path):
    ds = str(tmp_path / "ds")
    assert cli("prepare", "synthetic", ds, *MINI_GRAPH, cwd=tmp_path).returncode == 0
    from mmkgc_dist.data.format import read_manifest, recorded_path
    m = read_manifest(ds)
    return ds, pq.read_table(recorded_path(ds, m, m["entities"])).column("name").to_pylist()


def _text_features(ds):
    from mmkgc_dist.data.features import load_features
    from mmkgc_dist.data.format import read_manifest
    m = read_manifest(ds)
    return load_features(os.path.join(ds, m["modalities"]["text"]["file"]), m["num_entities"])


@pytest.mark.slow
def test_descriptions_from_a_table_cached_by_content(tmp_path, monkeypatch):
    monkeypatch.setenv("MMKGC_DIST_CACHE", str(tmp_path / "cache"))
    ds, names = _dataset(tmp_path)
    rows = [(n, f"entity number {i} is a thing") for i, n in enumerate(names) if i not in (4, 6)]
    rows += [(names[3], "a second description of entity three"), (names[6], "   "), ("no_such_entity", "x"),
             (names[8], "word " * 600)]                                       # over MiniLM's 256-token window
    pq.write_table(pa.table({"entity": [r[0] for r in rows], "description": [r[1] for r in rows]}),
                   tmp_path / "texts.parquet")
    args = ("features", "text", ds, "--texts", tmp_path / "texts.parquet", "--column", "description",
            "--piece-entities", "50")
    r = cli(*args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "118 of 120 entities (2 without a text, masked)" in r.stdout            # 4: no row; 6: blank
    assert "1 longer than the model's window (truncated), 1 keys naming no entity" in r.stdout
    first = _text_features(ds)
    assert first.values.shape[1] == 384 and not first.present[[4, 6]].any()
    report = json.load(open(os.path.join(ds, "features", "text-report.json")))
    assert report["texts_cached"] == 0 and report["texts_encoded"] == report["texts"] == 120
    from mmkgc_dist.data.text import TextEncoder
    encoder = TextEncoder(cache=False)
    alone, _ = encoder.encode(["entity number 3 is a thing", "a second description of entity three"])
    assert np.allclose(first.values[3], alone.mean(axis=0), atol=1e-5)          # two rows: their mean
    again = cli(*args, cwd=tmp_path)                                            # everything from the cache
    assert again.returncode == 0 and "120 texts, 120 from the cache" in again.stdout
    assert np.array_equal(_text_features(ds).values, first.values)
    chunked = cli(*args, "--long-texts", "chunk", cwd=tmp_path)
    assert chunked.returncode == 0 and "1 longer than the model's window (chunked)" in chunked.stdout
    assert "120 texts, 0 from the cache" in chunked.stdout                      # another policy, other keys
    assert not np.allclose(_text_features(ds).values[8], first.values[8])


def test_a_text_table_without_its_column_is_one_line(tmp_path):
    ds, names = _dataset(tmp_path)
    (tmp_path / "t.csv").write_text("entity,abstract\nx,y\n")
    r = cli("features", "text", ds, "--texts", tmp_path / "t.csv", "--column", "description", cwd=tmp_path)
    assert r.returncode == 2 and "no column 'description'" in r.stderr
