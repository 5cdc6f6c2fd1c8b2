"""Files checked against their records: the bytes and SHA-256 a writer recorded of each file it wrote (a dataset's
``manifest.json``, an export's ``export.json``) are compared when the file is read.

- ``check_size``: at every open — a stat, free on a local disk — so a replaced or truncated file is refused in one
  line before it is parsed.
- ``verify_files``: every file's SHA-256 against its record (``mmkgc-dist verify``, and before a run starts). A
  digest is cached by the file's identity (real path, size, modification time, inode and change time; a remote
  file's size and ETag or modification time), in ``$MMKGC_DIST_CACHE`` (default ``~/.cache/mmkgc-dist``), so a
  10^9-edge dataset is hashed once per version of its files, not once per run.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import threading

from ..errors import DataError
from ..outputs import cache_folder, write_atomic

log = logging.getLogger("mmkgc_dist")
CACHE_FILE = "digests.json"
CACHE_LIMIT = 100_000          # entries kept; the oldest half is dropped beyond it
_lock = threading.Lock()


def stays_inside(rel) -> bool:
    """A recorded path must stay inside its folder: relative, no '..', no drive or scheme (the one rule for
    manifests, export.json and their file records)."""
    if not isinstance(rel, str) or not rel or rel.startswith(("/", "\\")) or "://" in rel or ":" in rel[:3]:
        return False
    return ".." not in rel.replace("\\", "/").split("/")


def file_record(path: str) -> dict:
    """{bytes, sha256} of a local file, as a writer records it."""
    from ..outputs import file_sha256
    return {"bytes": os.path.getsize(path), "sha256": file_sha256(path)}


def _filesystem(path: str, fs=None):
    import fsspec
    if fs is not None:
        return fs, path
    return fsspec.core.url_to_fs(path)


def check_size(path: str, record, where: str, fs=None) -> None:
    """DataError when ``path``'s size is not the recorded one (``record``: {bytes, sha256}; None: nothing
    recorded — datasets written before records). ``where``: the record's file, named in the message."""
    if not isinstance(record, dict) or "bytes" not in record:
        return
    fs, local = _filesystem(path, fs)
    try:
        size = fs.size(local)
    except FileNotFoundError:
        raise DataError(f"{path}: file listed in {where} is missing") from None
    if size != record["bytes"]:
        raise DataError(f"{path}: {size} bytes, {where} records {record['bytes']} — the file was replaced or cut "
                        f"short after it was written; restore it (or write the folder again)")


def verify_files(root: str, records: dict, where: str, use_cache: bool = True, fs=None,
                 progress: bool = False) -> list[str]:
    """Problems found comparing every file ``records`` names ({relative path: {bytes, sha256}}) with the files
    under ``root`` (a local path or fsspec URL): missing, another size, another digest. Empty when all match."""
    problems = []
    if not isinstance(records, dict) or not records:
        return [f"{where} records no file digests (written by an older version): nothing to compare"]
    fs, base = _filesystem(root, fs)
    cache = _Cache() if use_cache else None
    names = sorted(records)
    if progress:
        from tqdm import tqdm
        names = tqdm(names, desc="verify", unit="file", disable=None)
    for rel in names:
        record = records[rel]
        path = f"{base.rstrip('/')}/{rel}"
        shown = f"{root.rstrip('/')}/{rel}"
        if not stays_inside(rel):
            problems.append(f"{where}: the recorded path {str(rel)[:200]!r} leaves the folder; not read")
            continue
        if not isinstance(record, dict) or not isinstance(record.get("sha256"), str):
            problems.append(f"{shown}: the record in {where} is not {{bytes, sha256}}")
            continue
        try:
            info = fs.info(path)
        except FileNotFoundError:
            problems.append(f"{shown}: missing")
            continue
        if info.get("size") != record.get("bytes"):
            problems.append(f"{shown}: {info.get('size')} bytes, {where} records {record.get('bytes')}")
            continue
        digest = _digest(fs, path, info, cache)
        if digest != record["sha256"]:
            problems.append(f"{shown}: its SHA-256 differs from the one {where} records (same size: the content "
                            f"was changed)")
    if cache is not None:
        cache.save()
    return problems


def _identity(fs, path: str, info: dict) -> str | None:
    """A key that changes whenever the file's content can have changed; None when the filesystem gives none."""
    if "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)):
        st = os.stat(path)
        return f"file:{os.path.realpath(path)}:{st.st_size}:{st.st_mtime_ns}:{st.st_ino}:{st.st_ctime_ns}"
    tag = info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("LastModified") or \
        info.get("last_modified")
    return None if tag is None else f"{fs.protocol}:{path}:{info.get('size')}:{tag}"


def _digest(fs, path: str, info: dict, cache) -> str:
    key = _identity(fs, path, info)
    if cache is not None and key is not None and key in cache.entries:
        return cache.entries[key]
    digest = hashlib.sha256()
    with fs.open(path, "rb") as fh:
        while block := fh.read(1 << 22):
            digest.update(block)
    value = digest.hexdigest()
    if cache is not None and key is not None:
        cache.entries[key] = value
        cache.changed = True
    return value


class _Cache:
    """{file identity: SHA-256}. A damaged or unreadable cache is ignored (it only saves work); a cache that
    cannot be written is skipped with a log line."""

    def __init__(self):
        self.path = os.path.join(cache_folder(), CACHE_FILE)
        self.entries: dict = {}
        self.changed = False
        try:
            with open(self.path) as fh:
                loaded = json.load(fh)
            if isinstance(loaded, dict):
                self.entries = {k: v for k, v in loaded.items() if isinstance(k, str) and isinstance(v, str)}
        except (OSError, ValueError):
            pass

    def save(self) -> None:
        if not self.changed:
            return
        entries = self.entries
        if len(entries) > CACHE_LIMIT:
            entries = dict(list(entries.items())[len(entries) - CACHE_LIMIT // 2:])
        try:
            with _lock:
                os.makedirs(os.path.dirname(self.path), exist_ok=True)
                write_atomic(self.path, json.dumps(entries))
        except OSError as exc:
            log.info("digest cache %s not written (%s); digests are computed again next time", self.path, exc)
