"""The one configuration schema: a tree of dataclasses, YAML recipes and dotted command-line overrides.

Every field carries its help text in ``metadata["help"]``; ``validate()`` checks types, ranges and
cross-field rules and names the offending key. ``load_config(path, overrides)`` is the only entry point
the launchers use; ``config_yaml`` is the resolved tree written into the run folder.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
import typing
from dataclasses import dataclass, field
from typing import Any

import yaml

from .errors import ConfigError


def _f(default, help: str, **kw):
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class SyntheticConfig:
    """The generated graph (data.source=synthetic): the embedded default that needs no download."""
    seed: int = _f(7, "seed of the generator: same seed, same graph (the graph is a pure function of this "
                   "section, whose values are the dataset identity a run records)")
    num_entities: int = _f(4000, "entities of the generated graph")
    num_relations: int = _f(24, "relations of the generated graph")
    num_triples: int = _f(24000, "distinct triples generated before the split")
    latent_dim: int = _f(4, "complex dimension of the planted latent geometry")
    visual_dim: int = _f(128, "width of the generated visual features")
    text_dim: int = _f(64, "width of the generated text features")
    visual_missing: float = _f(0.3, "fraction of entities without a visual feature (1: the graph has no visual "
                               "modality)")
    text_missing: float = _f(0.2, "fraction of entities without a text feature (1: the graph has no text modality)")
    feature_noise: float = _f(0.1, "std of Gaussian noise added to features (relative to signal)")
    valid_fraction: float = _f(0.05, "fraction of triples held out for validation")
    test_fraction: float = _f(0.05, "fraction of triples held out for testing")


@dataclass
class DataConfig:
    """Where the triples and features come from and how the training split is read."""
    source: str = _f("synthetic", "'synthetic' (generate the embedded default) or 'parquet' (read data.path)",
                     choices=("synthetic", "parquet"))
    path: str = _f("", "prepared Parquet dataset folder or fsspec URL (data.source=parquet)")
    loader: str = _f("memory", "'memory' (training triples in RAM, random access) or 'stream' (row groups "
                     "streamed from data.path; memory independent of the edge count)", choices=("memory", "stream"))
    shuffle_window_rows: int = _f(1 << 20, "stream: rows permuted together (the bounded shuffle buffer; "
                                  "memory is about 24 B x rows x (prefetch_windows + 1) x 2)")
    loader_workers: int = _f(2, "stream: threads reading disjoint row groups of a window")
    prefetch_windows: int = _f(1, "stream: windows read ahead in the background")
    verify: bool = _f(True, "before training, check every dataset file against the SHA-256 its manifest records "
                      "(cached by file identity: each version of a file is hashed once); sizes are checked at "
                      "every open regardless")
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig, metadata={"help": "generated graph"})


@dataclass
class ModelConfig:
    """The scoring function's width and constants, and the modalities AdaMF fuses."""
    scoring: str = _f("rotate", "scoring function by name: rotate, transe, distmult, complex, or the baselines "
                      "ikrl, tbkgc (model/scorers/; a scorer registered with mmkgc_dist.model.register_scorer "
                      "is accepted by its name)")
    dim: int = _f(64, "d: entity rows are 2d wide (the complex scorers read them as d complex coordinates)")
    gamma: float = _f(12.0, "margin of the distance scorers (RotatE, TransE)")
    epsilon: float = _f(2.0, "embedding-range epsilon of the distance scorers' initialisation")
    reciprocal: bool = _f(False, "an inverse relation per relation: head queries (?, r, t) are answered as tail "
                          "queries (t, r^-1, ?)")
    regularizer: str = _f("none", "regulariser of the positives' factors: 'none', 'n3' (nuclear 3-norm) or 'l2'",
                          choices=("none", "n3", "l2"))
    regularizer_weight: float = _f(0.0, "weight of model.regularizer in the loss")
    modalities: list | str = _f("auto", "modalities fused with the structure: 'auto' = every modality the dataset "
                                "has; a list (e.g. [visual, text]) = exactly those, each required of the "
                                "dataset; [] = structure-only")
    raw_features: str = _f("trainable", "'trainable' (paper: feature tables are fine-tuned) or 'frozen'",
                           choices=("trainable", "frozen"))
    structure_dropout: float = _f(0.0, "share of the entities whose structural embedding each training batch "
                                  "leaves out of the fusion (masked like a missing modality), so the model learns "
                                  "to answer for an entity from its text and images alone (new entities); [0, 1)")


@dataclass
class MATConfig:
    """Modality-adversarial training: the generators and the discriminator's adversarial term."""
    enabled: bool = _f(True, "train the modality generators adversarially (MAT)")
    mu: float = _f(1e-4, "weight of the adversarial term in the discriminator loss (released scripts: 0)")
    noise_dim: int = _f(64, "Gaussian noise width fed to the generators")
    hidden: int = _f(512, "generator hidden width")
    lr: float = _f(1e-4, "generator Adam learning rate")
    adversarial_loss: str = _f("reference", "the discriminator's adversarial term: 'reference' (the released "
                               "code's: fakes of the batch weighted by softmax(α·f_fake)) or 'mean' (plain means)",
                               choices=("reference", "mean"))
    detach_fakes: bool = _f(False, "generate the discriminator's fakes under no_grad; false (the reference's): "
                            "its adversarial term also sends gradient through the generators into the structural "
                            "rows (never into the generators' weights)")
    fakes_fill_missing: bool = _f(True, "the fused fake uses every generated modality, also one the entity lacks "
                                  "(false: the real entity's presence masks)")


@dataclass
class EarlyStoppingConfig:
    """Stop when validation stops improving (needs eval.every_epochs)."""
    patience: int = _f(0, "stop after this many validation runs without a gain in eval.select_by (0 = off)")
    min_delta: float = _f(0.0, "smallest change of eval.select_by that counts as a gain")


@dataclass
class TrainConfig:
    """The loop, the optimizers and the negatives."""
    epochs: int = _f(12, "passes over the training triples")
    max_steps: int = _f(0, "stop after this many steps (0 = no limit)")
    batch_size: int = _f(512, "positives per step (global)")
    num_negatives: int = _f(64, "negatives per positive")
    negatives: str = _f("per_positive", "'per_positive' (exact), 'chunk_shared' (scalable) or 'all' (1-vs-all: "
                        "every entity is a candidate of both queries of a positive, cross-entropy loss)",
                        choices=("per_positive", "chunk_shared", "all"))
    label_smoothing: float = _f(0.0, "label smoothing of the 1-vs-all cross-entropy (train.negatives=all)")
    chunk_size: int = _f(64, "positives sharing one set of negatives (negatives=chunk_shared)")
    corruption: str = _f("bern", "'bern' (per-relation head/tail probabilities) or 'uniform'",
                         choices=("bern", "uniform"))
    corruption_side: str = _f("per_negative", "which side each negative corrupts: 'per_negative' (drawn for every "
                              "negative, the reference's way) or 'per_positive' (one side for all negatives of a "
                              "positive); chunk-shared negatives always use per_positive",
                              choices=("per_negative", "per_positive"))
    filter_negatives: bool = _f(True, "resample negatives that are training triples (per_positive only; needs "
                                "data.loader=memory — exact filtering holds the training keys in RAM)")
    negative_entities: str = _f("uniform", "distribution of corrupting entities: 'uniform' or 'degree' "
                                "(proportional to training degree, as hard negatives)", choices=("uniform", "degree"))
    lr: float = _f(1e-3, "Adam learning rate of the model (dense fusion weights always; the tables too with "
                   "table_optimizer=adam)")
    table_optimizer: str = _f("adam", "optimizer of the entity, relation and trainable feature tables, the same "
                              "for one process and any number of ranks: 'adam' (the paper's; lazy on the "
                              "distributed tables: rows outside a batch keep their moments) or 'rowwise_adagrad' "
                              "(one accumulator per row, at train.adagrad_lr)", choices=("adam", "rowwise_adagrad"))
    adagrad_lr: float = _f(0.05, "learning rate of table_optimizer=rowwise_adagrad")
    adversarial_temperature: float = _f(2.0, "self-adversarial softmax temperature alpha")
    seed: int = _f(42, "seed of initialisation and sampling")
    threads: int = _f(0, "torch intra-op threads (0 = leave torch's default)")
    compile: bool | str = _f("auto", "torch.compile the scoring kernels and the negative sampler: 'auto' = on "
                             "CUDA (where it pays), off on CPU (where the first step's compilation costs more "
                             "than it saves on a typical run); true / false to force")
    device: str = _f("auto", "single-process device: 'auto' (CUDA when visible), 'cpu' or 'cuda'; distributed "
                     "runs use one device per rank", choices=("auto", "cpu", "cuda"))
    log_every: int = _f(20, "steps between JSONL metric records")
    checkpoint_every: int = _f(0, "epochs between checkpoints (0 = only at the end)")
    checkpoint_every_steps: int = _f(0, "steps between checkpoints, mid-epoch included (0 = off)")
    keep_checkpoints: int = _f(3, "newest checkpoints kept in the run folder; older ones are deleted after each "
                               "save (0 = keep all; the newest verified one and the selected best are never "
                               "deleted)")
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig,
                                                metadata={"help": "stop when validation stops improving"})


@dataclass
class EvalConfig:
    """Ranking protocol, tie policy, splits and model selection."""
    splits: list = _f(["test"], "splits evaluated after training")
    every_epochs: int = _f(0, "epochs between validation runs that select the best checkpoint (0 = no "
                           "selection: the last model is tested)")
    select_by: str = _f("mrr", "validation metric that selects the best checkpoint: mrr, hits@K (K in "
                        "eval.hits_at), amri, or mr (lower is better)")
    valid_protocol: str = _f("", "protocol of the validation runs: 'exact', 'sampled', or '' (= eval.protocol)",
                             choices=("", "exact", "sampled"))
    exclude_train_overlap: bool = _f(True, "leave validation triples that also occur in train out of the "
                                     "selection metric (they are counted and reported)")
    hits_at: list = _f([1, 3, 10], "k of the Hits@k metrics")
    batch_size: int = _f(256, "queries scored at once (bounds memory: batch x entities floats)")
    ties: str = _f("realistic", "tie policy: 'realistic' (mean of optimistic and pessimistic), 'optimistic' "
                   "(reference code: strictly better only) or 'pessimistic'",
                   choices=("realistic", "optimistic", "pessimistic"))
    protocol: str = _f("exact", "'exact' (filtered ranking against all entities) or 'sampled' (against "
                       "sampled_uniform uniform + sampled_degree degree-proportional candidates per query)",
                       choices=("exact", "sampled"))
    sampled_uniform: int = _f(500, "sampled protocol: uniform candidates per query")
    sampled_degree: int = _f(500, "sampled protocol: degree-proportional candidates per query")
    max_queries: int = _f(0, "evaluate at most this many triples per split, a seeded sample (0 = all)")


TABLES = ("entity", "relation", "visual", "text")
SHARDING_TYPES = ("auto", "row_wise", "table_wise", "column_wise", "data_parallel")


@dataclass
class ParallelConfig:
    """Table placement and precision on N ranks, and the generators' ZeRO stage."""
    sharding: dict = _f({}, "per-table sharding type ({table: type}; tables: entity, relation, visual, text; "
                        "types: auto (TorchRec's planner chooses), row_wise, table_wise, column_wise, data_parallel); "
                        "unset entity-indexed tables are row_wise; the relation table is replicated (data_parallel) "
                        "unless set")
    frozen_dtype: str = _f("fp32", "storage precision of frozen feature tables (any world size; fp16 and bf16 halve "
                           "their memory and lookup bytes, rows are widened to fp32 when looked up; bf16 keeps fp32's "
                           "range, fp16 more mantissa)",
                           choices=("fp32", "fp16", "bf16"))
    zero_stage: int = _f(0, "DeepSpeed ZeRO stage of the MAT generator engine (0, 1 or 2)")
    dense_bucket_mb: int = _f(25, "bucket size (MiB) of the all-reduces that sum the dense gradients over ranks")


@dataclass
class RunConfig:
    """Where a run writes and which trackers it feeds."""
    out_dir: str = _f("runs", "parent folder of run folders")
    name: str = _f("", "run folder name, a plain name inside run.out_dir (empty: a unique timestamp)")
    tensorboard: bool = _f(False, "also write metrics as TensorBoard events into the run folder's tensorboard/")
    mlflow_uri: str = _f("", "also track the run in MLflow at this tracking URI (e.g. file:./mlruns, or a "
                         "server's http URL; needs mlflow-skinny); empty = off")
    mlflow_experiment: str = _f("mmkgc-dist", "MLflow experiment name")
    trackers: list = _f([], "more trackers by name, from installed plugins (entry-point group "
                        "mmkgc_dist.trackers: name = module:Class, built as Class(run_dir, params) with "
                        "log(kind, **fields) and close())")


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "dataset"})
    model: ModelConfig = field(default_factory=ModelConfig, metadata={"help": "model"})
    mat: MATConfig = field(default_factory=MATConfig, metadata={"help": "modality adversarial training"})
    train: TrainConfig = field(default_factory=TrainConfig, metadata={"help": "training loop"})
    eval: EvalConfig = field(default_factory=EvalConfig, metadata={"help": "evaluation"})
    parallel: ParallelConfig = field(default_factory=ParallelConfig,
                                     metadata={"help": "distributed training (torchrun world size > 1)"})
    run: RunConfig = field(default_factory=RunConfig, metadata={"help": "run folder"})

    def validate(self) -> "Config":
        _validate_tree(self, "")
        _cross_checks(self)
        return self


KNOWN_MODALITIES = ("visual", "text")
MOVED = {"eval.every": "eval.every_epochs (validation runs now also select the best checkpoint)",
         "parallel.table_optimizer": "train.table_optimizer (adam | rowwise_adagrad; the same at any world size)",
         "parallel.table_lr": "train.lr (adam) or train.adagrad_lr (rowwise_adagrad)"}

_POSITIVE = {
    "data.synthetic.num_entities", "data.synthetic.num_relations", "data.synthetic.num_triples",
    "data.synthetic.latent_dim", "data.synthetic.visual_dim", "data.synthetic.text_dim",
    "model.dim", "mat.noise_dim", "mat.hidden", "train.epochs", "train.batch_size", "train.num_negatives",
    "train.chunk_size", "train.log_every", "eval.batch_size", "model.gamma", "train.lr",
    "train.adversarial_temperature", "mat.lr", "train.adagrad_lr", "parallel.dense_bucket_mb",
    "data.shuffle_window_rows", "data.loader_workers", "data.prefetch_windows",
}
_NON_NEGATIVE = {"train.max_steps", "train.keep_checkpoints", "train.checkpoint_every_steps", "train.threads", "train.checkpoint_every",
                 "eval.every_epochs", "train.early_stopping.patience", "train.early_stopping.min_delta", "mat.mu", "data.synthetic.feature_noise", "model.epsilon", "eval.sampled_uniform",
                 "eval.sampled_degree", "eval.max_queries", "train.seed", "data.synthetic.seed", "model.regularizer_weight"}
_FRACTIONS = {"train.label_smoothing", "data.synthetic.valid_fraction", "data.synthetic.test_fraction"}
_SHARES = {"data.synthetic.visual_missing", "data.synthetic.text_missing", "model.structure_dropout"}   # [0, 1]


def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _validate_tree(node, prefix: str) -> None:
    types = _field_types(type(node))
    for f in dataclasses.fields(node):
        key = prefix + f.name
        value = getattr(node, f.name)
        expected = types[f.name]
        if dataclasses.is_dataclass(expected):
            _validate_tree(value, key + ".")
            continue
        _check_type(key, value, expected)
        if expected is float and not math.isfinite(value):
            raise ConfigError(f"{key}: must be a finite number, got {value!r}")
        choices = f.metadata.get("choices")
        if choices and value not in choices:
            raise ConfigError(f"{key}: expected one of {list(choices)}, got {value!r}")
        if key in _POSITIVE and not value > 0:
            raise ConfigError(f"{key}: must be > 0, got {value!r}")
        if key in _NON_NEGATIVE and value < 0:
            raise ConfigError(f"{key}: must be >= 0, got {value!r}")
        if key in _FRACTIONS and not 0.0 <= value < 1.0:
            raise ConfigError(f"{key}: must be in [0, 1), got {value!r}")
        if key in _SHARES and not 0.0 <= value <= 1.0:
            raise ConfigError(f"{key}: must be in [0, 1], got {value!r}")


def _check_type(key: str, value, expected) -> None:
    if expected is bool:
        ok = isinstance(value, bool)
    elif expected is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif expected is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif expected is str:
        ok = isinstance(value, str)
    elif expected is list:
        ok = isinstance(value, list)
    elif expected is dict:
        ok = isinstance(value, dict)
    else:
        ok = isinstance(value, expected)
    if not ok:
        raise ConfigError(f"{key}: expected {getattr(expected, '__name__', str(expected))}, got "
                          f"{type(value).__name__} ({value!r})")


def compile_on(cfg: Config, device) -> bool:
    """Whether the kernels are compiled on ``device`` (train.compile: auto → on CUDA only)."""
    if cfg.train.compile == "auto":
        return getattr(device, "type", str(device)) == "cuda"
    return bool(cfg.train.compile)


def fused_modalities(cfg: Config, available) -> list[str]:
    """The modalities a run fuses, given those its dataset has: model.modalities=auto → all of them (in
    KNOWN_MODALITIES order); a list → exactly those, and a ConfigError naming any the dataset lacks (a run never
    falls back silently to fewer modalities than it was asked for)."""
    asked = cfg.model.modalities
    if asked == "auto":
        return [m for m in KNOWN_MODALITIES if m in available]
    missing = [m for m in asked if m not in available]
    if missing:
        have = [m for m in KNOWN_MODALITIES if m in available]
        raise ConfigError(f"model.modalities={list(asked)}: the dataset has no {' or '.join(missing)} features (it "
                          f"has {have or 'none'}); add them (mmkgc-dist features images|text, prepare features) "
                          f"or set model.modalities to auto or {have}")
    return list(asked)


def _cross_checks(cfg: Config) -> None:
    if cfg.model.structure_dropout >= 1.0:
        raise ConfigError(f"model.structure_dropout: must be below 1 (a share of entities per batch), got "
                          f"{cfg.model.structure_dropout!r}")
    if isinstance(cfg.train.compile, str) and cfg.train.compile != "auto":
        raise ConfigError(f"train.compile: expected true, false or 'auto', got {cfg.train.compile!r}")
    if isinstance(cfg.model.modalities, str) and cfg.model.modalities != "auto":
        raise ConfigError(f"model.modalities: expected 'auto' or a list of modalities ({list(KNOWN_MODALITIES)}), "
                          f"got {cfg.model.modalities!r}")
    asked = [] if cfg.model.modalities == "auto" else cfg.model.modalities
    for key, items in (("model.modalities", asked), ("eval.splits", cfg.eval.splits), ("run.trackers", cfg.run.trackers),
                       ("parallel.sharding", list(cfg.parallel.sharding.values()) + list(cfg.parallel.sharding))):
        for item in items:
            if not isinstance(item, str):
                raise ConfigError(f"{key}: expected names, got {type(item).__name__} ({item!r})")
    for m in asked:
        if m not in KNOWN_MODALITIES:
            raise ConfigError(f"model.modalities: unknown modality {m!r}; known: {list(KNOWN_MODALITIES)}")
    if len(set(asked)) != len(asked):
        raise ConfigError(f"model.modalities: duplicates in {cfg.model.modalities}")
    if cfg.data.synthetic.num_entities < 2:
        raise ConfigError(f"data.synthetic.num_entities: a generated graph needs at least 2 entities (no self-loops), "
                          f"got {cfg.data.synthetic.num_entities}")
    if cfg.data.synthetic.valid_fraction + cfg.data.synthetic.test_fraction >= 1:
        raise ConfigError("data.synthetic.valid_fraction + test_fraction: must leave triples for training (< 1)")
    if cfg.data.source == "parquet" and not cfg.data.path:
        raise ConfigError("data.path: required when data.source=parquet")
    if cfg.data.loader == "stream" and cfg.data.source != "parquet":
        raise ConfigError("data.loader: 'stream' reads a prepared dataset; set data.source=parquet and data.path")
    if cfg.data.loader == "stream" and cfg.train.filter_negatives and cfg.train.negatives == "per_positive":
        raise ConfigError("train.filter_negatives: exact filtering keeps every training triple in memory; with "
                          "data.loader=stream set it false (false negatives are ~degree/N rare in large graphs)")
    if cfg.data.loader == "stream" and "train" in cfg.eval.splits:
        raise ConfigError("eval.splits: with data.loader=stream the training split stays on disk; evaluate "
                          "valid/test")
    if not cfg.eval.hits_at or any(not isinstance(k, int) or isinstance(k, bool) or k < 1 for k in cfg.eval.hits_at):
        raise ConfigError(f"eval.hits_at: expected a list of positive integers, got {cfg.eval.hits_at!r}")
    allowed = ["mrr", "mr", "amri", *(f"hits@{k}" for k in cfg.eval.hits_at)]
    if cfg.eval.select_by not in allowed:
        raise ConfigError(f"eval.select_by: expected one of {allowed}, got {cfg.eval.select_by!r}")
    if cfg.train.early_stopping.patience and not cfg.eval.every_epochs:
        raise ConfigError("train.early_stopping.patience: early stopping needs validation runs; set "
                          "eval.every_epochs")
    if cfg.eval.protocol == "sampled" and cfg.eval.sampled_uniform + cfg.eval.sampled_degree == 0:
        raise ConfigError("eval.sampled_uniform + eval.sampled_degree: the sampled protocol needs candidates")
    if cfg.train.negatives == "chunk_shared" and cfg.train.chunk_size > cfg.train.batch_size:
        raise ConfigError(f"train.chunk_size: must be <= train.batch_size ({cfg.train.batch_size}), "
                          f"got {cfg.train.chunk_size}")
    if cfg.model.regularizer_weight and cfg.model.regularizer == "none":
        raise ConfigError(f"model.regularizer_weight: {cfg.model.regularizer_weight} with model.regularizer=none; "
                          f"choose n3 or l2")
    if cfg.train.label_smoothing and cfg.train.negatives != "all":
        raise ConfigError("train.label_smoothing: smooths the 1-vs-all cross-entropy; set train.negatives=all")
    if not isinstance(cfg.model.scoring, str) or not cfg.model.scoring:
        raise ConfigError(f"model.scoring: expected a scoring function's name, got {cfg.model.scoring!r}")
    if cfg.mat.enabled and cfg.model.modalities == []:
        raise ConfigError("mat.enabled: MAT generates modality embeddings and needs model.modalities; "
                          "set mat.enabled=false for structure-only runs")
    for s in cfg.eval.splits:
        if s not in ("train", "valid", "test"):
            raise ConfigError(f"eval.splits: unknown split {s!r}; known: ['train', 'valid', 'test']")
    for table, kind in cfg.parallel.sharding.items():
        if table not in TABLES:
            raise ConfigError(f"parallel.sharding: unknown table {table!r}; known: {list(TABLES)}")
        if kind not in SHARDING_TYPES:
            raise ConfigError(f"parallel.sharding.{table}: expected one of {list(SHARDING_TYPES)}, got {kind!r}")
    if cfg.parallel.zero_stage not in (0, 1, 2):
        raise ConfigError(f"parallel.zero_stage: expected 0, 1 or 2, got {cfg.parallel.zero_stage}")
    name = cfg.run.name
    if name and (name in (".", "..") or not re.fullmatch(r"[A-Za-z0-9._+=@-]+", name) or name.startswith(".")):
        raise ConfigError(f"run.name: {name!r} is not a plain folder name (letters, digits and ._+=@-, no path "
                          f"separators, not starting with '.'); put the parent folder in run.out_dir")
    syn = cfg.data.synthetic
    if syn.valid_fraction + syn.test_fraction >= 0.5:
        raise ConfigError("data.synthetic.valid_fraction + test_fraction: must be < 0.5")


def _from_dict(cls, data: dict, prefix: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or '<root>'}: expected a mapping, got {type(data).__name__}")
    types = _field_types(cls)
    kwargs = {}
    for key, value in data.items():
        if prefix + key in MOVED:
            raise ConfigError(f"{prefix}{key}: moved — use {MOVED[prefix + key]}")
        if key not in types:
            raise ConfigError(f"{prefix}{key}: unknown key; known keys here: {sorted(types)}")
        expected = types[key]
        if dataclasses.is_dataclass(expected):
            kwargs[key] = _from_dict(expected, value or {}, f"{prefix}{key}.")
        else:
            if expected is float:
                value = _as_float(value)
            _check_type(prefix + key, value, expected)
            kwargs[key] = value
    return cls(**kwargs)


def _as_float(value):
    """YAML 1.1 reads '1e-3' (no dot) as a string; accept it, and ints, where a float is expected."""
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return number_from_text(value)


def number_from_text(value):
    """A string that spells a number (YAML 1.1's '1e-3') as that float; anything else as it is."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def _set_dotted(tree: dict, dotted: str, raw) -> None:
    """Set ``dotted`` in ``tree``: a string is read as a plain YAML value (the command line's form), any other
    value (the Python API's) is taken as it is."""
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{dotted}: {k} is not a section")
    if not isinstance(raw, str):
        node[keys[-1]] = raw
        return
    try:
        node[keys[-1]] = read_yaml_text(raw) if raw != "" else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--{dotted}: value {_shown(raw)} is not a plain YAML value ({_one_line(exc)})") from None


def parse_overrides(args: list[str]) -> list[tuple[str, str]]:
    """``--train.lr=1e-3`` or ``--train.lr 1e-3`` → [("train.lr", "1e-3")]."""
    pairs, i = [], 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or arg == "--":
            raise ConfigError(f"override {arg!r}: expected --section.key=value")
        body = arg[2:]
        if "=" in body:
            key, value = body.split("=", 1)
        elif i + 1 < len(args):
            key, value = body, args[i + 1]
            i += 1
        else:
            raise ConfigError(f"override {arg!r}: missing value")
        pairs.append((key, value))
        i += 1
    return pairs


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load that refuses a key given twice in one mapping (plain YAML silently keeps the last) and any
    alias (``*name``): a config never needs one, and nested aliases expand a 1 KB file to gigabytes."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.events.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, f"alias *{event.anchor} refused: write the value out (aliases can expand a small file "
                            f"without bound)", event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} given twice (first on line {seen[key] + 1})", key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


YAML_LIMIT = 16 << 20        # bytes of one YAML file (a config, a search space) at most


def read_yaml_text(text):
    """YAML text (or an open file) → a tree, with the config loader's rules: no repeated key, no alias, and
    nesting as deep as Python's recursion allows (deeper is a YAMLError, not a crash)."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except RecursionError:
        raise yaml.YAMLError("nested too deeply (a config is a few levels of sections)") from None


def read_yaml_file(path: str, what: str):
    """A user's YAML file, bounded in size and expansion; ConfigError naming ``what`` and the path."""
    if not os.path.exists(path):
        raise ConfigError(f"{what} {path}: not found")
    if not os.path.isfile(path):
        raise ConfigError(f"{what} {path}: not a file")
    if os.path.getsize(path) > YAML_LIMIT:
        raise ConfigError(f"{what} {path}: {os.path.getsize(path)} bytes; over {YAML_LIMIT >> 20} MiB is not a "
                          f"hand-written YAML file")
    try:
        with open(path, encoding="utf-8") as fh:
            return read_yaml_text(fh)
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what} {path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {path}: not valid YAML: {_one_line(exc)}") from None


def _shown(text: str, limit: int = 120) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def load_config(path: str | None = None, overrides: list[tuple[str, str]] | None = None) -> Config:
    return _config_tree(_read_yaml(path) if path else {}, overrides)


def override_pairs(overrides) -> list[tuple]:
    """The API's overrides — a mapping of dotted keys to values, (key, value) pairs or ``--key=value`` strings —
    as (key, value) pairs; ConfigError for anything else."""
    if overrides is not None and not isinstance(overrides, (dict, list, tuple)):
        raise ConfigError(f"overrides: expected a mapping of dotted keys to values (or --key=value strings), got "
                          f"{type(overrides).__name__}")
    if isinstance(overrides, dict):
        return list(overrides.items())
    if overrides and all(isinstance(o, str) for o in overrides):
        return parse_overrides(list(overrides))
    return list(overrides or [])


def config_from(config=None, overrides=None) -> Config:
    """The Python API's config: ``config`` is None (the defaults), a YAML path, a mapping of sections or a
    ``Config``; ``overrides`` maps dotted keys to values (``{"train.lr": 3e-3}``) or is a list of (key, value)
    pairs or ``--key=value`` strings."""
    pairs = override_pairs(overrides)
    if config is None or isinstance(config, (str, os.PathLike)):
        return load_config(os.fspath(config) if config is not None else None, pairs)
    if isinstance(config, Config):
        return _config_tree(to_dict(config), pairs)
    if isinstance(config, dict):
        import copy
        return _config_tree(copy.deepcopy(config), pairs)
    raise ConfigError(f"config: expected a YAML path, a mapping of sections or a Config, got {type(config).__name__}")


def _config_tree(tree: dict, overrides) -> Config:
    for key, value in overrides or []:
        _set_dotted(tree, key, value)
    return _from_dict(Config, tree, "").validate()


def packaged_configs() -> str:
    """The folder of the recipes shipped with the package (configs/: db15k, mkgw, default, variants/): inside
    the installed wheel (mmkgc_dist/configs), or the checkout's configs/ beside the package."""
    here = os.path.dirname(os.path.abspath(__file__))
    inside = os.path.join(here, "configs")
    return inside if os.path.isdir(inside) else os.path.join(os.path.dirname(here), "configs")


def config_path(name: str) -> str:
    """``--config``: a YAML path, or a shipped recipe by name (``db15k``, ``variants/rotate``)."""
    if os.path.exists(name):
        return name
    stem = name[:-5] if name.endswith(".yaml") else name
    shipped = os.path.join(packaged_configs(), f"{stem}.yaml")
    if re.fullmatch(r"(variants/)?[A-Za-z0-9_.-]+", stem) and os.path.isfile(shipped):
        return shipped
    return name                # read_yaml_file names it as not found


def shipped_config_names() -> list[str]:
    folder = packaged_configs()
    names = [f[:-5] for f in os.listdir(folder) if f.endswith(".yaml")] if os.path.isdir(folder) else []
    return sorted(names)


def _read_yaml(path: str) -> dict:
    if path and config_path(path) == path and not os.path.exists(path) and re.fullmatch(r"[A-Za-z0-9_.-]+", path):
        raise ConfigError(f"config file {path}: not found (neither a file nor a shipped recipe; shipped: "
                          f"{', '.join(shipped_config_names())})")
    path = config_path(path) if path else path
    tree = read_yaml_file(path, "config file") if path else {}
    if tree is None:
        tree = {}
    if not isinstance(tree, dict):
        raise ConfigError(f"config file {path}: expected a mapping of sections (data:, model:, train:, ...), "
                          f"got a YAML {type(tree).__name__}")
    return tree


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


def config_yaml(cfg: Config) -> str:
    """The resolved tree as YAML (the run folder's config.yaml)."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


# What a resumed run may change: how long and how it trains, logs, checkpoints and evaluates, and where the
# run and its dataset are (the dataset's identity is checked separately). Everything else shapes the model or
# the data it sees, and stays as the run was created.
RESUMABLE = ("train.epochs", "train.max_steps", "train.log_every", "train.checkpoint_every",
             "train.checkpoint_every_steps", "train.keep_checkpoints", "train.threads", "train.compile",
             "train.device", "train.early_stopping.", "eval.", "run.", "data.path", "data.loader_workers",
             "data.prefetch_windows", "data.verify")


def _leaves(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict) and k != "sharding":
            out.update(_leaves(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def resumed_config(created: Config, asked: Config) -> Config:
    """``asked`` for a run created with ``created``: refused (ConfigError naming every key) when it changes
    anything outside ``RESUMABLE``."""
    before, after = _leaves(to_dict(created)), _leaves(to_dict(asked))
    changed = [k for k in before if before[k] != after[k] and not k.startswith(RESUMABLE)]
    if changed:
        listed = "; ".join(f"{k}: {before[k]!r} -> {after[k]!r}" for k in changed[:4])
        raise ConfigError(f"--resume continues the run as it was created, but this command changes "
                          f"{len(changed)} key(s) that shape the model or its data ({listed}); drop them (the "
                          f"run's own config.yaml is used), or start a new run")
    return asked


def describe(cls=Config, prefix: str = "") -> list[str]:
    """One line per field: dotted key, default, help. Used by ``mmkgc-dist config --help``."""
    lines = []
    for f in dataclasses.fields(cls):
        t = _field_types(cls)[f.name]
        if dataclasses.is_dataclass(t):
            lines += describe(t, prefix + f.name + ".")
        else:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            lines.append(f"{prefix}{f.name} = {default!r}  # {f.metadata.get('help', '')}")
    return lines
