"""Distributed checkpoints.

Layout of one checkpoint (``checkpoints/step-NNNNNNNNN/``):
    dcp/                 torch.distributed.checkpoint: sharded tables, fused table-optimizer state, dense
                         AdaMF weights and their Adam state (reshardable: written by N ranks, read by M)
    generator/           DeepSpeed's checkpoint of the MAT generator engine (weights + optimizer)
    dense_optimizer.pt   Adam state of the replicated dense parameters (written by rank 0)
    rng-rank<r>.pt       each rank's torch RNG state (generator noise); used when the world size matches
    meta.json            data cursor (epoch, batch in epoch, step), world size, and the SHA-256 of every
                         other file; written last

Everything is written under ``.tmp-step-N`` and renamed by rank 0 after a barrier, so a crash at any
point leaves either a complete checkpoint or a temporary folder that the lookup never returns. Loading
verifies the digests and never unpickles arbitrary objects (integrity.py: DCP metadata through a restricted
unpickler, byte items, DeepSpeed files and RNG states weights-only).
"""
from __future__ import annotations

import json
import logging
import os
import shutil

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp

from ..data.errors import DataError
from ..integrity import checkpoint_at, dcp_reader_and_planner, digests, safe_torch_load

log = logging.getLogger("mmkgc_dist")


def _state(runtime) -> dict:
    state = {"tables": runtime.tables.dmp.state_dict(), "dense": runtime.core.state_dict(),
             "table_optimizer": runtime.tables.fused_optimizer.state_dict()}
    if runtime.tables.row_optimizer is not None:      # table-optimizer state, sharded like its tables
        state["table_rows"] = runtime.tables.row_optimizer.sharded_state()
    return state


def save(runtime, directory: str, cursor: dict) -> str:
    rank = runtime.env.rank
    name = f"step-{cursor['step']:09d}"
    final, tmp = os.path.join(directory, name), os.path.join(directory, ".tmp-" + name)
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    dist.barrier()
    dcp.save(_state(runtime), checkpoint_id=os.path.join(tmp, "dcp"))
    if runtime.engine is not None:
        runtime.engine.save_checkpoint(os.path.join(tmp, "generator"), tag="generator", save_latest=False)
    torch.save(torch.get_rng_state(), os.path.join(tmp, f"rng-rank{rank}.pt"))
    if rank == 0 and runtime.opt_model is not None:
        # Adam state of replicated dense parameters: identical on all ranks, keyed by parameter order.
        torch.save(runtime.opt_model.state_dict(), os.path.join(tmp, "dense_optimizer.pt"))
    dist.barrier()
    if rank == 0:
        meta = {"cursor": cursor, "world_size": runtime.env.world_size, "files": digests(tmp)}
        with open(os.path.join(tmp, "meta.json"), "w") as fh:
            json.dump(meta, fh)
            fh.flush()
            os.fsync(fh.fileno())
        if os.path.exists(final):
            shutil.rmtree(final)
        os.replace(tmp, final)
    dist.barrier()
    return final


def load(runtime, path: str, streamed: bool) -> dict:
    """Restore the runtime's state from a verified checkpoint folder; returns the data cursor."""
    checkpoint_at(path)                                   # digests verified before anything is read
    state = _state(runtime)
    reader, planner = dcp_reader_and_planner(os.path.join(path, "dcp"))
    reader.read_metadata()                                # refused here, with our message, if not plain data
    try:
        dcp.load(state, storage_reader=reader, planner=planner)
    except dcp.api.CheckpointException as exc:           # DCP gathers rank errors into one long report
        lines = [l.strip() for l in str(exc).splitlines() if l.strip()]
        reason = next((l for l in lines if "refused" in l), lines[-1] if lines else type(exc).__name__)
        raise DataError(f"{path}/dcp: cannot be loaded ({reason[:300]})") from exc
    runtime.tables.dmp.load_state_dict(state["tables"])
    runtime.core.load_state_dict(state["dense"])
    runtime.tables.fused_optimizer.load_state_dict(state["table_optimizer"])
    if runtime.opt_model is not None:
        runtime.opt_model.load_state_dict(safe_torch_load(os.path.join(path, "dense_optimizer.pt")))
    if runtime.engine is not None:
        runtime.engine.load_checkpoint(os.path.join(path, "generator"), tag="generator",
                                       load_module_strict=True, load_optimizer_states=True)
    with open(os.path.join(path, "meta.json")) as fh:
        meta = json.load(fh)
    if streamed and meta["world_size"] != runtime.env.world_size:
        log.warning("resuming a streamed run written by %d ranks on %d: rank ranges differ, so the rest of "
                    "epoch %d is approximate (some edges repeat or are skipped); later epochs are exact",
                    meta["world_size"], runtime.env.world_size, meta["cursor"]["epoch"])
    rng = os.path.join(path, f"rng-rank{runtime.env.rank}.pt")
    if meta["world_size"] == runtime.env.world_size and os.path.exists(rng):
        torch.set_rng_state(safe_torch_load(rng))
    return meta["cursor"]
