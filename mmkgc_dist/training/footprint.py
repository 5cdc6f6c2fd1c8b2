"""Memory a model will take, estimated before anything is allocated, so an absurd size (``model.dim=10000000``)
is refused in one line naming the key and the bytes instead of failing deep in an allocation.

The estimate counts what is certain to exist on one process: its share of the entity-indexed tables (with Adam's
two moments where they train; a modality's table has rows only for the entities that have the feature), the relation table, the fusion projections and the generators (each with a
gradient and two moments), and one step's score block (batch x negatives x 2d floats, a few times over for
autograd). It is a lower bound: a run refused here could not have run; one accepted may still need more.
"""
from __future__ import annotations

import os

from ..errors import ConfigError

FLOAT = 4
TRAINED = 3           # value + Adam's two moments (lazy rows: gradients are per batch, not per table)
DENSE = 4             # value + gradient + two moments
STEP = "train.batch_size x train.num_negatives x model.dim"     # the step's score block grows with all three
STEP_COPIES = 6       # distances, their gradients and the losses' intermediates of the [B, K, 2d] block
ALL = "train.batch_size"   # with train.negatives=all every process scores the global batch's queries
ALL_COPIES = 4        # scores, exp(scores − max), their gradients: [2B, entities per process] each


def terms(cfg, num_entities: int, num_relations: int, feature_dims: dict[str, int], world_size: int,
          use_mat: bool, feature_entities: dict[str, int] | None = None) -> dict[str, int]:
    """{config key responsible: bytes} on one process. ``feature_entities``: how many entities have each
    modality (default: all)."""
    width = 2 * cfg.model.dim
    rows = -(-num_entities // world_size)
    features = TRAINED if cfg.model.raw_features == "trainable" else 1
    out = {"model.dim": rows * width * FLOAT * TRAINED + num_relations * cfg.model.dim * FLOAT * TRAINED
           + sum(d * width for d in feature_dims.values()) * FLOAT * DENSE}
    if feature_dims:
        have = feature_entities or {}
        out["model.modalities"] = sum(-(-have.get(m, num_entities) // world_size) * d
                                      for m, d in feature_dims.items()) * FLOAT * features
    if use_mat:
        per_modality = (cfg.mat.noise_dim + width) * cfg.mat.hidden + cfg.mat.hidden * width
        out["mat.hidden"] = len(feature_dims) * per_modality * FLOAT * DENSE
    per_rank_batch = -(-cfg.train.batch_size // world_size)
    if cfg.train.negatives == "all":      # the fused rows of this process's entities and the score block
        out[ALL] = rows * width * FLOAT * 2 + 2 * cfg.train.batch_size * rows * FLOAT * ALL_COPIES
    else:
        out[STEP] = per_rank_batch * (cfg.train.num_negatives + 1) * width * FLOAT * STEP_COPIES
    return out


def available_bytes(device) -> int | None:
    """Memory of the device the tables live on: the GPU's, or the machine's RAM; None if unknown."""
    if getattr(device, "type", "cpu") == "cuda":
        import torch
        return torch.cuda.get_device_properties(device).total_memory
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def check_fits(cfg, num_entities: int, num_relations: int, feature_dims: dict[str, int], world_size: int,
               use_mat: bool, device, feature_entities: dict[str, int] | None = None) -> None:
    """Raise ValueError (a ConfigError at the call site) when the estimate exceeds the device's memory."""
    found = terms(cfg, num_entities, num_relations, feature_dims, world_size, use_mat, feature_entities)
    have = available_bytes(device)
    need = sum(found.values())
    if have is None or need <= have:
        return
    key, biggest = max(found.items(), key=lambda kv: kv[1])
    value = {"model.dim": cfg.model.dim, "mat.hidden": cfg.mat.hidden, "model.modalities": cfg.model.modalities,
             STEP: f"{cfg.train.batch_size} x {cfg.train.num_negatives} x {cfg.model.dim}",
             ALL: f"{cfg.train.batch_size} (train.negatives=all: every query against all {num_entities} "
                  f"entities)"}[key]
    raise ConfigError(f"{key}={value}: the model needs at least {_size(need)} per process ({_size(biggest)} of it "
                     f"from {key}; {num_entities} entities over {world_size} process(es)), this "
                     f"{'GPU' if getattr(device, 'type', 'cpu') == 'cuda' else 'machine'} has {_size(have)}; "
                     f"make {key} smaller or add ranks")


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"
