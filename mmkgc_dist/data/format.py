"""The on-disk dataset: a folder (local path or any fsspec URL) of Parquet files plus a manifest.

    manifest.json            format name + version, counts, splits, modalities (see docs/dataset-format.md)
    entities.parquet         id:int64, name:string, degree:int64 (train), has_<modality>:bool, unseen:bool
                             (only in a dataset of ``prepare inductive``)
    relations.parquet        id:int64, name:string, count, distinct_heads/tails, tails_per_head, heads_per_tail
    triples/<split>/part-NNNNN.parquet   head:int64, relation:int64, tail:int64 (row groups of ≤1M rows)
    features/<modality>.parquet          id:int64, feature:fixed_size_list<float32>[dim]  (present rows only)

Triples are split into part files and row groups so a streaming reader can hand disjoint row groups to
ranks; features store only present rows, so a missing modality costs nothing on disk.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import DataError
from .records import stays_inside
from .remote import remote_faults
from .statistics import TripleStatistics, exact_relation_table

FORMAT_NAME = "mmkgc-dist"
FORMAT_VERSION = 2            # 2 added training statistics (degrees, per-relation counts); 1 is still read
READABLE_VERSIONS = (1, 2)
ROW_GROUP_ROWS = 1 << 20
PART_ROWS = 1 << 24
TRIPLE_SCHEMA = pa.schema([("head", pa.int64()), ("relation", pa.int64()), ("tail", pa.int64())])


@dataclass
class Features:
    """Dense [N, dim] float32 matrix (zeros where absent) and a presence mask [N] — or, read lazily
    (``values`` None), the mask and width only: ``rows(lo, hi)`` then reads just those rows from the file, so
    a rank of a distributed run holds its own shard of a feature file, never the whole matrix."""
    values: np.ndarray | None
    present: np.ndarray
    width: int = 0
    path: str | None = None

    @property
    def dim(self) -> int:
        return self.values.shape[1] if self.values is not None else self.width

    def rows(self, lo: int, hi: int) -> np.ndarray:
        """Rows [lo, hi) as a dense float32 block (zeros where absent)."""
        if self.values is not None:
            return self.values[lo:hi]
        return read_feature_rows(self.path, lo, hi, self.width)


@dataclass
class KGData:
    num_entities: int
    num_relations: int
    splits: dict[str, np.ndarray]                 # name -> int64 [n, 3] (head, relation, tail)
    entity_names: list[str]
    relation_names: list[str]
    features: dict[str, Features] = field(default_factory=dict)
    name: str = "dataset"
    identity: str = ""        # the dataset version's digest (``dataset_identity``); runs record it
    unseen: np.ndarray | None = None   # bool [N]: entities held out by ``prepare inductive`` (placed by content)


# ----------------------------------------------------------------------------------------- writing
def write_dataset(data: KGData, out_dir: str, source: str = "", row_group_rows: int = ROW_GROUP_ROWS,
                  overwrite: bool = False, inputs: tuple[str, ...] = (), checks: dict | None = None,
                  recipe: dict | None = None, inductive: dict | None = None) -> dict:
    """``data`` as a dataset folder; its manifest. ``checks`` (duplicates/overlap counts the caller allowed),
    ``recipe`` (where a benchmark came from, with its file digests) and ``inductive`` (the unseen entities' draw,
    inductive.py) are recorded in the manifest."""
    validate(data, origin=source or "in-memory dataset")
    extra = {k: v for k, v in (("checks", checks), ("recipe", recipe), ("inductive", inductive)) if v}
    return build_dataset_folder(out_dir, inputs, overwrite,
                         lambda root: {**_write_contents(data, root, source, row_group_rows), **extra})


def build_dataset_folder(out_dir: str, inputs: tuple[str, ...], overwrite: bool, fill) -> dict:
    """The one way a dataset folder is written: under the ownership rule (outputs.py), ``fill(root)`` writes
    the files into a temporary sibling and returns the manifest, which is written last (the commit point);
    then the folder is swapped in crash-safely. Returns the manifest."""
    from ..outputs import OutputBuilder, check_output

    check_output(out_dir, "dataset", inputs, overwrite)
    builder = OutputBuilder(out_dir, "dataset").create()
    try:
        manifest = fill(builder.tmp)
        write_manifest(builder.tmp, manifest)
    except BaseException:
        builder.abort()
        raise
    builder.commit()
    return manifest


def write_name_tables(root: str, entity_columns: dict, relation_names, relation_table: dict) -> None:
    """entities.parquet (id, name, degree and any ``has_<modality>`` column given) and relations.parquet
    (id, name and the per-relation statistics)."""
    pq.write_table(pa.table(entity_columns), os.path.join(root, "entities.parquet"))
    pq.write_table(relation_stats_table(relation_names, relation_table), os.path.join(root, "relations.parquet"))


def manifest_record(name: str, source, num_entities: int, num_relations: int, splits: dict, modalities: dict,
                    **extra) -> dict:
    """The manifest of a dataset written now (docs/dataset-format.md); ``extra``: fields a writer adds."""
    return {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "name": name, "source": source,
            "num_entities": num_entities, "num_relations": num_relations,
            "entities": "entities.parquet", "relations": "relations.parquet", "splits": splits,
            "modalities": modalities, **extra}


def relation_stats_table(names, stats: dict[str, np.ndarray]) -> pa.Table:
    return pa.table({"id": pa.array(np.arange(len(names), dtype=np.int64)), "name": pa.array(names, pa.string()),
                     **{k: pa.array(v) for k, v in stats.items()}})


def _write_contents(data: KGData, root: str, source: str, row_group_rows: int) -> dict:
    n = data.num_entities
    stats = TripleStatistics()
    stats.update(data.splits.get("train", np.zeros((0, 3), np.int64)))
    entity_cols = {"id": pa.array(np.arange(n, dtype=np.int64)), "name": pa.array(data.entity_names, pa.string()),
                   "degree": pa.array(stats.degrees(n))}
    for m, feats in data.features.items():
        entity_cols[f"has_{m}"] = pa.array(feats.present.astype(bool))
    if data.unseen is not None:
        entity_cols["unseen"] = pa.array(data.unseen.astype(bool))
    write_name_tables(root, entity_cols, data.relation_names, exact_relation_table(
        data.splits.get("train", np.zeros((0, 3), np.int64)), data.num_relations))
    splits = {}
    for split, triples in data.splits.items():
        splits[split] = {"rows": int(len(triples)), "files": _write_triples(triples, root, split, row_group_rows)}
    modalities = {}
    os.makedirs(os.path.join(root, "features"), exist_ok=True)
    for m, feats in data.features.items():
        rel = f"features/{m}.parquet"
        ids = np.flatnonzero(feats.present).astype(np.int64)
        flat = pa.array(np.ascontiguousarray(feats.values[ids], dtype=np.float32).reshape(-1))
        table = pa.table({"id": pa.array(ids), "feature": pa.FixedSizeListArray.from_arrays(flat, feats.dim)})
        pq.write_table(table, os.path.join(root, rel), row_group_size=65536)
        modalities[m] = {"dim": feats.dim, "file": rel, "present": int(len(ids))}
    return manifest_record(data.name, source, n, data.num_relations, splits, modalities)


def _write_triples(triples: np.ndarray, root: str, split: str, row_group_rows: int) -> list[str]:
    writer = TripleWriter(root, split, row_group_rows)
    writer.write(triples)
    return writer.close()


class TripleWriter:
    """Id triples, written in any number of pieces → part files of ≤ PART_ROWS rows with row groups of exactly
    ``row_group_rows`` (the last smaller). An empty split still gets one (empty) part file."""

    def __init__(self, root: str, split: str, row_group_rows: int = ROW_GROUP_ROWS):
        self.root, self.split, self.group_rows = root, split, row_group_rows
        os.makedirs(os.path.join(root, "triples", split), exist_ok=True)
        self.files: list[str] = []
        self.pending: list[np.ndarray] = [np.zeros((0, 3), np.int64)]
        self.pending_rows = 0
        self.writer: pq.ParquetWriter | None = None
        self.rows_in_part = 0
        self.rows = 0

    def write(self, triples: np.ndarray) -> None:
        self.pending.append(triples)
        self.pending_rows += len(triples)
        while self.pending_rows >= self.group_rows:
            self._flush(self.group_rows)

    def _flush(self, rows: int) -> None:
        data = self.pending[0] if len(self.pending) == 1 else np.concatenate(self.pending)   # no re-copy
        group, rest = data[:rows], data[rows:]
        self.pending, self.pending_rows = [rest], len(rest)
        if self.writer is None or self.rows_in_part >= PART_ROWS:
            self._next_part()
        self.writer.write_table(pa.table({"head": group[:, 0], "relation": group[:, 1], "tail": group[:, 2]},
                                         schema=TRIPLE_SCHEMA), row_group_size=self.group_rows)
        self.rows_in_part += len(group)
        self.rows += len(group)

    def _next_part(self) -> None:
        if self.writer is not None:
            self.writer.close()
        rel = f"triples/{self.split}/part-{len(self.files):05d}.parquet"
        self.files.append(rel)
        self.writer = pq.ParquetWriter(os.path.join(self.root, rel), TRIPLE_SCHEMA)
        self.rows_in_part = 0

    def close(self) -> list[str]:
        if self.pending_rows or self.writer is None:
            self._flush(self.pending_rows)
        self.writer.close()
        return self.files


def first_null(column) -> int | None:
    """Index of the first null of an Arrow column, or None when it has none (no copy in that case)."""
    if not column.null_count:
        return None
    return int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])


# ----------------------------------------------------------------------------------------- identity
def manifest_files(manifest: dict) -> list[str]:
    """Every file a manifest names, relative to the dataset folder."""
    files = [manifest.get("entities", "entities.parquet"), manifest.get("relations", "relations.parquet")]
    for info in manifest["splits"].values():
        files += info["files"]
    files += [info["file"] for info in manifest["modalities"].values()]
    return files


def write_manifest(root: str, manifest: dict, known: dict | None = None) -> None:
    """Record the bytes and SHA-256 of every file the manifest names (``known``: entries of files that did not
    change, not hashed again), then write ``root/manifest.json`` atomically — the dataset's one commit point."""
    from ..outputs import file_sha256, write_atomic

    known = known or {}
    files = {}
    for rel in manifest_files(manifest):
        path = os.path.join(root, rel)
        size = os.path.getsize(path)
        entry = known.get(rel)
        if not (isinstance(entry, dict) and entry.get("bytes") == size and entry.get("sha256")):
            entry = {"bytes": size, "sha256": file_sha256(path)}
        files[rel] = entry
    manifest["files"] = files
    write_atomic(os.path.join(root, "manifest.json"), json.dumps(manifest, indent=2))


def dataset_identity(manifest: dict) -> str:
    """A dataset version's identity: the SHA-256 of its manifest, which records every file's digest (datasets
    written before file digests: the manifest alone). Any rewrite of the content changes it."""
    return hashlib.sha256(json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def synthetic_identity(synthetic_config: dict) -> str:
    """The generated graph is a pure function of its config."""
    return hashlib.sha256(json.dumps({"synthetic": synthetic_config}, sort_keys=True).encode()).hexdigest()


# ----------------------------------------------------------------------------------------- reading
def _join(root: str, rel: str) -> str:
    return root.rstrip("/") + "/" + rel


def recorded_path(root: str, manifest: dict, rel: str) -> str:
    """The path of a file the manifest names, after checking its size against the manifest's record (a stat:
    a replaced or truncated file is refused before it is read)."""
    from .records import check_size
    path = _join(root, rel)
    check_size(path, (manifest.get("files") or {}).get(rel), _join(root, "manifest.json"))
    return path


def dataset_problems(root: str, manifest: dict | None = None, use_cache: bool = True,
                     progress: bool = False) -> tuple[int, list[str]]:
    """(files compared, problems): every file of the dataset against the bytes and SHA-256 its manifest records
    (datasets written before file records: nothing to compare)."""
    from .records import verify_files
    manifest = manifest if manifest is not None else read_manifest(root)
    records = manifest.get("files")
    if not records:
        return 0, []
    extra = [f"{_join(root, rel)}: read by the dataset but not recorded in its manifest"
             for rel in manifest_files(manifest) if rel not in records]
    return len(records), extra + verify_files(root, records, _join(root, "manifest.json"), use_cache=use_cache,
                                              progress=progress)


def verify_dataset(root: str, manifest: dict | None = None, use_cache: bool = True, progress: bool = False) -> int:
    """Every file of the dataset against the SHA-256 its manifest records (cached by file identity: a dataset is
    hashed once per version of its files); DataError naming the first mismatch. Returns the files checked."""
    checked, problems = dataset_problems(root, manifest, use_cache, progress)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise DataError(f"{problems[0]}{more}; the dataset is not the version its manifest records — restore the "
                        f"files or prepare it again")
    return checked


MANIFEST_LIMIT = 64 << 20       # bytes read of a manifest at most: a hostile URL cannot fill memory


def read_manifest(root: str) -> dict:
    path = _join(root, "manifest.json")

    def load():
        with remote_faults(path), fsspec.open(path, "rb") as fh:
            text = fh.read(MANIFEST_LIMIT + 1)
        if len(text) > MANIFEST_LIMIT:
            raise DataError(f"{path}: over {MANIFEST_LIMIT >> 20} MiB; a manifest is a small JSON file")
        return json.loads(text)

    manifest = _reading(load, {
        FileNotFoundError: lambda e: f"{path}: manifest not found; is {root} a dataset written by "
                                     f"`mmkgc-dist prepare`?",
        NotADirectoryError: lambda e: f"{root}: is a file; expected a dataset folder written by `mmkgc-dist prepare`",
        (json.JSONDecodeError, UnicodeDecodeError): lambda e: f"{path}: not valid JSON ({e})",
        OSError: lambda e: f"{path}: cannot be read ({e})"})
    if not isinstance(manifest, dict):
        raise DataError(f"{path}: expected a JSON object, got {type(manifest).__name__}")
    if manifest.get("format") != FORMAT_NAME:
        raise DataError(f"{path}: field 'format' is {manifest.get('format')!r}, expected {FORMAT_NAME!r}")
    if manifest.get("format_version") not in READABLE_VERSIONS:
        raise DataError(f"{path}: field 'format_version' is {manifest.get('format_version')!r}; "
                        f"this version reads {READABLE_VERSIONS}")
    for key in ("num_entities", "num_relations", "splits", "modalities"):
        if key not in manifest:
            raise DataError(f"{path}: required field {key!r} missing")
    for key in ("num_entities", "num_relations"):
        value = manifest[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise DataError(f"{path}: field {key!r} is {value!r} ({type(value).__name__}); expected a whole number "
                            f">= 1")
    _check_manifest_paths(path, manifest)
    return manifest


def _check_manifest_paths(path: str, manifest: dict) -> None:
    fields = [("entities", manifest.get("entities", "entities.parquet")),
              ("relations", manifest.get("relations", "relations.parquet"))]
    if not isinstance(manifest["splits"], dict) or not isinstance(manifest["modalities"], dict):
        raise DataError(f"{path}: fields 'splits' and 'modalities' must be objects")
    for split, info in manifest["splits"].items():
        if not isinstance(info, dict) or not isinstance(info.get("files"), list) or \
                not isinstance(info.get("rows"), int):
            raise DataError(f"{path}: splits.{split}: expected {{'rows': int, 'files': [...]}}")
        fields += [(f"splits.{split}.files", rel) for rel in info["files"]]
    for m, info in manifest["modalities"].items():
        if not isinstance(info, dict):
            raise DataError(f"{path}: modalities.{m}: expected an object")
        fields.append((f"modalities.{m}.file", info.get("file")))
    for key, rel in fields:
        if not stays_inside(rel):
            raise DataError(f"{path}: field {key} is {rel!r}; expected a relative path inside the dataset")


def _reading(read, reasons: dict):
    """``read()``; an exception of a class ``reasons`` names (first match wins) becomes a DataError with the
    message that class's function makes of it."""
    caught = tuple(c for key in reasons for c in (key if isinstance(key, tuple) else (key,)))
    try:
        return read()
    except caught as exc:
        message = next(say for cls, say in reasons.items() if isinstance(exc, cls))
        raise DataError(message(exc)) from None


def _read_table(path: str, columns=None) -> pa.Table:
    def read():
        with remote_faults(path), fsspec.open(path, "rb") as fh:
            return pq.read_table(fh, columns=columns)

    return _reading(read, {FileNotFoundError: lambda e: f"{path}: file listed in the manifest is missing",
                           (pa.ArrowInvalid, OSError): lambda e: f"{path}: not a readable Parquet file ({e})",
                           KeyError: lambda e: f"{path}: column {e} missing"})


def read_training_statistics(root: str, manifest: dict) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """(per-relation statistics, entity degrees) of the training split: stored since format 2, computed by
    streaming the training row groups for format 1 datasets."""
    rels = _read_table(recorded_path(root, manifest, manifest["relations"]))
    if "tails_per_head" in rels.column_names:
        stats = {k: rels.column(k).to_numpy() for k in ("count", "distinct_heads", "distinct_tails",
                                                         "tails_per_head", "heads_per_tail")}
        degree = _read_table(recorded_path(root, manifest, manifest["entities"]), columns=["degree"]).column("degree").to_numpy()
        return stats, degree
    acc = TripleStatistics()
    for rel in manifest["splits"].get("train", {}).get("files", []):
        with fsspec.open(recorded_path(root, manifest, rel), "rb") as fh:
            for batch in pq.ParquetFile(fh).iter_batches(batch_size=ROW_GROUP_ROWS):
                acc.update(np.stack([batch.column(c).to_numpy() for c in ("head", "relation", "tail")], 1))
    return acc.relation_table(manifest["num_relations"]), acc.degrees(manifest["num_entities"])


def read_triples(root: str, manifest: dict, split: str) -> np.ndarray:
    info = manifest["splits"][split]
    parts = []
    for rel in info["files"]:
        path = recorded_path(root, manifest, rel)
        table = _read_table(path)
        if not table.schema.equals(TRIPLE_SCHEMA):
            raise DataError(f"{path}: schema {table.schema.to_string()!r} differs from the expected "
                            f"head:int64, relation:int64, tail:int64")
        for c in ("head", "relation", "tail"):
            if (row := first_null(table.column(c))) is not None:
                raise DataError(f"{path}: row {row}: {c} is null; every triple needs three ids")
        parts.append(np.stack([table.column(c).to_numpy() for c in ("head", "relation", "tail")], axis=1))
    triples = np.concatenate(parts) if parts else np.zeros((0, 3), np.int64)
    if len(triples) != info["rows"]:
        raise DataError(f"{_join(root, 'manifest.json')}: split {split!r} declares {info['rows']} rows, "
                        f"files hold {len(triples)}")
    return triples.astype(np.int64, copy=False)


def read_feature_rows(path: str, lo: int, hi: int, dim: int) -> np.ndarray:
    """Rows with ids in [lo, hi) of a feature file, as a dense block; row groups whose id range misses the
    interval are skipped by their statistics (our writers store ids in ascending order)."""
    try:
        with fsspec.open(path, "rb") as fh:
            table = pq.read_table(fh, filters=[("id", ">=", lo), ("id", "<", hi)])
    except FileNotFoundError:
        raise DataError(f"{path}: file listed in the manifest is missing")
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{path}: not a readable Parquet file ({exc})")
    out = np.zeros((max(hi - lo, 0), dim), np.float32)
    col = table.column("feature").combine_chunks()
    if not pa.types.is_fixed_size_list(col.type) or col.type.list_size != dim:
        raise DataError(f"{path}: field 'feature' has type {col.type}, expected fixed_size_list<float>[{dim}]")
    ids = table.column("id").to_numpy()
    rows = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(-1, dim)
    if not np.isfinite(rows).all():
        raise DataError(f"{path}: feature rows with ids in [{lo}, {hi}) hold NaN/Inf")
    out[ids - lo] = rows
    return out


def lazy_features(root: str, manifest: dict, modality: str, entities: pa.Table) -> Features:
    """A modality's mask and width, with rows read on demand (``Features.rows``)."""
    column = f"has_{modality}"
    if column not in entities.column_names:
        raise DataError(f"{_join(root, manifest['entities'])}: column {column!r} missing")
    info = manifest["modalities"][modality]
    return Features(None, entities.column(column).to_numpy(zero_copy_only=False).astype(bool), int(info["dim"]),
                    recorded_path(root, manifest, info["file"]))


def read_features(root: str, manifest: dict, modality: str) -> Features:
    info = manifest["modalities"][modality]
    path = recorded_path(root, manifest, info["file"])
    table = _read_table(path)
    n, dim = manifest["num_entities"], info["dim"]
    col = table.column("feature").combine_chunks()
    if not pa.types.is_fixed_size_list(col.type) or col.type.list_size != dim:
        raise DataError(f"{path}: field 'feature' has type {col.type}, expected fixed_size_list<float>[{dim}]")
    ids = table.column("id").to_numpy()
    rows = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(-1, dim)
    values = np.zeros((n, dim), np.float32)
    present = np.zeros(n, bool)
    FeatureChecks(path, n)(0, np.arange(len(ids)), ids, rows)
    values[ids] = rows
    present[ids] = True
    return Features(values, present)


class FeatureChecks:
    """Per-chunk checks with file-global row numbers: id range, duplicates (across chunks too), finite
    values, one width."""

    def __init__(self, origin: str, num_entities: int):
        self.origin, self.n = origin, num_entities
        self.seen = np.zeros(num_entities, bool)
        self.dim: int | None = None

    def __call__(self, first_row: int, rows_in_file: np.ndarray, ids: np.ndarray, rows: np.ndarray) -> None:
        """rows_in_file: each kept row's row number in the file (for messages)."""
        o = self.origin
        bad = np.flatnonzero((ids < 0) | (ids >= self.n))
        if len(bad):
            raise DataError(f"{o}: row {rows_in_file[bad[0]]}: entity id {ids[bad[0]]} out of range "
                            f"[0, {self.n}) ({len(bad)} such rows in this chunk)")
        uniq, counts = np.unique(ids, return_counts=True)
        if (counts > 1).any():
            dup = uniq[counts > 1][0]
            second = np.flatnonzero(ids == dup)[1]
            raise DataError(f"{o}: row {rows_in_file[second]}: entity id {dup} appears again "
                            f"({counts[counts > 1][0]} times)")
        again = np.flatnonzero(self.seen[ids])
        if len(again):
            raise DataError(f"{o}: row {rows_in_file[again[0]]}: entity id {ids[again[0]]} appears again")
        finite = np.isfinite(rows).all(axis=1)
        if not finite.all():
            row = int(np.flatnonzero(~finite)[0])
            raise DataError(f"{o}: row {rows_in_file[row]} (entity {ids[row]}): feature holds NaN/Inf "
                            f"({int((~finite).sum())} such rows in this chunk)")
        if self.dim is None:
            self.dim = rows.shape[1]
        elif rows.shape[1] != self.dim:
            raise DataError(f"{o}: from row {first_row}: features have {rows.shape[1]} values, earlier rows "
                            f"{self.dim}")
        self.seen[ids] = True


def load_dataset(root: str, modalities: list[str] | None = None, skip_splits: tuple[str, ...] = (),
                 feature_values: bool = True) -> KGData:
    """Read a prepared dataset; splits in ``skip_splits`` stay on disk (the streaming loader reads them);
    with ``feature_values`` false only the feature masks and widths are read (rows on demand)."""
    manifest = read_manifest(root)
    n, r = manifest["num_entities"], manifest["num_relations"]
    ents = _read_table(recorded_path(root, manifest, manifest["entities"]))
    rels = _read_table(recorded_path(root, manifest, manifest["relations"]), columns=["id", "name"])
    if ents.num_rows != n:
        raise DataError(f"{_join(root, manifest['entities'])}: {ents.num_rows} rows, manifest says {n} entities")
    if rels.num_rows != r:
        raise DataError(f"{_join(root, manifest['relations'])}: {rels.num_rows} rows, manifest says {r} relations")
    splits = {s: read_triples(root, manifest, s) for s in manifest["splits"] if s not in skip_splits}
    wanted = list(manifest["modalities"]) if modalities is None else modalities
    features = {}
    for m in wanted:
        if m not in manifest["modalities"]:
            continue  # a modality absent from the data is missing for every entity (handled by the model)
        features[m] = read_features(root, manifest, m) if feature_values else lazy_features(root, manifest, m, ents)
    unseen = ents.column("unseen").to_numpy(zero_copy_only=False).astype(bool) \
        if "unseen" in ents.column_names else None
    data = KGData(n, r, splits, ents.column("name").to_pylist(), rels.column("name").to_pylist(),
                  features, manifest.get("name", "dataset"), dataset_identity(manifest), unseen)
    validate(data, origin=root)
    return data


def validate(data: KGData, origin: str) -> None:
    for split, triples in data.splits.items():
        if triples.ndim != 2 or triples.shape[1] != 3:
            raise DataError(f"{origin}: split {split!r}: expected [n, 3] triples, got shape {triples.shape}")
        for col, name, limit in ((0, "head", data.num_entities), (1, "relation", data.num_relations),
                                 (2, "tail", data.num_entities)):
            bad = np.flatnonzero((triples[:, col] < 0) | (triples[:, col] >= limit))
            if len(bad):
                raise DataError(f"{origin}: split {split!r} row {bad[0]}: {name} id {triples[bad[0], col]} "
                                f"out of range [0, {limit}) ({len(bad)} such rows)")
    if len(data.entity_names) != data.num_entities:
        raise DataError(f"{origin}: {len(data.entity_names)} entity names for {data.num_entities} entities")
    for kind, names in (("entity", data.entity_names), ("relation", data.relation_names)):
        if len(set(names)) != len(names):          # a query by name must name one id
            seen, first = {}, None
            for i, name in enumerate(names):
                if name in seen:
                    first = (seen[name], i, name)
                    break
                seen[name] = i
            raise DataError(f"{origin}: {kind} name {first[2]!r} is given to ids {first[0]} and {first[1]}; "
                            f"{kind} names must be unique")
    for m, f in data.features.items():
        rows = f.values.shape[0] if f.values is not None else len(f.present)
        if rows != data.num_entities or f.present.shape != (data.num_entities,):
            raise DataError(f"{origin}: modality {m!r}: {rows} rows for {data.num_entities} entities")
        if f.values is not None and not np.isfinite(f.values[f.present]).all():
            raise DataError(f"{origin}: modality {m!r}: features hold NaN/Inf")
