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
import json
import logging
import math
import os
import pickle
import re
from dataclasses import dataclass

from .data.errors import DataError
from .outputs import file_sha256, remove_owned

log = logging.getLogger("mmkgc_dist")
FILE_RE = re.compile(r"step-(\d{9})\.pt$")
FOLDER_RE = re.compile(r"step-(\d{9})$")


def sha256(path: str) -> str:
    """SHA-256 of a file, hashed once per version of it in this process: a lookup that verifies and the load
    that follows (or a save and the pruning after it) do not read a large checkpoint twice."""
    st = os.stat(path)
    return _sha256(os.path.realpath(path), st.st_size, st.st_mtime_ns, st.st_ino)


@functools.lru_cache(maxsize=4096)
def _sha256(path: str, size: int, mtime_ns: int, inode: int) -> str:
    return file_sha256(path)


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
        if not isinstance(rel, str) or ".." in rel.split("/") or os.path.isabs(rel):
            return f"recorded path {rel!r} leaves the checkpoint"
        if not isinstance(want, dict):
            return f"the record of {rel} is not an object with 'bytes' and 'sha256'"
        if os.path.islink(path):
            return f"{rel} is a symbolic link (a checkpoint is the files inside its folder)"
        if not os.path.isfile(path):
            return f"{rel} is missing"
        if os.path.getsize(path) != want.get("bytes"):
            return f"{rel} has {os.path.getsize(path)} bytes, {want.get('bytes')} were written"
        if sha256(path) != want.get("sha256"):
            return f"{rel} does not match the digest recorded at save time"
    return None


def _files_inside(folder: str) -> list[str]:
    """Relative paths of every file and link under ``folder`` (links are listed, not followed)."""
    found = []
    for root, dirs, files in os.walk(folder):
        found += [os.path.relpath(os.path.join(root, f), folder) for f in files]
        found += [os.path.relpath(os.path.join(root, d), folder) for d in dirs if os.path.islink(os.path.join(root, d))]
    return found


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
        if os.path.islink(path):          # not ours: never loaded, pruned or deleted
            log.warning("ignoring %s: a symbolic link, not a checkpoint this run wrote", path)
            continue
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
        if not isinstance(record.get("files"), dict):    # a checkpoint is its files, all verified, or nothing
            return "meta.json records no file digests ('files'), so nothing in it can be verified"
        unrecorded = sorted(set(_files_inside(ckpt.path)) - set(record["files"]) - {"meta.json"})
        if unrecorded:
            return f"{unrecorded[0]} is in the folder but not among the files recorded at save time"
        return _check_digests(ckpt.path, record["files"])
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


def read_selection(directory: str) -> dict | None:
    """Model selection's record (``checkpoints/best.json``, train/selection.py), checked: None when there is
    none; DataError naming the file when it is malformed or names anything but one of the run's own
    ``step-N`` checkpoints (never a path outside the run)."""
    path = os.path.join(directory, "best.json")
    if not os.path.lexists(path):
        return None
    try:
        if os.path.islink(path):
            raise ValueError("a symbolic link, not the record this run wrote")
        with open(path) as fh:
            record = json.load(fh)
        if not isinstance(record, dict) or not isinstance(record.get("history", []), list):
            raise ValueError("expected an object with 'metric', 'best', 'history'")
        best = record.get("best")
        if best is not None and not (isinstance(best, dict) and isinstance(best.get("step"), int)
                                     and isinstance(best.get("value"), (int, float))):
            raise ValueError("'best' must be null or an object with an integer 'step' and a numeric 'value'")
        name = (best or {}).get("checkpoint")
        if name is not None and not (isinstance(name, str) and FOLDER_RE.fullmatch(name)):
            raise ValueError(f"'best.checkpoint' is {name!r}; expected the name of one of the run's own "
                             f"checkpoints (step-NNNNNNNNN)")
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"{path}: not a model-selection record this tool wrote ({exc}); move it away to start "
                        f"selection afresh")
    return record


def selected_checkpoint(directory: str) -> str | None:
    """The checkpoint model selection named best: never pruned. A damaged record names none (so pruning may
    remove the old best, and loading falls back to the newest verified checkpoint, with a warning)."""
    try:
        record = read_selection(directory)
    except DataError as exc:
        log.warning("%s", exc)
        return None
    return ((record or {}).get("best") or {}).get("checkpoint")


def delete(ckpt: Checkpoint) -> None:
    """Remove one of our checkpoints with its digest record (never through a link: outputs.remove_owned)."""
    remove_owned(ckpt.path)
    if not ckpt.is_folder:
        remove_owned(ckpt.record)


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
            remove_owned(path)
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

    # by name: a module re-exports more (planners, readers, writers) than its metadata records
    CLASSES = {"torch.distributed.checkpoint.metadata": ("Metadata", "TensorStorageMetadata", "BytesStorageMetadata",
                                                         "ChunkStorageMetadata", "TensorProperties", "MetadataIndex",
                                                         "StorageMeta", "_MEM_FORMAT_ENCODING"),
               "torch.distributed.checkpoint.filesystem": ("_StorageInfo",)}

    def find_class(self, module: str, name: str):
        import torch

        if name in self.CLASSES.get(module, ()):
            return getattr(__import__(module, fromlist=[name]), name)
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


def check_metadata_bounds(meta_path: str, metadata) -> None:
    """A checkpoint is the files inside its folder: every storage item must name a plain file name there, and
    no tensor may declare more bytes than the folder's data files hold (a planted size would otherwise make the
    load allocate it)."""
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    folder = os.path.dirname(meta_path)
    storage = getattr(metadata, "storage_data", None) or {}
    for index, info in storage.items():
        rel = str(getattr(info, "relative_path", ""))
        if not rel or os.path.basename(rel) != rel or rel in (".", ".."):
            raise DataError(f"{meta_path}: refused: item {getattr(index, 'fqn', index)} names the file {rel!r}, "
                            f"which is not a file inside the checkpoint folder")
    held = sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder) if f != ".metadata")
    for fqn, item in (getattr(metadata, "state_dict_metadata", None) or {}).items():
        if isinstance(item, TensorStorageMetadata):
            declared = math.prod(item.size) * item.properties.dtype.itemsize
            if declared > held:
                raise DataError(f"{meta_path}: refused: {fqn} declares {declared} bytes, the checkpoint's data "
                                f"files hold {held}")


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
            check_metadata_bounds(meta_path, metadata)
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
