"""`prepare inductive`: a seeded share of entities held out with all their triples, validation and test made of
the triples that touch exactly one of them, every source triple accounted for; a model trained on it places an
unseen entity exactly as it places a new entity given by its content (structure missing)."""
import json

import numpy as np
import pytest

from support import MINI, MINI_GRAPH, cli, settings


def _prepared(tmp_path, seed=3, out="ind"):
    src = tmp_path / "src"
    if not src.exists():
        assert cli("prepare", "synthetic", src, *MINI_GRAPH, cwd=tmp_path).returncode == 0
    r = cli("prepare", "inductive", src, tmp_path / out, "--share", "0.2", "--seed", str(seed), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    return src, tmp_path / out, r.stdout


def test_unseen_entities_are_held_out_with_every_triple_and_every_source_triple_is_accounted_for(tmp_path):
    from mmkgc_dist.data.format import load_dataset, read_manifest

    src, out, printed = _prepared(tmp_path)
    source, data = load_dataset(str(src)), load_dataset(str(out))
    record = read_manifest(str(out))["inductive"]
    unseen = data.unseen
    assert unseen.sum() == record["unseen"] == 24 and printed.startswith("24 unseen entities (12 validation, 12 test")
    present = np.zeros(len(unseen), bool)
    for f in source.features.values():
        present |= f.present
    assert present[unseen].all()                                       # each can be placed by its content
    train, valid, test = (data.splits[s] for s in ("train", "valid", "test"))
    assert not (unseen[train[:, 0]] | unseen[train[:, 2]]).any()
    anchors = {}
    for name, split in (("valid", valid), ("test", test)):
        touching = unseen[split[:, 0]].astype(int) + unseen[split[:, 2]]
        assert len(split) and (touching == 1).all(), name
        anchors[name] = set(np.where(unseen[split[:, 0]], split[:, 0], split[:, 2]).tolist())
    assert not anchors["valid"] & anchors["test"]
    every = np.unique(np.concatenate(list(source.splits.values())), axis=0)
    kept = np.concatenate([train, valid, test])
    assert len(kept) + record["triples_between_unseen_dropped"] == len(every)
    assert sum(len(s) for s in source.splits.values()) - len(every) == record["duplicate_triples_merged"]
    assert data.entity_names == source.entity_names
    assert all(np.array_equal(data.features[m].values, source.features[m].values) for m in source.features)
    _, again, _ = _prepared(tmp_path, out="again")
    assert np.array_equal(load_dataset(str(again)).unseen, unseen)           # the seed decides
    _, other, _ = _prepared(tmp_path, seed=4, out="other")
    assert not np.array_equal(load_dataset(str(other)).unseen, unseen)


def test_a_share_that_cannot_be_drawn_is_one_line(tmp_path):
    src = tmp_path / "src"
    assert cli("prepare", "synthetic", src, *MINI_GRAPH, cwd=tmp_path).returncode == 0
    r = cli("prepare", "inductive", src, tmp_path / "out", "--share", "1.5", cwd=tmp_path)
    assert r.returncode == 2 and "--share 1.5: expected a fraction of the entities in (0, 1)" in r.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_model_places_an_unseen_entity_as_it_places_a_new_one_by_its_content(tmp_path):
    import torch

    from mmkgc_dist import load_run

    _, out, _ = _prepared(tmp_path)
    r = cli("train", "--run-dir", tmp_path / "run", *settings(MINI, "--data.source=parquet", f"--data.path={out}",
                                                              "--model.structure_dropout=0.3"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["test"]["mrr"] > 0
    model = load_run(tmp_path / "run")
    data, tables = model.model.data, model.model.runtime.tables

    def content_of(entity):             # its feature rows as the model holds them (trainable: fine-tuned)
        with torch.no_grad():
            rows = {m: tables.modality_rows(m, torch.tensor([entity]))[0].numpy() for m in data.features}
        return {"features": {m: v for m, v in rows.items() if data.features[m].present[entity]}}
    for entity in np.flatnonzero(data.unseen)[:5]:
        placed = model.embed_content([model.content.encode(content_of(entity))])[0]
        assert np.allclose(placed.numpy(), model.joint[entity].numpy(), atol=1e-6)
    seen = int(np.flatnonzero(~data.unseen)[0])
    alone = model.embed_content([model.content.encode(content_of(seen))])[0]
    assert not np.allclose(alone.numpy(), model.joint[seen].numpy(), atol=1e-4)   # a seen entity has its structure
