"""Config → in-memory dataset (generated or read from a prepared Parquet folder), and the modalities it fuses."""
from __future__ import annotations

import logging
import os

from ..config import Config
from ..outputs import resolve_output
from ..errors import DataError
from .format import KGData, load_dataset, verify_dataset
from .synthetic import generate

log = logging.getLogger("mmkgc_dist")


def build_dataset(cfg: Config, feature_values: bool = True) -> KGData:
    """``feature_values`` false (distributed runs): feature rows stay on disk; each rank reads its shard."""
    if cfg.data.source == "synthetic":
        return generate(cfg.data.synthetic)
    streamed = ("train",) if cfg.data.loader == "stream" else ()
    if cfg.data.verify and os.environ.get("RANK", "0") in ("", "0"):     # one rank hashes; all check sizes
        verify_dataset(resolve_output(cfg.data.path))
    data = load_dataset(resolve_output(cfg.data.path), modalities=cfg.model.modalities, skip_splits=streamed,
                        feature_values=feature_values)
    missing = [s for s in cfg.eval.splits if s not in data.splits and s not in streamed]
    if missing:
        raise DataError(f"eval.splits: the dataset {cfg.data.path} has no {', '.join(missing)} split (it has "
                        f"{', '.join(data.splits) or 'none'}); set --eval.splits to splits it has")
    return data


def fused_modalities(cfg: Config, data: KGData) -> list[str]:
    """Configured modalities the data has; a modality absent from the data is missing for every entity."""
    missing = [m for m in cfg.model.modalities if m not in data.features]
    for m in missing:
        log.warning("modality %r: no features in the dataset (missing for all entities); fusing without it", m)
    return [m for m in cfg.model.modalities if m in data.features]
