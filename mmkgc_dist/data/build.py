"""Config → in-memory dataset (generated or read from a prepared Parquet folder)."""
from __future__ import annotations

import os

from ..config import Config, fused_modalities
from ..outputs import resolve_output
from ..errors import DataError
from .format import KGData, load_dataset, verify_dataset
from .synthetic import generate


def build_dataset(cfg: Config, feature_values: bool = True) -> KGData:
    """``feature_values`` false (distributed runs): feature rows stay on disk; each rank reads its shard."""
    if cfg.data.source == "synthetic":
        data = generate(cfg.data.synthetic)
        fused_modalities(cfg, data.features)
        return data
    streamed = ("train",) if cfg.data.loader == "stream" else ()
    if cfg.data.verify and os.environ.get("RANK", "0") in ("", "0"):     # one rank hashes; all check sizes
        verify_dataset(resolve_output(cfg.data.path))
    asked = None if cfg.model.modalities == "auto" else cfg.model.modalities
    data = load_dataset(resolve_output(cfg.data.path), modalities=asked, skip_splits=streamed,
                        feature_values=feature_values)
    fused_modalities(cfg, data.features)           # a modality asked for and missing fails here, before any run
    missing = [s for s in cfg.eval.splits if s not in data.splits and s not in streamed]
    if missing:
        raise DataError(f"eval.splits: the dataset {cfg.data.path} has no {', '.join(missing)} split (it has "
                        f"{', '.join(data.splits) or 'none'}); set --eval.splits to splits it has")
    return data

