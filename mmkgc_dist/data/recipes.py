"""Dataset recipes: the standard multi-modal KGC benchmarks from their public OpenKE-format splits.

    mmkgc-dist prepare dataset DB15K data/db15k [--base-url URL] [--no-text-features]

The splits of DB15K, MKG-W and MKG-Y are those the AdaMF-MAT authors publish in their repository, read at a
pinned commit (any fsspec base URL with the same layout — a mirror, a local folder, s3:// — may be given).
Each file is checked before conversion against what this package pins for that commit: its size (the download
stops as soon as a file grows past it, so memory and disk stay bounded), its SHA-256, and its declared and
actual record counts. The check is the same whatever URL serves the file; a mismatch stops with one line
naming the file, and nothing is written.

Then the usual conversion (duplicates and overlaps the benchmark is known to have are allowed and counted in
the manifest), and text features from entity names where the names are words (DBpedia URIs; MKG-W/MKG-Y name
entities by Wikidata ids, which carry no text).
"""
from __future__ import annotations

import hashlib
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
    files: dict = None      # file -> (bytes, SHA-256) at COMMIT


RECIPES = {r.name: r for r in (
    Recipe("DB15K", {"entity2id.txt": 12842, "relation2id.txt": 279, "train2id.txt": 79222, "valid2id.txt": 9904,
                     "test2id.txt": 9902}, text_names=True, allow_duplicates=True, allow_overlap=True,
           files={"entity2id.txt": (674491, "8f8d070f1bb24d07ed3050e4e4e780cb7f2245d0b14db3346e8db4fa55981728"),
                  "relation2id.txt": (12591, "25e5a975ee079dbd5b8d22ffe23575a9e3135d263e0a3763224777bf526c1a74"),
                  "train2id.txt": (1030308, "d41f9b9ab5c0e6eed393e0f93febb4258dc02e5e4a4e2a99c49410d167522804"),
                  "valid2id.txt": (127702, "dc7ed39aa14e35a2f7ac09a0ff046067ee0e0d7953f8a204f04e7c09776095b1"),
                  "test2id.txt": (128692, "15f28535d04f3711b739a49d824f2346167384283cde57123376392d418ad6de")}),
    Recipe("MKG-W", {"entity2id.txt": 15000, "relation2id.txt": 169, "train2id.txt": 34196, "valid2id.txt": 4276,
                     "test2id.txt": 4274}, text_names=False, allow_duplicates=True, allow_overlap=True,
           files={"entity2id.txt": (672264, "d94b546efcb535d8253821626dd32f3ee876b2f263b727a4a446bc74697785df"),
                  "relation2id.txt": (6656, "204203e03a92d4f973ee815449695bcfaae1b6917fcb08b65f3b0fb071a47f61"),
                  "train2id.txt": (416832, "a9f316506a20a7b5bef7de3ceaaa1e82de554b8e92e6aa26e7cb54bcd8ada53d"),
                  "valid2id.txt": (52959, "34dd556893b8e4832600298864dbd18012529a1f172793c21e45ad7bdee9d189"),
                  "test2id.txt": (52754, "0e1294b1f95c8ef80ad422aeefafea321d16c1d127570e6bb566882b2e053989")}),
    Recipe("MKG-Y", {"entity2id.txt": 15000, "relation2id.txt": 28, "train2id.txt": 21310, "valid2id.txt": 2665,
                     "test2id.txt": 2663}, text_names=False, allow_duplicates=True, allow_overlap=True,
           files={"entity2id.txt": (348207, "416f6f77c13d0cf0c5cae9625a62b9f7d26320c27ae408f5ce4e7eae3206b8d9"),
                  "relation2id.txt": (391, "78d468edc02688f742c9b5a1030a071789ab24784dd2e48897643fe108ff4e4d"),
                  "train2id.txt": (259293, "71310c2c274e5ba2ce550433ef5c8496920bd03f50fd6057e64fc9c34e1e1aac"),
                  "valid2id.txt": (33252, "6c82db2d2b809aabf72f94bc19be3080b53ffba1caec12b81510354a7fe3470e"),
                  "test2id.txt": (33300, "8602cbbe7e3aef2c857df66eec5f7e4a2d6b02b19f58feff085688fb28980158")}),
)}


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
