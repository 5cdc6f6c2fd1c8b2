"""Feature extraction at the scale of the tables: entities encoded piece by piece into Parquet parts, each rank
taking the pieces whose entities it owns (row-wise ownership, ``owner_block``), resumable after a kill, merged
into the dataset by one crash-safe switch of its manifest.

The plan: the grid of ``P`` entity ids cut at each rank's owned block; a rank encodes the pieces of its block. Each piece is encoded, pooled per entity and written to
``DATA/.extract/<job>/part-<first>-<stop>.parquet`` under a temporary name and renamed, then recorded in a
sidecar ``.json`` (its size, SHA-256, counts and failures). A rerun — of the same job, at any world size — skips
every piece whose part verifies against its record, so a killed extraction costs only the pieces it was inside.
The job name is a digest of what decides the values (the input listing, the encoder, its preprocessing): a rerun
with other inputs never reuses a part. Rank 0, after its own pieces, waits for the others' parts, then streams
every part (in id order; memory flat in the number of entities) into ``features/<modality>-*.parquet`` through
``features.write_feature_chunks``, writes the report and removes the job folder.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import DataError
from ..outputs import atomic_file, file_sha256, write_atomic

log = logging.getLogger("mmkgc_dist")
PIECE_ENTITIES = 1024
JOBS = ".extract"


def owner_block(num_entities: int, world_size: int) -> int:
    """Rows per owner: rank r owns ids [r·block, (r+1)·block) — TorchRec's row-wise layout."""
    return -(-num_entities // world_size)


@dataclass
class Piece:
    first: int
    stop: int

    @property
    def name(self) -> str:
        return f"part-{self.first:012d}-{self.stop:012d}"


@dataclass
class PieceResult:
    """What an encoder made of one piece: pooled rows of the entities that got one, and what went wrong."""
    ids: np.ndarray                     # int64 [n] entity ids, ascending
    rows: np.ndarray                    # float32 [n, dim]
    counts: dict = field(default_factory=dict)       # e.g. {"images": 12, "images_failed": 1}
    failures: list = field(default_factory=list)     # [{"entity": ..., "source": ..., "reason": ...}]


def plan(num_entities: int, rank: int, world_size: int, piece: int = PIECE_ENTITIES) -> list[Piece]:
    """This rank's pieces: the fixed grid of ``piece`` ids cut at the rank's owned block, so every rank gets
    its share of the work and a piece away from the blocks' edges has the same name at any world size."""
    block = owner_block(num_entities, world_size)
    lo, hi = min(rank * block, num_entities), min((rank + 1) * block, num_entities)
    return [Piece(max(f, lo), min(f + piece, hi)) for f in range(lo - lo % piece, hi, piece)]


def every_piece(num_entities: int, world_size: int, piece: int = PIECE_ENTITIES) -> list[Piece]:
    """Every rank's pieces, in id order: what rank 0 merges."""
    return [p for rank in range(world_size) for p in plan(num_entities, rank, world_size, piece)]


def job_folder(root: str, modality: str, identity: dict) -> str:
    """``DATA/.extract/<modality>-<digest of identity>``: one folder per set of inputs that decide the values."""
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return os.path.join(root, JOBS, f"{modality}-{digest}")


def verified(folder: str, piece: Piece) -> dict | None:
    """The piece's record when its part is complete and unchanged (size and SHA-256 as recorded), else None."""
    record_path = os.path.join(folder, piece.name + ".json")
    part = os.path.join(folder, piece.name + ".parquet")
    try:
        with open(record_path) as fh:
            record = json.load(fh)
        if os.path.getsize(part) != record["bytes"] or file_sha256(part) != record["sha256"]:
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return record


def write_piece(folder: str, piece: Piece, result: PieceResult) -> dict:
    """The part (atomically), then its record (atomically): a part without a record is redone."""
    part = os.path.join(folder, piece.name + ".parquet")
    dim = int(result.rows.shape[1]) if len(result.ids) else 0
    values = pa.array(result.rows.reshape(-1).astype(np.float32), pa.float32())
    feature = pa.FixedSizeListArray.from_arrays(values, dim) if dim else pa.array([], pa.list_(pa.float32()))
    table = pa.table({"id": pa.array(result.ids.astype(np.int64), pa.int64()), "feature": feature})
    with atomic_file(part) as tmp:
        pq.write_table(table, tmp)
    record = {"first": piece.first, "stop": piece.stop, "entities": int(len(result.ids)), "dim": int(dim),
              "bytes": os.path.getsize(part), "sha256": file_sha256(part), "counts": result.counts,
              "failures": result.failures}
    write_atomic(os.path.join(folder, piece.name + ".json"), json.dumps(record))
    return record


def run_pieces(folder: str, pieces: list[Piece], encode, progress=None, fresh: bool = False) -> tuple[int, int]:
    """Encode each piece without a verified part (every piece with ``fresh``: each rank redoes its own, so no
    rank removes parts another is writing); ``encode(piece) -> PieceResult``. (done now, reused)."""
    os.makedirs(folder, exist_ok=True)
    done = reused = 0
    for piece in pieces:
        if not fresh and verified(folder, piece) is not None:
            reused += 1
            if progress is not None:
                progress(piece, None)
            continue
        result = encode(piece)
        write_piece(folder, piece, result)
        done += 1
        if progress is not None:
            progress(piece, result)
    return done, reused


def wait_for_all(folder: str, all_pieces: list[Piece], timeout_s: float, poll_s: float = 1.0) -> list[dict]:
    """Rank 0: every piece's verified record, waiting for the other ranks' parts (bounded)."""
    deadline = time.monotonic() + timeout_s
    records: dict[int, dict] = {}
    while True:
        for p in all_pieces:
            if p.first not in records and (r := verified(folder, p)) is not None:
                records[p.first] = r
        if len(records) == len(all_pieces):
            return [records[p.first] for p in all_pieces]
        if time.monotonic() > deadline:
            missing = [p.name for p in all_pieces if p.first not in records]
            raise DataError(f"{folder}: {len(missing)} of {len(all_pieces)} parts were not written within "
                            f"{timeout_s:.0f} s (first missing: {missing[0]}); did a rank fail? Run the "
                            f"extraction again: finished parts are kept")
        time.sleep(poll_s)


def part_chunks(folder: str, records: list[dict], origin: str):
    """(first, file rows, ids, rows) of every part in id order, as ``features.write_feature_chunks`` reads them;
    parts of one job must agree on the width."""
    dims = {r["dim"] for r in records if r["entities"]}
    if len(dims) > 1:
        raise DataError(f"{origin}: the parts of {folder} have different widths {sorted(dims)}")
    for r in records:
        if not r["entities"]:
            continue
        table = pq.read_table(os.path.join(folder, Piece(r["first"], r["stop"]).name + ".parquet"))
        ids = table.column("id").to_numpy().astype(np.int64)
        rows = table.column("feature").combine_chunks().flatten().to_numpy().astype(np.float32)
        yield r["first"], ids, ids, rows.reshape(len(ids), r["dim"])


def summarise(records: list[dict]) -> tuple[dict, list]:
    """(summed counts, every failure) over the parts."""
    counts: dict = {}
    failures: list = []
    for r in records:
        for k, v in r["counts"].items():
            counts[k] = counts.get(k, 0) + v
        failures.extend(r["failures"])
    return counts, failures


def remove_job(folder: str) -> None:
    """The job folder is ours alone (made by this module under DATA/.extract); removed once merged."""
    shutil.rmtree(folder, ignore_errors=True)
    parent = os.path.dirname(folder)
    try:
        os.rmdir(parent)                 # .extract itself, when no other job is in it
    except OSError:
        pass


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the job's size under torchrun/srun (1 process otherwise)."""
    env = os.environ
    rank = env.get("RANK", env.get("SLURM_PROCID", "0"))
    world = env.get("WORLD_SIZE", env.get("SLURM_NTASKS", "1"))
    return int(rank or 0), int(world or 1)


def extract(root: str, modality: str, identity: dict, encode, items_in, origin: str, unit: str,
            restart: bool = False, show_progress: bool = True, wait_timeout_s: float = 24 * 3600.0,
            piece_entities: int = PIECE_ENTITIES) -> dict | None:
    """Run an extraction job on this rank and, on rank 0, merge it into the dataset ``root``.
    ``encode(piece, advance) -> PieceResult`` (``advance(n)``: n more items done), ``items_in(piece)``: the
    piece's items (images, texts) for the progress bar. Returns rank 0's summary (None on other ranks)."""
    from tqdm import tqdm

    from .features import DatasetEdit, write_feature_chunks
    from .format import read_manifest, recorded_path

    rank, world = rank_and_world()
    num_entities = read_manifest(root)["num_entities"]
    folder = job_folder(root, modality, identity)
    pieces = plan(num_entities, rank, world, piece_entities)
    with tqdm(total=sum(items_in(p) for p in pieces), unit=unit, disable=not show_progress, dynamic_ncols=True,
              desc=f"{modality}" + (f" rank {rank}/{world}" if world > 1 else "")) as bar:
        done, reused = run_pieces(folder, pieces, lambda p: encode(p, bar.update),
                                  progress=lambda p, r: bar.update(items_in(p)) if r is None else None,
                                  fresh=restart)
    if reused:
        log.info("%s: %d of %d pieces were already encoded (kept from an earlier, interrupted run)", modality,
                 reused, len(pieces))
    if rank != 0:
        return None
    records = wait_for_all(folder, every_piece(num_entities, world, piece_entities), wait_timeout_s)
    counts, failures = summarise(records)
    with DatasetEdit(root) as manifest:
        entities = pq.read_table(recorded_path(root, manifest, manifest["entities"]))
        entry = write_feature_chunks(root, modality, part_chunks(folder, records, origin), origin, manifest,
                                     entities)
    report = os.path.join(root, "features", f"{modality}-report.json")
    summary = {"modality": modality, "origin": origin, "identity": identity, "dim": entry["dim"],
               "entities": num_entities, "present": entry["present"],
               "missing": num_entities - entry["present"], **counts, "pieces": len(records),
               "pieces_reused": reused, "report": report}
    write_atomic(report, json.dumps({**summary, "failures": failures}, indent=1, default=str))
    remove_job(folder)
    return summary
