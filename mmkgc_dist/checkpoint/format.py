"""The checkpoint format: one writer and one reader for one process and for any number of ranks.

Layout of one checkpoint (``checkpoints/step-NNNNNNNNN/``):
    dcp/                 torch.distributed.checkpoint, reshardable (written by N ranks or one process, read by M):
                           tables.<table>      trainable tables at TorchRec's row width (a multiple of 4); a
                                               modality's holds the rows of the entities that have it, in id
                                               order (parallel/feature_rows.py; format 3 — format 2 had a row
                                               per entity)
                           optimizer.<table>.* their optimizer state at the table's own width (optim.table_state)
                           dense.*             the AdaMF fusion weights
                           fused_optimizer     only for layouts updated by FBGEMM's fused row-wise Adagrad
    dense_optimizer.pt   Adam state of the fusion weights (identical on every rank; written by rank 0)
    generator.pt         the MAT generators' weights and, at ZeRO stage 0, their Adam state (rank 0)
    generator/           DeepSpeed's partitioned generator optimizer (ZeRO stage 1 or 2 only)
    rng-rank<r>.pt       each rank's torch RNG state; restored when the world size matches
    meta.json            format, data cursor, world size, table optimizer, ZeRO stage and the SHA-256 of every
                         other file; written last
Frozen feature tables are not saved: they are the dataset's features.

Everything is written under ``.tmp-step-N`` and renamed by rank 0 after a barrier, so a crash at any point
leaves a complete checkpoint or a temporary folder the lookup never returns (a folder of the same step already
there is moved aside first and deleted last: outputs.swap_in). A folder of that name that holds no
``meta.json`` was not written here and is never replaced; a model with NaN/inf weights is never saved. Loading
verifies the digests first (catalogue.py) and never unpickles arbitrary objects (safe_load.py). A runtime
provides ``checkpoint_state`` (the tensors above, which a load fills in place) and ``restore_state``
(runtime.py); the rest is here.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import warnings

import torch
import torch.distributed.checkpoint as dcp

from ..errors import CheckpointError, OutputError, TrainingDiverged
from ..model.optim import load_optimizer_state
from ..outputs import swap_in
from .catalogue import checkpoint_at, digests, prune
from .safe_load import dcp_reader_and_planner, safe_torch_load

log = logging.getLogger("mmkgc_dist")
FORMAT = 3
# Format 2 differs only in its trainable modality tables (a row per entity): one without them reads as format 3.
READABLE = (2, FORMAT)


def _reason(exc: BaseException) -> str:
    text = str(exc)
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC or "No space left" in text or "unexpected pos" in text:
        return "disk full"
    return " ".join(text.split())[:200]


def _generator_state(runtime) -> dict | None:
    if runtime.generators is None:
        return None
    at_stage_zero = runtime.zero_stage == 0
    return {"module": runtime.generators.state_dict(),
            "optimizer": runtime.opt_generator.state_dict() if at_stage_zero else None}


def _rng_state(runtime) -> dict:
    state = {"torch": torch.get_rng_state()}
    if runtime.device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(runtime.device)
    return state


def _local_pieces(value):
    """The plain tensors of a state as this rank holds them (a sharded table: its local shards)."""
    if isinstance(value, dict):
        for v in value.values():
            yield from _local_pieces(v)
    elif hasattr(value, "local_shards"):
        yield from (shard.tensor for shard in value.local_shards())
    elif hasattr(value, "to_local"):
        yield value.to_local()
    elif isinstance(value, torch.Tensor):
        yield value


@torch.no_grad()
def non_finite_values(runtime, block: int = 1 << 22) -> int:
    """NaN/inf values in the model's weights (tables, fusion, generators) over all ranks; a collective.
    Read ``block`` values at a time, so the check allocates nothing table-sized."""
    state = {"model": runtime.checkpoint_state(optimizer=False),
             "generators": runtime.generators.state_dict() if runtime.generators is not None else {}}
    count = 0
    for tensor in _local_pieces(state):
        if tensor.is_floating_point():
            flat = tensor.reshape(-1)
            count += sum(int((~torch.isfinite(flat[i:i + block])).sum()) for i in range(0, flat.numel(), block))
    return runtime.total(count)


def save(runtime, directory: str, cursor: dict, keep: int = 0) -> str:
    """Write one checkpoint collectively (every rank calls this); returns its folder. A model with non-finite
    weights is refused (TrainingDiverged): its ranking would be meaningless, and resuming would go nowhere.
    ``keep``: the newest checkpoints kept (train.keep_checkpoints; 0 = all)."""
    name = f"step-{cursor['step']:09d}"
    final, tmp = os.path.join(directory, name), os.path.join(directory, ".tmp-" + name)
    if os.path.exists(final) and not os.path.isfile(os.path.join(final, "meta.json")):
        raise OutputError(f"{final}: exists and is not a checkpoint written by mmkgc-dist; not touched (move it away)")
    bad = non_finite_values(runtime)
    if bad:
        raise TrainingDiverged(f"{final}: not written: the model holds {bad} NaN/inf weights at epoch "
                               f"{cursor['epoch']}, step {cursor['step']} (lower train.lr, or resume from an earlier "
                               f"checkpoint)")
    if runtime.is_main:
        os.makedirs(directory, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    runtime.barrier()
    try:
        with warnings.catch_warnings():          # one process writes the same format without a process group
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.save(runtime.checkpoint_state(optimizer=True), checkpoint_id=os.path.join(tmp, "dcp"))
        generator = _generator_state(runtime)
        if runtime.zero_stage > 0:
            runtime.save_generator_shards(os.path.join(tmp, "generator"))
        torch.save(_rng_state(runtime), os.path.join(tmp, f"rng-rank{runtime.rank}.pt"))
        if runtime.is_main:
            if runtime.dense_optimizer is not None:
                torch.save(runtime.dense_optimizer.state_dict(), os.path.join(tmp, "dense_optimizer.pt"))
            if generator is not None:
                torch.save(generator, os.path.join(tmp, "generator.pt"))
        runtime.barrier()
        if runtime.is_main:
            meta = {"format": FORMAT, "cursor": cursor, "world_size": runtime.world_size,
                    "table_optimizer": runtime.table_optimizer_rule, "table_state": runtime.table_state_kind,
                    "zero_stage": runtime.zero_stage, "mat": generator is not None, "files": digests(tmp)}
            with open(os.path.join(tmp, "meta.json"), "w") as fh:
                json.dump(meta, fh)
                fh.flush()
                os.fsync(fh.fileno())
            swap_in(tmp, final)
    except (OSError, RuntimeError, dcp.api.CheckpointException) as exc:
        if runtime.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise OutputError(f"{final}: could not write the checkpoint ({_reason(exc)}); earlier checkpoints are "
                          f"intact") from exc
    runtime.barrier()
    if runtime.is_main:
        for old in prune(directory, keep, final):
            log.debug("removed old checkpoint %s (train.keep_checkpoints)", old)
    runtime.barrier()
    return final


def read_meta(ckpt) -> dict:
    """The checkpoint's meta.json, checked for this format (older layouts get a one-line error)."""
    with open(ckpt.record) as fh:
        meta = json.load(fh)
    if meta.get("format") not in READABLE:
        raise CheckpointError(f"{ckpt.path}: checkpoint format {meta.get('format', 1)}; this version reads format "
                              f"{FORMAT} (use the version that wrote it to evaluate or export it)")
    return meta


def _check_fits(runtime, meta: dict, path: str, optimizer: bool) -> None:
    if not optimizer:
        return
    if meta["table_optimizer"] != runtime.table_optimizer_rule:
        raise CheckpointError(f"{path}: trained with train.table_optimizer={meta['table_optimizer']}; this run has "
                              f"{runtime.table_optimizer_rule} (set it back to resume)")
    if meta["table_state"] != runtime.table_state_kind:
        raise CheckpointError(f"{path}: its table-optimizer state is kept {meta['table_state']}; this run's layout "
                              f"keeps it {runtime.table_state_kind} (resume with the parallel.sharding it was written "
                              f"with)")
    if runtime.generators is not None and not meta["mat"]:
        raise CheckpointError(f"{path}: checkpoint has no MAT generators but mat.enabled=true")


def load(runtime, path: str, streamed: bool, optimizer: bool = True) -> dict:
    """Restore a verified checkpoint written at any world size into ``runtime`` (every rank calls this);
    returns its data cursor. ``optimizer=False`` loads the model only (evaluation, export, prediction)."""
    ckpt = checkpoint_at(path)                            # digests verified before anything is read
    meta = read_meta(ckpt)
    _check_fits(runtime, meta, path, optimizer)
    state = runtime.checkpoint_state(optimizer)
    dense_modalities = sorted(set(state["tables"]) - {"entity", "relation"})
    if meta["format"] == 2 and dense_modalities:
        raise CheckpointError(f"{path}: checkpoint format 2 holds a row of the trainable {', '.join(dense_modalities)} "
                              f"table(s) for every entity; this version keeps rows only for the entities that have "
                              f"the feature (format 3): evaluate or export it with the version that wrote it, or "
                              f"retrain")
    reader, planner = dcp_reader_and_planner(os.path.join(ckpt.path, "dcp"))
    reader.read_metadata()                                # refused here, with our message, if not plain data
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.load(state, storage_reader=reader, planner=planner)
    except dcp.api.CheckpointException as exc:            # DCP gathers rank errors into one long report
        lines = [l.strip() for l in str(exc).splitlines() if l.strip()]
        reason = next((l for l in lines if "refused" in l), lines[-1] if lines else type(exc).__name__)
        raise CheckpointError(f"{path}/dcp: cannot be loaded ({reason[:300]})") from exc
    except (RuntimeError, KeyError, ValueError) as exc:
        raise CheckpointError(f"{path}: checkpoint does not fit this run's config ({_reason(exc)})") from exc
    runtime.restore_state(state, optimizer)
    _load_generator(runtime, ckpt.path, meta, optimizer)
    if optimizer:
        if runtime.dense_optimizer is not None:
            saved = safe_torch_load(os.path.join(ckpt.path, "dense_optimizer.pt"))
            load_optimizer_state(runtime.dense_optimizer, saved)
        _restore_rng(runtime, ckpt.path, meta)
        if streamed and meta["world_size"] != runtime.world_size:
            log.warning("resuming a streamed run written by %d ranks on %d: rank ranges differ, so the rest of "
                        "epoch %d is approximate (some edges repeat or are skipped); later epochs are exact",
                        meta["world_size"], runtime.world_size, meta["cursor"]["epoch"])
    return meta["cursor"]


def _load_generator(runtime, path: str, meta: dict, optimizer: bool) -> None:
    if runtime.generators is None or not meta["mat"]:
        return
    saved, running = meta["zero_stage"], runtime.zero_stage
    if optimizer and saved > 0 and saved == running:
        runtime.load_generator_shards(os.path.join(path, "generator"))
        return
    state = safe_torch_load(os.path.join(path, "generator.pt"))
    runtime.generators.load_state_dict(state["module"])
    if not optimizer:
        return
    if saved == running == 0:
        load_optimizer_state(runtime.opt_generator, state["optimizer"])
    else:
        log.warning("%s: the generators' optimizer state was written at ZeRO stage %d and this run uses stage "
                    "%d; their weights are restored, their Adam moments start afresh", path, saved, running)


def _restore_rng(runtime, path: str, meta: dict) -> None:
    rng = os.path.join(path, f"rng-rank{runtime.rank}.pt")
    if meta["world_size"] != runtime.world_size or not os.path.exists(rng):
        return          # another world size draws different noise anyway
    state = safe_torch_load(rng)
    torch.set_rng_state(state["torch"])
    if runtime.device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], runtime.device)
