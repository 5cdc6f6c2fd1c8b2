"""Single-process checkpoints: one torch file per save, written to a temporary name then renamed,
so a crash mid-write never leaves a file that ``latest_checkpoint`` would pick up."""
from __future__ import annotations

import glob
import os
import re

import torch


def save_checkpoint(state: dict, directory: str, step: int) -> str:
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"step-{step:09d}.pt")
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def latest_checkpoint(directory: str) -> str | None:
    paths = [p for p in glob.glob(os.path.join(directory, "step-*.pt")) if re.search(r"step-\d+\.pt$", p)]
    return max(paths) if paths else None


def load_checkpoint(path: str) -> dict:
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: checkpoint not found")
    # Our own checkpoints hold numpy RNG state (plain dicts/ints) besides tensors.
    return torch.load(path, map_location="cpu", weights_only=False)
