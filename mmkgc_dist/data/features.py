"""Modality feature files (.npy, .pt, .parquet) → checked chunks of (entity ids, rows), streamed.

Accepted layouts:
  .npy      [N, dim] float array, one row per entity id; a row of all-NaN marks a missing entity
            (the only NaN allowed); an optional separate mask file (.npy bool [N]) marks presence.
            Local files are memory-mapped, so a file larger than memory is read chunk by chunk.
  .pt/.pth  a tensor [N, dim], or a dict {"features": [n, dim], "ids": [n]} of present entities;
            loaded with ``weights_only=True`` (no pickled code runs). The AdaMF-MAT reference's released
            ``<dataset>-visual.pth`` / ``-textual.pth`` are such tensors, row i = entity i of its entity2id.txt.
  .parquet  a key column, ``id`` (int) or ``name`` (entity name as in entities.parquet), and
            ``feature`` (list<float>); present entities only; read record batch by record batch.

A file whose rows follow another entity order (the reference's entity2id.txt, a list of names) is mapped
through ``row_names``: file row (or id) i is the entity named by line i, looked up by name in the dataset.

``add_features`` streams any of them into a prepared dataset without touching its triples;
``load_features`` assembles the dense matrix for in-memory use.
"""
from __future__ import annotations

import logging
import os
import re
import uuid

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..errors import DataError
from .remote import check_reachable
from ..outputs import local_path, real_path, refuse_links, within
from .format import (FORMAT_VERSION, FeatureChecks, Features, first_null, manifest_files, read_manifest,
                     recorded_path, write_manifest)

CHUNK_ROWS = 1 << 16
log = logging.getLogger("mmkgc_dist")


def feature_chunks(path: str, num_entities: int, mask_path: str | None = None, names: pa.Array | None = None,
                   skip_unknown: bool = False, report: dict | None = None, chunk_rows: int = CHUNK_ROWS,
                   row_ids: np.ndarray | None = None):
    """(first file row, file row numbers, entity ids, float32 rows) of the present entities, checked.
    ``row_ids``: the dataset id of each of the file's own ids (-1: not in the dataset), when the file follows
    another entity order (``rows_by_name``)."""
    report = report if report is not None else {}
    file_entities = num_entities if row_ids is None else len(row_ids)
    if path.endswith(".npy"):
        source = _dense_chunks(path, _load_npy(path, mmap=True), file_entities, chunk_rows)
    elif path.endswith((".pt", ".pth")):
        source = _pt_chunks(path, file_entities, chunk_rows)
    elif path.endswith(".parquet"):
        source = _parquet_chunks(path, names, skip_unknown, report, chunk_rows)
    else:
        raise DataError(f"{path}: unknown feature file type; expected .npy, .pt, .pth or .parquet")
    mask = None
    if mask_path is not None:
        mask = _load_npy(mask_path)
        if mask.shape != (file_entities,) or mask.dtype != bool:
            raise DataError(f"{mask_path}: expected a bool mask of shape ({file_entities},), "
                            f"got {mask.dtype} {mask.shape}")
    check = FeatureChecks(path, num_entities)
    for first, file_rows, ids, rows in source:
        if mask is not None:
            inside = (ids >= 0) & (ids < file_entities)
            keep = ~inside | mask[np.where(inside, ids, 0)]     # out-of-range ids still reach the check
            file_rows, ids, rows = file_rows[keep], ids[keep], rows[keep]
        if row_ids is not None:
            file_rows, ids, rows = _through_order(path, file_rows, ids, rows, row_ids, skip_unknown, report)
        check(first, file_rows, ids, rows)
        yield first, file_rows, ids, rows


def _through_order(path, file_rows, ids, rows, row_ids: np.ndarray, skip_unknown: bool, report: dict):
    """The file's ids mapped to the dataset's through ``row_ids``; unknown entities refused or skipped."""
    outside = np.flatnonzero((ids < 0) | (ids >= len(row_ids)))
    if len(outside):
        raise DataError(f"{path}: row {file_rows[outside[0]]}: id {ids[outside[0]]} is beyond the {len(row_ids)} "
                        f"names of --row-names")
    return _known_only(row_ids[ids], file_rows, rows, skip_unknown, report,
                       lambda i, n: f"{path}: row {file_rows[i]}: its entity (line {ids[i]} of --row-names) is not "
                                    f"in the dataset ({n} such rows in this chunk); pass --skip-unknown to skip and "
                                    f"count them")


def _known_only(ids, file_rows, rows, skip_unknown: bool, report: dict, describe):
    """(file rows, ids, rows) of the entities in the dataset (id >= 0); the first unknown one is refused with
    ``describe(index, count)``, or every unknown one skipped and counted (``skip_unknown``)."""
    unknown = np.flatnonzero(ids < 0)
    if len(unknown) and not skip_unknown:
        raise DataError(describe(int(unknown[0]), len(unknown)))
    report["unknown_skipped"] = report.get("unknown_skipped", 0) + len(unknown)
    keep = ids >= 0
    return file_rows[keep], ids[keep], rows[keep]


def rows_by_name(path: str, names: pa.Array) -> np.ndarray:
    """Dataset id of each line of an entity-order file: OpenKE's entity2id.txt (a count, then 'name id' lines)
    or one name per line; -1 where the name is not in the dataset."""
    from .openke import read_dictionary
    check_reachable(path)
    try:
        with fsspec.open(path, "r", encoding="utf-8") as fh:
            first = fh.readline().strip()
            order = read_dictionary(path) if first.isdigit() else \
                [first] + [line.rstrip("\n") for line in fh]
    except FileNotFoundError:
        raise DataError(f"--row-names {path}: file not found")
    except UnicodeDecodeError as exc:
        raise DataError(f"--row-names {path}: not UTF-8 text ({exc})")
    order = [n for n in order if n != ""] if not first.isdigit() else order
    return pc.index_in(pa.array(order, pa.string()), value_set=names).fill_null(-1).to_numpy(
        zero_copy_only=False).astype(np.int64)


def load_features(path: str, num_entities: int, mask_path: str | None = None) -> Features:
    values, present = None, np.zeros(num_entities, bool)
    for _, _, ids, rows in feature_chunks(path, num_entities, mask_path):
        if values is None:
            values = np.zeros((num_entities, rows.shape[1]), np.float32)
        values[ids] = rows
        present[ids] = True
    if values is None:
        raise DataError(f"{path}: no feature rows")
    return Features(values, present)


def _load_npy(path: str, mmap: bool = False) -> np.ndarray:
    check_reachable(path)
    try:
        if mmap and "://" not in path:
            return np.load(path, mmap_mode="r", allow_pickle=False)
        with fsspec.open(path, "rb") as fh:
            return np.load(fh, allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found")
    except ValueError as exc:
        raise DataError(f"{path}: not a plain .npy array ({exc})")


def _dense_chunks(path: str, arr, num_entities: int, chunk_rows: int):
    if arr.ndim != 2 or arr.shape[0] != num_entities:
        raise DataError(f"{path}: expected shape ({num_entities}, dim), got {arr.shape}")
    if arr.shape[1] == 0:
        raise DataError(f"{path}: features have width 0; expected at least one value per entity")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise DataError(f"{path}: dtype {arr.dtype} is not numeric; expected float features")
    for start in range(0, num_entities, chunk_rows):
        rows = np.asarray(arr[start:start + chunk_rows], dtype=np.float32)
        present = ~np.isnan(rows).all(axis=1)
        ids = start + np.flatnonzero(present).astype(np.int64)
        yield start, ids, ids, rows[present]


def _pt_chunks(path: str, num_entities: int, chunk_rows: int):
    import torch

    check_reachable(path)
    try:
        with fsspec.open(path, "rb") as fh:
            obj = torch.load(fh, weights_only=True, map_location="cpu")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found")
    except Exception as exc:  # torch raises a variety of unpickling errors
        raise DataError(f"{path}: cannot be loaded with weights_only=True ({exc})")
    if isinstance(obj, torch.Tensor):
        yield from _dense_chunks(path, _dense_tensor(path, obj, "the tensor").float().numpy(), num_entities,
                                 chunk_rows)
        return
    if not (isinstance(obj, dict) and {"features", "ids"} <= set(obj)) or \
            not all(isinstance(obj[k], torch.Tensor) for k in ("features", "ids")):
        raise DataError(f"{path}: expected a tensor [N, dim] or a dict with tensors 'features' and 'ids'")
    ids = _dense_tensor(path, obj["ids"], "'ids'")
    if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
        raise DataError(f"{path}: 'ids' has dtype {ids.dtype}; expected integer entity ids")
    rows, ids = _dense_tensor(path, obj["features"], "'features'").float().numpy(), ids.long().numpy()
    if rows.ndim == 2 and rows.shape[1] == 0:
        raise DataError(f"{path}: 'features' has width 0; expected at least one value per entity")
    if rows.ndim != 2 or len(rows) != len(ids):
        raise DataError(f"{path}: 'features' {tuple(rows.shape)} and 'ids' {tuple(ids.shape)} disagree")
    for start in range(0, len(ids), chunk_rows):
        yield start, np.arange(start, start + len(ids[start:start + chunk_rows])), \
            ids[start:start + chunk_rows], rows[start:start + chunk_rows]


def _dense_tensor(path: str, t, what: str):
    import torch

    if t.layout != torch.strided:
        raise DataError(f"{path}: {what} is a {t.layout} tensor; expected a dense (strided) tensor")
    if t.dtype.is_complex or t.dtype == torch.bool:
        raise DataError(f"{path}: {what} has dtype {t.dtype}; expected real numbers")
    return t


def _parquet_chunks(path: str, names: pa.Array | None, skip_unknown: bool, report: dict, chunk_rows: int):
    check_reachable(path)
    try:
        fh = fsspec.open(path, "rb").open()
        reader = pq.ParquetFile(fh)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found")
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{path}: not a readable Parquet file ({exc})")
    columns = reader.schema_arrow.names
    key = "id" if "id" in columns else "name" if "name" in columns else None
    if key is None or "feature" not in columns:
        raise DataError(f"{path}: expected columns 'id' (or 'name') and 'feature', have {columns}")
    if key == "name" and names is None:
        raise DataError(f"{path}: features keyed by 'name' need the dataset's entity names")
    ftype = reader.schema_arrow.field("feature").type
    if not (pa.types.is_list(ftype) or pa.types.is_fixed_size_list(ftype) or pa.types.is_large_list(ftype)) or \
            not (pa.types.is_floating(ftype.value_type) or pa.types.is_integer(ftype.value_type)):
        raise DataError(f"{path}: field 'feature' has type {ftype}, expected a list of floats")
    if key == "id" and not pa.types.is_integer(reader.schema_arrow.field("id").type):
        raise DataError(f"{path}: field 'id' has type {reader.schema_arrow.field('id').type}; expected integer "
                        f"entity ids")
    start, dim = 0, None
    with fh:
        for batch in reader.iter_batches(batch_size=chunk_rows, columns=[key, "feature"]):
            col = batch.column("feature")
            lengths = col.value_lengths().to_numpy(zero_copy_only=False) if not pa.types.is_fixed_size_list(ftype) \
                else np.full(len(col), ftype.list_size)
            dim = int(lengths[0]) if dim is None and len(lengths) else dim
            if dim == 0:
                raise DataError(f"{path}: row {start}: feature has 0 values; expected at least one")
            if col.null_count or col.flatten().null_count:
                row = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0]) if col.null_count else 0
                raise DataError(f"{path}: row {start + row}: feature holds nulls; give present entities only, "
                                f"each with a full vector")
            off = np.flatnonzero(lengths != dim)
            if len(off):
                raise DataError(f"{path}: row {start + off[0]}: feature has {lengths[off[0]]} values, "
                                f"row 0 has {dim}")
            rows = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, dim)
            file_rows = np.arange(start, start + len(batch))
            if (row := first_null(batch.column(key))) is not None:
                raise DataError(f"{path}: row {start + row}: field '{key}' is null; every row needs its entity's "
                                f"{key}")
            if key == "id":
                ids = batch.column("id").to_numpy(zero_copy_only=False).astype(np.int64)
            else:
                found = pc.index_in(batch.column("name"), value_set=names)
                ids = found.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
                file_rows, ids, rows = _known_only(
                    ids, file_rows, rows, skip_unknown, report,
                    lambda i, n: f"{path}: row {start + i}: entity name {batch.column('name')[i].as_py()!r} is not "
                                 f"in the dataset ({n} unknown names in rows {start}..{start + len(batch) - 1})")
            yield start, file_rows, ids, rows
            start += len(batch)


def add_features(root: str, modality: str, path: str, mask_path: str | None = None,
                 skip_unknown: bool = False, row_names: str | None = None) -> dict:
    """Stream a feature file into a prepared (local) dataset as ``modality``; triples are not touched.
    ``row_names``: the file's entity order (``rows_by_name``) when it is not the dataset's."""
    for given, what in ((path, "FILE"), (mask_path, "--mask"), (row_names, "--row-names")):
        if given and local_path(given) is not None and within(real_path(local_path(given)), real_path(root)):
            raise DataError(f"{what} {given}: is inside the dataset {root}; give a file outside it (the dataset's "
                            f"own files are replaced by the import)")
    with DatasetEdit(root) as manifest:
        entities = pq.read_table(recorded_path(root, manifest, manifest["entities"]))
        names = entities.column("name").combine_chunks()
        report: dict = {}
        row_ids = rows_by_name(row_names, names) if row_names else None
        chunks = feature_chunks(path, manifest["num_entities"], mask_path, names, skip_unknown, report,
                                row_ids=row_ids)
        entry = write_feature_chunks(root, modality, chunks, path, manifest, entities)
    return {**entry, "unknown_skipped": report.get("unknown_skipped", 0)}


def add_dense_features(root: str, modality: str, features: Features, origin: str) -> dict:
    """In-memory features (e.g. text encoded from names) into a prepared dataset, in checked chunks."""
    with DatasetEdit(root) as manifest:
        check = FeatureChecks(origin, manifest["num_entities"])

        def chunks():
            for start in range(0, len(features.present), CHUNK_ROWS):
                ids = start + np.flatnonzero(features.present[start:start + CHUNK_ROWS])
                rows = features.values[ids]
                check(start, ids, ids, rows)
                yield start, ids, ids, rows
        return write_feature_chunks(root, modality, chunks(), origin, manifest,
                                    pq.read_table(recorded_path(root, manifest, manifest["entities"])))


FEATURE_FILE = re.compile(r"^features/(visual|text)(-[0-9a-f]{8})?\.parquet$")
ENTITY_FILE = re.compile(r"^entities(-[0-9a-f]{8})?\.parquet$")


class DatasetEdit:
    """An in-place edit of a local dataset: holds the dataset's lock, yields its manifest, and first removes
    what an interrupted edit left behind (unreferenced feature files of ours, ``*.tmp`` replacements)."""

    def __init__(self, root: str):
        from ..outputs import FolderLock, local_path

        if local_path(root) != root or not os.path.isdir(root):
            raise DataError(f"{root}: features are added to a local dataset folder (made by `mmkgc-dist prepare`)")
        self.root = root
        self.lock = FolderLock(root, "dataset")

    def __enter__(self) -> dict:
        self.lock.acquire()                  # before reading: a concurrent edit's manifest is never stale here
        try:
            refuse_links(self.root, ["features", "manifest.json"] +
                         [e for e in os.listdir(self.root) if ENTITY_FILE.match(e)])
            manifest = read_manifest(self.root)
            self._clean(manifest)
        except BaseException:
            self.lock.release()
            raise
        return manifest

    def __exit__(self, *exc) -> None:
        self.lock.release()

    def _clean(self, manifest: dict) -> None:
        referenced = set(manifest_files(manifest))
        folder = os.path.join(self.root, "features")
        leftovers = [f"features/{f}" for f in sorted(os.listdir(folder))] if os.path.isdir(folder) else []
        top = sorted(os.listdir(self.root))
        leftovers = [rel for rel in leftovers + top if (FEATURE_FILE.match(rel) or ENTITY_FILE.match(rel))
                     and rel not in referenced]
        # an interrupted manifest write (write_atomic's private name; we hold the lock, so its writer is gone)
        leftovers += [f for f in top if f.startswith("manifest.json.tmp")]
        for rel in leftovers:
            os.remove(os.path.join(self.root, rel))
            log.warning("removed %s, left by an interrupted feature import", os.path.join(self.root, rel))


def write_feature_chunks(root: str, modality: str, chunks, origin: str, manifest: dict, entities: pa.Table) -> dict:
    """Crash-safe: the rows go to a new file, the entity table is replaced by rename, and the manifest —
    replaced last, by rename — is what switches the dataset to the new file; the old file (only one of ours:
    ``features/<modality>[-<hex>].parquet``) is removed after that. Returns the manifest entry."""
    n = manifest["num_entities"]
    rel = f"features/{modality}-{uuid.uuid4().hex[:8]}.parquet"
    os.makedirs(os.path.join(root, "features"), exist_ok=True)
    target = os.path.join(root, rel)
    writer, present, dim = None, np.zeros(n, bool), None
    try:
        for _, _, ids, rows in chunks:
            if not len(ids):
                continue
            dim = rows.shape[1]
            table = pa.table({"id": pa.array(ids),
                              "feature": pa.FixedSizeListArray.from_arrays(pa.array(rows.reshape(-1)), dim)})
            if writer is None:
                writer = pq.ParquetWriter(target, table.schema)
            writer.write_table(table)
            present[ids] = True
        if writer is None:
            raise DataError(f"{origin}: no entity of the dataset has a feature (every row missing, all-NaN or "
                            f"masked out); nothing to add")
        writer.close()
    except BaseException:
        if writer is not None:
            writer.close()
        if os.path.exists(target):
            os.remove(target)
        raise
    column = f"has_{modality}"
    entities = entities.drop_columns([column]) if column in entities.column_names else entities
    entities = entities.append_column(column, pa.array(present))
    # The entity table goes to a new name too: until the manifest names both new files, a reader (or a crash)
    # sees the old pair, complete.
    entity_rel = f"entities-{uuid.uuid4().hex[:8]}.parquet"
    pq.write_table(entities, os.path.join(root, entity_rel))
    replaced = [manifest["modalities"].get(modality, {}).get("file"), manifest.get("entities", "entities.parquet")]
    entry = {"dim": dim, "file": rel, "present": int(present.sum())}
    manifest["modalities"][modality] = entry
    manifest["entities"] = entity_rel
    manifest["format_version"] = FORMAT_VERSION
    write_manifest(root, manifest, known=manifest.get("files"))      # the commit point
    for old in replaced:
        if isinstance(old, str) and (FEATURE_FILE.match(old) or ENTITY_FILE.match(old)) and \
                os.path.isfile(os.path.join(root, old)):
            os.remove(os.path.join(root, old))
        elif old:
            log.warning("left %s in place: the manifest named it, but it is not a file this tool writes", old)
    return entry



