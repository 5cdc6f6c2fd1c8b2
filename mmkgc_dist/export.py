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

from .outputs import OutputBuilder


def _vectors(t: torch.Tensor) -> pa.FixedSizeListArray:
    t = t.detach().float().cpu().contiguous()
    return pa.FixedSizeListArray.from_arrays(pa.array(t.numpy().reshape(-1)), t.shape[1])


def scoring_record(scoring) -> dict:
    """How to score with the exported vectors, for export.json."""
    return {**scoring.scorer.describe(), "reciprocal": scoring.queries.reciprocal,
            "num_relations": scoring.queries.num_relations}


def export_embeddings(runtime, entity_names: list[str], modalities: list[str], step: int, out_dir: str,
                      relation_names: list[str] | None = None, scoring=None, chunk: int = 65536,
                      neighbour_index: bool = False) -> dict:
    """Through the runtime's public operations only: ``embedding_chunks`` of the entities this process owns,
    ``share``/``gather_rows``/``barrier`` (local or distributed alike). ``scoring``: ``model.Scoring``.
    ``neighbour_index``: rank 0 also builds the FAISS index of the joint rows into the folder before it moves in."""
    rank = runtime.rank
    builder = OutputBuilder(out_dir, "export")
    builder.tmp = runtime.share(builder.tmp)
    if rank == 0:
        builder.create()
    runtime.barrier()
    try:
        info = _write_parts(runtime, entity_names, modalities, step, builder.tmp, chunk,
                            _relations(runtime, relation_names, scoring), scoring_record(scoring) if scoring else None)
        if neighbour_index and rank == 0:
            metric = scoring.scorer.neighbour_metric if scoring else "complex_l1"
            info["neighbour_index"] = _index_joint_rows(builder.tmp, info, metric)
            with open(os.path.join(builder.tmp, "export.json"), "w") as fh:
                json.dump(info, fh, indent=2)
    except BaseException:
        if rank == 0:
            builder.abort()
        raise
    if rank == 0:
        builder.commit()
    runtime.barrier()
    return info


NEIGHBOUR_INDEX = "neighbour-index"


def _index_joint_rows(folder: str, info: dict, metric: str) -> dict:
    """Build the neighbour index of the joint rows the parts in ``folder`` hold; what export.json records of it."""
    from .neighbour_index import build_neighbour_index
    joint = _joint_rows(folder, info["files"])
    index = build_neighbour_index(os.path.join(folder, NEIGHBOUR_INDEX), torch.from_numpy(joint),
                                  {"space": "joint", "step": info["step"]}, metric=metric)
    return {"folder": NEIGHBOUR_INDEX, **{k: index.meta[k] for k in ("space", "kind", "metric", "knob_name", "knob",
                                                                     "recall_at_k", "recall_k", "recall_sample")}}


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
    if rank == 0:
        if relations is not None:
            pq.write_table(relations, os.path.join(tmp, "relations.parquet"))
        with open(os.path.join(tmp, "export.json"), "w") as fh:
            json.dump(info, fh, indent=2)
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
        from .model import make_scorer
        record = self.info["scoring"]
        scorer = make_scorer(record.get("name", "rotate"), record["dim"], record["gamma"], record.get("epsilon", 2.0))
        if "pairs" in record:               # the view scorers: which views meet (scorers/views.py)
            scorer.pairs = tuple(tuple(p) for p in record["pairs"])
        return scorer

    def score(self, heads, relations, tails) -> np.ndarray:
        """export.json's function on id arrays over the joint vectors: f(h, r, t) as the model scores it (the
        tail-query form; with reciprocal relations, id r + R scores with the inverse relation)."""
        if self.relation_embeddings is None:
            raise ValueError("this export has no relations (written before relations were exported)")
        h, t = self.joint[np.asarray(heads)], self.joint[np.asarray(tails)]
        return self.scorer().numpy_score(h, self.relation_embeddings[np.asarray(relations)], t)

    def neighbours(self, entities, k: int = 10, approximate: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(ids [q, k], distances [q, k]) of the joint rows nearest to each of ``entities`` (ids or names; itself
        excluded), by the scorer's metric as ``load_run(...).neighbours`` measures it. ``approximate``: through the
        index ``export --neighbour-index`` wrote (a local export folder)."""
        from .neighbour_index import NeighbourIndex, exact_nearest
        names = {n: i for i, n in enumerate(self.entity_names)} if any(isinstance(e, str) for e in entities) else {}
        unknown = [e for e in entities if isinstance(e, str) and e not in names]
        if unknown:
            raise ValueError(f"neighbours: unknown entity {unknown[0]!r} (not among this export's names)")
        ids = np.array([names[e] if isinstance(e, str) else int(e) for e in entities], dtype=np.int64)
        with warnings.catch_warnings():        # Arrow's buffers are read-only; the search only reads them
            warnings.simplefilter("ignore", UserWarning)
            table = torch.from_numpy(self.joint)
        k = min(k, len(table) - 1)
        if approximate:
            if "neighbour_index" not in self.info or self.local_root is None:
                raise ValueError("this export has no neighbour index in a local folder (export --neighbour-index)")
            index = NeighbourIndex(os.path.join(self.local_root, self.info["neighbour_index"]["folder"]))
            distance, found = index.nearest(table, table[torch.from_numpy(ids)], k, exclude=ids)
        else:
            distance, found = exact_nearest(table, table[torch.from_numpy(ids)], k, exclude=ids,
                                            metric=self.scorer().neighbour_metric)
        return found.numpy(), distance.numpy()


def _matrix(column) -> np.ndarray:
    flat = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    return flat.flatten().to_numpy().reshape(len(flat), -1)


def read_embeddings(path: str) -> Embeddings:
    """Read an export folder (a local path or any fsspec URL) back into arrays ordered by id."""
    import fsspec

    from .errors import DataError

    fs, root = fsspec.core.url_to_fs(path)
    try:
        with fs.open(f"{root}/export.json") as fh:
            info = json.load(fh)
    except FileNotFoundError:
        raise DataError(f"{path}: no export.json; is this a folder written by `mmkgc-dist export`?")
    parts = [pq.read_table(f"{root}/{f}", filesystem=fs) for f in info["files"]]
    entities = pa.concat_tables(parts).sort_by("id")
    if entities.num_rows != info["entities"] or entities.column("id").to_pylist() != list(range(info["entities"])):
        raise DataError(f"{path}: the parts hold {entities.num_rows} entity rows; export.json says "
                        f"{info['entities']} with ids 0..{info['entities'] - 1}")
    relations = pq.read_table(f"{root}/{info['relations']['file']}", filesystem=fs).sort_by("id") \
        if "relations" in info else None
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    local = root if "file" in protocols else None           # FAISS reads its index from a local file
    return Embeddings(info, entities, relations, local)
