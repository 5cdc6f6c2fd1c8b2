"""OpenKE folders (train2id/valid2id/test2id, entity2id, relation2id) → our Parquet format.

Each file starts with a count line; triple lines are ``head tail relation`` (note the order).
SRC may be any fsspec URL; every malformed line is reported with file and line number.
"""
from __future__ import annotations

import urllib.parse

import fsspec
import numpy as np

from ..errors import DataError
from .remote import check_reachable
from .format import KGData

SPLIT_FILES = {"train": "train2id.txt", "valid": "valid2id.txt", "test": "test2id.txt"}


def _read_lines(path: str) -> list[str]:
    check_reachable(path)
    try:
        with fsspec.open(path, "r", encoding="utf-8") as fh:
            return fh.read().splitlines()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc})")


def _declared_count(path: str, lines: list[str]) -> int:
    if not lines or not lines[0].strip().isdigit():
        raise DataError(f"{path}: line 1: expected the record count, got {lines[0][:50] if lines else '<empty>'!r}")
    body = [l for l in lines[1:] if l.strip()]
    declared = int(lines[0])
    if declared != len(body):
        raise DataError(f"{path}: line 1 declares {declared} records, the file holds {len(body)}")
    return declared


def read_dictionary(path: str) -> list[str]:
    """``name id`` lines → names indexed by id (ids must be exactly 0..n-1)."""
    lines = _read_lines(path)
    n = _declared_count(path, lines)
    names: list[str | None] = [None] * n
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        parts = line.rsplit(None, 1)
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise DataError(f"{path}: line {lineno}: expected 'name id', got {line[:80]!r}")
        idx = int(parts[1])
        if not 0 <= idx < n:
            raise DataError(f"{path}: line {lineno}: id {idx} out of range [0, {n})")
        if names[idx] is not None:
            raise DataError(f"{path}: line {lineno}: id {idx} assigned twice")
        names[idx] = parts[0]
    return names  # every slot filled: n distinct ids in [0, n)


def read_triples(path: str, num_entities: int, num_relations: int) -> np.ndarray:
    lines = _read_lines(path)
    n = _declared_count(path, lines)
    out = np.empty((n, 3), np.int64)
    row = 0
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 3 or not all(p.isdigit() for p in parts):
            raise DataError(f"{path}: line {lineno}: expected three non-negative ids 'head tail relation', "
                            f"got {line[:80]!r}")
        h, t, r = (int(p) for p in parts)
        for name, value, limit in (("head", h, num_entities), ("tail", t, num_entities),
                                   ("relation", r, num_relations)):
            if value >= limit:
                raise DataError(f"{path}: line {lineno}: {name} id {value} out of range [0, {limit})")
        out[row] = (h, r, t)
        row += 1
    return out


def readable_name(uri: str) -> str:
    """DBpedia-style URI → readable text: last path segment, URL-decoded, underscores as spaces."""
    core = uri.strip("<>")
    tail = core.rstrip("/").rsplit("/", 1)[-1]
    tail = tail.rsplit("#", 1)[-1]
    return urllib.parse.unquote(tail).replace("_", " ")


def read_openke(src: str, name: str | None = None) -> KGData:
    src = src.rstrip("/")
    entities = read_dictionary(f"{src}/entity2id.txt")
    relations = read_dictionary(f"{src}/relation2id.txt")
    splits = {s: read_triples(f"{src}/{f}", len(entities), len(relations)) for s, f in SPLIT_FILES.items()}
    for split, triples in splits.items():
        if len(triples) == 0:
            raise DataError(f"{src}/{SPLIT_FILES[split]}: no triples (line 1 declares 0 records); every split needs "
                            f"at least one")
    if not entities or not relations:
        raise DataError(f"{src}: {'entity2id.txt' if not entities else 'relation2id.txt'} declares 0 records")
    return KGData(len(entities), len(relations), splits, entities, relations, {},
                  name or src.rsplit("/", 1)[-1])
