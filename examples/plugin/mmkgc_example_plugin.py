"""An mmkgc-dist plugin: a scoring function and a tracker, declared as entry points in pyproject.toml.

- ``TransEL2`` (``--model.scoring=transe-l2``): f(h, r, t) = γ − ‖h + r − t‖₂. A scorer says how a query is
  formed (``query``), how a query meets candidates (``similarity``, and ``kernels().all_pairs`` for one query
  against many), and, for exported vectors, the same function in numpy (``numpy_score``).
- ``CsvTracker`` (``--run.trackers=[csv]``): every numeric record of the run as a row of ``RUN/records.csv``.
"""
from __future__ import annotations

import csv
import os

import numpy as np
import torch
from torch import Tensor

from mmkgc_dist.model.scorers import Scorer, ScoreKernels


class TransEL2(Scorer):
    def __init__(self, dim: int, gamma: float, epsilon: float = 2.0):
        super().__init__(dim, gamma, epsilon)
        self.bias = gamma

    @property
    def entity_init_bound(self) -> float:
        return (self.gamma + self.epsilon) / self.width

    def query(self, anchor: Tensor, relation: Tensor, head_mode: Tensor | None = None) -> Tensor:
        if head_mode is None:
            return anchor + relation
        return anchor + torch.where(head_mode.unsqueeze(-1), -relation, relation)   # a head query: t − r

    def similarity(self, query: Tensor, candidates: Tensor) -> Tensor:
        return -(query - candidates).pow(2).sum(-1).clamp_min(1e-12).sqrt()

    def kernels(self, compile: bool = False) -> ScoreKernels:
        return L2Kernels(self, compile)

    def describe(self) -> dict:
        return {**super().describe(), "score": "gamma - ||h + r - t||_2  (higher is more plausible)",
                "entities": "use the 'joint' column", "relations": "use the 'embedding' column"}

    def numpy_score(self, head: np.ndarray, relation_rows: np.ndarray, tail: np.ndarray) -> np.ndarray:
        return self.gamma - np.sqrt(((head + relation_rows - tail) ** 2).sum(1))


class L2Kernels(ScoreKernels):
    def all_pairs(self, query: Tensor, candidates: Tensor, chunk: int = 0) -> Tensor:
        return -torch.cdist(query, candidates, p=2)


class CsvTracker:
    """Built once per run on rank 0 as ``CsvTracker(run_dir, params)``; ``log`` gets every record."""

    def __init__(self, run_dir: str, params: dict):
        self.path = os.path.join(run_dir, "records.csv")
        self._fh = open(self.path, "a", newline="")
        self._csv = csv.writer(self._fh)

    def log(self, kind: str, **fields) -> None:
        for key, value in fields.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self._csv.writerow([kind, fields.get("step", ""), key, value])
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()
