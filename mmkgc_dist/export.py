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


def export_embeddings(trainer, out_dir: str, chunk: int = 65536) -> dict:
    rank, world = trainer.rank_and_world()
    builder = OutputBuilder(out_dir, "export")
    builder.tmp = trainer.share(builder.tmp)
    if rank == 0:
        builder.create()
    trainer.barrier()
    try:
        info = _write_parts(trainer, builder.tmp, rank, chunk)
    except BaseException:
        if rank == 0:
            builder.abort()
        raise
    if rank == 0:
        builder.commit()
    trainer.barrier()
    return info


def _write_parts(trainer, tmp: str, rank: int, chunk: int) -> dict:
    names = np.asarray(trainer.data.entity_names, dtype=object)
    weight_names = ["structure", *trainer.modalities]
    writer, rows = None, 0
    for ids, structural, joint, weights in trainer.embedding_chunks(chunk):
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
    counts = trainer.gather_rows(np.array([[rows]]))[:, 0].tolist()
    info = {"entities": int(sum(counts)), "rows_per_rank": counts, "width": 2 * trainer.cfg.model.dim,
            "modality_weights": weight_names if trainer.modalities else [],
            "step": trainer.step, "files": sorted(f"part-{r:05d}.parquet" for r, n in enumerate(counts) if n)}
    trainer.barrier()
    if rank == 0:
        with open(os.path.join(tmp, "export.json"), "w") as fh:
            json.dump(info, fh, indent=2)
    return info
