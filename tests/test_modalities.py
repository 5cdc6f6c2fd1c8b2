"""Honest runs: model.modalities=auto fuses what the dataset has; a modality asked for and missing is a one-line
error; the first line, results.json and results.md say what was fused, how wide, and for how many entities."""
import json

from support import MINI, cli, settings


def test_a_modality_the_dataset_lacks_is_a_one_line_error(tmp_path):
    r = cli("train", "--run-dir", tmp_path / "r", *settings(MINI, "--model.modalities=[visual,text]",
                                                            "--data.synthetic.visual_missing=1"), cwd=tmp_path)
    assert r.returncode == 2
    assert "model.modalities=['visual', 'text']: the dataset has no visual features (it has ['text'])" in r.stderr
    assert len([line for line in r.stderr.splitlines() if line.strip()]) == 1
    assert not (tmp_path / "r").exists()                   # refused before the run folder is made


def test_auto_fuses_what_the_dataset_has_and_every_result_says_so(tmp_path):
    r = cli("train", "--run-dir", tmp_path / "r", *settings(MINI, "--data.synthetic.visual_missing=1",
                                                            "--data.synthetic.text_missing=0.25",
                                                            "--data.synthetic.text_dim=8"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0].startswith("fusing: structure + text (8-d, ")
    model = json.loads((tmp_path / "r" / "results.json").read_text())["model"]
    assert list(model["fused"]) == ["text"] and model["asked"] == "auto" and model["mat"] is True
    assert model["fused"]["text"]["dim"] == 8 and 0.6 < model["fused"]["text"]["coverage"] < 0.9
    assert model["fused"]["text"]["entities"] == round(model["fused"]["text"]["coverage"] * 120)
    report = (tmp_path / "r" / "results.md").read_text()
    assert report.startswith("# r\n") and "## model — rotate, model.modalities=auto, MAT on" in report
    assert "- model: rotate, d=8, modalities fused: text 8-d" in report and "- protocol: test: filtered" in report
    assert "| text | 8 |" in report


def test_structure_only_says_why(tmp_path):
    r = cli("train", "--run-dir", tmp_path / "r", *settings(MINI, "--model.modalities=[]", "--mat.enabled=false"),
            cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == ("fusing: structure only (model.modalities=[]); scoring rotate; torch.compile off "
                                        "(train.compile=false)")
    assert json.loads((tmp_path / "r" / "results.json").read_text())["model"]["fused"] == {}


def test_the_references_pth_files_import_through_their_entity_order(tmp_path):
    """A released ``<dataset>-visual.pth`` ([N, dim] tensor, row i = entity i of the reference's entity2id.txt)
    whose order is not the dataset's: mapped by name; a row count that fits neither is refused naming the shape."""
    import numpy as np
    import pyarrow.parquet as pq
    import torch

    from mmkgc_dist.data.features import load_features
    from mmkgc_dist.data.format import read_manifest, recorded_path
    from support import MINI_GRAPH

    ds = str(tmp_path / "ds")
    assert cli("prepare", "synthetic", ds, *MINI_GRAPH, cwd=tmp_path).returncode == 0
    m = read_manifest(ds)
    names = pq.read_table(recorded_path(ds, m, m["entities"])).column("name").to_pylist()
    order = np.random.default_rng(0).permutation(len(names))            # the reference's own entity order
    values = torch.randn(len(names), 6)
    torch.save(values, tmp_path / "DB-visual.pth")
    (tmp_path / "entity2id.txt").write_text(f"{len(names)}\n" + "".join(f"{names[e]}\t{i}\n"
                                                                        for i, e in enumerate(order)))
    r = cli("prepare", "features", ds, "--modality", "visual", tmp_path / "DB-visual.pth",
            "--row-names", tmp_path / "entity2id.txt", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    m = read_manifest(ds)
    f = load_features(f"{ds}/{m['modalities']['visual']['file']}", m["num_entities"])
    assert f.present.all() and np.allclose(f.values[order], values.numpy())
    torch.save(values[:-1], tmp_path / "short.pth")                      # without --row-names: our order, N rows
    r = cli("prepare", "features", ds, "--modality", "visual", tmp_path / "short.pth", cwd=tmp_path)
    assert r.returncode == 2 and f"expected shape ({len(names)}, dim), got ({len(names) - 1}, 6)" in r.stderr
    torch.save({"model": torch.nn.Linear(2, 2)}, tmp_path / "code.pth")   # a pickled module: never unpickled
    r = cli("prepare", "features", ds, "--modality", "visual", tmp_path / "code.pth", cwd=tmp_path)
    assert r.returncode == 2 and "weights_only=True" in r.stderr


def test_a_run_says_each_validation_and_compare_puts_runs_side_by_side(tmp_path):
    runs = []
    for name, extra in (("a", ["--model.modalities=[]", "--mat.enabled=false"]), ("b", [])):
        r = cli("train", "--run-dir", tmp_path / name, *settings(MINI, "--train.epochs=2", "--eval.every_epochs=1",
                                                                 *extra), cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert "valid epoch 1 (step" in r.stdout and "valid epoch 2 (step" in r.stdout
        runs.append(tmp_path / name)
    r = cli("compare", *runs, "--plot", tmp_path / "curves.png", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    header, _, *rows = r.stdout.splitlines()[:4]
    assert header.split()[:6] == ["run", "dataset", "model", "fused", "mat", "split"]
    assert "structure" in rows[0] and "visual, text" in rows[1] and "filtered" in rows[1]
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
    r = cli("compare", tmp_path / "nowhere", cwd=tmp_path)
    assert r.returncode == 2 and "neither a run folder" in r.stderr


def test_sparse_rows_place_present_entities_on_their_owners_and_save_them_in_id_order():
    """feature_rows.SparseRows with plain arrays: each owner's present entities fill its block of the padded
    table in id order, the canonical spans of every rank's shard tile [0, P) exactly once in id order, and the
    padded table filled from a dense reader holds each present entity's row where ``table_rows_of`` says."""
    import numpy as np
    import torch

    from mmkgc_dist.parallel.feature_rows import SparseRows

    rng = np.random.default_rng(0)
    present = rng.random(103) < 0.2
    dense = rng.standard_normal((103, 5)).astype(np.float32)
    for world in (1, 2, 3, 8):
        rows = SparseRows(present, world)
        assert rows.total == present.sum() and rows.table_rows == world * rows.rows_per_block
        assert rows.rows_per_block == max(max(rows.counts), 1) and sum(rows.counts) == rows.total
        ids = torch.from_numpy(np.flatnonzero(present))
        where = rows.table_rows_of(ids)
        assert len(set(where.tolist())) == len(ids) and (where // rows.rows_per_block == ids // rows.block).all()
        padded = rows.padded_values(lambda lo, hi: dense[lo:hi], span=7)(0, rows.table_rows)
        assert torch.equal(padded[where], torch.from_numpy(dense[present]))
        padding = torch.ones(rows.table_rows, dtype=torch.bool)
        padding[where] = False
        assert not padded[padding].any()                                     # padding rows stay zero
        covered = []
        for rank in range(world):
            block = rows.block_rows(rank)
            owned = present[rows.starts[rank]:rows.starts[rank + 1]]
            assert (block[~torch.from_numpy(owned)] == -1).all()
            assert block[torch.from_numpy(owned)].tolist() == list(range(rows.counts[rank]))
            first = rank * rows.rows_per_block
            covered += [(at, at + stop - start) for start, stop, at in
                        rows.canonical_spans(first, rows.rows_per_block)]
        assert sorted(covered) == covered and [a for a, _ in covered] == [0] + [b for _, b in covered][:-1]
        assert (covered[-1][1] if covered else 0) == rows.total
    none = SparseRows(np.zeros(10, bool), 2)
    assert none.total == 0 and none.rows_per_block == 1 and none.canonical_spans(0, 2) == []
