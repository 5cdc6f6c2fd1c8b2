"""Inputs of the feature extraction and of the plugin and comparison readers, in isolation (no model trained):
image and text sources, decoding limits, encoders and their faults, waiting for parts, plugin faults, compare's
folder kinds."""
import json
import os
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from mmkgc_dist.errors import ConfigError, DataError, OutputError

PIL = pytest.importorskip("PIL.Image")
NAMES = pa.array(["<http://dbpedia.org/resource/Paris>", "<http://x.org/a#Paris>", "<http://dbpedia.org/resource/Rome>",
                  "plain"])


def test_entity_keys_match_by_full_name_unique_local_name_or_id():
    from mmkgc_dist.data.images import match_entities
    ids = match_entities(["<http://dbpedia.org/resource/Paris>", "Rome", "Paris", "3", "9", "nobody"], NAMES)
    assert ids.tolist() == [0, 2, -1, 3, -1, -1]         # 'Paris' is two entities' local name: not matched


def test_image_sources_folder_files_and_a_table(tmp_path):
    from mmkgc_dist.data.images import image_index
    image = PIL.new("RGB", (8, 8))
    (tmp_path / "imgs").mkdir()
    image.save(tmp_path / "imgs" / "Rome.png")                     # a file per entity, by local name
    image.save(tmp_path / "imgs" / "3.jpg")                        # ... by id
    image.save(tmp_path / "imgs" / "stranger.png")                 # a key naming no entity
    (tmp_path / "imgs" / "notes.txt").write_text("not an image")
    index = image_index(str(tmp_path / "imgs"), NAMES)
    assert index.ids.tolist() == [2, 3] and index.unmatched == ["stranger"]
    (tmp_path / "t.csv").write_text("entity,path\nplain,imgs/Rome.png\nRome,imgs/3.jpg\nRome,imgs/Rome.png\n")
    index = image_index(str(tmp_path / "t.csv"), NAMES)
    assert index.ids.tolist() == [2, 2, 3] and index.paths[0].as_py().endswith("imgs/3.jpg")
    (tmp_path / "bad.csv").write_text("entity,picture\nRome,x.png\n")
    with pytest.raises(DataError, match="expected columns 'entity' and 'path'"):
        image_index(str(tmp_path / "bad.csv"), NAMES)
    (tmp_path / "nulls.csv").write_text("entity,path\nRome,\n")
    with pytest.raises(DataError, match="row 0: 'path' is empty"):
        image_index(str(tmp_path / "nulls.csv"), NAMES)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no image files"):
        image_index(str(tmp_path / "empty"), NAMES)
    with pytest.raises(DataError, match="not found"):
        image_index(str(tmp_path / "nowhere"), NAMES)


def test_decoding_never_raises_for_a_bad_image(tmp_path):
    from mmkgc_dist.data.images import decode
    PIL.new("RGB", (40, 48)).save(tmp_path / "a.png")
    args = (32, (127.0,) * 3, (128.0,) * 3)
    pixels, reason = decode(str(tmp_path / "a.png"), *args)
    assert reason is None and pixels.shape == (3, 32, 32) and pixels.dtype == np.float32
    assert decode(str(tmp_path / "missing.png"), *args) == (None, "file not found")
    assert "file over 10 bytes" in decode(str(tmp_path / "a.png"), *args, max_bytes=10)[1]
    assert "over 1000" in decode(str(tmp_path / "a.png"), *args, max_pixels=1000)[1]


def test_encoders_and_their_faults(tmp_path):
    from mmkgc_dist.data.images import load_encoder
    with pytest.raises(DataError, match="give its weights file with --weights"):
        load_encoder("efficientnet-lite2")
    with pytest.raises(DataError, match="file not found"):
        load_encoder("efficientnet-lite0", weights=str(tmp_path / "none.pth"))
    torch.save({"w": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(DataError, match="not efficientnet-lite0's weights"):
        load_encoder("efficientnet-lite0", weights=str(tmp_path / "other.pth"))
    with pytest.raises(DataError, match="neither a known architecture"):
        load_encoder("resnet-9000")
    (tmp_path / "junk.pt").write_bytes(b"not torchscript")
    with pytest.raises(DataError, match="not a TorchScript file"):
        load_encoder(str(tmp_path / "junk.pt"))
    # a TorchScript image model: its [B, C, h, w] output is average-pooled to [B, C]
    torch.jit.script(torch.nn.Sequential(torch.nn.Conv2d(3, 5, 3), torch.nn.ReLU())).save(str(tmp_path / "m.pt"))
    encoder = load_encoder(str(tmp_path / "m.pt"), image_size=16)
    assert encoder.image_size == 16 and encoder.identity["encoder"] == "torchscript"
    out = encoder(np.zeros((3, 3, 16, 16), np.float32), pad_to=4)
    assert out.shape == (3, 5)
    torch.jit.script(torch.nn.Flatten(0)).save(str(tmp_path / "flat.pt"))   # returns a vector: refused
    with pytest.raises(DataError, match="expected \\[batch, dim\\]"):
        load_encoder(str(tmp_path / "flat.pt"))(np.zeros((2, 3, 4, 4), np.float32))


def test_text_tables_and_their_faults(tmp_path):
    from mmkgc_dist.data.text import table_index
    pq.write_table(pa.table({"entity": ["Rome", "plain", "nobody", "Rome"], "abstract": ["a", "b", "c", ""]}),
                   tmp_path / "t.parquet")
    index = table_index(str(tmp_path / "t.parquet"), "abstract", NAMES)
    assert index.ids.tolist() == [2, 3] and index.texts == ["a", "b"] and index.unmatched == ["nobody"]
    with pytest.raises(DataError, match="file not found"):
        table_index(str(tmp_path / "missing.csv"), "abstract", NAMES)
    (tmp_path / "n.csv").write_text("entity,abstract\n,text\n")
    with pytest.raises(DataError, match="row 0: 'entity' is empty"):
        table_index(str(tmp_path / "n.csv"), "abstract", NAMES)


def test_rank_zero_waits_for_the_others_parts_in_bounded_time(tmp_path):
    from mmkgc_dist.data.extraction import PieceResult, plan, wait_for_all, write_piece
    pieces = plan(40, 0, 1, piece=16)
    assert [(p.first, p.stop) for p in pieces] == [(0, 16), (16, 32), (32, 40)]
    assert [(p.first, p.stop) for p in plan(40, 0, 2, piece=16)] == [(0, 16), (16, 20)]   # rank 0 owns 0..19
    assert [(p.first, p.stop) for p in plan(40, 1, 2, piece=16)] == [(20, 32), (32, 40)]
    write_piece(str(tmp_path), pieces[0], PieceResult(np.array([1, 2]), np.ones((2, 3), np.float32), {"n": 2}))
    with pytest.raises(DataError, match="2 of 3 parts were not written .*first missing: part-000000000016"):
        wait_for_all(str(tmp_path), pieces, timeout_s=0.2, poll_s=0.05)
    (tmp_path / f"{pieces[0].name}.parquet").write_bytes(b"changed")        # a damaged part is not a part
    with pytest.raises(DataError, match="3 of 3 parts"):
        wait_for_all(str(tmp_path), pieces, timeout_s=0.1, poll_s=0.05)


def _dist(site, name: str, group: str, points: dict) -> None:
    info = site / f"{name}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in points.items()))


def test_plugin_faults_are_one_line_naming_the_plugin(tmp_path, monkeypatch):
    from mmkgc_dist.model.scorers.base import scorer_class
    from mmkgc_dist.training.trackers import plugin_tracker
    (tmp_path / "broken_plugin.py").write_text("raise RuntimeError('boom')\n")
    (tmp_path / "odd_plugin.py").write_text("class NotAScorer:\n    pass\n\nclass Quiet:\n"
                                            "    def __init__(self, run_dir, params):\n        pass\n")
    _dist(tmp_path, "broken", "mmkgc_dist.scorers", {"broken": "broken_plugin:Scorer",
                                                     "odd": "odd_plugin:NotAScorer"})
    _dist(tmp_path, "trackers", "mmkgc_dist.trackers", {"quiet": "odd_plugin:Quiet", "gone": "broken_plugin:T"})
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(LookupError, match="'broken'.*broken_plugin:Scorer .*failed to load: RuntimeError: boom"):
        scorer_class("broken")
    with pytest.raises(LookupError, match="odd_plugin:NotAScorer is not a Scorer subclass"):
        scorer_class("odd")
    with pytest.raises(ConfigError, match="unknown tracker 'nope'; installed: \\['gone', 'quiet'\\]"):
        plugin_tracker("nope", str(tmp_path), {})
    with pytest.raises(ConfigError, match="'gone' .*failed to start: RuntimeError: boom"):
        plugin_tracker("gone", str(tmp_path), {})
    with pytest.raises(ConfigError, match="has no log\\(kind, \\*\\*fields\\) and close\\(\\)"):
        plugin_tracker("quiet", str(tmp_path), {})
    sys.modules.pop("odd_plugin", None)


def test_compare_reads_runs_and_studies_and_refuses_the_rest(tmp_path):
    from mmkgc_dist.serving.compare import compare
    results = {"model": {"scoring": "rotate", "dim": 8, "fused": {"text": {}}, "mat": False},
               "selection": {"metric": "mrr", "selected": {"epoch": 2}, "history": [{"epoch": 1, "value": 0.1},
                                                                                   {"epoch": 2, "value": 0.2}]},
               "test": {"split": "test", "protocol": "filtered", "ties": "realistic", "mrr": 0.25, "mr": 9.5}}
    for trial in ("0", "1", "2"):
        (tmp_path / "study" / "trials" / trial).mkdir(parents=True)
        if trial != "2":                                         # trial 2 is still training: no results yet
            (tmp_path / "study" / "trials" / trial / "results.json").write_text(json.dumps(results))
    rows, text = compare([tmp_path / "study"], plot=str(tmp_path / "c.png"))
    assert [os.path.basename(r["run"]) for r in rows] == ["0", "1"] and "0.2500" in text and "9.5" in text
    assert os.path.getsize(tmp_path / "c.png") > 0
    (tmp_path / "empty" / "trials").mkdir(parents=True)
    with pytest.raises(OutputError, match="a study folder without trials yet"):
        compare([tmp_path / "empty"], plot=None)
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "results.json").write_text("[1, 2]")
    with pytest.raises(OutputError, match="not a run's results"):
        compare([tmp_path / "r"], plot=None)
    (tmp_path / "r" / "results.json").write_text("{broken")
    with pytest.raises(OutputError, match="results.json: not readable"):
        compare([tmp_path / "r"], plot=None)
