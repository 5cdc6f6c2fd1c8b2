"""Entities added to a trained run without retraining: ``mmkgc-dist add-entities RUN TABLE``.

A table (CSV or Parquet, any fsspec URL) names each new entity (``entity``) with its text and/or image (columns
``text``, ``image``, or others named by the options). Each row is encoded by the dataset's own encoders
(content.py) and kept in ``RUN/added-entities/``: ``entities.parquet`` (name), ``features-<modality>.parquet``
(id within the added entities, feature), ``report.json`` (rows that could not be added, with the reason) and
``meta.json`` (the dataset version they extend, the count, and the SHA-256 of every file; written last). The
folder is built beside the run and swapped in (outputs.OutputBuilder); adding again rebuilds it with the earlier
entities first, so their ids never change.

Loading the run (``load_run``, ``predict``, ``neighbours``) appends them after the dataset's entities — ids
``N, N+1, …`` — fused from their features with the structure missing, exactly as a new entity given by content:
they answer queries, appear among the answers and the neighbours, and have no known triple. The checkpoint, the
dataset and its known-answer index are left as they are (the keys of known triples are over the dataset's ids);
evaluation ranks the dataset's entities only.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import DataError, QueryError
from ..outputs import OutputBuilder, file_sha256, marker_kind, write_atomic

ADDED = "added-entities"


def read_added(run_dir: str, identity: str) -> tuple[list[str], dict[str, tuple[np.ndarray, np.ndarray]]]:
    """(names, {modality: (present [M], values [M, dim])}) of a run's added entities; ([], {}) when it has none.
    Every file is checked against meta.json first."""
    folder = os.path.join(run_dir, ADDED)
    if not os.path.isdir(folder):
        return [], {}
    meta_path = os.path.join(folder, "meta.json")
    try:
        with open(meta_path) as fh:
            meta = json.load(fh)
        for name, digest in meta["files"].items():
            if os.path.basename(name) != name or file_sha256(os.path.join(folder, name)) != digest:
                raise DataError(f"{folder}/{name}: does not match meta.json's record")
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"{folder}: not a complete record of added entities ({exc}); add them again") from None
    if meta["dataset"] != identity:
        raise DataError(f"{folder}: the entities were added to another version of the run's dataset "
                        f"({meta['dataset'][:12]}…, the run trains on {identity[:12]}…); add them again")
    names = pq.read_table(os.path.join(folder, "entities.parquet")).column("name").to_pylist()
    features = {}
    for modality, dim in meta["modalities"].items():
        table = pq.read_table(os.path.join(folder, f"features-{modality}.parquet"))
        ids = table.column("id").to_numpy()
        values = np.zeros((len(names), dim), np.float32)
        values[ids] = np.asarray(table.column("feature").combine_chunks().flatten()).reshape(-1, dim)
        present = np.zeros(len(names), bool)
        present[ids] = True
        features[modality] = (present, values)
    return names, features


def add_entities(predictor, source: str, name_column: str = "entity", text_column: str = "text",
                 image_column: str = "image") -> dict:
    """Encode the rows of ``source`` and append them to the run's added entities; a summary (counts, the
    report's path). A name already known (to the dataset or added before) or repeated stops with one line."""
    from ..data.images import read_keyed_table

    run_dir = predictor.model.run_dir
    table = read_keyed_table(source, "add-entities", text_columns=(text_column, image_column))
    if name_column not in table.column_names:
        raise DataError(f"add-entities {source}: no column {name_column!r} (columns: {table.column_names})")
    names = [None if v is None else str(v).strip() for v in table.column(name_column).to_pylist()]
    columns = {key: table.column(c).to_pylist() if c in table.column_names else [None] * table.num_rows
               for key, c in (("text", text_column), ("image", image_column))}
    _check_names(source, names, predictor.entities)
    old_names, old_features = read_added(run_dir, predictor.model.identity)
    added, failures = [], []
    for row, name in enumerate(names):
        content = {key: values[row] for key, values in columns.items() if values[row] not in (None, "")}
        try:
            added.append((name, predictor.content.encode({**content, "name": name}).features))
        except QueryError as exc:
            failures.append({"row": row, "entity": name, "reason": str(exc).removeprefix("new entity: ")})
    if not added:
        raise DataError(f"add-entities {source}: none of its {len(names)} rows could be encoded (first: row "
                        f"{failures[0]['row']}, {failures[0]['reason']})" if failures else
                        f"add-entities {source}: no rows")
    _write(run_dir, predictor, old_names, old_features, added, failures)
    return {"added": len(added), "failed": len(failures), "total": len(old_names) + len(added),
            "report": os.path.join(run_dir, ADDED, "report.json")}


def _check_names(source: str, names: list, known) -> None:
    blank = [i for i, n in enumerate(names) if not n]
    if blank:
        raise DataError(f"add-entities {source}: row {blank[0]} has no entity name ({len(blank)} such rows)")
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in seen:
            raise DataError(f"add-entities {source}: rows {seen[name]} and {i} both name {name!r}")
        seen[name] = i
        if name in known.ids:
            raise DataError(f"add-entities {source}: row {i}: {name!r} is already an entity of the run (id "
                            f"{known.ids[name]}); names of added entities must be new")


def _write(run_dir: str, predictor, old_names, old_features, added, failures) -> None:
    folder = os.path.join(run_dir, ADDED)
    if os.path.lexists(folder) and marker_kind(folder) != ADDED:
        raise DataError(f"{folder}: exists and was not written by add-entities; it is never replaced")
    names = old_names + [name for name, _ in added]
    dims = predictor.content.dims
    with OutputBuilder(folder, ADDED) as tmp:
        pq.write_table(pa.table({"name": pa.array(names, pa.string())}), os.path.join(tmp, "entities.parquet"))
        for modality, dim in dims.items():
            present, values = old_features.get(modality, (np.zeros(0, bool), np.zeros((0, dim), np.float32)))
            ids = list(np.flatnonzero(present)) + [len(old_names) + i for i, (_, f) in enumerate(added)
                                                   if modality in f]
            rows = [values[i] for i in np.flatnonzero(present)] + [f[modality] for _, f in added if modality in f]
            flat = np.asarray(rows, np.float32).reshape(-1)
            pq.write_table(pa.table({"id": pa.array(np.asarray(ids, np.int64)),
                                     "feature": pa.FixedSizeListArray.from_arrays(pa.array(flat), dim)}),
                           os.path.join(tmp, f"features-{modality}.parquet"))
        write_atomic(os.path.join(tmp, "report.json"), json.dumps({"failures": failures}, indent=1))
        files = {name: file_sha256(os.path.join(tmp, name)) for name in sorted(os.listdir(tmp))
                 if name.endswith((".parquet", ".json")) and name != "meta.json"}
        write_atomic(os.path.join(tmp, "meta.json"), json.dumps(
            {"dataset": predictor.model.identity, "entities": len(names), "modalities": dims, "files": files},
            indent=1))
