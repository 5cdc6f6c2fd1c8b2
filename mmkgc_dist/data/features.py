"""Modality feature files (.npy, .pt, .parquet) → dense matrix + presence mask.

Accepted layouts:
  .npy      [N, dim] float array, one row per entity id; a row of all-NaN marks a missing entity
            (the only NaN allowed); an optional separate mask file (.npy bool [N]) marks presence.
  .pt       a tensor [N, dim], or a dict {"features": [n, dim], "ids": [n]} of present entities;
            loaded with ``weights_only=True`` (no pickled code runs).
  .parquet  columns id:int64 and feature:list<float> (present entities only).
"""
from __future__ import annotations

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import DataError
from .format import Features, check_feature_rows


def load_features(path: str, num_entities: int, mask_path: str | None = None) -> Features:
    if path.endswith(".npy"):
        ids, rows = _from_dense(path, _load_npy(path), num_entities)
    elif path.endswith(".pt"):
        ids, rows = _from_pt(path, num_entities)
    elif path.endswith(".parquet"):
        ids, rows = _from_parquet(path)
    else:
        raise DataError(f"{path}: unknown feature file type; expected .npy, .pt or .parquet")
    if mask_path is not None:
        mask = _load_npy(mask_path)
        if mask.shape != (num_entities,) or mask.dtype != bool:
            raise DataError(f"{mask_path}: expected a bool mask of shape ({num_entities},), "
                            f"got {mask.dtype} {mask.shape}")
        keep = mask[ids]
        ids, rows = ids[keep], rows[keep]
    check_feature_rows(path, ids, rows, num_entities)
    values = np.zeros((num_entities, rows.shape[1]), np.float32)
    present = np.zeros(num_entities, bool)
    values[ids] = rows
    present[ids] = True
    return Features(values, present)


def _load_npy(path: str) -> np.ndarray:
    try:
        with fsspec.open(path, "rb") as fh:
            return np.load(fh, allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found")
    except ValueError as exc:
        raise DataError(f"{path}: not a plain .npy array ({exc})")


def _from_dense(path: str, arr: np.ndarray, num_entities: int):
    if arr.ndim != 2 or arr.shape[0] != num_entities:
        raise DataError(f"{path}: expected shape ({num_entities}, dim), got {arr.shape}")
    arr = arr.astype(np.float32, copy=False)
    missing = np.isnan(arr).all(axis=1)
    ids = np.flatnonzero(~missing).astype(np.int64)
    return ids, arr[ids]


def _from_pt(path: str, num_entities: int):
    import torch

    try:
        with fsspec.open(path, "rb") as fh:
            obj = torch.load(fh, weights_only=True, map_location="cpu")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found")
    except Exception as exc:  # torch raises a variety of unpickling errors
        raise DataError(f"{path}: cannot be loaded with weights_only=True ({exc})")
    if isinstance(obj, torch.Tensor):
        return _from_dense(path, obj.float().numpy(), num_entities)
    if isinstance(obj, dict) and {"features", "ids"} <= set(obj):
        rows = obj["features"].float().numpy()
        ids = obj["ids"].long().numpy()
        if rows.ndim != 2 or len(rows) != len(ids):
            raise DataError(f"{path}: 'features' {tuple(rows.shape)} and 'ids' {tuple(ids.shape)} disagree")
        return ids, rows
    raise DataError(f"{path}: expected a tensor [N, dim] or a dict with 'features' and 'ids'")


def _from_parquet(path: str):
    try:
        with fsspec.open(path, "rb") as fh:
            table = pq.read_table(fh)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found")
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{path}: not a readable Parquet file ({exc})")
    for col in ("id", "feature"):
        if col not in table.column_names:
            raise DataError(f"{path}: column {col!r} missing (have {table.column_names})")
    col = table.column("feature").combine_chunks()
    if not (pa.types.is_list(col.type) or pa.types.is_fixed_size_list(col.type) or
            pa.types.is_large_list(col.type)):
        raise DataError(f"{path}: field 'feature' has type {col.type}, expected a list of floats")
    lengths = col.value_lengths().to_numpy(zero_copy_only=False) if not pa.types.is_fixed_size_list(col.type) \
        else np.full(len(col), col.type.list_size)
    if len(lengths) and (lengths != lengths[0]).any():
        row = int(np.flatnonzero(lengths != lengths[0])[0])
        raise DataError(f"{path}: row {row}: feature has {lengths[row]} values, row 0 has {lengths[0]}")
    dim = int(lengths[0]) if len(lengths) else 0
    rows = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, dim)
    return table.column("id").to_numpy().astype(np.int64), rows
