"""The Python API: train, evaluate, predict and tune without the command line; DataFrames equal to the command
line's JSON; the docstring examples run as doctests."""
import doctest
import json
import os

import pytest

from support import TINY, cli

pd = pytest.importorskip("pandas")

import mmkgc_dist  # noqa: E402
from mmkgc_dist.errors import ConfigError  # noqa: E402

OVERRIDES = {k[2:].split("=")[0]: v for k, v in (a.split("=", 1) for a in TINY)} | \
    {"eval.every_epochs": 1, "eval.splits": ["valid", "test"]}


def test_docstring_examples_run(tmp_path):
    import mmkgc_dist.api as api
    result = doctest.testmod(api, extraglobs={"scratch": str(tmp_path)},
                             optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 8 and result.failed == 0


def test_config_forms_and_errors(tmp_path):
    from mmkgc_dist.config import config_from, load_config
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 3.0e-3\n")
    a = config_from(str(path), {"model.dim": 16})
    b = config_from({"train": {"lr": 3e-3}}, ["--model.dim=16"])
    c = config_from(load_config(str(path)), [("model.dim", 16)])
    assert a == b == c and a.train.lr == 3e-3 and a.model.dim == 16
    with pytest.raises(ConfigError, match="train.lrr: unknown key"):
        config_from(None, {"train.lrr": 1})
    with pytest.raises(ConfigError, match="model.dim: expected int"):
        config_from(None, {"model.dim": "sixteen"})
    with pytest.raises(ConfigError, match="expected a YAML path, a mapping"):
        config_from(42)
    with pytest.raises(ConfigError, match="--resume and --overwrite"):
        mmkgc_dist.train(overrides=OVERRIDES, run_dir=str(tmp_path / "r"), resume=True, overwrite=True)


@pytest.mark.slow
def test_train_evaluate_predict_tune_through_the_api_match_the_command_line(tmp_path):
    run = str(tmp_path / "run")
    result = mmkgc_dist.train(overrides=OVERRIDES, run_dir=run, progress=False)
    assert result.run_dir == run and result.config.model.dim == 8
    assert result.selection["selected"]["epoch"] in (1, 2)
    frame = result.to_frame()
    assert list(frame.index) == ["valid", "test"]

    # metrics: the API's frame holds what `evaluate --output` writes
    res = cli("evaluate", run, "--split", "valid", "--split", "test", "--output", "eval.json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    written = json.load(open(tmp_path / "eval.json"))
    again = mmkgc_dist.evaluate(run, splits=["valid", "test"])
    assert set(again) == set(written)
    for split in written:
        for column in ("mrr", "mr", "hits@1", "hits@10", "count"):
            assert again.to_frame().loc[split, column] == pytest.approx(written[split][column])
            assert frame.loc[split, column] == pytest.approx(written[split][column])

    # predictions: the API's frame holds what `predict --json` prints
    model = result.model
    head, relation = model.entities.names[3], model.relations.names[1]
    res = cli("predict", run, "--head", head, "--relation", relation, "--top", "5", "--json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    printed = json.loads(res.stdout)["predictions"]
    answers = result.predict(head=head, relation=relation, k=5).to_frame()
    assert list(answers["name"]) == [p["name"] for p in printed]
    assert list(answers["known"]) == [p["known"] for p in printed]
    assert answers["score"].to_numpy() == pytest.approx([p["score"] for p in printed], abs=1e-5)
    assert set(answers["head"]) == {head} and answers["tail"].isna().all()
    batch = model.predict(tail=[head, model.entities.names[4]], relation=relation, k=2)
    both = pd.concat([p.to_frame() for p in batch])
    assert len(both) == 4 and list(both["tail"]) == [head, head, model.entities.names[4]] * 1 + \
        [model.entities.names[4]]

    # tune: the study's frame is its trials.csv
    space = {"train.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}
    study = mmkgc_dist.tune(space, str(tmp_path / "study"), overrides={**OVERRIDES, "eval.splits": ["test"]},
                            trials=3, seed=0, pruner="none", show_progress=False)
    trials = study.to_frame()
    assert len(trials) == 3 and set(trials["state"]) == {"complete"}
    csv = pd.read_csv(tmp_path / "study" / "trials.csv")
    assert list(csv["trial"]) == list(trials["trial"])
    assert csv["value"].to_numpy() == pytest.approx(trials["value"].to_numpy())
    best = study.best
    assert best["value"] == trials["value"].max() and os.path.isdir(best["run_dir"])
    assert study.best_config.train.lr == best["params"]["train.lr"]
    assert study.best_config.eval.splits == ["test"]
