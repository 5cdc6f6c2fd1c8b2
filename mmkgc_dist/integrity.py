"""Checkpoint integrity and safe loading for a run's ``checkpoints/`` folder.

    step-NNNNNNNNN/    one checkpoint at any world size (parallel/checkpoint.py); meta.json lists digests
    step-NNNNNNNNN.pt  + step-NNNNNNNNN.json     single-file checkpoints of versions before checkpoint format 2:
                       still listed, verified and pruned here (never silently skipped); loading refuses them
                       with a one-line error naming the format

Every file a checkpoint holds has its SHA-256 recorded at save time; ``verify`` recomputes them, so a truncated,
empty or altered file is found before anything reads it, and ``newest_verified`` falls back to the newest good
checkpoint with a warning naming each bad one. ``prune`` keeps the newest K (never the newest verified one).

Loading never executes code from a file: torch files load with ``weights_only=True`` (explicitly); the pickled
metadata of torch.distributed.checkpoint goes through an unpickler that only builds DCP's own metadata
classes, torch sizes and dtypes; DCP's pickled byte items and DeepSpeed's files load with ``weights_only=True``.
"""
from __future__ import annotations

import functools
import glob
import hashlib
import json
import logging
import os
import pickle
import re
import shutil
from dataclasses import dataclass

from .data.errors import DataError

log = logging.getLogger("mmkgc_dist")
FILE_RE = re.compile(r"step-(\d{9})\.pt$")
FOLDER_RE = re.compile(r"step-(\d{9})$")


def sha256(path: str) -> str:
    """SHA-256 of a file, hashed once per version of it in this process: a lookup that verifies and the load
    that follows (or a save and the pruning after it) do not read a large checkpoint twice."""
    st = os.stat(path)
    return _sha256(os.path.realpath(path), st.st_size, st.st_mtime_ns, st.st_ino)


@functools.lru_cache(maxsize=4096)
def _sha256(path: str, size: int, mtime_ns: int, inode: int, block: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            h.update(chunk)
    return h.hexdigest()


def digests(folder: str, skip: tuple[str, ...] = ()) -> dict[str, dict]:
    """{relative path: {sha256, bytes}} of every file under ``folder``."""
    out = {}
    for root, _, files in os.walk(folder):
        for f in files:
            path = os.path.join(root, f)
            rel = os.path.relpath(path, folder)
            if rel not in skip:
                out[rel] = {"sha256": sha256(path), "bytes": os.path.getsize(path)}
    return dict(sorted(out.items()))


def _check_digests(folder: str, recorded: dict) -> str | None:
    if not isinstance(recorded, dict) or not recorded:
        return "no digests recorded"
    for rel, want in recorded.items():
        path = os.path.join(folder, rel)
        if ".." in rel.split("/") or os.path.isabs(rel):
            return f"recorded path {rel!r} leaves the checkpoint"
        if not os.path.isfile(path):
            return f"{rel} is missing"
        if os.path.getsize(path) != want.get("bytes"):
            return f"{rel} has {os.path.getsize(path)} bytes, {want.get('bytes')} were written"
        if sha256(path) != want.get("sha256"):
            return f"{rel} does not match the digest recorded at save time"
    return None


@dataclass(frozen=True)
class Checkpoint:
    path: str
    step: int

    @property
    def is_folder(self) -> bool:
        return not self.path.endswith(".pt")

    @property
    def record(self) -> str:
        """The file that records this checkpoint's digests."""
        return os.path.join(self.path, "meta.json") if self.is_folder else self.path[:-3] + ".json"


def list_checkpoints(directory: str) -> list[Checkpoint]:
    """Committed checkpoints of both kinds, oldest first (temporaries never match)."""
    found = []
    for path in glob.glob(os.path.join(directory, "step-*")):
        name = os.path.basename(path)
        if (m := FILE_RE.fullmatch(name)) and os.path.isfile(path):
            found.append(Checkpoint(path, int(m[1])))
        elif (m := FOLDER_RE.fullmatch(name)) and os.path.isfile(os.path.join(path, "meta.json")):
            found.append(Checkpoint(path, int(m[1])))
    return sorted(found, key=lambda c: (c.step, c.is_folder))


def read_record(ckpt: Checkpoint) -> dict:
    with open(ckpt.record) as fh:
        record = json.load(fh)
    if not isinstance(record, dict):
        raise ValueError("not a JSON object")
    return record


def verify(ckpt: Checkpoint) -> str | None:
    """None if the checkpoint is complete and unaltered, else the reason."""
    if not os.path.exists(ckpt.record):
        return _legacy_check(ckpt)
    try:
        record = read_record(ckpt)
    except (OSError, ValueError) as exc:
        return f"{os.path.basename(ckpt.record)} unreadable ({exc})"
    if ckpt.is_folder:
        if "files" not in record:          # written before digests were recorded: nothing to compare
            return None
        return _check_digests(ckpt.path, record.get("files"))
    return _check_digests(os.path.dirname(ckpt.path), {os.path.basename(ckpt.path): record})


def _legacy_check(ckpt: Checkpoint) -> str | None:
    """Checkpoints written before digests: a file must load (safely), a folder must have its metadata."""
    if ckpt.is_folder:
        return None
    if os.path.getsize(ckpt.path) == 0:
        return "empty file"
    try:
        safe_torch_load(ckpt.path)
    except DataError as exc:
        return str(exc)
    return None


def latest(directory: str) -> str | None:
    """Path of the newest verified checkpoint of either kind (warns about damaged newer ones), or None."""
    found = newest_verified(directory)
    return found.path if found else None


def newest_verified(directory: str) -> Checkpoint | None:
    """The newest checkpoint that verifies; each newer bad one is named in a warning."""
    for ckpt in reversed(list_checkpoints(directory)):
        reason = verify(ckpt)
        if reason is None:
            return ckpt
        log.warning("checkpoint %s is damaged (%s); trying an older one", ckpt.path, reason)
    return None


def checkpoint_at(path: str) -> Checkpoint:
    """A checkpoint named by the user (file or folder), verified; one-line errors otherwise."""
    name = os.path.basename(path.rstrip("/"))
    if not os.path.exists(path):
        raise DataError(f"{path}: checkpoint not found")
    m = FILE_RE.fullmatch(name) or FOLDER_RE.fullmatch(name)
    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "meta.json")):
        raise DataError(f"{path}: a folder without meta.json is not a checkpoint; give a step-N/ checkpoint "
                        f"folder")
    ckpt = Checkpoint(path.rstrip("/"), int(m[1]) if m else -1)
    if m is None and not os.path.exists(ckpt.record):
        # A renamed file: no digest record to check, so only the safe load below guards it.
        reason = _legacy_check(ckpt)
    else:
        reason = verify(ckpt)
    if reason:
        raise DataError(f"{path}: checkpoint failed verification: {reason}")
    return ckpt


def prune(directory: str, keep: int, just_written: str | None = None) -> list[str]:
    """Delete all but the newest ``keep`` checkpoints (0 = keep all) and the selected best one (best.json).
    The newest verified checkpoint is kept
    even when it is older than those — ``just_written``, the checkpoint the caller has just saved (its digests
    were computed from the bytes on disk), counts as verified and is always kept, even when a damaged one with
    a later step survives from before a fallback. Only our own checkpoint names are ever deleted."""
    found = list_checkpoints(directory)
    if keep <= 0 or len(found) <= keep:
        return []
    best = selected_checkpoint(directory)
    kept = set(found[-keep:]) | {c for c in found if just_written and c.path == just_written.rstrip("/")} | \
        {c for c in found if os.path.basename(c.path) == best}
    if just_written is None and not any(verify(c) is None for c in sorted(kept, key=lambda c: -c.step)):
        good = newest_verified(directory)
        if good is not None:
            kept.add(good)
    removed = [c for c in found if c not in kept]
    for ckpt in removed:
        delete(ckpt)
    return [c.path for c in removed]


def selected_checkpoint(directory: str) -> str | None:
    """The checkpoint model selection named best (``best.json``, train/selection.py): never pruned."""
    try:
        with open(os.path.join(directory, "best.json")) as fh:
            best = json.load(fh).get("best") or {}
        return best.get("checkpoint")
    except (OSError, ValueError, AttributeError):
        return None


def delete(ckpt: Checkpoint) -> None:
    """Remove one of our checkpoints with its digest record."""
    if ckpt.is_folder:
        shutil.rmtree(ckpt.path)
    else:
        os.remove(ckpt.path)
        if os.path.exists(ckpt.record):
            os.remove(ckpt.record)


TEMPORARY_RE = re.compile(r"^(step-\d{9}\.(pt|json)\.tmp|\.tmp-step-\d{9})$")
SWAPPED_OUT_RE = re.compile(r"^\.(step-\d{9})\.previous$")     # outputs.swap_in's old version, set aside


def clean_temporaries(directory: str) -> list[str]:
    """Remove partial checkpoint writes of a crashed run (the caller holds the run's lock); a checkpoint set
    aside by a same-step save (``outputs.swap_in``) is put back when the new one never moved in."""
    removed = []
    if not os.path.isdir(directory):
        return removed
    for name in sorted(os.listdir(directory)):
        if (swapped := SWAPPED_OUT_RE.match(name)) and not os.path.exists(os.path.join(directory, swapped[1])):
            os.replace(os.path.join(directory, name), os.path.join(directory, swapped[1]))   # crash mid-swap
            log.warning("restored %s (a save of the same step was interrupted)", swapped[1])
        elif swapped or TEMPORARY_RE.match(name):
            path = os.path.join(directory, name)
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
            removed.append(path)
            log.warning("removed %s, left by an interrupted checkpoint write", path)
    return removed


# ------------------------------------------------------------------------------ safe loading
def safe_torch_load(source, what: str | None = None):
    """torch.load that never runs code from the file (weights_only=True, explicitly); one-line errors."""
    import torch

    name = what or (source if isinstance(source, str) else "checkpoint data")
    try:
        return torch.load(source, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DataError(f"{name}: file not found")
    except IsADirectoryError:
        raise DataError(f"{name}: is a folder; expected a torch file")
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{name}: refused to load: it needs code or objects that weights-only loading does not "
                        f"build ({first[:200]})")
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, AttributeError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{name}: not a readable torch checkpoint ({first[:200]})")


class MetadataUnpickler(pickle.Unpickler):
    """Builds only what torch.distributed.checkpoint writes into ``.metadata``: its metadata dataclasses and
    enums, torch.Size, dtypes, layouts (by name), memory formats and pathlib paths. Anything else (functions,
    os.system, ...) is refused."""

    MODULES = ("torch.distributed.checkpoint.metadata", "torch.distributed.checkpoint.filesystem",
               "torch.distributed.checkpoint.planner", "torch.distributed.checkpoint._extension")

    def find_class(self, module: str, name: str):
        import torch

        if module in self.MODULES and not name.startswith("__"):
            obj = getattr(__import__(module, fromlist=[name]), name, None)
            if isinstance(obj, type):
                return obj
        if module == "torch" and name == "Size":
            return torch.Size
        if module == "torch" and isinstance(getattr(torch, name, None), (torch.dtype, torch.layout,
                                                                           torch.memory_format)):
            return getattr(torch, name)
        if module == "collections" and name == "OrderedDict":
            import collections
            return collections.OrderedDict
        if (module, name) == ("torch.serialization", "_get_layout"):     # name → torch layout, a lookup
            return torch.serialization._get_layout
        if (module, name) in (("pathlib", "PosixPath"), ("pathlib", "WindowsPath"), ("pathlib", "Path")):
            import pathlib
            return getattr(pathlib, name)                              # the storage file names
        raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed in checkpoint metadata")


def dcp_reader_and_planner(path: str):
    """A FileSystemReader whose metadata is read by ``MetadataUnpickler`` and a load planner whose byte
    items load with weights_only=True — torch's defaults unpickle both without restriction."""
    from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemReader
    from torch.distributed.checkpoint._traverse import set_element
    from torch.distributed.checkpoint.metadata import StorageMeta

    class SafeReader(FileSystemReader):
        def read_metadata(self, *args, **kwargs):
            meta_path = self._get_metadata_path(kwargs.get("rank"))
            with self.fs.create_stream(meta_path, "rb") as fh:
                try:
                    metadata = MetadataUnpickler(fh).load()
                except (pickle.UnpicklingError, EOFError, AttributeError, ValueError, TypeError) as exc:
                    raise DataError(f"{meta_path}: refused: {exc}")
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    class SafePlanner(DefaultLoadPlanner):
        def load_bytes(self, read_item, value):
            obj = safe_torch_load(value, f"{path}: item {read_item.dest_index.fqn}")
            if self.flatten_state_dict:
                set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
            else:
                self.state_dict[read_item.dest_index.fqn] = obj

    return SafeReader(path), SafePlanner()


def safe_deepspeed_engine(engine) -> None:
    """Make a DeepSpeed engine read its checkpoint files with weights_only=True (its stock engine does not)."""
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    current = engine.checkpoint_engine
    if not isinstance(current, TorchCheckpointEngine):
        raise RuntimeError(f"unexpected DeepSpeed checkpoint engine {type(current).__name__}")

    class WeightsOnlyEngine(type(current)):
        def load(self, path, map_location=None):
            return weights_only_deepspeed_load(path)

    current.__class__ = WeightsOnlyEngine      # same state and save path; only loading changes


def weights_only_deepspeed_load(path: str):
    import torch

    with torch.serialization.safe_globals(deepspeed_safe_globals()):
        return safe_torch_load(path)


def deepspeed_safe_globals() -> list:
    """Plain-data classes DeepSpeed writes into its checkpoint dicts (enums and config records, no code)."""
    found = []
    try:
        from deepspeed.runtime.fp16.loss_scaler import LossScaler
        found.append(LossScaler)
    except ImportError:
        pass
    try:
        from deepspeed.runtime.zero.config import ZeroStageEnum
        found.append(ZeroStageEnum)
    except ImportError:
        pass
    try:
        from deepspeed.utils.tensor_fragment import fragment_address
        found.append(fragment_address)
    except ImportError:
        pass
    return found
