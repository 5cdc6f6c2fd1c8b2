"""Embedding export: every entity's id, name, structural row, fused joint embedding and AdaMF modality
weights, as a Parquet folder written by rank shards.

Each rank streams the entities it owns (all of them in one process) in chunks through its own
``part-<rank>.parquet``; nothing holds the whole table. The folder is built in a temporary sibling (its name
chosen by rank 0) and swapped in crash-safely by rank 0 once every rank has closed its part, with
``export.json`` (counts, widths, columns). OUT follows the ownership rule of outputs.py.

    OUT/part-00000.parquet   id:int64, name:string, structural, joint: fixed_size_list<float32>[2d],
                             weight_<structure|modality>: float32 (AdaMF attention; absent without fusion)
"""
from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from .outputs import OutputBuilder


def _vectors(t: torch.Tensor) -> pa.FixedSizeListArray:
    t = t.detach().float().cpu().contiguous()
    return pa.FixedSizeListArray.from_arrays(pa.array(t.numpy().reshape(-1)), t.shape[1])


def export_embeddings(runtime, entity_names: list[str], modalities: list[str], step: int, out_dir: str,
                      chunk: int = 65536) -> dict:
    """Through the runtime's public operations only: ``embedding_chunks`` of the entities this process owns,
    ``share``/``gather_rows``/``barrier`` (local or distributed alike)."""
    rank = runtime.rank
    builder = OutputBuilder(out_dir, "export")
    builder.tmp = runtime.share(builder.tmp)
    if rank == 0:
        builder.create()
    runtime.barrier()
    try:
        info = _write_parts(runtime, entity_names, modalities, step, builder.tmp, chunk)
    except BaseException:
        if rank == 0:
            builder.abort()
        raise
    if rank == 0:
        builder.commit()
    runtime.barrier()
    return info


def _write_parts(runtime, entity_names, modalities, step: int, tmp: str, chunk: int) -> dict:
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
    runtime.barrier()
    if rank == 0:
        with open(os.path.join(tmp, "export.json"), "w") as fh:
            json.dump(info, fh, indent=2)
    return info
