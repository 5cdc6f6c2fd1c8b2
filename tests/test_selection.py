"""Model selection and early stopping: validation every K epochs picks the best checkpoint (kept by pruning),
patience stops training, the best model is tested, results.json says what was selected and why; validation
triples that occur in train are counted and left out of the selection metric; the state survives a resume."""
import json
import os

import numpy as np
import pytest

from support import TINY, cli


def results(run):
    return json.load(open(run / "results.json"))


@pytest.mark.slow
def test_patience_stops_and_the_best_model_is_tested(tmp_path):
    # min_delta above any possible MRR change: every run after the first is "without gain"
    res = cli("train", "--run-dir", "r", *TINY, "--train.epochs=6", "--eval.every_epochs=1",
              "--train.early_stopping.patience=2", "--train.early_stopping.min_delta=2", "--train.keep_checkpoints=1",
              cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    out = results(tmp_path / "r")
    selection = out["selection"]
    assert [h["epoch"] for h in selection["history"]] == [1, 2, 3]        # stopped after 2 runs without gain
    assert out["train"]["epochs"] == 3 and "stopped early after 2 runs" in selection["why"]
    best = selection["selected"]
    assert best["epoch"] == 1 and best["value"] == selection["history"][0]["value"]
    ckpts = sorted(os.listdir(tmp_path / "r" / "checkpoints"))
    assert best["checkpoint"] in ckpts, ckpts                               # pruning spared the best
    assert f"selected {best['checkpoint']}" in res.stdout
    # the test metrics are the selected model's, which evaluate/predict/export use by default
    ev = cli("evaluate", tmp_path / "r", "--output", tmp_path / "m.json", cwd=tmp_path)
    assert ev.returncode == 0 and f"{best['checkpoint']}, the checkpoint model selection chose" in ev.stderr, ev.stderr
    assert json.load(open(tmp_path / "m.json"))["test"]["mrr"] == pytest.approx(out["test"]["mrr"], abs=1e-9)
    assert out["test"]["per_relation"] and "per_category" in out["test"] and "amri" in out["test"]
    md = (tmp_path / "r" / "results.md").read_text()
    assert "### per relation category" in md and "| both |" in md


@pytest.mark.slow
def test_selection_state_survives_resume(tmp_path):
    args = ["--run-dir", "r", *TINY, "--eval.every_epochs=1", "--eval.select_by=hits@3"]
    first = cli("train", *args, "--train.epochs=2", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    resumed = cli("train", *args, "--train.epochs=3", "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    selection = results(tmp_path / "r")["selection"]
    assert [h["epoch"] for h in selection["history"]] == [1, 2, 3] and selection["metric"] == "hits@3"
    values = [h["value"] for h in selection["history"]]
    assert selection["selected"]["value"] == max(values)


@pytest.mark.slow
def test_valid_triples_in_train_are_counted_and_left_out(tmp_path):
    rng = np.random.default_rng(0)
    triples = np.unique(np.stack([rng.integers(0, 60, 900), rng.integers(0, 4, 900), rng.integers(0, 60, 900)], 1),
                        axis=0)
    rng.shuffle(triples)
    train, valid, test = triples[:700], np.concatenate([triples[700:760], triples[:15]]), triples[760:820]
    for name, rows in (("train", train), ("valid", valid), ("test", test)):
        (tmp_path / f"{name}.tsv").write_text("".join(f"e{h}\tr{r}\te{t}\n" for h, r, t in rows))
    prep = cli("prepare", "triples", "ds", "--train", "train.tsv", "--valid", "valid.tsv", "--test", "test.tsv",
               "--allow-overlap", cwd=tmp_path)
    assert prep.returncode == 0, prep.stderr
    res = cli("train", "--run-dir", "r", "--data.source=parquet", "--data.path=ds", "--model.modalities=[]",
              "--mat.enabled=false", "--model.dim=8", "--train.batch_size=64", "--train.num_negatives=8",
              "--train.compile=false", "--train.threads=1", "--train.epochs=2", "--eval.every_epochs=1", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    overlap = results(tmp_path / "r")["selection"]["valid_overlap"]
    assert overlap == {"valid_rows": 75, "valid_unique": 75, "in_train_rows": 15, "in_train_unique": 15,
                       "excluded": True}
    evals = [json.loads(l) for l in open(tmp_path / "r" / "metrics.jsonl") if '"eval"' in l]
    assert evals and all(e["count"] == 2 * 60 for e in evals if e.get("split") == "valid")


@pytest.mark.slow
def test_mlflow_tracker_offline_file_store(tmp_path):
    """The MLflow tracker for real, offline (file store): parameters, per-step metrics, results artifacts,
    and a resumed run continuing the same MLflow run."""
    pytest.importorskip("mlflow")
    args = ["--run-dir", "r", *TINY, "--run.mlflow_uri=file:./mlruns", "--run.mlflow_experiment=tests",
            "--train.log_every=1", "--eval.every_epochs=1"]
    # fresh interpreters: MLflow keeps process-wide state (its store, keyed by the relative URI)
    first = cli("train", *args, "--train.epochs=1", cwd=tmp_path, fresh=True)
    assert first.returncode == 0, first.stderr[-3000:]
    resumed = cli("train", *args, "--train.epochs=2", "--resume", cwd=tmp_path, fresh=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.tracking import MlflowClient
    client = MlflowClient(f"file:{tmp_path / 'mlruns'}")
    experiment = client.get_experiment_by_name("tests")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1 and runs[0].info.run_name == "r"                 # the resume continued it
    run_id = runs[0].info.run_id
    assert runs[0].data.params["train.epochs"] == "1" and runs[0].data.params["model.dim"] == "8"
    losses = client.get_metric_history(run_id, "train/loss")
    train_records = [json.loads(l) for l in open(tmp_path / "r" / "metrics.jsonl") if '"kind": "train"' in l]
    assert [m.step for m in losses] == [r["step"] for r in train_records]
    assert [m.value for m in losses] == pytest.approx([r["loss"] for r in train_records])
    valid, test = (client.get_metric_history(run_id, f"eval/{split}/mrr") for split in ("valid", "test"))
    assert len(valid) == 2 and len(test) == 2          # one validation per epoch; one test per invocation
    evals = [json.loads(l) for l in open(tmp_path / "r" / "metrics.jsonl") if '"kind": "eval"' in l]
    assert [m.value for m in test] == pytest.approx([e["mrr"] for e in evals if e["split"] == "test"])
    assert client.get_metric_history(run_id, "eval/valid/hits_at_10") and not \
        client.get_metric_history(run_id, "eval/mrr")      # validation and test never share a series
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"results.json", "results.md"} <= artifacts


def test_resume_forgets_validation_runs_after_the_checkpoint(tmp_path):
    """A run killed after validating but before its next checkpoint resumes from the older checkpoint: the
    validation runs after it are forgotten (not counted twice), the best and its count of runs without gain
    are consistent."""
    from mmkgc_dist.config import load_config, parse_overrides
    from mmkgc_dist.training.selection import ModelSelection
    cfg = load_config(None, parse_overrides(["--eval.every_epochs=1", "--train.early_stopping.patience=2"]))
    state = {"metric": "mrr", "best": {"epoch": 2, "step": 20, "value": 0.5, "checkpoint": "step-000000020"},
             "history": [{"epoch": e, "step": 10 * e, "value": v} for e, v in ((1, 0.4), (2, 0.5), (3, 0.45),
                                                                             (4, 0.44))],
             "without_gain": 2, "stopped_early": True}
    (tmp_path / "best.json").write_text(json.dumps(state))
    selection = ModelSelection(cfg, str(tmp_path), True)
    selection.rewind(30)                                         # resumed from the epoch-3 checkpoint
    assert [h["epoch"] for h in selection.state["history"]] == [1, 2, 3]
    assert selection.state["without_gain"] == 1 and not selection.stop and selection.best["epoch"] == 2
    assert json.loads((tmp_path / "best.json").read_text())["history"] == selection.state["history"]
    selection.observe({"mrr": 0.3}, 4, 40, save=lambda: None)    # the second run without gain: patience 2
    assert selection.stop and selection.state["without_gain"] == 2
