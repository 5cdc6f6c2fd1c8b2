"""Entities the graph does not hold, answered from their content: encoded by the dataset's own encoders (a known
entity's text and image give back its dataset rows), placed with the structure missing, through the Python API
and the command line, from a text only and from an image only."""
import json
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from support import MINI, cli, settings
from test_images import _dataset, _features, _images

pytest.importorskip("sentence_transformers")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A generated graph whose text features come from descriptions and visual features from images, and a run
    trained on it with structure dropout."""
    tmp = tmp_path_factory.mktemp("new_entities")
    ds, names = _dataset(tmp)
    texts = [f"entity number {i} is a thing of kind {i % 7}" for i in range(len(names))]
    pq.write_table(pa.table({"entity": names, "description": texts}), tmp / "texts.parquet")
    r = cli("features", "text", ds, "--texts", tmp / "texts.parquet", "--column", "description", cwd=tmp)
    assert r.returncode == 0, r.stderr
    _images(tmp / "imgs", names)
    r = cli("features", "images", ds, "--images", tmp / "imgs", "--workers", "0", cwd=tmp)
    assert r.returncode == 0, r.stderr
    r = cli("train", "--run-dir", tmp / "run", *settings(MINI, "--data.source=parquet", f"--data.path={ds}",
                                                          "--model.structure_dropout=0.3"), cwd=tmp)
    assert r.returncode == 0, r.stderr
    return {"tmp": tmp, "ds": ds, "names": names, "texts": texts}


@pytest.mark.slow
def test_a_new_entity_is_encoded_like_the_training_entities_and_answered_from_its_text_or_its_image(world):
    from mmkgc_dist import load_run
    from mmkgc_dist.errors import QueryError

    model = load_run(world["tmp"] / "run")
    image = str(world["tmp"] / "imgs" / world["names"][3] / "a.png")
    encoded = model.content.encode({"text": world["texts"][3], "image": image})
    text_rows, _ = _features(world["ds"], "text")
    visual_rows, _ = _features(world["ds"], "visual")
    assert np.allclose(encoded.features["text"], text_rows[3], atol=1e-5)
    assert np.allclose(encoded.features["visual"], visual_rows[3], atol=1e-5)
    relation = model.relations.names[0]
    by_text = model.predict(head={"text": "a newcomer of kind 3", "name": "newcomer"}, relation=relation, k=5)
    assert len(by_text) == 5 and by_text.head == "newcomer" and not any(p.known for p in by_text)
    by_image = model.predict(relation=relation, tail={"image": image}, k=5, known="filter")
    assert len(by_image) == 5 and by_image.tail == "<new entity>"
    assert [p.id for p in by_image] != [p.id for p in by_text]
    relations = model.predict(head={"text": "a newcomer"}, tail=world["names"][2], k=3)
    assert len(relations) == 3 and relations.tail == world["names"][2]
    batch = model.predict(head=[{"text": "one"}, world["names"][4], {"image": image}], relation=relation, k=2)
    assert [len(b) for b in batch] == [2, 2, 2] and batch[1].head == world["names"][4]
    near = model.neighbours({"text": world["texts"][3]}, k=4)
    assert len(near) == 4 and all(0 <= p.id < len(world["names"]) for p in near)
    for content, message in (({"text": "  "}, "'text' is '  '; expected a non-empty string"),
                             ({"image": str(world["tmp"] / "missing.png")}, "missing.png: file not found"),
                             ({"colour": "red"}, "unknown key(s) ['colour']"),
                             ({"features": {"visual": [1.0, 2.0]}}, "the visual vector has 2 values; this run's "
                                                                    "visual features are 1280-d")):
        with pytest.raises(QueryError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
                           .replace("]", r"\]")):
            model.predict(head=content, relation=relation)


@pytest.mark.slow
def test_the_command_line_answers_for_a_new_entity_and_refuses_a_model_that_fuses_nothing(world):
    tmp = world["tmp"]
    r = cli("predict", tmp / "run", "--new-text", "a newcomer of kind 3", "--new-name", "newcomer",
            "--relation", "0", "--ids", "--top", "3", "--json", cwd=tmp)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["head"] == "newcomer" and out["new_entity"]["text"] == "a newcomer of kind 3"
    assert len(out["predictions"]) == 3 and not any(p["known"] for p in out["predictions"])
    image = tmp / "imgs" / world["names"][5] / "a.png"
    r = cli("predict", tmp / "run", "--new-image", image, "--new-as", "tail", "--head", world["names"][1], cwd=tmp)
    assert r.returncode == 0, r.stderr
    assert re.match(rf"top \d+ relations of \({re.escape(world['names'][1])}, \?, <new entity>\)", r.stdout)
    r = cli("train", "--run-dir", tmp / "plain", *settings(MINI, "--model.modalities=[]", "--mat.enabled=false"), cwd=tmp)
    assert r.returncode == 0, r.stderr
    r = cli("predict", tmp / "plain", "--new-text", "anything", "--relation", "0", "--ids", cwd=tmp)
    assert r.returncode == 2
    assert "this run is structure-only (it fuses no modality), so it cannot place an entity" in r.stderr


@pytest.mark.slow
def test_entities_added_to_a_trained_run_answer_and_are_answered_without_retraining(world):
    import shutil

    from mmkgc_dist import load_run

    tmp, names = world["tmp"], world["names"]
    run = tmp / "run-added"
    shutil.copytree(tmp / "run", run)
    image = str(tmp / "imgs" / names[6] / "a.png")
    pq.write_table(pa.table({"entity": ["newcomer-a", "newcomer-b", "newcomer-c", "broken"],
                             "text": ["a newcomer of kind 3", None, "a third one", None],
                             "image": [None, image, image, str(tmp / "missing.png")]}), tmp / "new.parquet")
    r = cli("add-entities", run, tmp / "new.parquet", cwd=tmp)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("added 3 entities") and "1 rows could not be encoded" in r.stdout
    report = json.loads((run / "added-entities" / "report.json").read_text())
    assert report["failures"][0]["entity"] == "broken" and "file not found" in report["failures"][0]["reason"]
    model = load_run(run)
    n = len(names)
    assert [model.entities.id(x) for x in ("newcomer-a", "newcomer-b", "newcomer-c")] == [n, n + 1, n + 2]
    relation = model.relations.names[0]
    answers = model.predict(head="newcomer-a", relation=relation, k=5)
    assert len(answers) == 5 and not any(p.known for p in answers)
    same = model.predict(head={"text": "a newcomer of kind 3"}, relation=relation, k=5)
    assert [p.id for p in answers] == [p.id for p in same]                 # added = given by its content
    everyone = model.predict(head=names[0], relation=relation, k=n + 3)
    assert {n, n + 1, n + 2} <= {p.id for p in everyone}                    # and among the answers
    assert len(model.neighbours("newcomer-c", k=3)) == 3
    again = cli("add-entities", run, tmp / "new.parquet", cwd=tmp)
    assert again.returncode == 2 and "row 0: 'newcomer-a' is already an entity of the run (id 120)" in again.stderr
    pq.write_table(pa.table({"entity": ["newcomer-d"], "text": ["a fourth"]}), tmp / "more.parquet")
    assert cli("add-entities", run, tmp / "more.parquet", cwd=tmp).returncode == 0
    model = load_run(run)
    assert model.entities.id("newcomer-a") == n and model.entities.id("newcomer-d") == n + 3
    out = tmp / "export-added"
    r = cli("export", run, out, cwd=tmp)
    assert r.returncode == 0, r.stderr
    from mmkgc_dist import read_embeddings
    exported = read_embeddings(str(out))
    assert exported.entity_names[-4:] == ["newcomer-a", "newcomer-b", "newcomer-c", "newcomer-d"]
    assert np.allclose(exported.joint[n], model.joint[n].numpy(), atol=1e-6) and not exported.structural[n].any()
