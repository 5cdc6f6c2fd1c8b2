"""Single-process checkpoints: ``step-N.pt`` (torch file) plus ``step-N.json`` (its SHA-256 and size).

The torch file is written to a temporary name, flushed to disk and renamed; the digest record is written the
same way afterwards, so a crash mid-write never leaves a file that the lookup picks up, and any later damage
is caught by ``integrity.verify`` before loading. Loading is weights-only (no code from the file runs).
"""
from __future__ import annotations

import errno
import json
import os

import torch

from ..data.errors import DataError
from ..integrity import Checkpoint, checkpoint_at, safe_torch_load, sha256


def _write_synced(path: str, write) -> None:
    tmp = path + ".tmp"
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save_checkpoint(state: dict, directory: str, step: int) -> str:
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"step-{step:09d}.pt")
    try:
        _write_synced(path, lambda tmp: torch.save(state, tmp))
        record = {"sha256": sha256(path), "bytes": os.path.getsize(path), "step": step}
        _write_synced(path[:-3] + ".json", lambda tmp: _dump(record, tmp))
    except (OSError, RuntimeError) as exc:
        raise DataError(f"{path}: could not write the checkpoint ({_reason(exc)}); earlier checkpoints are "
                        f"intact") from exc
    return path


def _dump(obj, path: str) -> None:
    with open(path, "w") as fh:
        json.dump(obj, fh)


def _reason(exc: Exception) -> str:
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC or "unexpected pos" in str(exc) or \
            "No space left" in str(exc):
        return "disk full"
    return " ".join(str(exc).split())[:200]


def load_checkpoint(path: str) -> dict:
    """A verified single-process checkpoint's state, loaded weights-only."""
    ckpt = checkpoint_at(path)
    if ckpt.is_folder:
        raise DataError(f"{path}: a distributed checkpoint folder; load it through the distributed runtime")
    state = safe_torch_load(ckpt.path)
    if not isinstance(state, dict) or "tables" not in state or "cursor" not in state:
        raise DataError(f"{path}: not an mmkgc-dist checkpoint (expected a state dict with tables and cursor)")
    return state


__all__ = ["Checkpoint", "save_checkpoint", "load_checkpoint"]
