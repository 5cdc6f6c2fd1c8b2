"""The embedded default: a generated multi-modal KG with planted latent structure.

Each entity e has latent phases φ_e ∈ [0, 2π)^k (a point on a k-torus), each relation a rotation θ_r.
A triple (h, r, t) picks t among the entities nearest to e^{i(φ_h + θ_r)}, so RotatE can represent the
graph exactly. Heads follow a Zipf-like popularity, so many entities have few training edges: structure
alone places them poorly, while their visual/text features — noisy linear views of [cos φ, sin φ] —
reveal where they belong. That is what makes "AdaMF with features beats structure-only" testable.
Deterministic from ``seed``.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from ..config import SyntheticConfig
from .format import Features, KGData, synthetic_identity


def _nearest_tails(target: np.ndarray, latent: np.ndarray, rng: np.random.Generator, top: int = 3) -> np.ndarray:
    """For each target point pick one of its ``top`` nearest entities at random (1-to-N relations).

    Nearness is the chordal distance on the torus, Σ_k |e^{ia_k} − e^{ib_k}|² = 2k − 2 Σ_k cos(a_k − b_k),
    so the search is one matrix product per block instead of a per-pair loop.
    """
    lat = np.concatenate([np.cos(latent), np.sin(latent)], axis=1).astype(np.float32)
    top = min(top, len(latent) - 1)            # a tiny graph has fewer candidates
    out = np.empty(len(target), np.int64)
    for start in range(0, len(target), 4096):
        tgt = target[start:start + 4096]
        sim = np.concatenate([np.cos(tgt), np.sin(tgt)], axis=1).astype(np.float32) @ lat.T
        nearest = np.argpartition(-sim, top, axis=1)[:, :top]
        out[start:start + 4096] = nearest[np.arange(len(tgt)), rng.integers(0, top, len(tgt))]
    return out


def _view(latent: np.ndarray, dim: int, noise: float, rng: np.random.Generator) -> np.ndarray:
    signal = np.concatenate([np.cos(latent), np.sin(latent)], axis=1)
    mixing = rng.normal(size=(signal.shape[1], dim)) / np.sqrt(signal.shape[1])
    clean = signal @ mixing
    return (clean + noise * clean.std() * rng.normal(size=clean.shape)).astype(np.float32)


def planted_latent(cfg: SyntheticConfig) -> np.ndarray:
    """The entities' latent phases φ [n, k] of the graph ``generate(cfg)`` makes (its first draw): what a
    benchmark renders into images whose content decides edges the structure alone cannot place."""
    return np.random.default_rng(cfg.seed).uniform(0, 2 * np.pi, size=(cfg.num_entities, cfg.latent_dim))


def generate(cfg: SyntheticConfig) -> KGData:
    rng = np.random.default_rng(cfg.seed)
    n, k = cfg.num_entities, cfg.latent_dim
    latent = rng.uniform(0, 2 * np.pi, size=(n, k))             # = planted_latent(cfg)
    rotations = rng.uniform(0, 2 * np.pi, size=(cfg.num_relations, k))

    popularity = 1.0 / (np.arange(n) + 10.0) ** 0.9
    popularity = rng.permutation(popularity / popularity.sum())
    draws = int(cfg.num_triples * 1.3)  # oversample: duplicates are removed below
    heads = rng.choice(n, size=draws, p=popularity)
    rels = rng.integers(0, cfg.num_relations, size=draws)
    target = latent[heads] + rotations[rels] + rng.normal(scale=0.05, size=(draws, k))
    tails = _nearest_tails(target, latent, rng)
    triples = np.unique(np.stack([heads, rels, tails], axis=1), axis=0)
    triples = triples[triples[:, 0] != triples[:, 2]]
    triples = rng.permutation(triples)[:cfg.num_triples]

    n_valid = int(len(triples) * cfg.valid_fraction)
    n_test = int(len(triples) * cfg.test_fraction)
    splits = {"train": triples[n_valid + n_test:], "valid": triples[:n_valid], "test": triples[n_valid:n_valid + n_test]}

    features = {}
    for name, dim, missing in (("visual", cfg.visual_dim, cfg.visual_missing), ("text", cfg.text_dim, cfg.text_missing)):
        values = _view(latent, dim, cfg.feature_noise, rng)
        present = rng.random(n) >= missing
        values[~present] = 0.0
        if missing < 1.0:                   # missing for every entity: the graph has no such modality
            features[name] = Features(values, present)
    return KGData(n, cfg.num_relations, {s: t.astype(np.int64) for s, t in splits.items()},
                  [f"entity_{i:06d}" for i in range(n)], [f"relation_{i:04d}" for i in range(cfg.num_relations)],
                  features, name=f"synthetic-seed{cfg.seed}",
                  identity=synthetic_identity(dataclasses.asdict(cfg)))
