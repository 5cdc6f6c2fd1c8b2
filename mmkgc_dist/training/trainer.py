"""The one trainer: the epoch loop with progress and JSONL metrics, batches and negatives, the data cursor and
its checkpoints, for one process and for N ranks alike. Its parts are components: a runtime (``runtime.Runtime``,
built in ``parallel/``) owns the tables, the model, the optimizers and the collectives; ``TrainStep`` is one
update; ``eval.Evaluator`` ranks; ``ModelSelection`` validates and stops early; ``checkpoint`` writes and reads."""
from __future__ import annotations

import logging
import math
import os
import signal
import threading
import time

import numpy as np
import torch
from tqdm import tqdm

from .. import checkpoint
from ..config import Config, compile_on, to_dict
from ..data.format import KGData
from ..data.sampling import NegativeSampler
from ..data.training_statistics import TrainingStatistics
from ..data.stream import StreamingTriples, rows_answering
from ..errors import RunInterrupted, TrainingDiverged
from ..eval.evaluator import Evaluator
from .footprint import check_fits
from .host import tune_training_process
from ..model.assembly import assemble_model
from ..rng import numpy_rng
from ..run_folder import record_config
from ..runtime import Runtime
from .prefetch import to_device_ahead
from .selection import ModelSelection, in_train
from .step import TrainStep
from .trackers import make_trackers

log = logging.getLogger("mmkgc_dist")


class Trainer:
    def __init__(self, cfg: Config, data: KGData, runtime: Runtime, run_dir: str | None = None,
                 show_progress: bool = True):
        self.cfg, self.data, self.runtime, self.run_dir = cfg, data, runtime, run_dir
        self.show_progress = show_progress and runtime.is_main
        self.world_size = runtime.world_size
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        tune_training_process()
        fits = lambda dims, use_mat: check_fits(  # noqa: E731
            cfg, data.num_entities, data.num_relations, dims, runtime.world_size, use_mat, runtime.device,
            {m: int(data.features[m].present.sum()) for m in dims})
        model = assemble_model(cfg, data, runtime, training=True, before_build=fits)
        self.modalities, self.scoring, self.use_mat = model.modalities, model.scoring, model.use_mat
        self.stream = self._make_stream()
        self.statistics = TrainingStatistics(data, cfg.data.path,
                                             self.stream.manifest if self.stream is not None else None)
        self.sampler = self._make_sampler()
        self.step_fn = TrainStep(cfg, runtime, self.scoring, data.num_entities)
        self.evaluator = Evaluator(cfg, data, runtime, self.scoring, self.statistics, show_progress)
        self.epoch, self.step, self.batch_in_epoch = 0, 0, 0
        self._logger = None            # opened at the first record: constructing a trainer writes nothing
        self.selection = ModelSelection(cfg, os.path.join(run_dir, "checkpoints") if run_dir else None,
                                        runtime.is_main)
        self._valid_in_train: np.ndarray | None = None
        self._saved: tuple[dict, str] | None = None
        # Called on rank 0 after each validation run as hook(epoch, step, metrics); one that returns a reason
        # stops training there (a tuning study's pruner). The verdict reaches every rank.
        self.validation_hooks: list = []
        self.stopped_by: str | None = None

    @property
    def logger(self):
        """The run's trackers (training/trackers.py), opened on rank 0 at the first record."""
        if self._logger is None:
            writes = self.run_dir if self.runtime.is_main else None
            if writes:
                os.makedirs(writes, exist_ok=True)
            self._logger = make_trackers(writes, self.cfg.run, _flat(to_dict(self.cfg)))
        return self._logger

    # ------------------------------------------------------------------------------------ data
    def _make_stream(self) -> StreamingTriples | None:
        """data.loader=stream: this rank's share of the training row groups, read from data.path."""
        d, runtime = self.cfg.data, self.runtime
        if d.loader != "stream":
            return None
        return StreamingTriples(d.path, "train", rank=runtime.rank, world_size=runtime.world_size,
                                batch_size=self.cfg.train.batch_size // runtime.world_size, seed=self.cfg.train.seed,
                                window_rows=d.shuffle_window_rows, workers=d.loader_workers,
                                prefetch=d.prefetch_windows)

    def _make_sampler(self) -> NegativeSampler:
        cfg, data = self.cfg.train, self.data
        head_prob, degree = self.statistics.sampling() if self.stream is not None or \
            cfg.negative_entities == "degree" else (None, None)
        return NegativeSampler(None if self.stream is not None else data.splits["train"], data.num_entities,
                               data.num_relations, cfg.num_negatives, cfg.corruption, cfg.negatives,
                               cfg.chunk_size, cfg.filter_negatives, head_prob=head_prob,
                               degree=degree if cfg.negative_entities == "degree" else None, side=cfg.corruption_side,
                               seed=cfg.seed, device=self.runtime.device,
                               compile=compile_on(self.cfg, self.runtime.device))

    def streamed_batches(self):
        """This rank's batches from the streaming loader, from the cursor on: (counters, rows, offset, share)."""
        self.stream.load_state_dict({"epoch": self.epoch, "batch": self.batch_in_epoch})
        numbered = ((self.stream.batch - 1, batch) for batch in self.stream)
        for index, batch in to_device_ahead(numbered, self.runtime.device):
            yield (self.epoch, index, self.runtime.rank), batch, 0, self.stream.batch_share(index)

    # ------------------------------------------------------------------------------------ training
    # The data stream is random-access: the epoch's order and each batch's negatives come from seeds
    # derived from (seed, epoch[, batch]), so the cursor (epoch, batch_in_epoch) is all a resume needs.
    def epoch_order(self) -> np.ndarray:
        return numpy_rng(self.cfg.train.seed, "epoch_order", self.epoch).permutation(len(self.data.splits["train"]))

    def batches_per_epoch(self) -> int:
        if self.stream is not None:
            return self.stream.batches_per_epoch
        return -(-len(self.data.splits["train"]) // self.cfg.train.batch_size)

    def global_batches(self):
        """(index, global batch) from the cursor to the end of the epoch; the last batch may be smaller."""
        train, order, bs = self.data.splits["train"], self.epoch_order(), self.cfg.train.batch_size
        for index in range(self.batch_in_epoch, self.batches_per_epoch()):
            yield index, train[order[index * bs:(index + 1) * bs]]

    def memory_batches(self):
        """This process's slices of the shuffled global batches, from the cursor on: (counters, rows, offset,
        share). Negatives are keyed by global position, so any world size trains on identical data."""
        for index, batch in to_device_ahead(self.global_batches(), self.runtime.device):
            lo, hi = self.runtime.batch_slice(len(batch))
            yield (self.epoch, index), batch[lo:hi], lo, (hi - lo) / len(batch)

    def batches(self):
        """This process's training rows with their negatives (nothing is dropped); ``NegativeBatch.share``, its
        part of the global batch, weights its loss."""
        rank_batches = self.streamed_batches() if self.stream is not None else self.memory_batches()
        for counters, rows, offset, share in rank_batches:
            yield rows, self.sampler.sample(rows, counters, offset=offset, share=share)

    def fit(self) -> dict:
        """Train to the configured end. On SIGTERM the run stops at a step boundary all ranks agree on (the next
        step alone in one process, the next logging step on N ranks — the flag rides on the metrics' all-reduce
        there, so no step pays a collective of its own), saves a checkpoint and raises RunInterrupted."""
        with TerminationRequest() as stop:
            return self._fit(stop)

    def _fit(self, stop: "TerminationRequest") -> dict:
        cfg = self.cfg.train
        steps_per_epoch = self.batches_per_epoch()
        total = cfg.epochs * steps_per_epoch if not cfg.max_steps else min(cfg.max_steps, cfg.epochs * steps_per_epoch)
        bar = tqdm(total=total, initial=self.step, desc="train", unit="step", disable=not self.show_progress,
                   dynamic_ncols=True, mininterval=1.0)
        try:
            last, reduced = {}, True
            t0 = time.time()
            positives = 0
            while self.epoch < cfg.epochs and not self._done() and not self.selection.stop and not self.stopped_by:
                for batch, negatives in self.batches():
                    last, reduced = self.step_fn(batch, negatives), False
                    self.step += 1
                    self.batch_in_epoch += 1
                    positives += len(batch) * self.world_size
                    rate = positives / max(time.time() - t0, 1e-9)
                    bar.update(1)
                    logging_step = self.step % cfg.log_every == 0 or self.step == 1
                    if logging_step:
                        # global metrics (a collective) only on logging steps; the bar shows the last of them
                        last, reduced = self._finite_global({**last, STOP_FLAG: float(stop.requested)}), True
                        stopping = last.pop(STOP_FLAG) > 0
                        self.logger.log("train", epoch=self.epoch, step=self.step, positives_per_s=round(rate, 1),
                                        **last)
                        bar.set_postfix(epoch=self.epoch, loss=f"{last['loss']:.4f}", pos_per_s=f"{rate:,.0f}")
                    if self.run_dir and cfg.checkpoint_every_steps and self.step % cfg.checkpoint_every_steps == 0:
                        self.save()
                    if (logging_step and stopping) or (self.world_size == 1 and stop.requested):
                        self._stop_on_signal()
                    if self._done():
                        break
                else:
                    self.epoch += 1
                    self.batch_in_epoch = 0
                    self._end_of_epoch()
        finally:
            bar.close()          # an error line then starts a line of its own
        if not reduced:
            last = self._finite_global(last)
        return {"steps": self.step, "epochs": self.epoch, "seconds": time.time() - t0, **last}

    def _stop_on_signal(self) -> None:
        where = "no run folder: nothing saved"
        if self.run_dir:
            where = f"checkpoint {self.save()}; continue with --resume"
        self.logger.log("interrupted", epoch=self.epoch, step=self.step, signal="SIGTERM")
        self.logger.close(status="KILLED")
        raise RunInterrupted(f"stopped by SIGTERM at epoch {self.epoch}, step {self.step}: {where}")

    def _finite_global(self, metrics: dict) -> dict:
        """The step's metrics reduced over ranks, checked finite. Called where they are read anyway (logging
        steps) and at the run's end — not on other steps, where it would add a host sync (checkpoints check
        the parameters themselves). The global loss is the same number on every rank, so every rank stops together."""
        metrics = self.runtime.reduce_metrics(metrics)
        losses = {k: metrics[k] for k in ("loss", "adv_loss", "gen_loss") if k in metrics}
        if not all(map(math.isfinite, losses.values())):
            raise TrainingDiverged(f"training diverged at epoch {self.epoch}, step {self.step}: losses {losses} "
                                   f"(lower train.lr, or resume from a checkpoint saved before the loss went non-finite)")
        return metrics

    def _done(self) -> bool:
        return bool(self.cfg.train.max_steps) and self.step >= self.cfg.train.max_steps

    def _end_of_epoch(self) -> None:
        cfg = self.cfg
        if self.selection.due(self.epoch) and "valid" in self.data.splits:
            metrics = self.evaluate_for_selection()
            self.logger.log("eval", epoch=self.epoch, step=self.step, **_flat(metrics))
            self.selection.observe(metrics, self.epoch, self.step, self.save if self.run_dir else lambda: None)
            if self.runtime.is_main:
                tqdm.write(self.selection.last_line())       # one line per validation run, above the bar
            self._ask_hooks(metrics)
        if self.run_dir and cfg.train.checkpoint_every and self.epoch % cfg.train.checkpoint_every == 0:
            self.save()

    def _ask_hooks(self, metrics: dict) -> None:
        # hooks may exist on rank 0 alone (a trial's pruner), so N ranks always share the verdict: one small
        # broadcast per validation run
        if not self.validation_hooks and self.world_size == 1:
            return
        verdict = None
        if self.runtime.is_main:
            for hook in self.validation_hooks:
                verdict = verdict or hook(self.epoch, self.step, metrics)
        self.stopped_by = self.runtime.share(verdict)
        if self.stopped_by:
            log.info("stopping at epoch %d: %s", self.epoch, self.stopped_by)

    def evaluate_for_selection(self) -> dict:
        """The validation run of model selection (eval.valid_protocol), without the triples that also occur
        in train when eval.exclude_train_overlap (counted once, in ``selection.overlap``)."""
        valid, cfg = self.data.splits["valid"], self.cfg.eval
        if self.selection.overlap is None:
            train = self.data.splits["train"] if self.stream is None else self.runtime.gather_rows(
                rows_answering(self.cfg.data.path, "train", valid, self.data.num_relations,
                               rank=self.runtime.rank, world_size=self.world_size, manifest=self.stream.manifest))
            self._valid_in_train = in_train(valid, train)
            self.selection.overlap = {"valid_rows": int(len(valid)),
                                      "valid_unique": int(len(np.unique(valid, axis=0))),
                                      "in_train_rows": int(self._valid_in_train.sum()),
                                      "in_train_unique": int(len(np.unique(valid[self._valid_in_train], axis=0))),
                                      "excluded": bool(cfg.exclude_train_overlap)}
            if cfg.exclude_train_overlap and self._valid_in_train.all():
                log.warning("every validation triple also occurs in train; selecting on all of them")
                self.selection.overlap["excluded"] = False
        triples = valid[~self._valid_in_train] if self.selection.overlap["excluded"] else valid
        return self.evaluate("valid", triples=triples, protocol=cfg.valid_protocol or cfg.protocol,
                             breakdown=False)

    def evaluate(self, split: str, ties: str | None = None, triples: np.ndarray | None = None,
                 protocol: str | None = None, breakdown: bool = True) -> dict:
        """The current model ranked on ``split`` (eval.Evaluator.evaluate)."""
        return self.evaluator.evaluate(split, ties, triples, protocol, breakdown)

    # ------------------------------------------------------------------------------------ checkpoints
    def cursor(self) -> dict:
        return {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "step": self.step}

    def set_cursor(self, cursor: dict) -> None:
        self.epoch, self.batch_in_epoch, self.step = cursor["epoch"], cursor["batch_in_epoch"], cursor["step"]

    def save(self) -> str:
        """A checkpoint of the current cursor (once: a second call at the same cursor returns the first; the same
        step at an epoch's end is a new cursor — epoch + 1, batch 0 — and is saved again)."""
        if self._saved is not None and self._saved[0] == self.cursor():
            return self._saved[1]
        if self.runtime.is_main:           # a checkpoint goes with the config that rebuilds its model (written once)
            os.makedirs(self.run_dir, exist_ok=True)
            record_config(self.run_dir, self.cfg)
        path = checkpoint.save(self.runtime, os.path.join(self.run_dir, "checkpoints"), self.cursor(),
                               self.cfg.train.keep_checkpoints)
        self.logger.log("checkpoint", path=os.path.basename(path), **self.cursor())
        self._saved = (self.cursor(), path)
        return path

    def resume(self, path: str | None = None, optimizer: bool = True) -> bool:
        """Continue from ``path`` or the run's newest verified checkpoint; False when there is none.
        ``optimizer=False`` restores the model only (evaluation, export)."""
        path = path or (checkpoint.latest(os.path.join(self.run_dir, "checkpoints")) if self.run_dir else None)
        if path is None:
            return False
        self.set_cursor(checkpoint.load(self.runtime, path, self.stream is not None, optimizer))
        if optimizer:
            self.selection.rewind(self.step)
        log.info("%s %s (epoch %d, step %d)", "resumed from" if optimizer else "loaded", path, self.epoch, self.step)
        return True


STOP_FLAG = "_stop_requested"          # travels with a logging step's metrics: summed, > 0 on any rank stops all


class TerminationRequest:
    """Catches SIGTERM while training (main thread only) and remembers it; the previous handler comes back on
    exit. A second SIGTERM is not caught again: the default action ends the process."""

    def __init__(self):
        self.requested, self._previous = 0, None

    def _handler(self, signum, frame) -> None:
        self.requested = signum
        signal.signal(signal.SIGTERM, self._previous or signal.SIG_DFL)
        log.warning("SIGTERM: stopping at the next step boundary with a checkpoint (send it again to stop now)")

    def __enter__(self) -> "TerminationRequest":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None


def _flat(metrics: dict, prefix: str = "") -> dict:
    """Scalars of a metrics record for the JSONL log; breakdowns (per relation/category) stay in results.json."""
    out = {}
    for k, v in metrics.items():
        if k in ("per_relation", "per_category"):
            continue
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out
