"""Structure dropout: the structural embedding of a seeded share of the entities is left out of each training
step's fusion, so the fusion learns to place an entity from its other modalities — the case of an entity that
arrives with a text or an image and no edges (serving/content.py).

A dropped structure is a missing modality like any other: masked out of AdaMF's attention softmax (its weight is
0, the remaining modalities' weights renormalise), so the joint row is the attention-weighted sum of the entity's
projected features alone. An entity with no other modality keeps its structure (the softmax needs one term).

Which entities drop is a counter-based hash of (seed, the batch's counters, entity id): the same in one process
and on any number of ranks — the owner of an entity's rows decides for it without asking anyone — and the same
for the discriminator and the generator step of one batch.
"""
from __future__ import annotations

import torch
from torch import Tensor

STRUCTURE = "structure"          # the key of the structure's presence in a fusion's masks (True: present)
_MASK = (1 << 62) - 1


def _mix(x: Tensor) -> Tensor:
    """A 62-bit integer mixer (xorshift-multiply rounds); int64 wraps around, on every device alike."""
    x = x & _MASK
    x = ((x ^ (x >> 31)) * 0x5DEECE66D) & _MASK
    x = ((x ^ (x >> 29)) * 0x2545F4914F6CDD1D) & _MASK
    return x ^ (x >> 32)


def uniform_of(key: tuple[int, ...], ids: Tensor) -> Tensor:
    """[len(ids)] floats in [0, 1): a fixed function of (key, id)."""
    state = torch.zeros((), dtype=torch.int64)
    for k in key:
        state = _mix(state * 1_000_003 + int(k) + 1)
    x = _mix(ids.long() * 0x9E3779B1 + state.to(ids.device))
    return ((x >> 38) & ((1 << 24) - 1)).float() / float(1 << 24)


class StructureDropout:
    """``share`` of the entities lose their structure in the fusion while a batch key is set (``active``)."""

    def __init__(self, share: float, seed: int):
        self.share, self.seed = share, seed
        self.key: tuple[int, ...] | None = None

    def keep(self, ids: Tensor, masks: dict[str, Tensor]) -> Tensor | None:
        """The structure mask of ``ids`` for this batch (None: every structure kept)."""
        if self.key is None or not self.share:
            return None
        keep = uniform_of((self.seed, *self.key), ids) >= self.share
        others = [m for name, m in masks.items() if name != STRUCTURE]
        if others:              # an entity without any other modality keeps its structure
            keep |= ~torch.stack(others).any(0)
        else:
            keep[:] = True
        return keep
