"""Single-process trainer: builds tables, model, generators and optimizers from the config, runs the
epoch loop with progress and JSONL metrics, evaluates, and saves/loads checkpoints."""
from __future__ import annotations

import logging
import os
import time

import numpy as np
import torch
from tqdm import tqdm

from ..config import Config, ConfigError, dump_config
from ..data.errors import DataError
from ..data.format import KGData, read_training_statistics
from ..data.sampling import DegreeDistribution, NegativeSampler
from ..data.statistics import head_probability
from ..data.stream import StreamingTriples, rows_answering
from ..eval.engine import CandidateShard, rank_queries
from ..eval.ranking import eval_subset, link_prediction_metrics, protocol_label
from ..integrity import prune
from ..model import DistanceKernels, MATGenerators, RotatE
from ..model.kgc import MultiModalKGC
from ..rng import numpy_rng, torch_seed
from ..optim import OptimizerGroup, table_optimizer
from ..tables import LocalTables
from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .metrics import JsonlLogger
from .step import LocalEmbedder, TrainStep, local_generator_update

log = logging.getLogger("mmkgc_dist")


def fused_modalities(cfg: Config, data: KGData) -> list[str]:
    """Configured modalities the data has; a modality absent from the data is missing for every entity."""
    missing = [m for m in cfg.model.modalities if m not in data.features]
    for m in missing:
        log.warning("modality %r: no features in the dataset (missing for all entities); fusing without it", m)
    return [m for m in cfg.model.modalities if m in data.features]


class Trainer:
    def __init__(self, cfg: Config, data: KGData, run_dir: str | None = None, show_progress: bool = True):
        self.cfg, self.data, self.run_dir = cfg, data, run_dir
        self.show_progress = show_progress
        self.world_size = 1
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        self.rotate = RotatE(cfg.model.dim, cfg.model.gamma, cfg.model.epsilon)
        self.modalities = fused_modalities(cfg, data)
        self.features = {m: data.features[m] for m in self.modalities}
        self.use_mat = cfg.mat.enabled and bool(self.modalities)
        self.device = self.choose_device()
        self.kernels = DistanceKernels(compile=cfg.train.compile)
        self.loss_scale = 1.0
        self._build()
        self._statistics = self._known = None
        self.stream = self._make_stream()
        self.sampler = self._make_sampler()
        self.step_fn = TrainStep(cfg, self.embedder, data.num_entities, self.core, self.generators, self.rotate,
                                 self.kernels, self.opt_model, self.update_generator, self.loss_scale, self.device)
        self.epoch, self.step, self.batch_in_epoch = 0, 0, 0
        if run_dir:
            os.makedirs(run_dir, exist_ok=True)
        self.logger = JsonlLogger(os.path.join(run_dir, "metrics.jsonl") if run_dir else None,
                                  os.path.join(run_dir, "tensorboard") if run_dir and cfg.run.tensorboard else None)
        if run_dir:
            dump_config(cfg, os.path.join(run_dir, "config.yaml"))

    def choose_device(self) -> torch.device:
        wanted = self.cfg.train.device
        if wanted == "cuda" and not torch.cuda.is_available():
            raise ConfigError("train.device: cuda requested but no CUDA device is visible")
        return torch.device("cuda" if wanted == "cuda" or (wanted == "auto" and torch.cuda.is_available()) else "cpu")

    def _build(self) -> None:
        """Tables, dense model, generators and their optimizers (the distributed trainer overrides this).
        Same initial values and the same optimizers as the distributed trainer (named streams, rng.py)."""
        cfg, width = self.cfg, 2 * self.cfg.model.dim
        self.tables = LocalTables(self.data.num_entities, self.data.num_relations, cfg.model.dim,
                                  self.rotate.entity_init_bound, self.rotate.relation_init_bound, self.features,
                                  cfg.model.raw_features == "trainable", cfg.train.seed).to(self.device)
        torch_seed(cfg.train.seed, "dense_init")
        self.core = self.model = MultiModalKGC(width, {m: f.dim for m, f in self.features.items()}).to(self.device)
        self.embedder = LocalEmbedder(self.tables, self.model)
        torch_seed(cfg.train.seed, "generator_init")
        self.generators = MATGenerators(self.modalities, width, cfg.mat.noise_dim, cfg.mat.hidden).to(self.device) \
            if self.use_mat else None
        tables = [p for p in self.tables.parameters() if p.requires_grad]
        dense = [p for p in self.model.parameters() if p.requires_grad]
        # The same rules as the distributed trainer (optim.py): the configured table optimizer, Adam for the
        # dense fusion weights.
        self.opt_model = OptimizerGroup(
            table_optimizer(cfg.train.table_optimizer, tables, cfg.train.lr, cfg.train.adagrad_lr),
            torch.optim.Adam(dense, lr=cfg.train.lr) if dense else None)
        self.opt_generator = torch.optim.Adam(self.generators.parameters(), lr=cfg.mat.lr, fused=True) \
            if self.use_mat else None
        self.update_generator = local_generator_update(self.generators, self.opt_generator) if self.use_mat else None
        torch_seed(cfg.train.seed, "generator_noise", self.rank_and_world()[0])

    # ------------------------------------------------------------------------------------ data
    def rank_and_world(self) -> tuple[int, int]:
        return 0, 1

    def _make_stream(self) -> StreamingTriples | None:
        """data.loader=stream: this rank's share of the training row groups, read from data.path."""
        d = self.cfg.data
        if d.loader != "stream":
            return None
        rank, world = self.rank_and_world()
        return StreamingTriples(d.path, "train", rank=rank, world_size=world,
                                batch_size=self.cfg.train.batch_size // world, seed=self.cfg.train.seed,
                                window_rows=d.shuffle_window_rows, workers=d.loader_workers,
                                prefetch=d.prefetch_windows)

    def training_statistics(self) -> tuple[np.ndarray | None, np.ndarray]:
        """(P(corrupt head | relation), entity degrees) of the training split: from the dataset's stored
        statistics when streaming, from the triples in memory otherwise (head_prob None: the sampler's own)."""
        if self._statistics is None:
            if self.stream is not None:
                relations, degree = read_training_statistics(self.cfg.data.path, self.stream.manifest)
                self._statistics = head_probability(relations), degree
            else:
                train = self.data.splits["train"]
                self._statistics = None, np.bincount(train[:, [0, 2]].ravel(), minlength=self.data.num_entities)
        return self._statistics

    def _make_sampler(self) -> NegativeSampler:
        cfg, data = self.cfg.train, self.data
        head_prob, degree = self.training_statistics() if self.stream is not None or \
            cfg.negative_entities == "degree" else (None, None)
        return NegativeSampler(None if self.stream is not None else data.splits["train"], data.num_entities,
                               data.num_relations, cfg.num_negatives, cfg.corruption, cfg.negatives,
                               cfg.chunk_size, cfg.filter_negatives, head_prob=head_prob,
                               degree=degree if cfg.negative_entities == "degree" else None)

    def streamed_batches(self):
        """This rank's batches from the streaming loader, from the cursor on, with their negatives."""
        rank, _ = self.rank_and_world()
        self.stream.load_state_dict({"epoch": self.epoch, "batch": self.batch_in_epoch})
        for batch in self.stream:
            rng = numpy_rng(self.cfg.train.seed, "negatives", self.epoch, self.stream.batch - 1, rank)
            yield batch, self.sampler.sample(batch, rng)

    # ------------------------------------------------------------------------------------ training
    # The data stream is random-access: the epoch's order and each batch's negatives come from seeds
    # derived from (seed, epoch[, batch]), so the cursor (epoch, batch_in_epoch) is all a resume needs.
    def epoch_order(self) -> np.ndarray:
        return numpy_rng(self.cfg.train.seed, "epoch_order", self.epoch).permutation(len(self.data.splits["train"]))

    def batch_rng(self, index: int) -> np.random.Generator:
        return numpy_rng(self.cfg.train.seed, "negatives", self.epoch, index)

    def batches_per_epoch(self) -> int:
        if self.stream is not None:
            return self.stream.batches_per_epoch
        return -(-len(self.data.splits["train"]) // self.cfg.train.batch_size)

    def global_batches(self):
        """(index, global batch) from the cursor to the end of the epoch; the last batch may be smaller."""
        train, order, bs = self.data.splits["train"], self.epoch_order(), self.cfg.train.batch_size
        for index in range(self.batch_in_epoch, self.batches_per_epoch()):
            yield index, train[order[index * bs:(index + 1) * bs]]

    def batches(self):
        """Shuffled batches of the training triples with their negatives (nothing is dropped)."""
        if self.stream is not None:
            yield from self.streamed_batches()
            return
        for index, batch in self.global_batches():
            yield batch, self.sampler.sample(batch, self.batch_rng(index))

    def reduce_metrics(self, metrics: dict) -> dict:
        return metrics

    def fit(self) -> dict:
        cfg = self.cfg.train
        steps_per_epoch = self.batches_per_epoch()
        total = cfg.epochs * steps_per_epoch if not cfg.max_steps else min(cfg.max_steps, cfg.epochs * steps_per_epoch)
        bar = tqdm(total=total, initial=self.step, desc="train", unit="step", disable=not self.show_progress,
                   dynamic_ncols=True, mininterval=1.0)
        try:
            last = {}
            t0 = time.time()
            positives = 0
            while self.epoch < cfg.epochs and not self._done():
                for batch, negatives in self.batches():
                    metrics = self.reduce_metrics(self.step_fn(batch, negatives))
                    self.step += 1
                    self.batch_in_epoch += 1
                    positives += len(batch) * self.world_size
                    rate = positives / max(time.time() - t0, 1e-9)
                    bar.update(1)
                    bar.set_postfix(epoch=self.epoch, loss=f"{metrics['loss']:.4f}", pos_per_s=f"{rate:,.0f}")
                    if self.step % cfg.log_every == 0 or self.step == 1:
                        self.logger.log("train", epoch=self.epoch, step=self.step, positives_per_s=round(rate, 1),
                                        **metrics)
                    last = metrics
                    if self.run_dir and cfg.checkpoint_every_steps and self.step % cfg.checkpoint_every_steps == 0:
                        self.save()
                    if self._done():
                        break
                else:
                    self.epoch += 1
                    self.batch_in_epoch = 0
                    self._end_of_epoch()
        finally:
            bar.close()          # an error line then starts a line of its own
        return {"steps": self.step, "epochs": self.epoch, "seconds": time.time() - t0, **last}

    def _done(self) -> bool:
        return bool(self.cfg.train.max_steps) and self.step >= self.cfg.train.max_steps

    def _end_of_epoch(self) -> None:
        cfg = self.cfg
        if cfg.eval.every and self.epoch % cfg.eval.every == 0 and "valid" in self.data.splits:
            metrics = self.evaluate("valid")
            self.logger.log("eval", epoch=self.epoch, step=self.step, **_flat(metrics))
        if self.run_dir and cfg.train.checkpoint_every and self.epoch % cfg.train.checkpoint_every == 0:
            self.save()

    # ------------------------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def embedding_chunks(self, chunk: int = 4096):
        """(ids, structural rows, joint embeddings, AdaMF weights or None) of this process's entities."""
        for start in range(0, self.data.num_entities, chunk):
            ids = torch.arange(start, min(start + chunk, self.data.num_entities))
            rows = self.tables.entities(ids.to(self.device))
            joint, weights = self.model.embed(rows)
            yield ids, rows.structural, joint, weights

    def entity_embeddings(self, chunk: int = 4096) -> torch.Tensor:
        return torch.cat([joint for _, _, joint, _ in self.embedding_chunks(chunk)])

    def barrier(self) -> None:
        """Nothing to wait for in one process (the distributed trainer synchronises its ranks)."""

    def known_triples(self) -> np.ndarray:
        """Triples filtered out of rankings. A streamed training split stays on disk: only its rows that share
        a query's (entity, relation) are collected, once, in one pass — the same filter, bounded memory."""
        held = [t for t in self.data.splits.values() if len(t)]
        if self.stream is None:
            return np.concatenate(held)
        if self._known is None:
            rank, world = self.rank_and_world()
            found = rows_answering(self.cfg.data.path, "train", np.concatenate(held), self.data.num_relations,
                                   rank=rank, world_size=world, manifest=self.stream.manifest)
            self._known = np.concatenate(held + [self.gather_rows(found)])
        return self._known

    def gather_rows(self, rows: np.ndarray) -> np.ndarray:
        return rows

    def degree_distribution(self) -> DegreeDistribution:
        return DegreeDistribution(self.training_statistics()[1])

    def candidate_shard(self) -> CandidateShard:
        """The candidates this process ranks against: all entities (the distributed trainer: its own)."""
        return CandidateShard.whole(self.entity_embeddings())

    def relation_table(self) -> torch.Tensor:
        return self.tables.relation.weight.detach()

    def protocol_suffix(self) -> str:
        return ""

    @torch.no_grad()
    def evaluate(self, split: str, ties: str | None = None) -> dict:
        """Filtered ranking by the one engine (eval/engine.py) against this process's candidate shard."""
        cfg = self.cfg.eval
        ties = ties or cfg.ties
        triples = eval_subset(self.data.splits[split], cfg.max_queries, self.cfg.train.seed)
        bar = tqdm(total=2 * len(triples), desc=f"eval {split}", unit="query", disable=not self.show_progress,
                   dynamic_ncols=True, leave=False)
        sampled = (cfg, self.degree_distribution(), self.data.num_entities, self.cfg.train.seed) \
            if cfg.protocol == "sampled" else None
        ranks = rank_queries(self.candidate_shard(), self.relation_table(), self.rotate, self.kernels, triples,
                             self.known_triples(), ties, cfg.batch_size, sampled, progress=bar)
        bar.close()
        label = protocol_label(cfg, self.cfg.train.seed, len(triples), len(self.data.splits[split]))
        return {**link_prediction_metrics(ranks), "ties": ties, "split": split,
                "protocol": label + self.protocol_suffix()}

    # ------------------------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        return {"tables": self.tables.state_dict(), "model": self.model.state_dict(),
                "generators": self.generators.state_dict() if self.generators else None,
                "opt_model": self.opt_model.state_dict(),
                "opt_generator": self.opt_generator.state_dict() if self.opt_generator else None,
                "cursor": self.cursor(), "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state() if self.device.type == "cuda" else None}

    def cursor(self) -> dict:
        return {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "step": self.step}

    def set_cursor(self, cursor: dict) -> None:
        self.epoch, self.batch_in_epoch, self.step = cursor["epoch"], cursor["batch_in_epoch"], cursor["step"]

    def load_state_dict(self, state: dict) -> None:
        self.tables.load_state_dict(state["tables"])
        self.model.load_state_dict(state["model"])
        self.opt_model.load_state_dict(state["opt_model"])
        if self.generators is not None:
            if state["generators"] is None:
                raise ValueError("checkpoint has no MAT generators but mat.enabled=true")
            self.generators.load_state_dict(state["generators"])
            self.opt_generator.load_state_dict(state["opt_generator"])
        self.set_cursor(state["cursor"])
        torch.set_rng_state(state["torch_rng"])
        if self.device.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"])

    def save(self) -> str:
        directory = os.path.join(self.run_dir, "checkpoints")
        path = save_checkpoint(self.state_dict(), directory, self.step)
        self.logger.log("checkpoint", path=os.path.basename(path), epoch=self.epoch, step=self.step)
        self.prune_checkpoints(directory, path)
        return path

    def prune_checkpoints(self, directory: str, just_written: str) -> None:
        for old in prune(directory, self.cfg.train.keep_checkpoints, just_written):
            log.debug("removed old checkpoint %s (train.keep_checkpoints=%d)", old, self.cfg.train.keep_checkpoints)

    def share(self, obj):
        """Rank 0's value of ``obj`` on every rank (one process: itself)."""
        return obj

    def resume(self, path: str | None = None) -> bool:
        path = path or (latest_checkpoint(os.path.join(self.run_dir, "checkpoints")) if self.run_dir else None)
        if path is None:
            return False
        self.load_state(load_checkpoint(path), path)
        log.info("resumed from %s (epoch %d, step %d)", path, self.epoch, self.step)
        return True

    def load_state(self, state: dict, origin: str) -> None:
        """load_state_dict with one-line errors for a checkpoint that does not fit this config."""
        try:
            self.load_state_dict(state)
        except (RuntimeError, KeyError, ValueError, TypeError) as exc:
            raise DataError(f"{origin}: checkpoint does not fit this run's config ({_first_line(exc)})") from exc


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


def _flat(metrics: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in metrics.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out
