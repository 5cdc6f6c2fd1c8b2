"""Dataset recipes: the standard multi-modal KGC benchmarks from their public OpenKE-format splits.

    mmkgc-dist prepare dataset DB15K data/db15k [--base-url URL] [--no-text-features]

The splits of DB15K, MKG-W and MKG-Y are those the AdaMF-MAT authors publish in their repository, read at a
pinned commit (any fsspec base URL with the same layout — a mirror, a local folder, s3:// — may be given).
Each file is checked twice before conversion: its declared and actual record counts must be the benchmark's
published counts, and its SHA-256 must match the digest recorded the first time this machine fetched that
recipe (trust on first use; the record is ``$MMKGC_DIST_HOME/recipes.json``, default
``~/.cache/mmkgc-dist``). A mismatch stops with one line naming the file; nothing is written.

Then the usual conversion (duplicates and overlaps the benchmark is known to have are allowed and counted in
the manifest), and text features from entity names where the names are words (DBpedia URIs; MKG-W/MKG-Y name
entities by Wikidata ids, which carry no text).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass

import fsspec

from .errors import DataError

COMMIT = "50930e9b28aed57133bedfc281391185ac9b68a4"
BASE_URL = f"https://raw.githubusercontent.com/zjukg/AdaMF-MAT/{COMMIT}/benchmarks"
FILES = ("entity2id.txt", "relation2id.txt", "train2id.txt", "valid2id.txt", "test2id.txt")


@dataclass(frozen=True)
class Recipe:
    name: str
    counts: dict            # file -> records declared on its first line
    text_names: bool        # entity names are words (text features make sense)
    allow_duplicates: bool  # the published splits repeat rows ...
    allow_overlap: bool     # ... or share rows between splits (counted in the manifest)


RECIPES = {r.name: r for r in (
    Recipe("DB15K", {"entity2id.txt": 12842, "relation2id.txt": 279, "train2id.txt": 79222, "valid2id.txt": 9904,
                     "test2id.txt": 9902}, text_names=True, allow_duplicates=True, allow_overlap=True),
    Recipe("MKG-W", {"entity2id.txt": 15000, "relation2id.txt": 169, "train2id.txt": 34196, "valid2id.txt": 4276,
                     "test2id.txt": 4274}, text_names=False, allow_duplicates=True, allow_overlap=True),
    Recipe("MKG-Y", {"entity2id.txt": 15000, "relation2id.txt": 28, "train2id.txt": 21310, "valid2id.txt": 2665,
                     "test2id.txt": 2663}, text_names=False, allow_duplicates=True, allow_overlap=True),
)}


def recipe(name: str) -> Recipe:
    for key, r in RECIPES.items():
        if key.lower() == name.lower():
            return r
    raise DataError(f"unknown dataset {name!r}; recipes: {', '.join(RECIPES)}")


def records_path() -> str:
    home = os.environ.get("MMKGC_DIST_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "mmkgc-dist")
    return os.path.join(home, "recipes.json")


def _records() -> dict:
    path = records_path()
    if not os.path.exists(path):
        return {}
    try:
        with open(path) as fh:
            return json.load(fh)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable digest record ({exc}); remove it to record the digests afresh")


def _save_records(records: dict) -> None:
    path = records_path()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as fh:
        json.dump(records, fh, indent=2)
    os.replace(path + ".tmp", path)


def fetch(r: Recipe, base_url: str, folder: str) -> dict:
    """Copy the recipe's files from ``base_url/NAME/`` into ``folder``, checking counts and digests; returns
    {file: sha256}. Records the digests the first time a (recipe, URL) pair is fetched."""
    source = f"{base_url.rstrip('/')}/{r.name}"
    digests = {}
    for name in FILES:
        url = f"{source}/{name}"
        try:
            with fsspec.open(url, "rb") as fh:
                payload = fh.read()
        except (OSError, ValueError) as exc:        # fsspec's HTTP errors are OSError subclasses or ValueError
            raise DataError(f"{url}: cannot be read ({' '.join(str(exc).split())[:200]})") from exc
        _check_counts(url, payload, r.counts[name])
        digests[name] = hashlib.sha256(payload).hexdigest()
        with open(os.path.join(folder, name), "wb") as out:
            out.write(payload)
    records = _records()
    key = f"{r.name} {source}"
    known = records.get(key)
    if known is None:
        records[key] = digests
        _save_records(records)
        print(f"{r.name}: recorded the SHA-256 of its {len(FILES)} files in {records_path()} (first fetch from "
              f"{source})")
    else:
        for name, digest in digests.items():
            if known.get(name) != digest:
                raise DataError(f"{source}/{name}: SHA-256 {digest[:16]}… differs from "
                                f"{known.get(name, '?')[:16]}… recorded at the first fetch ({records_path()}); the "
                                f"file changed at its source")
    return digests


def _check_counts(url: str, payload: bytes, expected: int) -> None:
    lines = [line for line in payload.decode("utf-8", errors="replace").splitlines() if line.strip()]
    if not lines:
        raise DataError(f"{url}: empty; expected {expected} records")
    try:
        declared = int(lines[0].split()[0])
    except ValueError:
        raise DataError(f"{url}: line 1 should be the record count, got {lines[0][:80]!r}")
    if declared != expected or len(lines) - 1 != expected:
        raise DataError(f"{url}: {declared} records declared and {len(lines) - 1} present; the benchmark has "
                        f"{expected}")
