"""Dataset recipes: the standard multi-modal KGC benchmarks from their public OpenKE-format splits.

    mmkgc-dist prepare dataset DB15K data/db15k [--base-url URL] [--no-text-features]

The splits of DB15K, MKG-W and MKG-Y are those the AdaMF-MAT authors publish in their repository, read at a
pinned commit (any fsspec base URL with the same layout — a mirror, a local folder, s3:// — may be given).
Each file is checked before conversion against what this package pins for that commit: its size (the download
stops as soon as a file grows past it, so memory and disk stay bounded), its SHA-256, and its declared and
actual record counts. The check is the same whatever URL serves the file; a mismatch stops with one line
naming the file, and nothing is written.

Then the usual conversion (duplicates and overlaps the benchmark is known to have are allowed and counted in
the manifest), and text features from entity names where the names are words: DB15K's DBpedia URIs and
MKG-Y's YAGO names (``Libreville``, ``Gilles_Mbang_Ondo``); MKG-W names entities by Wikidata ids, which carry no
text.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass

import fsspec

from ..errors import DataError
from .remote import check_reachable

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
    files: dict = None      # file -> (bytes, SHA-256) at COMMIT


def _read_pins() -> dict[str, Recipe]:
    """The recipes and their pinned files, from recipes.json beside this module (data, not code)."""
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "recipes.json")) as fh:
        pinned = json.load(fh)
    if pinned["commit"] != COMMIT:
        raise RuntimeError("recipes.json pins another commit than recipes.COMMIT")
    return {name: Recipe(name, {f: v["records"] for f, v in r["files"].items()}, r["text_names"],
                         r["allow_duplicates"], r["allow_overlap"],
                         {f: (v["bytes"], v["sha256"]) for f, v in r["files"].items()})
            for name, r in pinned["recipes"].items()}


RECIPES = _read_pins()


def recipe(name: str) -> Recipe:
    for key, r in RECIPES.items():
        if key.lower() == name.lower():
            return r
    raise DataError(f"unknown dataset {name!r}; recipes: {', '.join(RECIPES)}")


def fetch(r: Recipe, base_url: str, folder: str) -> dict:
    """Copy the recipe's files from ``base_url/NAME/`` into ``folder``, each checked against the size, digest and
    record counts pinned for the published commit; returns {file: sha256}."""
    source = f"{base_url.rstrip('/')}/{r.name}"
    digests = {}
    for name in FILES:
        url, size, pinned = f"{source}/{name}", *r.files[name]
        path = os.path.join(folder, name)
        digests[name] = _download(url, path, size)
        _check_counts(url, path, r.counts[name])       # first: a truncated file is named as such
        if digests[name] != pinned:
            raise DataError(f"{url}: SHA-256 {digests[name][:16]}… differs from {pinned[:16]}… of the published "
                            f"{r.name} at commit {COMMIT[:12]} (pinned in mmkgc-dist); the file is not the benchmark's")
    return digests


def _download(url: str, path: str, size: int, block: int = 1 << 20) -> str:
    """Stream ``url`` to ``path`` in blocks, hashing as it goes; stop as soon as it holds more than ``size``
    bytes (a wrong or hostile file never fills memory or disk). Returns the SHA-256."""
    digest, written = hashlib.sha256(), 0
    check_reachable(url)
    try:
        with fsspec.open(url, "rb") as fh, open(path, "wb") as out:
            while chunk := fh.read(block):
                written += len(chunk)
                if written > size:
                    break
                digest.update(chunk)
                out.write(chunk)
    except (OSError, ValueError) as exc:        # fsspec's HTTP errors are OSError subclasses or ValueError
        hint = ("; without network, give a copy with --base-url (a folder or URL holding NAME/entity2id.txt, "
                "...)") if "://" in url and not url.startswith("file://") else ""
        raise DataError(f"{url}: cannot be read ({' '.join(str(exc).split())[:200]}){hint}") from exc
    if written > size:
        raise DataError(f"{url}: larger than the published file ({size} bytes); stopped reading")
    return digest.hexdigest()


def _check_counts(url: str, path: str, expected: int) -> None:
    with open(path, encoding="utf-8", errors="replace") as fh:
        lines = [line for line in fh if line.strip()]
    if not lines:
        raise DataError(f"{url}: empty; expected {expected} records")
    try:
        declared = int(lines[0].split()[0])
    except ValueError:
        raise DataError(f"{url}: line 1 should be the record count, got {lines[0][:80]!r}")
    if declared != expected or len(lines) - 1 != expected:
        raise DataError(f"{url}: {declared} records declared and {len(lines) - 1} present; the benchmark has "
                        f"{expected}")
