"""Negative sampling: Bernoulli/uniform head-or-tail corruption, per-positive or chunk-shared candidates,
corrupting entities drawn uniformly or in proportion to their training degree, and filtering of false
negatives against the training set (exact, by sorted triple keys; only when the triples are in memory)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .statistics import exact_relation_table, head_probability


def triple_keys(triples: np.ndarray, num_entities: int, num_relations: int) -> np.ndarray:
    """One int64 per (h, r, t); exact for graphs up to ~2^63 / (N² R) (checked by the caller)."""
    return (triples[:, 0] * num_relations + triples[:, 1]) * num_entities + triples[:, 2]


@dataclass
class NegativeBatch:
    """A batch's negatives and their layout, so the step needs nothing else to read them."""
    head_mode: np.ndarray     # bool [B, K] (per_negative sides) or [B]: True where the head is corrupted
    entities: np.ndarray      # int64 [B, K] (per_positive) or [ceil(B / chunk_size), K] (chunk_shared)
    false_negatives: int      # candidates that are known triples and survived resampling
    layout: str = "per_positive"     # or "chunk_shared": each row of ``entities`` serves chunk_size positives
    chunk_size: int = 1

    def rows(self, lo: int, hi: int) -> "NegativeBatch":
        """The negatives of positives [lo, hi) (per-positive layout)."""
        return NegativeBatch(self.head_mode[lo:hi], self.entities[lo:hi], self.false_negatives, self.layout,
                             self.chunk_size)


class DegreeDistribution:
    """Draws entity ids with probability proportional to their degree (inverse CDF, O(log N) per draw)."""

    def __init__(self, degree: np.ndarray):
        total = float(degree.sum())
        if total <= 0:
            raise ValueError("degree-proportional sampling needs at least one training triple")
        self.cdf = np.cumsum(degree, dtype=np.float64) / total

    def draw(self, rng: np.random.Generator, size) -> np.ndarray:
        return np.searchsorted(self.cdf, rng.random(size), side="right").clip(max=len(self.cdf) - 1)


class NegativeSampler:
    """``train`` (in memory) or precomputed ``head_prob`` (streaming: from the dataset's statistics)."""

    def __init__(self, train: np.ndarray | None, num_entities: int, num_relations: int, num_negatives: int,
                 corruption: str = "bern", mode: str = "per_positive", chunk_size: int = 64,
                 filter_negatives: bool = True, max_rounds: int = 10, head_prob: np.ndarray | None = None,
                 degree: np.ndarray | None = None, side: str = "per_negative"):
        self.n, self.k = num_entities, num_negatives
        # The corruption side per negative (the reference's way) for per-positive candidates; chunk-shared
        # candidates serve many positives, so each positive keeps one side there.
        self.side_per_negative = side == "per_negative" and mode == "per_positive"
        self.mode, self.chunk_size, self.max_rounds = mode, chunk_size, max_rounds
        if corruption == "bern":
            self.head_prob = head_prob if head_prob is not None else \
                head_probability(exact_relation_table(train, num_relations))
        else:
            self.head_prob = np.full(num_relations, 0.5)
        self.num_relations = num_relations
        self.degree = DegreeDistribution(degree) if degree is not None else None
        # Chunk-shared candidates cannot be filtered per positive (as in PyTorch-BigGraph): off there.
        self.filter = filter_negatives and mode == "per_positive"
        if self.filter and train is None:
            raise ValueError("exact negative filtering needs the training triples in memory")
        if self.filter:
            if float(num_entities) ** 2 * num_relations >= 2 ** 62:
                raise ValueError("graph too large for exact negative filtering; set train.filter_negatives=false")
            self.known = np.sort(triple_keys(train, num_entities, num_relations))

    def sample(self, batch: np.ndarray, rng: np.random.Generator) -> NegativeBatch:
        p_head = self.head_prob[batch[:, 1]]
        head_mode = rng.random((len(batch), self.k)) < p_head[:, None] if self.side_per_negative else \
            rng.random(len(batch)) < p_head
        if self.mode == "chunk_shared":
            cand = self._draw(rng, (-(-len(batch) // self.chunk_size), self.k))
            return NegativeBatch(head_mode, cand, 0, "chunk_shared", self.chunk_size)
        cand = self._draw(rng, (len(batch), self.k))
        false = 0
        if self.filter:
            false = self._resample_known(batch, head_mode, cand, rng)
        return NegativeBatch(head_mode, cand, false)

    def _draw(self, rng: np.random.Generator, size) -> np.ndarray:
        return self.degree.draw(rng, size) if self.degree is not None else rng.integers(0, self.n, size=size)

    def _is_known(self, batch, head_mode, cand) -> np.ndarray:
        head = head_mode if head_mode.ndim == 2 else head_mode[:, None]
        h = np.where(head, cand, batch[:, :1])
        t = np.where(head, batch[:, 2:3], cand)
        keys = (h * self.num_relations + batch[:, 1:2]) * self.n + t
        pos = np.searchsorted(self.known, keys).clip(max=len(self.known) - 1)
        return self.known[pos] == keys

    def _resample_known(self, batch, head_mode, cand, rng) -> int:
        for _ in range(self.max_rounds):
            hit = self._is_known(batch, head_mode, cand)
            if not hit.any():
                return 0
            cand[hit] = self._draw(rng, int(hit.sum()))
        return int(self._is_known(batch, head_mode, cand).sum())
