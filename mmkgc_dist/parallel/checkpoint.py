"""Distributed checkpoints.

Layout of one checkpoint (``checkpoints/step-NNNNNNNNN/``):
    dcp/                 torch.distributed.checkpoint: sharded tables, fused table-optimizer state, dense
                         AdaMF weights and their Adam state (reshardable: written by N ranks, read by M)
    generator/           DeepSpeed's checkpoint of the MAT generator engine (weights + optimizer)
    dense_optimizer.pt   Adam state of the replicated dense parameters (written by rank 0)
    rng-rank<r>.pt       each rank's torch RNG state (generator noise); used when the world size matches
    meta.json            data cursor (epoch, batch in epoch, step), world size; written last

Everything is written under ``.tmp-step-N`` and renamed by rank 0 after a barrier, so a crash at any
point leaves either a complete checkpoint or a temporary folder that ``latest`` never returns.
"""
from __future__ import annotations

import glob
import json
import logging
import os
import re
import shutil

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp

log = logging.getLogger("mmkgc_dist")
COMMITTED = re.compile(r"step-\d{9}$")


def latest(directory: str) -> str | None:
    found = [p for p in glob.glob(os.path.join(directory, "step-*"))
             if COMMITTED.search(p) and os.path.exists(os.path.join(p, "meta.json"))]
    return max(found) if found else None


def _state(trainer) -> dict:
    return {"tables": trainer.tables.dmp.state_dict(), "dense": trainer.core.state_dict(),
            "table_optimizer": trainer.tables.fused_optimizer.state_dict()}


def save(trainer, directory: str) -> str:
    rank = trainer.env.rank
    name = f"step-{trainer.step:09d}"
    final, tmp = os.path.join(directory, name), os.path.join(directory, ".tmp-" + name)
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    dist.barrier()
    dcp.save(_state(trainer), checkpoint_id=os.path.join(tmp, "dcp"))
    if trainer.engine is not None:
        trainer.engine.save_checkpoint(os.path.join(tmp, "generator"), tag="generator", save_latest=False)
    torch.save(torch.get_rng_state(), os.path.join(tmp, f"rng-rank{rank}.pt"))
    if rank == 0 and trainer.opt_model is not None:
        # Adam state of replicated dense parameters: identical on all ranks, keyed by parameter order.
        torch.save(trainer.opt_model.state_dict(), os.path.join(tmp, "dense_optimizer.pt"))
    dist.barrier()
    if rank == 0:
        with open(os.path.join(tmp, "meta.json"), "w") as fh:
            json.dump({"cursor": trainer.cursor(), "world_size": trainer.env.world_size}, fh)
        if os.path.exists(final):
            shutil.rmtree(final)
        os.replace(tmp, final)
    dist.barrier()
    return final


def load(trainer, path: str) -> None:
    state = _state(trainer)
    dcp.load(state, checkpoint_id=os.path.join(path, "dcp"))
    trainer.tables.dmp.load_state_dict(state["tables"])
    trainer.core.load_state_dict(state["dense"])
    trainer.tables.fused_optimizer.load_state_dict(state["table_optimizer"])
    if trainer.opt_model is not None:
        trainer.opt_model.load_state_dict(torch.load(os.path.join(path, "dense_optimizer.pt")))
    if trainer.engine is not None:
        trainer.engine.load_checkpoint(os.path.join(path, "generator"), tag="generator",
                                       load_module_strict=True, load_optimizer_states=True)
    with open(os.path.join(path, "meta.json")) as fh:
        meta = json.load(fh)
    trainer.set_cursor(meta["cursor"])
    if trainer.stream is not None and meta["world_size"] != trainer.env.world_size:
        log.warning("resuming a streamed run written by %d ranks on %d: rank ranges differ, so the rest of "
                    "epoch %d is approximate (some edges repeat or are skipped); later epochs are exact",
                    meta["world_size"], trainer.env.world_size, trainer.epoch)
    rng = os.path.join(path, f"rng-rank{trainer.env.rank}.pt")
    if meta["world_size"] == trainer.env.world_size and os.path.exists(rng):
        torch.set_rng_state(torch.load(rng))
