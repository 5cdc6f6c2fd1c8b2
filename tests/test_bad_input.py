"""The bad-input suite: one table of user mistakes and hostile files, each run through the real command line.

Every case must exit with code 2, print exactly one ``error:`` line (no traceback) naming the file, row or key
given in the table, and leave everything that existed before — datasets, run folders, a user's own files —
byte-identical (the whole world folder is hashed before and after each case). Payload files are pickles whose
loading would create a marker file; the marker must never appear.
"""
import gzip
import json
import os
import pickle
import shutil
import socket
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from mmkgc_dist.data.format import write_manifest
from support import MINI, MINI_GRAPH, REPO, Payload, cli, cli_in_process, snapshot


# ------------------------------------------------------------------------------------------ the world
def _openke(root, train="2\n0 1 0\n1 2 0\n", valid="1\n0 2 0\n", test="1\n2 0 0\n", entities=None):
    os.makedirs(root, exist_ok=True)
    files = {"entity2id.txt": entities or "3\na 0\nb 1\nc 2\n", "relation2id.txt": "1\nr 0\n",
             "train2id.txt": train, "valid2id.txt": valid, "test2id.txt": test}
    for name, text in files.items():
        with open(os.path.join(root, name), "w") as fh:
            fh.write(text)


def _write(path, text, mode="w"):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, mode) as fh:
        fh.write(text)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = str(tmp_path_factory.mktemp("world"))
    j = lambda *p: os.path.join(w, *p)   # noqa: E731
    # A user's own folder and file, which nothing may ever touch.
    _write(j("userdir", "notes.txt"), "my notes\n")
    _write(j("afile.txt"), "just a file\n")
    _write(j("dup_keys.yaml"), "train:\n  lr: 0.1\n  lr: 0.2\n")
    os.symlink(j("userdir"), j("link_to_dir"))
    _write(j("victim.txt"), "must survive\n")
    # Good inputs.
    _openke(j("ok_openke"))
    _write(j("t.tsv"), "a\tr\tb\nb\tr\tc\nc\tq\ta\n")
    _write(j("trdir", "t.tsv"), "a\tr\tb\n")
    # Datasets and a trained run, made by the tool itself.
    for args in (["prepare", "synthetic", "good", *MINI_GRAPH],
                 ["prepare", "triples", "no_test_ds", "--train", "t.tsv"]):
        res = cli(*args, cwd=w)
        assert res.returncode == 0, res.stderr
    res = cli("train", "--run-dir", "run", "--data.source=parquet", "--data.path=good", *MINI, cwd=w)
    assert res.returncode == 0, res.stderr
    # Bad triple files.
    _write(j("empty.tsv"), "")
    _write(j("header_only.tsv"), "head\trelation\ttail\n")
    _write(j("all_bad.tsv"), "a\tb\nc\nd\te\tf\tg\n")
    _write(j("fields.tsv"), "a\tr\tb\nc\td\n")
    _write(j("header.tsv"), "head\trelation\ttail\na\tr\tb\n")
    _write(j("spaces.tsv"), "a\tr\tb\n c\tr\td\n")
    _write(j("dups.tsv"), "a\tr\tb\nc\tr\td\na\tr\tb\n")
    _write(j("test_overlap.tsv"), "c\tq\ta\n")
    _write(j("empty_label.tsv"), "a\t\tb\n")
    with gzip.open(j("full.tsv.gz"), "wt") as fh:
        fh.write("".join(f"e{i}\tr\te{i + 1}\n" for i in range(20000)))
    with open(j("full.tsv.gz"), "rb") as fh:
        _write(j("cut.tsv.gz"), fh.read()[:3000], mode="wb")
    # Bad OpenKE folders.
    _openke(j("ok_bad_range"), test="1\n0 9 0\n")
    _openke(j("ok_bad_count"), train="3\n0 1 0\n")
    _openke(j("ok_bad_token"), train="1\n0 x 0\n")
    _openke(j("ok_empty_train"), train="0\n")
    _openke(j("ok_bad_dict"), entities="3\na 0\nb 0\nc 2\n")
    # Bad feature files (the dataset 'good' has 120 entities).
    n = 120
    np.save(j("allnan.npy"), np.full((n, 4), np.nan, np.float32))
    np.save(j("zero_width.npy"), np.zeros((n, 0), np.float32))
    np.save(j("strings.npy"), np.array([["x"]] * n))
    np.save(j("wrong_shape.npy"), np.zeros((n + 1, 4), np.float32))
    partial = np.zeros((n, 4), np.float32)
    partial[5, 1] = np.nan
    np.save(j("partial_nan.npy"), partial)
    np.save(j("ok_features.npy"), np.ones((n, 4), np.float32))
    torch.save(torch.eye(n, 4).to_sparse(), j("sparse.pt"))
    torch.save({"features": torch.zeros(3, 4), "ids": torch.tensor([0.0, 1.5, 2.0])}, j("float_ids.pt"))
    torch.save({"features": Payload(j("PWNED-features"))}, j("payload_features.pt"))
    pq.write_table(pa.table({"id": pa.array([0.0, 1.0]), "feature": pa.array([[1.0, 2.0], [3.0, 4.0]])}),
                   j("float_ids.parquet"))
    pq.write_table(pa.table({"id": pa.array([0, 1]), "feature": pa.array([["a", "b"], ["c", "d"]])}),
                   j("string_feature.parquet"))
    _write(j("features.csv"), "0,1.0\n")
    # Crafted manifests pointing outside their dataset.
    for name, target in (("evil_rel", "../victim.txt"), ("evil_abs", j("victim.txt"))):
        shutil.copytree(j("good"), j(name))
        manifest = json.load(open(j(name, "manifest.json")))
        manifest["modalities"]["visual"]["file"] = target
        _write(j(name, "manifest.json"), json.dumps(manifest))
    # A dataset whose streamed triples hold an id out of range.
    shutil.copytree(j("good"), j("bad_ids_ds"))
    part = j("bad_ids_ds", "triples", "train", "part-00000.parquet")
    table = pq.read_table(part)
    heads = table.column("head").to_numpy().copy()
    heads[7] = 10 ** 6
    pq.write_table(table.set_column(0, "head", pa.array(heads)), part)
    write_manifest(j("bad_ids_ds"), json.load(open(j("bad_ids_ds", "manifest.json"))))   # records that match it
    # A dataset whose training part was replaced by its validation part after it was written (its record says not).
    shutil.copytree(j("good"), j("replaced_part_ds"))
    shutil.copy(j("good", "triples", "valid", "part-00000.parquet"),
                j("replaced_part_ds", "triples", "train", "part-00000.parquet"))
    # A manifest whose entity count is a string (it would print "120 rows, manifest says 120").
    shutil.copytree(j("good"), j("str_count_ds"))
    manifest = json.load(open(j("str_count_ds", "manifest.json")))
    manifest["num_entities"] = str(manifest["num_entities"])
    _write(j("str_count_ds", "manifest.json"), json.dumps(manifest))
    pq.write_table(pa.table({"id": pa.array([0, None], pa.int64()), "feature": pa.array([[1.0, 2.0]] * 2)}),
                   j("null_id.parquet"))
    # Configs.
    _write(j("list.yaml"), "- a\n- b\n")
    os.makedirs(j("config_dir.yaml"))
    _write(j("binary.yaml"), bytes(range(256)) * 4, mode="wb")
    # Checkpoints: payloads, damaged files, a folder that is not a checkpoint, a locked run.
    torch.save({"tables": Payload(j("PWNED-checkpoint")), "cursor": {}}, j("payload.pt"))
    good_ckpt = j("run", "checkpoints", sorted(os.listdir(j("run", "checkpoints")))[-1])
    shutil.copytree(good_ckpt, j("truncated", "checkpoints", "step-000000008"))
    with open(j("truncated", "checkpoints", "step-000000008", "dcp", "__0_0.distcp"), "r+b") as fh:
        fh.truncate(1000)
    os.makedirs(j("empty_ckpt", "step-000000001"))
    _write(j("empty_ckpt", "step-000000001", "meta.json"), "")
    # Checkpoints of older versions: a single file, a folder of format 1 (meta.json without "format").
    os.makedirs(j("legacy"))
    torch.save({"tables": {}, "cursor": {"step": 4}}, j("legacy", "step-000000004.pt"))
    shutil.copytree(good_ckpt, j("format1", "step-000000005"))
    meta = json.load(open(j("format1", "step-000000005", "meta.json")))
    meta.pop("format", None)
    _write(j("format1", "step-000000005", "meta.json"), json.dumps(meta))
    # Format 2: a row of the trainable modality tables for every entity (format 3 keeps the present rows only).
    shutil.copytree(good_ckpt, j("format2", "step-000000005"))
    _write(j("format2", "step-000000005", "meta.json"), json.dumps({**meta, "format": 2}))
    shutil.copytree(j("run"), j("run_locked"))
    _write(j("run_locked", ".lock"), json.dumps({"pid": 1, "host": "another-host", "since": "earlier"}))
    return w


W = "{W}"      # replaced by the world folder's path in a case's arguments
CASES = [
    # --- outputs never land on what the tool does not own (#1) ------------------------------------------
    ("synthetic-into-user-folder", ["prepare", "synthetic", "userdir"], "userdir: folder is not empty and was not made by mmkgc-dist"),
    ("triples-into-user-folder", ["prepare", "triples", "userdir", "--train", "t.tsv"], "userdir: folder is not empty"),
    ("openke-into-user-folder", ["prepare", "openke", "ok_openke", "userdir"], "userdir: folder is not empty"),
    ("triples-into-cwd", ["prepare", "triples", ".", "--train", "t.tsv"], "is the current directory"),
    ("synthetic-into-parent", ["prepare", "synthetic", ".."], "is the current directory or one of its parents"),
    ("openke-onto-source", ["prepare", "openke", "ok_openke", "ok_openke"], "overlaps the input ok_openke"),
    ("openke-inside-source", ["prepare", "openke", "ok_openke", "ok_openke/sub"], "overlaps the input ok_openke"),
    ("triples-input-inside-out", ["prepare", "triples", "trdir", "--train", "trdir/t.tsv"], "overlaps the input trdir/t.tsv"),
    ("dataset-exists-no-overwrite", ["prepare", "synthetic", "good"], "pass --overwrite to replace it"),
    ("dataset-over-run", ["prepare", "synthetic", "run", "--overwrite"], "holds an mmkgc-dist run, not a dataset"),
    ("dataset-onto-file", ["prepare", "synthetic", "afile.txt"], "afile.txt: exists and is not a folder"),
    ("dataset-onto-symlink", ["prepare", "synthetic", "link_to_dir"], "is a symbolic link"),
    ("dataset-to-url", ["prepare", "synthetic", "memory://x/ds"], "outputs are written to local folders"),
    ("export-onto-run", ["export", "run", "run"], "overlaps the input run"),
    ("export-into-run", ["export", "run", "run/emb"], "overlaps the input run"),
    ("export-into-cwd", ["export", "run", "."], "is the current directory"),
    ("export-into-user-folder", ["export", "run", "userdir"], "userdir: folder is not empty"),
    ("export-over-dataset", ["export", "run", "good", "--overwrite"], "holds an mmkgc-dist dataset, not an export"),
    # --- empty input never replaces a dataset (#6) --------------------------------------------------------
    ("empty-train-file", ["prepare", "triples", "good", "--overwrite", "--train", "empty.tsv"], "empty.tsv: no triples (the file is empty)"),
    ("header-only-train", ["prepare", "triples", "good", "--overwrite", "--header", "--train", "header_only.tsv"], "header_only.tsv: no triples"),
    ("all-rows-skipped", ["prepare", "triples", "good", "--overwrite", "--skip-malformed", "--train", "all_bad.tsv"], "all_bad.tsv: no triples (all 3 rows were malformed"),
    ("openke-empty-train", ["prepare", "openke", "ok_empty_train", "good", "--overwrite"], "train2id.txt: no triples"),
    ("empty-valid-file", ["prepare", "triples", "new_ds", "--train", "t.tsv", "--valid", "empty.tsv"], "empty.tsv: no triples"),
    # --- malformed and doubtful triples (#8, #9) ----------------------------------------------------------
    ("wrong-field-count", ["prepare", "triples", "new_ds", "--train", "fields.tsv"], "fields.tsv: line 2: malformed row"),
    ("multichar-delimiter", ["prepare", "triples", "new_ds", "--train", "t.tsv", "--delimiter", "::"], "--delimiter '::': expected one character"),
    ("unflagged-header", ["prepare", "triples", "new_ds", "--train", "header.tsv"], "header.tsv: line 1 ['head', 'relation', 'tail'] looks like a header"),
    ("label-surrounding-space", ["prepare", "triples", "new_ds", "--train", "spaces.tsv"], "spaces.tsv: line 2: head label ' c' has surrounding whitespace"),
    ("duplicate-triples", ["prepare", "triples", "new_ds", "--train", "dups.tsv"], "dups.tsv: 1 duplicate rows in train, the first data row 3 (a r b) repeating data row 1"),
    ("test-overlaps-train", ["prepare", "triples", "new_ds", "--train", "t.tsv", "--test", "test_overlap.tsv"], "test_overlap.tsv: 1 test rows also in train, the first data row 1 (c q a)"),
    ("empty-label", ["prepare", "triples", "new_ds", "--train", "empty_label.tsv"], "empty_label.tsv: line 1: empty relation label"),
    ("truncated-gzip", ["prepare", "triples", "new_ds", "--train", "cut.tsv.gz"], "cut.tsv.gz: unreadable after line"),
    ("missing-train-file", ["prepare", "triples", "new_ds", "--train", "nope.tsv"], "nope.tsv: file not found"),
    ("bad-columns", ["prepare", "triples", "new_ds", "--train", "t.tsv", "--columns", "head,head,tail"], "columns head,head,tail: expected head, relation and tail"),
    ("header-and-no-header", ["prepare", "triples", "new_ds", "--train", "t.tsv", "--header", "--no-header"], "--header and --no-header"),
    ("openke-id-range", ["prepare", "openke", "ok_bad_range", "new_ds"], "test2id.txt: line 2: tail id 9 out of range [0, 3)"),
    ("openke-count", ["prepare", "openke", "ok_bad_count", "new_ds"], "train2id.txt: line 1 declares 3 records, the file holds 1"),
    ("openke-token", ["prepare", "openke", "ok_bad_token", "new_ds"], "train2id.txt: line 2: expected three non-negative ids"),
    ("openke-dict-twice", ["prepare", "openke", "ok_bad_dict", "new_ds"], "entity2id.txt: line 3: id 0 assigned twice"),
    ("openke-missing", ["prepare", "openke", "no_such_dir", "new_ds"], "no_such_dir/entity2id.txt: file not found"),
    ("prefix-option", ["prepare", "triples", "new_ds", "--train", "t.tsv", "--overwr"], "override '--overwr': missing value"),
    # --- features (#3, #8, #9) ----------------------------------------------------------------------------
    ("features-all-nan", ["prepare", "features", "good", "--modality", "visual", "allnan.npy"], "allnan.npy: no entity of the dataset has a feature"),
    ("features-zero-width", ["prepare", "features", "good", "--modality", "visual", "zero_width.npy"], "zero_width.npy: features have width 0"),
    ("features-strings", ["prepare", "features", "good", "--modality", "visual", "strings.npy"], "strings.npy: dtype <U1 is not numeric"),
    ("features-sparse", ["prepare", "features", "good", "--modality", "visual", "sparse.pt"], "sparse.pt: the tensor is a torch.sparse_coo tensor"),
    ("features-float-ids-pt", ["prepare", "features", "good", "--modality", "visual", "float_ids.pt"], "float_ids.pt: 'ids' has dtype torch.float32; expected integer"),
    ("features-float-ids-parquet", ["prepare", "features", "good", "--modality", "visual", "float_ids.parquet"], "float_ids.parquet: field 'id' has type double; expected integer"),
    ("features-string-values", ["prepare", "features", "good", "--modality", "visual", "string_feature.parquet"], "string_feature.parquet: field 'feature' has type list<element: string>"),
    ("features-wrong-shape", ["prepare", "features", "good", "--modality", "visual", "wrong_shape.npy"], "wrong_shape.npy: expected shape (120, dim), got (121, 4)"),
    ("features-partial-nan", ["prepare", "features", "good", "--modality", "visual", "partial_nan.npy"], "partial_nan.npy: row 5 (entity 5): feature holds NaN/Inf"),
    ("features-unknown-type", ["prepare", "features", "good", "--modality", "visual", "features.csv"], "features.csv: unknown feature file type"),
    ("features-not-a-dataset", ["prepare", "features", "userdir", "--modality", "visual", "partial_nan.npy"], "userdir/manifest.json: manifest not found"),
    ("features-payload", ["prepare", "features", "good", "--modality", "visual", "payload_features.pt"], "payload_features.pt: cannot be loaded with weights_only=True"),
    ("manifest-relative-escape", ["prepare", "features", "evil_rel", "--modality", "visual", "ok_features.npy"], "field modalities.visual.file is '../victim.txt'; expected a relative path inside"),
    ("manifest-absolute-path", ["prepare", "features", "evil_abs", "--modality", "visual", "ok_features.npy"], "victim.txt'; expected a relative path inside the dataset"),
    # --- config (#8, #9) ----------------------------------------------------------------------------------
    ("config-yaml-list", ["train", "--config", "list.yaml"], "config file list.yaml: expected a mapping of sections"),
    ("config-directory", ["train", "--config", "config_dir.yaml"], "config file config_dir.yaml: not a file"),
    ("config-binary", ["train", "--config", "binary.yaml"], "config file binary.yaml: not"),
    ("config-missing", ["train", "--config", "nope.yaml"], "config file nope.yaml: not found"),
    ("override-yaml-tag", ["train", "--train.lr=!!python/object/apply:os.system [touch PWNED-yaml]"], "--train.lr: value '!!python/object/apply:os.system"),
    ("lr-infinite", ["train", "--train.lr=inf"], "train.lr: must be a finite number"),
    ("gamma-overflow", ["train", "--model.gamma=1e400"], "model.gamma: must be a finite number, got inf"),
    ("lr-nan", ["train", "--train.lr=nan"], "train.lr: must be a finite number"),
    ("run-name-escapes", ["train", "--run.name=../escape"], "run.name: '../escape' is not a plain folder name"),
    ("run-name-absolute", ["train", f"--run.name={W}/abs"], "is not a plain folder name"),
    ("unknown-key", ["train", "--train.lrr=1"], "train.lrr: unknown key"),
    ("negative-epochs", ["train", "--train.epochs=-1"], "train.epochs: must be > 0"),
    ("modalities-not-names", ["train", "--model.modalities=[[1]]"], "model.modalities: expected names"),
    ("keep-checkpoints-negative", ["train", "--train.keep_checkpoints=-1"], "train.keep_checkpoints: must be >= 0"),
    ("resume-prefix", ["train", "--resum"], "override '--resum': missing value"),
    # --- run folders (#4) ---------------------------------------------------------------------------------
    ("train-into-used-run", ["train", "--run-dir", "run", "--data.source=parquet", "--data.path=good", *MINI], "run: holds another run (checkpoints up to step"),
    ("train-into-user-folder", ["train", "--run-dir", "userdir", *MINI], "userdir: folder is not empty and was not made by mmkgc-dist"),
    ("train-run-dir-is-file", ["train", "--run-dir", "afile.txt", *MINI], "--run-dir afile.txt: exists and is not a folder"),
    ("train-out-dir-is-file", ["train", "--run.out_dir=afile.txt", *MINI], "run.out_dir afile.txt: a file is in the way"),
    ("train-locked-run", ["train", "--run-dir", "run_locked", "--resume", "--data.source=parquet", "--data.path=good", *MINI], "run_locked: run folder is in use by pid 1 on another-host"),
    ("train-resume-and-overwrite", ["train", "--run-dir", "run", "--resume", "--overwrite", *MINI], "--resume and --overwrite: choose one"),
    ("data-path-is-file", ["train", "--data.source=parquet", "--data.path=afile.txt", *MINI], "afile.txt: is a file; expected a dataset folder"),
    ("dataset-without-test", ["train", "--run-dir", "new_run", "--data.source=parquet", "--data.path=no_test_ds", *MINI], "eval.splits: the dataset no_test_ds has no test split"),
    ("stream-id-out-of-range", ["train", "--run-dir", "new_run", "--data.source=parquet", "--data.path=bad_ids_ds", "--data.loader=stream", "--train.filter_negatives=false", *MINI], "part-00000.parquet: row group 0, row 7: head id 1000000 out of range [0, 120)", "new_run"),
    ("replaced-part", ["train", "--run-dir", "new_run", "--data.source=parquet", "--data.path=replaced_part_ds", "--data.verify=false", *MINI], "bytes, replaced_part_ds/manifest.json records", "new_run"),
    ("verify-replaced-part", ["verify", "replaced_part_ds"], "verify: 1 of 1 folder(s) do not match their records"),
    # --- checkpoints (#2, #5, #8) -------------------------------------------------------------------------
    ("evaluate-checkpoint-folder", ["evaluate", "run", "--checkpoint", "run"], "run: not a checkpoint folder (no meta.json)"),
    ("evaluate-payload", ["evaluate", "run", "--checkpoint", "payload.pt"], "payload.pt: not a checkpoint folder (no meta.json)"),
    ("evaluate-truncated", ["evaluate", "run", "--checkpoint", "truncated/checkpoints/step-000000008"], "step-000000008: checkpoint failed verification: dcp/__0_0.distcp has 1000 bytes"),
    ("evaluate-empty-checkpoint", ["evaluate", "run", "--checkpoint", "empty_ckpt/step-000000001"], "checkpoint failed verification: meta.json unreadable"),
    ("evaluate-single-file-checkpoint", ["evaluate", "run", "--checkpoint", "legacy/step-000000004.pt"], "step-000000004.pt: not a checkpoint folder (no meta.json); give a step-N/ folder of a run's checkpoints/ (single-file checkpoints of versions before checkpoint format 2 are not read)"),
    ("evaluate-format-1-checkpoint", ["evaluate", "run", "--checkpoint", "format1/step-000000005"], "step-000000005: checkpoint format 1; this version reads format 3"),
    ("evaluate-format-2-modality-tables", ["evaluate", "run", "--checkpoint", "format2/step-000000005"], "step-000000005: checkpoint format 2 holds a row of the trainable text, visual table(s) for every entity"),
    ("evaluate-not-a-run", ["evaluate", "userdir"], "userdir: no config.yaml"),
    ("evaluate-missing-run", ["evaluate", "no_such_run"], "no_such_run: not a run folder (not found)"),
    ("evaluate-no-good-checkpoint", ["evaluate", "truncated_run"], "truncated_run/checkpoints: no complete, verified checkpoint found"),
    ("export-payload", ["export", "run", "new_export", "--checkpoint", "payload.pt"], "payload.pt: not a checkpoint folder"),
    # --- predict (#11) ------------------------------------------------------------------------------------
    ("predict-unknown-entity", ["predict", "run", "--head", "entity_00001", "--relation", "relation_0001"], "unknown entity 'entity_00001' (120 known; closest known: 'entity_000010'"),
    ("predict-unknown-relation", ["predict", "run", "--head", "entity_000001", "--relation", "rel_1"], "unknown relation 'rel_1'"),
    ("predict-both-sides", ["predict", "run", "--head", "entity_000001", "--tail", "entity_000002", "--relation", "relation_0001"], "give two of --head, --relation, --tail"),
    ("predict-top-zero", ["predict", "run", "--head", "entity_000001", "--relation", "relation_0001", "--top", "0"], "argument --top: expected a whole number >= 1, got 0"),
    ("features-batch-size-zero", ["features", "text", "good", "--batch-size", "0"], "argument --batch-size: expected a whole number >= 1"),
    ("config-duplicate-key", ["train", "--config", "dup_keys.yaml"], "'lr' given twice (first on line 2)"),
    ("negative-seed", ["train", "--train.seed=-3"], "train.seed: must be >= 0"),
    ("synthetic-one-entity", ["train", "--data.synthetic.num_entities=1"], "data.synthetic.num_entities: a generated graph needs at least 2"),
    ("absurd-dim", ["train", "--run-dir", "new_run", *MINI, "--model.dim=1000000000"], "x model.dim=128 x 4 x 1000000000: the model needs at least", "new_run"),
    ("absurd-generator", ["train", "--run-dir", "new_run", *MINI, "--mat.hidden=100000000000"], "mat.hidden=100000000000: the model needs at least", "new_run"),
    ("absurd-one-vs-all-batch", ["train", "--run-dir", "new_run", *MINI, "--train.negatives=all", "--train.batch_size=1000000000000"], "train.batch_size=1000000000000 (train.negatives=all: every query against all 120 entities): the model needs at least", "new_run"),
    ("unknown-scorer", ["train", "--run-dir", "new_run", *MINI, "--model.scoring=rotatee"], "model.scoring: unknown scoring function 'rotatee'; registered: complex, distmult, ikrl, rotate, tbkgc", "new_run"),
    ("baseline-with-mat", ["train", "--run-dir", "new_run", *MINI, "--model.scoring=ikrl"], "mat.enabled: MAT fuses generated modalities with AdaMF; model.scoring=ikrl is a baseline", "new_run"),
    ("smoothing-without-all", ["train", *MINI, "--train.label_smoothing=0.1"], "train.label_smoothing: smooths the 1-vs-all cross-entropy; set train.negatives=all"),
    ("feature-null-id", ["prepare", "features", "good", "--modality", "visual", "null_id.parquet"], "null_id.parquet: row 1: field 'id' is null"),
    ("manifest-entities-not-int", ["evaluate", "run", "--data.path=str_count_ds"], "field 'num_entities' is '120' (str); expected a whole number"),
    ("evaluate-output-into-dataset", ["evaluate", "run", "--output", "good/manifest.json"], "is inside the mmkgc-dist dataset"),
    ("predict-not-a-run", ["predict", "userdir", "--head", "a", "--relation", "r"], "userdir: no config.yaml"),
]


@pytest.fixture(scope="module")
def truncated_run(world):
    """A run folder whose only checkpoint is damaged."""
    path = os.path.join(world, "truncated_run")
    shutil.copytree(os.path.join(world, "run"), path)
    for f in os.listdir(os.path.join(path, "checkpoints")):
        with open(os.path.join(path, "checkpoints", f, "dcp", "__0_0.distcp"), "r+b") as fh:
            fh.truncate(100)
    return path


def test_the_suite_is_large_enough():
    assert len(CASES) >= 60 and len({c[0] for c in CASES}) == len(CASES)


def _tiered(case):
    """Data commands stay in the quick tier; a case that loads or trains a model is marked slow."""
    return pytest.param(case, id=case[0], marks=() if case[1][0] in ("prepare", "features") else pytest.mark.slow)


@pytest.mark.parametrize("case", [_tiered(c) for c in CASES])
def test_bad_input(world, truncated_run, case):
    """case: (name, arguments, text the error line must hold[, a new folder the command may create])."""
    name, args, expected, may_create = (*case, None)[:4]
    args = [a.replace(W, world) for a in args]
    before = snapshot(world)
    res = cli_in_process(*args, cwd=world)
    if may_create:      # an error found while streaming comes after the new run folder was made
        shutil.rmtree(os.path.join(world, may_create), ignore_errors=True)
    after = snapshot(world)
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert res.returncode == 2, f"exit {res.returncode}\n{res.stderr[-3000:]}"
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    assert len(errors) == 1 and res.stderr.rstrip().splitlines()[-1] == errors[0], res.stderr[-3000:]
    assert expected in errors[0], errors[0]
    assert after == before, {k: (before.get(k), after.get(k)) for k in set(before) | set(after)
                             if before.get(k) != after.get(k)}
    assert not [f for f in os.listdir(world) if f.startswith("PWNED")], "a payload ran"


def test_submit_rejects_line_breaks(tmp_path):
    res = subprocess.run([sys.executable, os.path.join(REPO, "launch", "slurm", "submit.py"), "--dry-run",
                          "--run-dir", str(tmp_path / "r"), "--job-name", "x\n#SBATCH --uid=0"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "contains a line break" in res.stderr and not os.path.exists(tmp_path / "r")
    res = subprocess.run([sys.executable, os.path.join(REPO, "launch", "slurm", "submit.py"), "--dry-run",
                          "--run-dir", str(tmp_path / "r"), "--", "--train.lr=1e-3\nrm -rf ~"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "contains a line break" in res.stderr


def test_payload_never_runs_for_the_host(world):
    """Sanity check of the payload itself: unrestricted unpickling would run it (so the suite can fail)."""
    marker = os.path.join(world, "..", "sanity-marker")
    pickle.loads(pickle.dumps(Payload(marker)))
    assert os.path.exists(marker)
    os.remove(marker)
    assert socket.gethostname()
