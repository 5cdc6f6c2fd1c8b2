"""The catalogue of a run's ``checkpoints/`` folder: which checkpoints it holds, which verify, which one model
selection chose (``best.json``, written and read only here), and which may go.

    step-NNNNNNNNN/    one checkpoint at any world size (format.py); its meta.json lists every file's digest
    best.json          model selection's record: its state and the name of the selected step-N (training/selection.py)

Every file a checkpoint holds has its SHA-256 recorded at save time; ``verify`` recomputes them, so a truncated,
empty or altered file is found before anything reads it, and ``newest_verified`` falls back to the newest good
checkpoint with a warning naming each bad one. ``prune`` keeps the newest K (never the newest verified one).
"""
from __future__ import annotations

import functools
import glob
import json
import logging
import os
import re
from dataclasses import dataclass

from ..errors import CheckpointError
from ..outputs import file_sha256, remove_owned, write_atomic

log = logging.getLogger("mmkgc_dist")
FOLDER_RE = re.compile(r"step-(\d{9})$")
BEST = "best.json"


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
    def record(self) -> str:
        """The file that records this checkpoint's digests (written last)."""
        return os.path.join(self.path, "meta.json")


def list_checkpoints(directory: str) -> list[Checkpoint]:
    """Committed checkpoints, oldest first (temporaries never match)."""
    found = []
    for path in glob.glob(os.path.join(directory, "step-*")):
        name = os.path.basename(path)
        if os.path.islink(path):          # not ours: never loaded, pruned or deleted
            log.warning("ignoring %s: a symbolic link, not a checkpoint this run wrote", path)
            continue
        if (m := FOLDER_RE.fullmatch(name)) and os.path.isfile(os.path.join(path, "meta.json")):
            found.append(Checkpoint(path, int(m[1])))
    return sorted(found, key=lambda c: c.step)


def read_record(ckpt: Checkpoint) -> dict:
    with open(ckpt.record) as fh:
        record = json.load(fh)
    if not isinstance(record, dict):
        raise ValueError("not a JSON object")
    return record


def verify(ckpt: Checkpoint) -> str | None:
    """None if the checkpoint is complete and unaltered, else the reason."""
    try:
        record = read_record(ckpt)
    except (OSError, ValueError) as exc:
        return f"{os.path.basename(ckpt.record)} unreadable ({exc})"
    if not isinstance(record.get("files"), dict):    # a checkpoint is its files, all verified, or nothing
        return "meta.json records no file digests ('files'), so nothing in it can be verified"
    unrecorded = sorted(set(_files_inside(ckpt.path)) - set(record["files"]) - {"meta.json"})
    if unrecorded:
        return f"{unrecorded[0]} is in the folder but not among the files recorded at save time"
    return _check_digests(ckpt.path, record["files"])


def latest(directory: str) -> str | None:
    """Path of the newest verified checkpoint (warns about damaged newer ones), or None."""
    found = newest_verified(directory)
    return found.path if found else None


def newest_verified(directory: str) -> Checkpoint | None:
    """The newest checkpoint that verifies; each newer bad one is named in a warning."""
    for ckpt in reversed(list_checkpoints(directory)):
        reason = verify(ckpt)
        if reason is None:
            return ckpt
        if not os.path.isdir(ckpt.path):        # pruned by a training run since it was listed: not damage
            continue
        log.warning("checkpoint %s is damaged (%s); trying an older one", ckpt.path, reason)
    return None


def checkpoint_at(path: str) -> Checkpoint:
    """A checkpoint folder named by the user, verified; one-line errors otherwise."""
    name = os.path.basename(path.rstrip("/"))
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: checkpoint not found")
    if not os.path.isdir(path) or not os.path.isfile(os.path.join(path, "meta.json")):
        raise CheckpointError(f"{path}: not a checkpoint folder (no meta.json); give a step-N/ folder of a run's "
                              f"checkpoints/ (single-file checkpoints of versions before checkpoint format 2 are "
                              f"not read)")
    m = FOLDER_RE.fullmatch(name)
    ckpt = Checkpoint(path.rstrip("/"), int(m[1]) if m else -1)
    reason = verify(ckpt)
    if reason:
        raise CheckpointError(f"{path}: checkpoint failed verification: {reason}")
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


def keep_selected(directory: str) -> list[str]:
    """Delete every checkpoint but the one model selection chose (best.json), or, without a selection, the
    newest verified one: what a finished study trial keeps. Only our own checkpoint names are deleted."""
    found = list_checkpoints(directory)
    best = selected_checkpoint(directory)
    kept = next((c for c in found if os.path.basename(c.path) == best), None) or newest_verified(directory)
    removed = [c for c in found if kept is None or c.path != kept.path]
    for ckpt in removed:
        delete(ckpt)
    return [c.path for c in removed]


def read_selection(directory: str) -> dict | None:
    """Model selection's record (``checkpoints/best.json``, training/selection.py), checked: None when there is
    none; CheckpointError naming the file when it is malformed or names anything but one of the run's own
    ``step-N`` checkpoints (never a path outside the run)."""
    path = os.path.join(directory, BEST)
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
        raise CheckpointError(f"{path}: not a model-selection record this tool wrote ({exc}); move it away to start "
                              f"selection afresh")
    return record


def selected_checkpoint(directory: str) -> str | None:
    """The checkpoint model selection named best: never pruned. A damaged record names none (so pruning may
    remove the old best, and loading falls back to the newest verified checkpoint, with a warning)."""
    try:
        record = read_selection(directory)
    except CheckpointError as exc:
        log.warning("%s", exc)
        return None
    return ((record or {}).get("best") or {}).get("checkpoint")


def write_selection(directory: str, record: dict) -> None:
    """Write model selection's record (``best.json``) crash-safely; the one writer of it."""
    os.makedirs(directory, exist_ok=True)
    write_atomic(os.path.join(directory, BEST), json.dumps(record, indent=2))


def delete(ckpt: Checkpoint) -> None:
    """Remove one of our checkpoints: first renamed out of the checkpoint names (one atomic step), then removed
    (never through a link: outputs.remove_owned). A kill during the removal so leaves a ``.step-N.deleting``
    folder that the next run clears, never a listed checkpoint with some of its files gone."""
    aside = os.path.join(os.path.dirname(ckpt.path), f".{os.path.basename(ckpt.path)}.deleting")
    if os.path.lexists(aside):            # an earlier removal of the same step was interrupted
        remove_owned(aside)
    os.replace(ckpt.path, aside)
    remove_owned(aside)


TEMPORARY_RE = re.compile(r"^\.tmp-step-\d{9}$")
SWAPPED_OUT_RE = re.compile(r"^\.(step-\d{9})\.previous$")     # outputs.swap_in's old version, set aside
DELETING_RE = re.compile(r"^\.step-\d{9}\.deleting$")          # delete()'s checkpoint being removed


def clean_temporaries(directory: str) -> list[str]:
    """Remove partial checkpoint writes and removals of a crashed run (the caller holds the run's lock); a
    checkpoint set aside by a same-step save (``outputs.swap_in``) is put back when the new one never moved in."""
    removed = []
    if not os.path.isdir(directory):
        return removed
    for name in sorted(os.listdir(directory)):
        if (swapped := SWAPPED_OUT_RE.match(name)) and not os.path.exists(os.path.join(directory, swapped[1])):
            os.replace(os.path.join(directory, name), os.path.join(directory, swapped[1]))   # crash mid-swap
            log.warning("restored %s (a save of the same step was interrupted)", swapped[1])
        elif swapped or TEMPORARY_RE.match(name) or DELETING_RE.match(name):
            path = os.path.join(directory, name)
            remove_owned(path)
            removed.append(path)
            log.warning("removed %s, left by an interrupted checkpoint %s", path,
                        "removal" if DELETING_RE.match(name) else "write")
    return removed
