"""Negative sampling on the training device, per rank: Bernoulli/uniform head-or-tail corruption, per-positive
or chunk-shared candidates, corrupting entities drawn uniformly or in proportion to their training degree, and
exact filtering of false negatives against the training set (sorted triple keys + binary search; only when the
triples are in memory).

Every random number is counter-based (``rng.counter_bits``): the draws of the positive at global position g of a
batch depend on (seed, epoch, batch, g) only. A rank therefore samples just its own slice of the global batch,
and the negatives of a global batch are identical at 1, 2 or 8 ranks. Counters:

    side per positive      g                      (one side for all of g's negatives)
    per-positive entities  g·K + k                (high 32 bits: the entity; low 32 bits: the side of negative k)
    resampling round r     g·K + k, key of round r (only for candidates that were known triples)
    chunk-shared entities  (first position of the chunk)·K + k
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..rng import counter_bits, split_bits, stream_key
from .statistics import exact_relation_table, head_probability

_UNIT = 2.0 ** -32
MAX_ENTITIES = 1 << 31          # entity = (32 random bits × N) >> 32 stays inside int64


def triple_keys(triples: np.ndarray, num_entities: int, num_relations: int) -> np.ndarray:
    """One int64 per (h, r, t); exact for graphs up to ~2^63 / (N² R) (checked by the caller)."""
    return (triples[:, 0] * num_relations + triples[:, 1]) * num_entities + triples[:, 2]


@dataclass
class NegativeBatch:
    """A batch's negatives and their layout (tensors on the training device), so the step needs nothing else."""
    head_mode: Tensor         # bool [B, K] (per_negative sides) or [B]: True where the head is corrupted
    entities: Tensor          # int64 [B, K] (per_positive) or [ceil(B / chunk_size), K] (chunk_shared)
    false_negatives: int      # candidates that are known triples and survived resampling
    layout: str = "per_positive"     # or "chunk_shared": each row of ``entities`` serves chunk_size positives
    chunk_size: int = 1


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
    """``train`` (in memory) or precomputed ``head_prob`` (streaming: from the dataset's statistics).
    ``sample(slice, counters, offset)`` draws the negatives of rows [offset, offset + len(slice)) of the global
    batch named by ``counters`` (epoch, batch[, rank])."""

    def __init__(self, train: np.ndarray | None, num_entities: int, num_relations: int, num_negatives: int,
                 corruption: str = "bern", mode: str = "per_positive", chunk_size: int = 64,
                 filter_negatives: bool = True, max_rounds: int = 10, head_prob: np.ndarray | None = None,
                 degree: np.ndarray | None = None, side: str = "per_negative", seed: int = 0,
                 device: torch.device | str = "cpu"):
        if num_entities > MAX_ENTITIES:
            raise ValueError(f"negative sampling supports at most {MAX_ENTITIES:,} entities, got {num_entities:,}")
        self.n, self.k, self.seed, self.device = num_entities, num_negatives, seed, torch.device(device)
        # The corruption side per negative (the reference's way) for per-positive candidates; chunk-shared
        # candidates serve many positives, so each positive keeps one side there.
        self.side_per_negative = side == "per_negative" and mode == "per_positive"
        self.mode, self.chunk_size, self.max_rounds = mode, chunk_size, max_rounds
        if corruption == "bern":
            head_prob = head_prob if head_prob is not None else \
                head_probability(exact_relation_table(train, num_relations))
        else:
            head_prob = np.full(num_relations, 0.5)
        self.head_prob = torch.as_tensor(head_prob, dtype=torch.float64, device=self.device)
        self.num_relations = num_relations
        self.cdf = None if degree is None else \
            torch.from_numpy(DegreeDistribution(degree).cdf).to(self.device)
        # Chunk-shared candidates cannot be filtered per positive (as in PyTorch-BigGraph): off there.
        self.filter = filter_negatives and mode == "per_positive"
        if self.filter and train is None:
            raise ValueError("exact negative filtering needs the training triples in memory")
        if self.filter:
            if float(num_entities) ** 2 * num_relations >= 2 ** 62:
                raise ValueError("graph too large for exact negative filtering; set train.filter_negatives=false")
            self.known = torch.from_numpy(np.sort(triple_keys(train, num_entities, num_relations))).to(self.device)

    def sample(self, batch: np.ndarray | Tensor, counters: tuple[int, ...], offset: int = 0) -> NegativeBatch:
        batch = torch.as_tensor(batch, device=self.device)
        positions = torch.arange(offset, offset + len(batch), device=self.device)
        if self.mode == "chunk_shared":
            starts = positions[::self.chunk_size]
            bits = counter_bits(self._key(counters, 0, "entities"), self._slots(starts))
            cand = self._entities(split_bits(bits)[0])
            return NegativeBatch(self._sides_per_positive(batch, positions, counters), cand, 0, "chunk_shared",
                                 self.chunk_size)
        slots = self._slots(positions)
        high, low = split_bits(counter_bits(self._key(counters, 0, "entities"), slots))
        cand = self._entities(high)
        if self.side_per_negative:
            head_mode = low.double() * _UNIT < self.head_prob[batch[:, 1]].unsqueeze(1)
        else:
            head_mode = self._sides_per_positive(batch, positions, counters)
        false = self._resample_known(batch, head_mode, cand, slots, counters) if self.filter else 0
        return NegativeBatch(head_mode, cand, false)

    # ---------------------------------------------------------------------------------- draws
    def _key(self, counters: tuple[int, ...], round_: int, part: str) -> int:
        return stream_key(self.seed, "negatives", *counters, round_, 0 if part == "entities" else 1)

    def _slots(self, positions: Tensor) -> Tensor:
        """[P, K] counters: negative k of the positive (or chunk) at global position g is g·K + k."""
        return positions.unsqueeze(1) * self.k + torch.arange(self.k, device=self.device)

    def _entities(self, high: Tensor) -> Tensor:
        """Entity ids from 32 random bits: uniform by (bits · N) >> 32, or the degree CDF's inverse."""
        if self.cdf is None:
            return (high * self.n) >> 32
        return torch.searchsorted(self.cdf, high.double() * _UNIT, right=True).clamp_(max=self.n - 1)

    def _sides_per_positive(self, batch: Tensor, positions: Tensor, counters: tuple[int, ...]) -> Tensor:
        low = split_bits(counter_bits(self._key(counters, 0, "sides"), positions))[1]
        return low.double() * _UNIT < self.head_prob[batch[:, 1]]

    # ---------------------------------------------------------------------------------- filtering
    def _is_known(self, batch: Tensor, head_mode: Tensor, cand: Tensor) -> Tensor:
        head = head_mode if head_mode.dim() == 2 else head_mode.unsqueeze(1)
        h = torch.where(head, cand, batch[:, :1])
        t = torch.where(head, batch[:, 2:3], cand)
        keys = (h * self.num_relations + batch[:, 1:2]) * self.n + t
        pos = torch.searchsorted(self.known, keys).clamp_(max=len(self.known) - 1)
        return self.known[pos] == keys

    def _resample_known(self, batch, head_mode, cand, slots, counters) -> int:
        """Redraw candidates that are training triples (round r: the same counters under round r's key), up to
        max_rounds times; the survivors are counted, never dropped."""
        hit = self._is_known(batch, head_mode, cand)
        for round_ in range(1, self.max_rounds + 1):
            if not bool(hit.any()):
                return 0
            key = self._key(counters, round_, "entities")
            cand[hit] = self._entities(split_bits(counter_bits(key, slots[hit]))[0])
            hit = self._is_known(batch, head_mode, cand)
        return int(hit.sum())
