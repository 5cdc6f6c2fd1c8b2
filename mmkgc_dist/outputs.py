"""Where the tool writes, and the rules it keeps there.

Ownership: every folder the tool makes (dataset, export, run) carries a marker file, ``.mmkgc-dist``, naming
its kind. An output path is accepted only if it does not exist, is an empty folder, or holds the marker of
the same kind *and* the user passed ``--overwrite``. It may never be the current directory or one of its
parents, an input, or a parent or child of an input. Nothing without our marker is ever deleted.

Crash-safe replacement (``OutputBuilder``): the new version is built in a temporary sibling
``.NAME.tmp-HOST-PID-XXXXXXXX``; the old one is moved aside to ``.NAME.previous``, the new one moved in, the
old one deleted. Killed between the two moves, ``resolve_output`` still finds the complete old version, and
the next writer restores or removes what was left (``clean_stale``, one line per thing it removes).

A test-only hook, ``MMKGC_DIST_FAULT_AT=built|aside|swapped``, kills the process at that point (``kill -9``
semantics) so tests can prove the claim above.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import uuid

from .errors import OutputError

log = logging.getLogger("mmkgc_dist")
MARKER = ".mmkgc-dist"
KINDS = ("dataset", "export", "run", "study", "added-entities")
FAULT_ENV = "MMKGC_DIST_FAULT_AT"


def fault_point(name: str) -> None:
    """Test hook: die here without cleanup, as a kill -9 would."""
    if os.environ.get(FAULT_ENV) == name:
        os._exit(137)


def local_path(url: str) -> str | None:
    """The local path of a plain path or file:// URL; None for any other fsspec URL."""
    for scheme in ("file://", "local://"):         # fsspec's two names for the local filesystem
        if url.startswith(scheme):
            return url[len(scheme):]
    return None if "://" in url else url


def real_path(path: str) -> str:
    return os.path.realpath(os.path.abspath(path))


def within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def marker_kind(folder: str) -> str | None:
    """The kind recorded in ``folder``'s marker, or None (no marker, unreadable, not ours)."""
    kind = marker_field(folder, "kind")
    return kind if kind in KINDS else None


def write_marker(folder: str, kind: str, **extra) -> None:
    """``extra``: facts about the folder's origin kept with its kind (a run's elastic job id)."""
    with open(os.path.join(folder, MARKER), "w") as fh:
        json.dump({"tool": "mmkgc-dist", "kind": kind, **extra}, fh)


def marker_field(folder: str, key: str):
    """A field of ``folder``'s marker (None when absent, unreadable or not ours)."""
    try:
        with open(os.path.join(folder, MARKER)) as fh:
            info = json.load(fh)
    except (OSError, ValueError):
        return None
    return info.get(key) if isinstance(info, dict) and info.get("tool") == "mmkgc-dist" else None


def check_output(out: str, kind: str, inputs: tuple[str, ...] = (), overwrite: bool = False,
                 what: str = "OUT") -> None:
    """Raise OutputError unless writing a ``kind`` at ``out`` keeps the ownership rule (module docstring)."""
    if local_path(out) != out:
        raise OutputError(f"{what} {out}: outputs are written to local folders; give a path")
    real = real_path(out)
    if within(real_path(os.getcwd()), real):
        raise OutputError(f"{what} {out}: is the current directory or one of its parents; give a new folder "
                          f"for the {kind}")
    for source in inputs:
        src = local_path(source) if source else None
        if src is None:
            continue
        src_real = real_path(src)
        if within(src_real, real) or within(real, src_real):
            raise OutputError(f"{what} {out}: overlaps the input {source}; write the {kind} to a separate folder")
    if os.path.islink(out):
        raise OutputError(f"{what} {out}: is a symbolic link; give the folder itself")
    if not os.path.lexists(out):
        return
    if not os.path.isdir(out):
        raise OutputError(f"{what} {out}: exists and is not a folder; expected a new or empty folder for the {kind}")
    if not os.listdir(out):
        return
    found = marker_kind(out)
    if found is None:
        raise OutputError(f"{what} {out}: folder is not empty and was not made by mmkgc-dist (no {MARKER} "
                          f"marker); refusing to touch it — give a new folder")
    if found != kind:
        article = "an" if kind[0] in "aeiou" else "a"
        raise OutputError(f"{what} {out}: holds an mmkgc-dist {found}, not {article} {kind}; refusing to replace it")
    if not overwrite:
        article = "an" if kind[0] in "aeiou" else "a"
        raise OutputError(f"{what} {out}: {article} {kind} already exists there; pass --overwrite to replace it")
    foreign = foreign_entries(out, kind)
    if foreign:
        raise OutputError(f"{what} {out}: holds {len(foreign)} file(s) mmkgc-dist did not write ({foreign[0]}"
                          f"{', ...' if len(foreign) > 1 else ''}); --overwrite replaces the whole {kind}, so move "
                          f"them out first")


def check_output_file(path: str, what: str, replaceable) -> None:
    """A single output file (e.g. ``evaluate --output``): a local path outside every folder this tool owns
    (dataset, export, run — their files are the tool's, replaced only by their own writers), and, if it
    exists, a file ``replaceable(path)`` recognises as an earlier output of the same command."""
    local = local_path(path)
    if local != path:
        raise OutputError(f"{what} {path}: outputs are written to local files; give a path")
    if os.path.islink(path) or os.path.isdir(path):
        raise OutputError(f"{what} {path}: is a {'symbolic link' if os.path.islink(path) else 'folder'}; give a "
                          f"file name")
    folder = os.path.dirname(real_path(path))
    while True:
        kind = marker_kind(folder)
        if kind is not None:
            raise OutputError(f"{what} {path}: is inside the mmkgc-dist {kind} {folder}; write it elsewhere")
        parent = os.path.dirname(folder)
        if parent == folder:
            break
        folder = parent
    if os.path.exists(path) and not replaceable(path):
        raise OutputError(f"{what} {path}: exists and is not an earlier output of this command; refusing to "
                          f"replace it — give a new file name")


# What the tool writes at the top of each kind of output: anything else there is a user's.
OWN_ENTRIES = {"dataset": re.compile(r"^(manifest\.json(\.tmp-.+)?|entities(-[0-9a-f]{8})?\.parquet|"
                                     r"relations\.parquet|triples|features|\.lock(\..+)?)$"),
               "export": re.compile(r"^(export\.json|relations\.parquet|part-\d{5}\.parquet)$")}


def foreign_entries(out: str, kind: str) -> list[str]:
    """Entries of the output folder ``out`` that its kind never holds (the marker aside); runs keep a user's
    files (only the run's own are replaced), so for them there are none."""
    own = OWN_ENTRIES.get(kind)
    if own is None or not os.path.isdir(out):
        return []
    return sorted(e for e in os.listdir(out) if e != MARKER and not own.match(e))


def file_sha256(path: str, block: int = 1 << 22) -> str:
    """SHA-256 of a file, read in blocks (the one hashing loop: dataset manifests and checkpoint digests)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def write_atomic(path: str, text: str | bytes) -> None:
    """The one way the tool writes a small file: under a temporary name private to this writer (host, pid and
    a random suffix, so concurrent writers never share one), flushed, then renamed over ``path`` — a reader
    sees the old file or the new one, never a part."""
    with atomic_file(path) as tmp:
        with open(tmp, "wb" if isinstance(text, bytes) else "w") as fh:
            fh.write(text)


@contextlib.contextmanager
def atomic_file(path: str):
    """The one atomic file writer: yields a temporary name private to this writer (host, pid and a random suffix)
    beside ``path``; the caller writes and closes the file there; when the block ends it is flushed to disk and
    renamed over ``path``. On any error — the caller's or a full disk at the flush — the temporary is removed
    and the error goes on, so a failed write leaves nothing behind."""
    tmp = f"{path}.tmp-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            if os.path.lexists(tmp):
                os.remove(tmp)
        raise


@contextlib.contextmanager
def built_aside(folder: str):
    """A derived folder (an index the tool can rebuild) built under a temporary sibling name, yielded, and moved
    into place when the block ends — an earlier one replaced; on any error the partial build is removed."""
    work = f"{folder}.tmp-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    try:
        yield work
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    if os.path.isdir(folder):
        shutil.rmtree(folder)
    os.replace(work, folder)


def cache_folder() -> str:
    """Where the tool keeps what it can always recompute (digests of data files, indexes of read-only runs):
    $MMKGC_DIST_CACHE, else $XDG_CACHE_HOME/mmkgc-dist, else ~/.cache/mmkgc-dist."""
    return os.environ.get("MMKGC_DIST_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "mmkgc-dist")


def derived_folder(owner: str, name: str) -> str:
    """Where an index derived from a folder the tool wrote (a run's known-triple or neighbour index) lives:
    inside ``owner`` when it can be written there, else in the cache under a name of the owner's real path —
    reading a read-only run (an archive, another user's) never needs a write to it."""
    inside, cached = derived_places(owner, name)
    return inside if os.access(owner, os.W_OK) else cached


def derived_places(owner: str, name: str) -> tuple[str, str]:
    """(inside the owner, in the cache): where a derived index may already be, in the order to look."""
    key = hashlib.sha256(os.path.realpath(owner).encode()).hexdigest()[:16]
    return os.path.join(owner, name), os.path.join(cache_folder(), "derived", key, name)


def remove_owned(path: str) -> None:
    """Delete one thing the tool wrote (a file or a folder). The one deletion rule: a symbolic link is never
    followed nor removed — where the tool expects its own file or folder, a link is a user's, and refused."""
    if os.path.islink(path):
        raise OutputError(f"{path}: is a symbolic link where mmkgc-dist keeps its own files; it never deletes "
                          f"through links — remove or replace the link yourself")
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.remove(path)


def refuse_links(folder: str, names) -> None:
    """Raise OutputError if any of ``folder``'s entries ``names`` is a symbolic link (see ``remove_owned``)."""
    for name in names:
        path = os.path.join(folder, name)
        if os.path.islink(path):
            raise OutputError(f"{path}: is a symbolic link where mmkgc-dist keeps its own files; refusing to write "
                              f"or delete through it — remove or replace the link yourself")


# ------------------------------------------------------------------------------ stale temporaries
_TMP = r"\.tmp-(?P<host>.+)-(?P<pid>\d+)-[0-9a-f]{8}$"


def _names(out: str) -> tuple[str, str]:
    out = os.path.abspath(out.rstrip("/") or "/")
    return os.path.dirname(out), os.path.basename(out)


def previous_path(out: str) -> str:
    parent, name = _names(out)
    return os.path.join(parent, f".{name}.previous")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale(out: str) -> list[str]:
    """Finish or undo an interrupted replacement of ``out`` and remove temporaries of dead writers (only
    folders carrying our marker). Returns one notice per action, also logged."""
    parent, name = _names(out)
    notices = []
    if not os.path.isdir(parent):
        return notices
    previous = previous_path(out)
    if os.path.isdir(previous) and marker_kind(previous):
        if os.path.lexists(out):
            shutil.rmtree(previous)
            notices.append(f"removed {previous}, the old version left by an interrupted replacement of {out}")
        else:
            os.replace(previous, out)
            notices.append(f"restored {out} from {previous} (a replacement was interrupted before the new "
                           f"version moved in)")
    pattern = re.compile(r"^\." + re.escape(name) + _TMP)
    here = socket.gethostname()
    for entry in sorted(os.listdir(parent)):
        path = os.path.join(parent, entry)
        match = pattern.match(entry)
        if match:
            if match["host"] == here and not pid_alive(int(match["pid"])) and marker_kind(path):
                shutil.rmtree(path)
                notices.append(f"removed stale temporary {path} (its writer, pid {match['pid']}, is gone)")
    for notice in notices:
        log.warning(notice)
    return notices


def resolve_output(path: str) -> str:
    """A local folder to read: ``path`` itself, or — while a replacement of it is interrupted between its two
    moves — the complete old version set aside."""
    local = local_path(path)
    if local is None or os.path.exists(local):
        return path
    previous = previous_path(local)
    if os.path.isdir(previous) and marker_kind(previous):
        log.warning("%s is missing; reading %s, the complete previous version of an interrupted replacement",
                    path, previous)
        return previous
    return path


# ------------------------------------------------------------------------------ building
def default_mode(path: str) -> None:
    """Folders get the usual permissions (mkdtemp would make them 0700)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o777 & ~umask)


def swap_in(new: str, out: str) -> None:
    """Put the complete folder ``new`` at ``out``: an old ``out`` is moved aside to ``previous_path(out)`` first
    and deleted only once ``new`` is in place (a folder cannot replace a non-empty one in one rename). What is
    at ``out`` is checked again here, at the swap — not only when the command started: a folder that appeared
    or changed hands meanwhile is never moved aside, and nothing without our marker of ``new``'s kind is ever
    deleted."""
    previous = previous_path(out)
    kind = marker_kind(new)
    had_old = os.path.lexists(out)
    if had_old:
        if os.path.islink(out) or not os.path.isdir(out) or (os.listdir(out) and marker_kind(out) != kind):
            raise OutputError(f"{out}: changed while the new {kind or 'version'} was being built (it is no longer "
                              f"an empty folder or {kind} of mmkgc-dist); left it alone — the new version is at "
                              f"{new}")
        os.replace(out, previous)
        fault_point("aside")
    os.replace(new, out)
    fault_point("swapped")
    if had_old:
        if marker_kind(previous) == kind or not os.listdir(previous):
            shutil.rmtree(previous)
        else:
            log.warning("left %s in place: it does not carry the %s marker", previous, kind)


class OutputBuilder:
    """Build an output in a temporary sibling and swap it in crash-safely.

        builder = OutputBuilder(out, "dataset")     # cleans stale leftovers, makes the temporary folder
        ...write into builder.tmp...
        builder.commit()                           # or builder.abort() on failure
    """

    def __init__(self, out: str, kind: str, tmp: str | None = None):
        self.out, self.kind = os.path.abspath(out.rstrip("/")), kind
        parent, name = _names(self.out)
        os.makedirs(parent, exist_ok=True)
        self.tmp = tmp or os.path.join(parent, f".{name}.tmp-{socket.gethostname()}-{os.getpid()}-"
                                               f"{uuid.uuid4().hex[:8]}")

    def create(self) -> "OutputBuilder":
        clean_stale(self.out)
        os.mkdir(self.tmp)
        default_mode(self.tmp)
        write_marker(self.tmp, self.kind)
        return self

    def commit(self) -> None:
        fault_point("built")
        swap_in(self.tmp, self.out)

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> str:
        self.create()
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


# ------------------------------------------------------------------------------ locks
class FolderLock:
    """One writer per folder: ``FOLDER/.lock`` holds the writer's pid and host. Created complete in one step
    (written to a private name, then hard-linked into place), so a reader never sees a half-written lock. A lock
    whose process is gone (same host, pid not running) is stale and replaced with a notice; any other refuses."""

    def __init__(self, folder: str, what: str = "folder"):
        self.folder, self.what = folder, what
        self.path = os.path.join(folder, ".lock")
        self.held = False

    def holder(self) -> dict:
        try:
            with open(self.path) as fh:
                info = json.load(fh)
            return info if isinstance(info, dict) else {}
        except (OSError, ValueError):
            return {}

    def acquire(self) -> "FolderLock":
        import atexit
        import time

        here = socket.gethostname()
        self.nonce = uuid.uuid4().hex
        mine = f"{self.path}.{here}-{os.getpid()}-{self.nonce[:8]}"
        with open(mine, "w") as fh:
            json.dump({"pid": os.getpid(), "host": here, "since": time.strftime("%Y-%m-%d %H:%M:%S"),
                       "nonce": self.nonce}, fh)
        try:
            for _ in range(5):
                try:
                    os.link(mine, self.path)
                    self.held = True
                    atexit.register(self.release)
                    return self
                except FileExistsError:
                    if not os.path.lexists(self.path):      # released or broken meanwhile: try again
                        continue
                    info = self.holder()
                    pid, host = info.get("pid"), info.get("host")
                    if host == here and isinstance(pid, int) and not pid_alive(pid):
                        self._break_stale(info)
                        continue
                    raise OutputError(self._in_use(info))
            raise OutputError(f"{self.folder}: could not take the lock {self.path}; another writer keeps taking it")
        finally:
            os.remove(mine)

    def _in_use(self, info: dict) -> str:
        if not info:
            return (f"{self.folder}: {self.what} is locked by another writer ({self.path} exists but does not "
                    f"name its process); if no mmkgc-dist command is writing there, remove {self.path}")
        return (f"{self.folder}: {self.what} is in use by pid {info.get('pid')} on {info.get('host')} since "
                f"{info.get('since')}; if that process is gone, remove {self.path}")

    def _break_stale(self, seen: dict) -> None:
        """Take the stale lock ``seen`` away by renaming it to a name private to this process (one rename wins
        between racing writers), then check that what moved is still that stale lock: a live writer's lock
        taken in between is put back, never removed."""
        moved = f"{self.path}.stale-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(self.path, moved)
        except FileNotFoundError:            # another writer broke it first
            return
        with open(moved) as fh:
            try:
                taken = json.load(fh)
            except ValueError:
                taken = {}
        if taken != seen:                    # a live lock arrived between our read and our rename
            try:
                os.link(moved, self.path)
            except FileExistsError:
                pass
        else:
            log.warning("removed a stale lock on %s (pid %s on %s is gone)", self.folder, seen.get("pid"),
                        seen.get("host"))
        os.remove(moved)

    def release(self) -> None:
        if self.held and self.holder().get("nonce") == self.nonce:
            try:
                os.remove(self.path)
            except FileNotFoundError:
                pass
        self.held = False

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
