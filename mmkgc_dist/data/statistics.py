"""Streaming per-relation and per-entity statistics of the training triples, in memory bounded by the
number of entities and relations (never by the number of edges).

- triples per relation and entity degrees: exact (bincounts);
- distinct heads / tails per relation (for Bernoulli corruption, tph and hpt): exact while a relation has
  at most ``SKETCH_SIZE`` distinct heads (tails), otherwise a k-minimum-values estimate with relative
  standard error ≈ 1/sqrt(SKETCH_SIZE - 2) ≈ 6% (P(corrupt head) = tph / (tph + hpt) moves by less). Each relation keeps the SKETCH_SIZE smallest 32-bit hashes
  of its distinct heads (tails); the sketches are merged block by block with vectorised numpy.
"""
from __future__ import annotations

import numpy as np

SKETCH_SIZE = 256           # small sketches fill fast; then few hashes pass the admission test
_HASH_SPACE = float(1 << 32)


def _hash32(ids: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser, top 32 bits: a well-mixed hash of each entity id."""
    x = ids.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return (x ^ (x >> np.uint64(31))) >> np.uint64(32)


class DistinctPerRelation:
    """Distinct entity count per relation: the SKETCH_SIZE smallest hashes per relation, as sorted keys
    relation << 32 | hash (one uint64 sort merges a block)."""

    def __init__(self, k: int = SKETCH_SIZE):
        self.k = k
        self.keys = np.zeros(0, np.uint64)
        self.threshold = np.zeros(0, np.uint64)     # per relation: admit hashes below this

    def update(self, relations: np.ndarray, entities: np.ndarray) -> None:
        if len(relations) == 0:
            return
        top = int(relations.max()) + 1
        if top > len(self.threshold):
            self.threshold = np.concatenate([self.threshold,
                                             np.full(top - len(self.threshold), 1 << 32, np.uint64)])
        hashes = _hash32(entities)
        rel = relations.astype(np.uint64)
        admit = hashes < self.threshold[relations]
        new = (rel[admit] << np.uint64(32)) | hashes[admit]
        merged = np.sort(np.concatenate([self.keys, new]))        # sort + neighbour test: faster than np.unique
        merged = merged[np.concatenate([[True], merged[1:] != merged[:-1]])] if len(merged) else merged
        group = merged >> np.uint64(32)
        starts = np.searchsorted(group, group, side="left")
        self.keys = merged[np.arange(len(merged)) - starts < self.k]
        self._refresh_thresholds()

    def _refresh_thresholds(self) -> None:
        group = (self.keys >> np.uint64(32)).astype(np.int64)
        counts = np.bincount(group, minlength=len(self.threshold))
        full = np.flatnonzero(counts >= self.k)
        if len(full):
            last = np.searchsorted(group, full, side="right") - 1      # k-th smallest of each full relation
            self.threshold[full] = self.keys[last] & np.uint64(0xFFFFFFFF)

    def estimate(self, num_relations: int) -> np.ndarray:
        group = (self.keys >> np.uint64(32)).astype(np.int64)
        counts = np.bincount(group, minlength=num_relations)[:num_relations].astype(float)
        out = counts.copy()
        full = np.flatnonzero(counts >= self.k)
        if len(full):
            kth = (self.keys[np.searchsorted(group, full, side="right") - 1] & np.uint64(0xFFFFFFFF))
            out[full] = (self.k - 1) * _HASH_SPACE / (kth.astype(float) + 1.0)
        return out


class TripleStatistics:
    """Accumulates counts over blocks of id triples [n, 3] (head, relation, tail)."""

    def __init__(self):
        self.relation_count = np.zeros(0, np.int64)
        self.degree = np.zeros(0, np.int64)
        self.heads, self.tails = DistinctPerRelation(), DistinctPerRelation()

    @staticmethod
    def _add(counts: np.ndarray, ids: np.ndarray) -> np.ndarray:
        add = np.bincount(ids)
        if len(add) > len(counts):
            counts = np.concatenate([counts, np.zeros(len(add) - len(counts), np.int64)])
        counts[:len(add)] += add
        return counts

    def update(self, triples: np.ndarray) -> None:
        if len(triples) == 0:
            return
        h, r, t = triples[:, 0], triples[:, 1], triples[:, 2]
        self.relation_count = self._add(self.relation_count, r)
        self.degree = self._add(self.degree, h)
        self.degree = self._add(self.degree, t)
        self.heads.update(r, h)
        self.tails.update(r, t)

    def relation_table(self, num_relations: int) -> dict[str, np.ndarray]:
        count = np.zeros(num_relations, np.int64)
        count[:len(self.relation_count)] = self.relation_count[:num_relations]
        # An estimate must respect what is known: at least 1 and at most one distinct entity per triple.
        heads = np.clip(self.heads.estimate(num_relations), np.minimum(count, 1), count)
        tails = np.clip(self.tails.estimate(num_relations), np.minimum(count, 1), count)
        return _relation_table(count, heads, tails)

    def degrees(self, num_entities: int) -> np.ndarray:
        out = np.zeros(num_entities, np.int64)
        out[:len(self.degree)] = self.degree[:num_entities]
        return out


def _relation_table(count: np.ndarray, heads: np.ndarray, tails: np.ndarray) -> dict[str, np.ndarray]:
    seen = count > 0
    tph = np.divide(count, heads, out=np.ones(len(count)), where=seen & (heads > 0))
    hpt = np.divide(count, tails, out=np.ones(len(count)), where=seen & (tails > 0))
    return {"count": count, "distinct_heads": heads.astype(float), "distinct_tails": tails.astype(float),
            "tails_per_head": tph, "heads_per_tail": hpt}


def exact_relation_table(train: np.ndarray, num_relations: int) -> dict[str, np.ndarray]:
    """The same table counted exactly, for triples held in memory."""
    rel = train[:, 1]
    count = np.bincount(rel, minlength=num_relations).astype(np.int64)
    width = int(train[:, [0, 2]].max()) + 1 if len(train) else 1

    def distinct(col: int) -> np.ndarray:
        pairs = np.unique(rel * width + train[:, col])
        return np.bincount(pairs // width, minlength=num_relations)

    return _relation_table(count, distinct(0), distinct(2))


def head_probability(relation_table: dict[str, np.ndarray]) -> np.ndarray:
    """P(corrupt head | r) = tph / (tph + hpt) (Bernoulli scheme of Wang et al. 2014); 0.5 for unseen r."""
    tph, hpt = relation_table["tails_per_head"], relation_table["heads_per_tail"]
    return np.where(relation_table["count"] > 0, tph / (tph + hpt), 0.5)
