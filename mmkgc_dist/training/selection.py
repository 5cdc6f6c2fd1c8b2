"""Model selection and early stopping on the validation split.

Every ``eval.every_epochs`` epochs the trainer ranks the validation triples (``eval.valid_protocol``) and
compares ``eval.select_by`` with the best so far; a gain (by more than ``train.early_stopping.min_delta``)
saves a checkpoint and names it in ``checkpoints/best.json``, which pruning never deletes. After
``train.early_stopping.patience`` validation runs without a gain training stops. At the end the best
checkpoint's model is tested, and ``results.json`` says which one was selected and why.

Validation triples that also occur in the training split are only a test of memorisation; with
``eval.exclude_train_overlap`` (default) they are left out of the selection metric, counted and reported.
The state (best, history, runs without gain) lives in ``best.json`` and survives a resume.
"""
from __future__ import annotations

import logging
import os

import numpy as np

from ..data.checks import triple_keys
from ..checkpoint import BEST, prune, read_selection, write_selection

log = logging.getLogger("mmkgc_dist")


def in_train(valid: np.ndarray, train_rows: np.ndarray) -> np.ndarray:
    """bool per validation triple: it also occurs among ``train_rows``."""
    v, t = triple_keys(valid, train_rows)
    return np.isin(v, t)


class ModelSelection:
    def __init__(self, cfg, checkpoints: str | None, is_main: bool):
        self.cfg, self.checkpoints, self.is_main = cfg, checkpoints, is_main
        self.metric = cfg.eval.select_by
        self.lower_is_better = self.metric == "mr"
        self.state = {"metric": self.metric, "best": None, "history": [], "without_gain": 0, "stopped_early": False}
        self.overlap: dict | None = None
        self.resumed = self._read()

    @property
    def active(self) -> bool:
        return bool(self.cfg.eval.every_epochs)

    def due(self, epoch: int) -> bool:
        return self.active and epoch % self.cfg.eval.every_epochs == 0

    @property
    def best(self) -> dict | None:
        return self.state["best"]

    @property
    def stop(self) -> bool:
        return self.state["stopped_early"]

    def _read(self) -> bool:
        saved = read_selection(self.checkpoints) if self.checkpoints else None
        if saved is None:
            return False
        path = os.path.join(self.checkpoints, BEST)
        if saved.get("metric") == self.metric:
            self.state.update(saved)
            return True
        log.warning("%s selected by %s; this run selects by %s: selection starts afresh", path, saved.get("metric"),
                    self.metric)
        return False

    def _write(self) -> None:
        if not (self.is_main and self.checkpoints):
            return
        write_selection(self.checkpoints, self.state)

    def rewind(self, step: int) -> None:
        """Training resumes at ``step``: forget validation runs after it (a run interrupted after validating
        but before its next checkpoint would otherwise count them twice); the best stays (its checkpoint
        exists); runs without gain are recounted."""
        history = [h for h in self.state["history"] if h["step"] <= step]
        if len(history) == len(self.state["history"]) and not self.state["stopped_early"]:
            return
        best_step = self.best["step"] if self.best else -1
        self.state.update(history=history, stopped_early=False,
                          without_gain=sum(1 for h in history if h["step"] > best_step))
        self._write()

    def gain(self, value: float) -> bool:
        best = self.best
        if best is None:
            return True
        delta = self.cfg.train.early_stopping.min_delta
        return value < best["value"] - delta if self.lower_is_better else value > best["value"] + delta

    def last_line(self) -> str:
        """The latest validation run in one line: its value, the best so far, the runs without a gain."""
        last, best = self.state["history"][-1], self.state["best"]
        patience = self.cfg.train.early_stopping.patience
        waited = self.state["without_gain"]
        gain = "new best" if waited == 0 else f"best {best['value']:.4f} at epoch {best['epoch']}; {waited} " \
            f"run(s) without a gain" + (f" (patience {patience})" if patience else "")
        return f"valid epoch {last['epoch']} (step {last['step']}): {self.metric} {last['value']:.4f} — {gain}"

    def observe(self, metrics: dict, epoch: int, step: int, save) -> None:
        """One validation run: record it; on a gain ``save()`` a checkpoint and name it the best."""
        value = float(metrics[self.metric])
        record = {"epoch": epoch, "step": step, "value": value}
        self.state["history"].append(record)
        if self.gain(value):
            path = save()
            self.state["best"] = {**record, "checkpoint": os.path.basename(path) if path else None}
            self.state["without_gain"] = 0
            self._write()
            if path and self.is_main:     # the previous best may go now (pruning spares only the named best)
                prune(self.checkpoints, self.cfg.train.keep_checkpoints, path)
        else:
            self.state["without_gain"] += 1
            patience = self.cfg.train.early_stopping.patience
            if patience and self.state["without_gain"] >= patience:
                self.state["stopped_early"] = True
                log.info("early stopping: %d validation runs without a gain in %s (best %.4f at epoch %d)",
                         self.state["without_gain"], self.metric, self.best["value"], self.best["epoch"])
        self._write()

    def report(self) -> dict:
        """The ``selection`` record of results.json."""
        best = self.best
        every = self.cfg.eval.every_epochs
        runs = len(self.state["history"])
        why = (f"best validation {self.metric} ({'lowest' if self.lower_is_better else 'highest'}) of {runs} "
               f"runs, one every {every} epoch(s)")
        if self.stop:
            why += (f"; stopped early after {self.state['without_gain']} runs without a gain "
                    f"(patience {self.cfg.train.early_stopping.patience})")
        return {"metric": self.metric, "selected": best, "why": why, "history": self.state["history"],
                "valid_overlap": self.overlap}
