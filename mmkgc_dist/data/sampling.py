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

from ..errors import ConfigError
from ..rng import counter_bits, shift_right, split_bits, stream_key
from .statistics import exact_relation_table, head_probability

_UNIT = 2.0 ** -32
MAX_ENTITIES = 1 << 31          # entity = (32 random bits × N) >> 32 stays inside int64
_FIBONACCI = 0x9E3779B97F4A7C15 - (1 << 64)     # multiplicative hashing of triple keys into the bitmap


def uniform_draws(key: int, slots: Tensor, num_entities: int) -> tuple[Tensor, Tensor]:
    """(entity ids uniform in [0, N), uniforms in [0, 1) for the sides) from the counters ``slots``."""
    high, low = split_bits(counter_bits(key, slots))
    return (high * num_entities) >> 32, low.double() * _UNIT


def candidate_keys(batch: Tensor, head: Tensor, cand: Tensor, num_entities: int, num_relations: int) -> Tensor:
    """Triple keys of the corrupted triples: (e, r, t) where ``head``, (h, r, e) elsewhere."""
    h = torch.where(head, cand, batch[:, :1])
    t = torch.where(head, batch[:, 2:3], cand)
    return (h * num_relations + batch[:, 1:2]) * num_entities + t


class KnownTriples:
    """Membership of triple keys in the training set, exact: a one-bit-per-slot bitmap of the keys' hashes
    (16 slots per key, so ~6% of unknown keys pass it) screens the candidates, and only those that pass are
    binary-searched in the sorted keys."""

    def __init__(self, keys: np.ndarray, device: torch.device):
        self.sorted = torch.from_numpy(np.sort(keys)).to(device)
        self.bits = max(16, int(np.ceil(np.log2(max(len(keys), 1) * 16))))
        slots = torch.unique(self.slot(self.sorted))
        words = torch.zeros(((1 << self.bits) + 63) // 64, dtype=torch.int64, device=device)
        # distinct bits of one word add up to their OR (bit 63 wraps to the sign bit, as it should)
        self.words = words.index_add_(0, slots >> 6, torch.ones_like(slots) << (slots & 63))

    def slot(self, keys: Tensor) -> Tensor:
        return shift_right(keys * _FIBONACCI, 64 - self.bits)

    def screen(self, keys: Tensor) -> Tensor:
        """True where a key may be known (every known key passes)."""
        slot = self.slot(keys)
        return (self.words[slot >> 6] >> (slot & 63)) & 1 == 1    # bit (slot & 63) of its word

    def contains(self, keys: Tensor, maybe: Tensor) -> Tensor:
        hit = torch.zeros_like(maybe)
        where = maybe.nonzero(as_tuple=True)     # integer positions: the host waits once, not for each mask use
        suspects = keys[where]
        if len(suspects):
            pos = torch.searchsorted(self.sorted, suspects).clamp_(max=len(self.sorted) - 1)
            hit[where] = self.sorted[pos] == suspects
        return hit


def triple_index(triples: np.ndarray, num_entities: int, num_relations: int) -> np.ndarray:
    """The position of each (h, r, t) in the N x R x N grid, one int64 (a plain integer the device can sort and
    search, unlike checks.triple_keys' structured fallback); exact up to N² R < 2^63 (checked by the caller)."""
    return (triples[:, 0] * num_relations + triples[:, 1]) * num_entities + triples[:, 2]


@dataclass
class NegativeBatch:
    """A batch's negatives and their layout (tensors on the training device), so the step needs nothing else."""
    head_mode: Tensor         # bool [B, K] (per_negative sides) or [B]: True where the head is corrupted
    entities: Tensor          # int64 [B, K] (per_positive) or [ceil(B / chunk_size), K] (chunk_shared)
    false_negatives: int      # candidates that are known triples and survived resampling
    layout: str = "per_positive"     # "chunk_shared": each row of ``entities`` serves chunk_size positives;
                                     # "all": no drawn negatives (1-vs-all), ``entities`` is [B, 0]
    chunk_size: int = 1
    share: float = 1.0        # this process's fraction of the global batch's positives (weights its loss)
    key: tuple = ()           # the global batch's counters: the same on every rank (structure dropout's key)


class DegreeDistribution:
    """Draws entity ids with probability proportional to their degree (inverse CDF, O(log N) per draw)."""

    def __init__(self, degree: np.ndarray):
        total = float(degree.sum())
        if total <= 0:
            raise ConfigError("degree-proportional sampling needs at least one training triple")
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
                 device: torch.device | str = "cpu", compile: bool = False):
        if num_entities > MAX_ENTITIES:
            raise ConfigError(f"negative sampling supports at most {MAX_ENTITIES:,} entities, got {num_entities:,}")
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
            raise ConfigError("exact negative filtering needs the training triples in memory")
        if self.filter:
            if float(num_entities) ** 2 * num_relations >= 2 ** 62:
                raise ConfigError("graph too large for exact negative filtering; set train.filter_negatives=false")
            self.known = KnownTriples(triple_index(train, num_entities, num_relations), self.device)
        # The elementwise parts fuse into one loop each under torch.compile (5x on CPU; sizes vary by batch).
        wrap = (lambda fn: torch.compile(fn, dynamic=True)) if compile else (lambda fn: fn)
        self._uniform_draws, self._candidate_keys = wrap(uniform_draws), wrap(candidate_keys)
        self._screen = wrap(self.known.screen) if self.filter else None

    def sample(self, batch: np.ndarray | Tensor, counters: tuple[int, ...], offset: int = 0,
               share: float = 1.0) -> NegativeBatch:
        """Negatives of ``batch``, whose first row is at position ``offset`` of the global batch; ``share``: this
        process's fraction of the global batch (weights its loss)."""
        negatives = self._negatives(torch.as_tensor(batch, device=self.device), counters, offset)
        negatives.share, negatives.key = share, tuple(counters)
        return negatives

    def _negatives(self, batch: Tensor, counters: tuple[int, ...], offset: int) -> NegativeBatch:
        if self.mode == "all":          # 1-vs-all: every entity is a candidate, nothing to draw
            return NegativeBatch(torch.zeros(len(batch), dtype=torch.bool, device=self.device),
                                 torch.zeros(len(batch), 0, dtype=torch.long, device=self.device), 0, "all")
        positions = torch.arange(offset, offset + len(batch), device=self.device)
        if self.mode == "chunk_shared":
            starts = positions[::self.chunk_size]
            cand, _ = self._draw(self._key(counters, 0, "entities"), self._slots(starts))
            return NegativeBatch(self._sides_per_positive(batch, positions, counters), cand, 0, "chunk_shared",
                                 self.chunk_size)
        slots = self._slots(positions)
        cand, uniform = self._draw(self._key(counters, 0, "entities"), slots)
        if self.side_per_negative:
            head_mode = uniform < self.head_prob[batch[:, 1]].unsqueeze(1)
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

    def _draw(self, key: int, slots: Tensor) -> tuple[Tensor, Tensor]:
        """(entity per counter, uniform per counter for its side): entities uniform, or by the degree CDF's
        inverse on the high 32 bits."""
        if self.cdf is None:
            return self._uniform_draws(key, slots, self.n)
        high, low = split_bits(counter_bits(key, slots))
        return torch.searchsorted(self.cdf, high.double() * _UNIT, right=True).clamp_(max=self.n - 1), \
            low.double() * _UNIT

    def _sides_per_positive(self, batch: Tensor, positions: Tensor, counters: tuple[int, ...]) -> Tensor:
        low = split_bits(counter_bits(self._key(counters, 0, "sides"), positions))[1]
        return low.double() * _UNIT < self.head_prob[batch[:, 1]]

    # ---------------------------------------------------------------------------------- filtering
    def _is_known(self, batch: Tensor, head_mode: Tensor, cand: Tensor) -> Tensor:
        head = head_mode if head_mode.dim() == 2 else head_mode.unsqueeze(1)
        keys = self._candidate_keys(batch, head, cand, self.n, self.num_relations)
        return self.known.contains(keys, self._screen(keys))

    def _resample_known(self, batch, head_mode, cand, slots, counters) -> int:
        """Redraw candidates that are training triples (round r: their counters under round r's key), up to
        max_rounds times; only the redrawn ones are checked again; the survivors are counted, never dropped."""
        rows, cols = self._is_known(batch, head_mode, cand).nonzero(as_tuple=True)
        head = head_mode if head_mode.dim() == 2 else head_mode.unsqueeze(1).expand_as(cand)
        for round_ in range(1, self.max_rounds + 1):
            if len(rows) == 0:
                return 0
            fresh, _ = self._draw(self._key(counters, round_, "entities"), slots[rows, cols])
            cand[rows, cols] = fresh
            still = self._is_known(batch[rows], head[rows, cols].unsqueeze(1), fresh.unsqueeze(1)).squeeze(1)
            keep = still.nonzero().squeeze(1)
            rows, cols = rows[keep], cols[keep]
        return len(rows)
