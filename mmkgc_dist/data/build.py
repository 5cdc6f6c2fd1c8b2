"""Config → in-memory dataset (generated or read from a prepared Parquet folder)."""
from __future__ import annotations

from ..config import Config
from .format import KGData, load_dataset
from .synthetic import generate


def build_dataset(cfg: Config) -> KGData:
    if cfg.data.source == "synthetic":
        return generate(cfg.data.synthetic)
    streamed = ("train",) if cfg.data.loader == "stream" else ()
    return load_dataset(cfg.data.path, modalities=cfg.model.modalities, skip_splits=streamed)
