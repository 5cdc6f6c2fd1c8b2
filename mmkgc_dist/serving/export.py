"""Embedding export: the whole trained model as Parquet — every entity's id, name, structural row, fused joint
embedding and AdaMF modality weights, and every relation's vector — with ``export.json`` documenting the
scoring function, so the model can be used outside this package. ``read_embeddings`` reads it back.

Each rank streams the entities it owns (all of them in one process) in chunks through its own
``part-<rank>.parquet``; nothing holds the whole table. The folder is built in a temporary sibling (its name
chosen by rank 0) and swapped in crash-safely by rank 0 once every rank has closed its part. OUT follows the
ownership rule of outputs.py.

    OUT/part-00000.parquet   id:int64, name:string, structural, joint: fixed_size_list<float32>[2d],
                             weight_<structure|modality>: float32 (AdaMF attention; absent without fusion)
    OUT/relations.parquet    id:int64, name:string, embedding: fixed_size_list<float32>[relation width] (the
                             trained rows; with reciprocal relations rows R..2R-1 are the inverses, named
                             "<name> (inverse)"), and the scorer's extra columns (RotatE: phase, θ = embedding /
                             (embedding_range / π))
    OUT/export.json          counts, widths, files, and "scoring": the function (its registered "name") and its
                             constants
    OUT/neighbour-index/     with ``--neighbour-index``: a FAISS index of the joint rows (neighbour_index.py:
                             HNSW, or IVF above a million entities, its search calibrated to recall@10 ≥ 0.95
                             against exact on a sample; export.json's "neighbour_index" names its recall)

``read_embeddings(path).score(h, r, t)`` reproduces the model's f(h, r, t) with the scorer's numpy function;
``.neighbours(entities, k)`` finds nearest entities, exactly or through the exported index.
"""
from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from ..data.records import stays_inside
from ..errors import DataError, QueryError
from ..outputs import OutputBuilder, write_atomic


def _vectors(t: torch.Tensor) -> pa.FixedSizeListArray:
    t = t.detach().float().cpu().contiguous()
    return pa.FixedSizeListArray.from_arrays(pa.array(t.numpy().reshape(-1)), t.shape[1])


def scoring_record(scoring) -> dict:
    """How to score with the exported vectors, for export.json."""
    return {**scoring.scorer.describe(), "reciprocal": scoring.queries.reciprocal,
            "num_relations": scoring.queries.num_relations}


def export_embeddings(runtime, entity_names: list[str], modalities: list[str], step: int, out_dir: str,
                      relation_names: list[str] | None = None, scoring=None, chunk: int = 65536,
                      neighbour_index: bool = False, added: dict | None = None) -> dict:
    """Through the runtime's public operations only: ``embedding_chunks`` of the entities this process owns,
    ``share``/``gather_rows``/``barrier`` (local or distributed alike). ``scoring``: ``model.Scoring``.
    ``neighbour_index``: rank 0 also builds the FAISS index of the joint rows into the folder before it moves in.
    ``added``: the run's added entities (added.py) as columns (names, structural, joint, weights), written by rank
    0 after the dataset's, ids from N on."""
    rank = runtime.rank
    builder = OutputBuilder(out_dir, "export")
    builder.tmp = runtime.share(builder.tmp)
    if rank == 0:
        builder.create()
    runtime.barrier()
    try:
        info = _write_parts(runtime, entity_names, modalities, step, builder.tmp, chunk,
                            _relations(runtime, relation_names, scoring), scoring_record(scoring) if scoring else None)
        if added is not None and rank == 0:
            _write_added(builder.tmp, info, len(entity_names), modalities, added)
        if neighbour_index and rank == 0:
            metric = scoring.scorer.neighbour_metric if scoring else "complex_l1"
            info["neighbour_index"] = _index_joint_rows(builder.tmp, info, metric)
        if rank == 0:              # every file's bytes and SHA-256: read_embeddings and `verify` compare them
            info["records"] = _records(builder.tmp)
            write_atomic(os.path.join(builder.tmp, "export.json"), json.dumps(info, indent=2))
    except BaseException:
        if rank == 0:
            builder.abort()
        raise
    if rank == 0:
        builder.commit()
    runtime.barrier()
    return info


NEIGHBOUR_INDEX = "neighbour-index"
ADDED_PART = "part-added.parquet"


def _write_added(tmp: str, info: dict, first: int, modalities: list[str], added: dict) -> None:
    """The added entities' rows as one more part (ids ``first``…), in the dataset parts' schema."""
    names, weights = added["names"], added["weights"]
    columns = {"id": pa.array(np.arange(first, first + len(names), dtype=np.int64)),
               "name": pa.array(names, pa.string()), "structural": _vectors(added["structural"]),
               "joint": _vectors(added["joint"])}
    if weights is not None:
        for i, name in enumerate(["structure", *modalities]):
            columns[f"weight_{name}"] = pa.array(weights[:, i].detach().float().cpu().numpy())
    pq.write_table(pa.table(columns), os.path.join(tmp, ADDED_PART))
    info.update(entities=info["entities"] + len(names), added_entities=len(names), files=info["files"] + [ADDED_PART])


def _records(folder: str) -> dict:
    """{relative path: {bytes, sha256}} of every file of the export but export.json itself."""
    from ..data.records import file_record
    out = {}
    for base, _, files in os.walk(folder):
        for f in files:
            rel = os.path.relpath(os.path.join(base, f), folder).replace(os.sep, "/")
            if rel != "export.json":
                out[rel] = file_record(os.path.join(base, f))
    return dict(sorted(out.items()))


def _index_joint_rows(folder: str, info: dict, metric: str) -> dict:
    """Build the neighbour index of the joint rows the parts in ``folder`` hold; what export.json records of it."""
    from .neighbour_index import build_neighbour_index
    joint = _joint_rows(folder, info["files"])
    index = build_neighbour_index(os.path.join(folder, NEIGHBOUR_INDEX), torch.from_numpy(joint),
                                  {"space": "joint", "step": info["step"]}, metric=metric)
    return {"folder": NEIGHBOUR_INDEX, **{k: index.meta[k] for k in ("space", "kind", "metric", "knob_name", "knob",
                                                                     "recall_at_k", "recall_k", "recall_sample",
                                                                     "vectors_sha256")}}


def _joint_rows(root: str, files: list[str], filesystem=None) -> np.ndarray:
    parts = [pq.read_table(f"{root}/{f}", columns=["id", "joint"], filesystem=filesystem) for f in files]
    return _matrix(pa.concat_tables(parts).sort_by("id").column("joint"))


def _relations(runtime, names: list[str] | None, scoring) -> pa.Table | None:
    """Every relation row and the scorer's extra columns (relations are small and replicated; rank 0 writes
    them)."""
    if scoring is None:
        return None
    rows = runtime.relation_table().detach().float().cpu()
    names = list(names) if names is not None else [str(i) for i in range(scoring.queries.num_relations)]
    if scoring.queries.reciprocal:
        names += [f"{n} (inverse)" for n in names]
    columns = {"id": pa.array(np.arange(len(rows), dtype=np.int64)), "name": pa.array(names, pa.string()),
               "embedding": _vectors(rows)}
    columns.update({k: _vectors(v) for k, v in scoring.scorer.relation_columns(rows).items()})
    return pa.table(columns)


def _write_parts(runtime, entity_names, modalities, step: int, tmp: str, chunk: int,
                 relations: pa.Table | None = None, scoring: dict | None = None) -> dict:
    rank = runtime.rank
    names = np.asarray(entity_names, dtype=object)
    weight_names = ["structure", *modalities]
    writer, rows = None, 0
    width = None
    for ids, structural, joint, weights in runtime.embedding_chunks(chunk):
        width = joint.shape[1]
        columns = {"id": pa.array(ids.numpy()), "name": pa.array(names[ids.numpy()].tolist(), pa.string()),
                   "structural": _vectors(structural), "joint": _vectors(joint)}
        if weights is not None:
            for i, name in enumerate(weight_names):
                columns[f"weight_{name}"] = pa.array(weights[:, i].detach().float().cpu().numpy())
        table = pa.table(columns)
        if writer is None:
            writer = pq.ParquetWriter(os.path.join(tmp, f"part-{rank:05d}.parquet"), table.schema)
        writer.write_table(table)
        rows += len(ids)
    if writer is not None:
        writer.close()
    counts = runtime.gather_rows(np.array([[rows]]))[:, 0].tolist()
    widths = [w for w in runtime.gather_rows(np.array([[width or 0]]))[:, 0].tolist() if w]
    info = {"entities": int(sum(counts)), "rows_per_rank": counts, "width": int(widths[0]) if widths else 0,
            "modality_weights": weight_names if modalities else [],
            "step": step, "files": sorted(f"part-{r:05d}.parquet" for r, n in enumerate(counts) if n)}
    if relations is not None:
        info["relations"] = {"rows": relations.num_rows, "file": "relations.parquet"}
        info["scoring"] = scoring
    runtime.barrier()
    if rank == 0 and relations is not None:
        pq.write_table(relations, os.path.join(tmp, "relations.parquet"))
    return info


class Embeddings:
    """An export read back: arrays ordered by id, names, and the scoring constants of export.json."""

    def __init__(self, info: dict, entities: pa.Table, relations: pa.Table | None, local_root: str | None = None):
        self.info, self.local_root = info, local_root
        self.entity_names = entities.column("name").to_pylist()
        self.joint = _matrix(entities.column("joint"))
        self.structural = _matrix(entities.column("structural"))
        self.weights = {c[len("weight_"):]: entities.column(c).to_numpy() for c in entities.column_names
                        if c.startswith("weight_")}
        self.relation_names = relations.column("name").to_pylist() if relations is not None else []
        self.phases = _matrix(relations.column("phase")) if relations is not None and \
            "phase" in relations.column_names else None
        self.relation_embeddings = _matrix(relations.column("embedding")) if relations is not None else None

    def scorer(self):
        """The scoring function export.json names (exports that name none are RotatE's), with its constants."""
        from ..model import make_scorer
        record = self.info["scoring"]
        scorer = make_scorer(record.get("name", "rotate"), record["dim"], record["gamma"], record.get("epsilon", 2.0))
        if "pairs" in record:               # the view scorers: which views meet (scorers/views.py)
            scorer.pairs = tuple(tuple(p) for p in record["pairs"])
        return scorer

    def score(self, heads, relations, tails) -> np.ndarray:
        """export.json's function on id arrays over the joint vectors: f(h, r, t) as the model scores it (the
        tail-query form; with reciprocal relations, id r + R scores with the inverse relation)."""
        if self.relation_embeddings is None:
            raise QueryError("score: this export has no relations (written before relations were exported)")
        h, t = checked_ids(heads, len(self.joint), "head"), checked_ids(tails, len(self.joint), "tail")
        r = checked_ids(relations, len(self.relation_embeddings), "relation")
        if not len(h) == len(r) == len(t):
            raise QueryError(f"score: {len(h)} heads, {len(r)} relations and {len(t)} tails; expected as many of each")
        return self.scorer().numpy_score(self.joint[h], self.relation_embeddings[r], self.joint[t])

    def neighbours(self, entities, k: int = 10, approximate: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(ids [q, k], distances [q, k]) of the joint rows nearest to each of ``entities`` (ids or names; itself
        excluded), by the scorer's metric as ``load_run(...).neighbours`` measures it. ``approximate``: through the
        index ``export --neighbour-index`` wrote (a local export folder)."""
        from .neighbour_index import NeighbourIndex, exact_nearest, table_digest
        k = checked_k(k, "neighbours")
        if isinstance(entities, (str, int, np.integer)):
            raise QueryError(f"neighbours: entities={entities!r}; expected a list of ids or names")
        entities = list(entities)
        names = {n: i for i, n in enumerate(self.entity_names)} if any(isinstance(e, str) for e in entities) else {}
        unknown = [e for e in entities if isinstance(e, str) and e not in names]
        if unknown:
            raise QueryError(f"neighbours: unknown entity {str(unknown[0])[:200]!r} (not among this export's names)")
        ids = checked_ids([names[e] if isinstance(e, str) else e for e in entities], len(self.joint), "entity")
        with warnings.catch_warnings():        # Arrow's buffers are read-only; the search only reads them
            warnings.simplefilter("ignore", UserWarning)
            table = torch.from_numpy(self.joint)
        k = min(k, len(table) - 1)
        if approximate:
            if "neighbour_index" not in self.info or self.local_root is None:
                raise QueryError("neighbours: this export has no neighbour index in a local folder "
                                 "(export --neighbour-index)")
            index = NeighbourIndex(os.path.join(self.local_root, self.info["neighbour_index"]["folder"]))
            recorded = index.meta.get("vectors_sha256")
            if recorded is not None and recorded != table_digest(table):
                raise DataError(f"{self.local_root}: its neighbour index was built from other vectors than the "
                                f"export's joint rows (export again with --neighbour-index)")
            distance, found = index.nearest(table, table[torch.from_numpy(ids)], k, exclude=ids)
        else:
            distance, found = exact_nearest(table, table[torch.from_numpy(ids)], k, exclude=ids,
                                            metric=self.scorer().neighbour_metric)
        return found.numpy(), distance.numpy()


def _matrix(column) -> np.ndarray:
    flat = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    return flat.flatten().to_numpy().reshape(len(flat), -1)


def checked_k(k, where: str) -> int:
    """``k`` as a whole number >= 1, else a QueryError naming ``where``."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise QueryError(f"{where}: k={k!r}; expected a whole number >= 1")
    return int(k)


def checked_ids(ids, count: int, kind: str) -> np.ndarray:
    """``ids`` as an int64 array, every one in [0, count) — a negative id would silently index from the end."""
    values = np.asarray(ids if isinstance(ids, (list, tuple, np.ndarray)) else [ids])
    if values.dtype == object or not (np.issubdtype(values.dtype, np.integer) or values.size == 0):
        raise QueryError(f"{kind} ids: expected whole numbers, got {str(values.tolist())[:200]}")
    values = values.astype(np.int64).reshape(-1)
    bad = np.flatnonzero((values < 0) | (values >= count))
    if len(bad):
        raise QueryError(f"{kind} id {values[bad[0]]}: out of range [0, {count}) ({len(bad)} such)")
    return values


def read_embeddings(path: str, verify: bool = True) -> Embeddings:
    """Read an export folder (a local path or any fsspec URL) back into arrays ordered by id. Every file is
    checked against the bytes and SHA-256 export.json records (``verify``: digests too, cached by file
    identity); a tampered, swapped, missing or malformed file is a DataError in one line."""
    from ..data.records import check_size, verify_files

    fs, root, info = _open_export(path)
    where = f"{path.rstrip('/')}/export.json"
    records = info.get("records")
    for rel in [*info["files"], *([info["relations"]["file"]] if "relations" in info else [])]:
        check_size(f"{root}/{rel}", (records or {}).get(rel), where, fs=fs)
    if verify and records:
        problems = verify_files(path, records, where, fs=fs)
        if problems:
            raise DataError(f"{problems[0]}{f' (and {len(problems) - 1} more)' if len(problems) > 1 else ''}; the "
                            f"export is not the one its export.json records — export it again")
    entities = pa.concat_tables([_read_part(fs, root, path, f) for f in info["files"]]).sort_by("id")
    if entities.num_rows != info["entities"] or entities.column("id").to_pylist() != list(range(info["entities"])):
        raise DataError(f"{path}: the parts hold {entities.num_rows} entity rows; export.json says "
                        f"{info['entities']} with ids 0..{info['entities'] - 1}")
    relations = _read_part(fs, root, path, info["relations"]["file"], ("id", "name", "embedding")).sort_by("id") \
        if "relations" in info else None
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    local = root if "file" in protocols else None           # FAISS reads its index from a local file
    return Embeddings(info, entities, relations, local)


def export_problems(path: str) -> tuple[int, list[str]]:
    """(files compared, problems): every file of an export against the bytes and SHA-256 export.json records."""
    from ..data.records import verify_files
    fs, root, info = _open_export(path)
    where = f"{path.rstrip('/')}/export.json"
    records = info.get("records") or {}
    problems = [f"{path.rstrip('/')}/{rel}: listed in export.json but not recorded" for rel in info["files"]
                if rel not in records]
    return len(records), problems + verify_files(path, records, where, use_cache=False, fs=fs)


def _open_export(path: str):
    """(filesystem, root, export.json checked) of an export folder at a path or URL."""
    import fsspec

    from ..data.remote import remote_faults
    where = f"{path.rstrip('/')}/export.json"
    try:
        with remote_faults(path):
            fs, root = fsspec.core.url_to_fs(path)
            with fs.open(f"{root}/export.json") as fh:
                info = json.loads(fh.read(1 << 24))
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"{path}: no export.json; is this a folder written by `mmkgc-dist export`?") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"{where}: not valid JSON ({' '.join(str(exc).split())[:200]})") from None
    _check_info(info, where)
    return fs, root, info


def _check_info(info, where: str) -> None:
    if not isinstance(info, dict):
        raise DataError(f"{where}: expected a JSON object")
    files = info.get("files")
    if not isinstance(files, list) or not all(stays_inside(f) for f in files):
        raise DataError(f"{where}: field 'files' must list the part files inside the folder")
    if not isinstance(info.get("entities"), int) or isinstance(info.get("entities"), bool) or info["entities"] < 0:
        raise DataError(f"{where}: field 'entities' must be a whole number >= 0")
    if "relations" in info and not (isinstance(info["relations"], dict) and
                                    isinstance(info["relations"].get("file"), str) and
                                    stays_inside(info["relations"]["file"])):
        raise DataError(f"{where}: field 'relations' must be {{rows, file}} with a file inside the folder")
    if "records" in info and not isinstance(info["records"], dict):
        raise DataError(f"{where}: field 'records' must map files to {{bytes, sha256}}")


def _read_part(fs, root: str, path: str, rel: str, columns=("id", "name", "joint", "structural")) -> pa.Table:
    where = f"{path.rstrip('/')}/{rel}"
    try:
        table = pq.read_table(f"{root}/{rel}", filesystem=fs)
    except FileNotFoundError:
        raise DataError(f"{where}: listed in export.json, missing") from None
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{where}: not a readable Parquet file ({' '.join(str(exc).split())[:200]})") from None
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise DataError(f"{where}: column {missing[0]!r} missing")
    return table
