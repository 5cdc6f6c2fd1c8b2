"""Out-of-core conversion of labeled triples (TSV/CSV, optionally compressed, any fsspec URL) into the
Parquet dataset format.

Memory is bounded by the number of distinct entity and relation labels (the dictionaries) plus one
block of input (plus the check copy below): the text is read in byte blocks cut at line ends, each block
is parsed by pyarrow's multi-threaded CSV reader, its labels are mapped to dense ids with pyarrow's hash
kernels on one thread per dictionary shard (ids given block by block, train first, deterministic), and the
id triples go straight into Parquet row groups. Up to CHECK_ROWS rows, a compact copy of the ids (12 B per
row) is kept for the duplicate and overlap checks (checks.py); above that the manifest says they were not run.
Statistics for Bernoulli sampling and degrees are accumulated on the way (statistics.py).

Every malformed row is an error naming the file and line unless the user asked to skip malformed rows;
skipped rows are counted, reported and written into the manifest.
"""
from __future__ import annotations

import io
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from tqdm import tqdm

from .checks import SplitChecks, check_splits
from ..errors import DataError
from .remote import check_reachable
from .format import ROW_GROUP_ROWS, TripleWriter, build_dataset_folder, manifest_record, write_name_tables
from .statistics import SKETCH_SIZE, TripleStatistics, exact_relation_table

BLOCK_BYTES = 32 << 20      # input bytes parsed at once (~1.4M short-label rows): bounds memory; larger blocks
                            # amortise rebuilding the dictionary's hash table (pyarrow has no persistent one)
CHECK_ROWS = 1 << 25        # duplicate/overlap checks keep 12 B per row up to this many rows (~400 MiB)
log = logging.getLogger("mmkgc_dist")
ROLES = ("head", "relation", "tail")
NEWLINE = b"\n"


HEADER_WORDS = {"head", "relation", "tail", "subject", "predicate", "object", "source", "target", "src", "dst",
                "rel", "h", "r", "t", "s", "p", "o", "from", "to", "label", "type", "edge", "relation_type",
                "head_label", "tail_label", "relation_label", "sub", "obj", "pred", "_", ""}


@dataclass
class TextLayout:
    """How labeled triples are laid out in the text files, and which doubtful inputs the user allows."""
    columns: tuple[str, ...] = ROLES          # role of each field, in file order
    delimiter: str | None = None               # None: tab for .tsv/.txt, comma for .csv
    header: bool = False                       # first line is a header
    skip_malformed: bool = False               # count and skip rows with the wrong number of fields
    check_header: bool = True                  # a first line that looks like a header is an error unless flagged
    strip_labels: bool = False                 # strip surrounding whitespace from labels (counted) instead of failing
    allow_duplicates: bool = False             # keep (and count) repeated triples within a split
    allow_overlap: bool = False                # keep (and count) valid/test triples that occur in train/valid

    def __post_init__(self):
        d = self.delimiter
        if d is not None and (len(d) != 1 or d in ('"', "\n", "\r")):
            raise DataError(f"--delimiter {d!r}: expected one character (not a quote or a line break)")

    def delimiter_for(self, url: str) -> str:
        if self.delimiter:
            return self.delimiter
        stem = url[:-len(ext)] if (ext := os.path.splitext(url)[1]) in (".gz", ".bz2", ".xz", ".zst") else url
        return "," if stem.endswith(".csv") else "\t"


@dataclass
class SplitReport:
    rows: int = 0
    malformed_skipped: int = 0
    labels_stripped: int = 0
    first_skipped: list[str] = field(default_factory=list)


def _header_word(value) -> bool:
    return isinstance(value, str) and value.strip().lower().replace(" ", "_").replace("-", "_") in HEADER_WORDS


class Dictionary:
    """Label → dense id. Ids are given block by block, deterministically (shard by shard, first appearance
    within a shard). The labels are split into ``shards`` by a cheap function of their last bytes, so that
    that many threads hash disjoint parts of the dictionary and of each block at once (pyarrow's kernels
    release the GIL): the per-block rebuild of the dictionary's hash table — pyarrow keeps none between
    calls — and the probes are divided among the cores."""

    def __init__(self, shards: int = 1):
        self.shards = max(1, shards)
        self.labels = [pa.array([], pa.large_string()) for _ in range(self.shards)]
        self.ids = [np.zeros(0, np.int64) for _ in range(self.shards)]
        self.size = 0
        self.pool = ThreadPoolExecutor(self.shards) if self.shards > 1 else None

    def __len__(self) -> int:
        return self.size

    def shard_of(self, values: pa.Array) -> np.ndarray:
        """A label's shard from its last two bytes and its length, read straight from the Arrow buffers."""
        offsets = np.frombuffer(values.buffers()[1], np.int64)[values.offset:values.offset + len(values) + 1]
        data = np.frombuffer(values.buffers()[2], np.uint8)
        last = data[offsets[1:] - 1].astype(np.int64)
        before = data[np.maximum(offsets[1:] - 2, offsets[:-1])].astype(np.int64)
        return (last * 31 + before * 7 + np.diff(offsets)) % self.shards

    def encode(self, values: pa.Array) -> np.ndarray:
        """Ids of ``values`` (large_string, no nulls); unseen labels get the next ids."""
        if self.shards == 1:
            return self._resolve(0, values, *self._lookup(0, values))
        shard = self.shard_of(values)
        order = np.argsort(shard, kind="stable")
        bounds = np.concatenate([[0], np.cumsum(np.bincount(shard, minlength=self.shards))])
        parts = [values.take(pa.array(order[bounds[s]:bounds[s + 1]])) for s in range(self.shards)]
        found = list(self.pool.map(lambda s: self._lookup(s, parts[s]), range(self.shards)))
        ids = np.empty(len(values), np.int64)
        for s, (local, missing) in enumerate(found):
            ids[order[bounds[s]:bounds[s + 1]]] = self._resolve(s, parts[s], local, missing)
        return ids

    def _lookup(self, s: int, values: pa.Array) -> tuple[np.ndarray, np.ndarray]:
        local = pc.index_in(values, value_set=self.labels[s]).fill_null(-1)
        local = local.to_numpy(zero_copy_only=False).astype(np.int64)
        return local, local < 0

    def _resolve(self, s: int, values: pa.Array, local: np.ndarray, missing: np.ndarray) -> np.ndarray:
        """Global ids of one shard's values; unseen labels are appended (one hash pass over them only)."""
        ids = self.ids[s][np.where(missing, 0, local)] if len(self.ids[s]) else np.zeros(len(local), np.int64)
        if missing.any():
            encoded = pc.dictionary_encode(values.filter(pa.array(missing)))
            new_ids = self.size + np.arange(len(encoded.dictionary), dtype=np.int64)
            ids[missing] = new_ids[encoded.indices.to_numpy(zero_copy_only=False)]
            self.labels[s] = pa.concat_arrays([self.labels[s], encoded.dictionary.cast(pa.large_string())])
            self.ids[s] = np.concatenate([self.ids[s], new_ids])
            self.size += len(new_ids)
        return ids

    def names(self) -> pa.Array:
        """Labels in id order."""
        labels = pa.concat_arrays(self.labels)
        return labels.take(pa.array(np.argsort(np.concatenate(self.ids), kind="stable")))

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()


MAX_RECORD_BYTES = 1 << 20      # one line of a triple table at most (three labels)


def _cut(data: bytes, quoted: bool) -> int:
    """Length of the longest prefix of ``data`` ending at a record end: the last newline, or with quoting
    the last newline outside quotes (an even number of quote characters before it — RFC 4180 doubles
    quotes inside fields, so parity tells inside from outside)."""
    if not quoted:
        return data.rfind(NEWLINE) + 1
    buf = np.frombuffer(data, np.uint8)
    newlines = np.flatnonzero(buf == 10)
    quotes = np.flatnonzero(buf == 34)
    outside = newlines[np.searchsorted(quotes, newlines) % 2 == 0]
    return int(outside[-1]) + 1 if len(outside) else 0


def _blocks(url: str, block_bytes: int, quoted: bool = False):
    """(first line number, bytes ending at a record end) over a possibly compressed file at any URL."""
    check_reachable(url)
    try:
        fh = fsspec.open(url, "rb", compression="infer").open()
    except FileNotFoundError:
        raise DataError(f"{url}: file not found")
    except Exception as exc:       # fsspec raises backend-specific errors for unreachable URLs
        raise DataError(f"{url}: cannot open ({type(exc).__name__}: {exc})")
    line, rest = 1, b""
    with fh:
        while True:
            try:
                chunk = fh.read(block_bytes)
            except (EOFError, OSError) as exc:     # truncated gzip/bz2/xz streams end here
                last = line + rest.count(NEWLINE)
                raise DataError(f"{url}: unreadable after line {last} — truncated or "
                                f"corrupt ({type(exc).__name__}: {exc})")
            if not chunk:
                break
            data = rest + chunk
            cut = _cut(data, quoted)
            if cut == 0:
                if len(data) > max(block_bytes, MAX_RECORD_BYTES):   # memory stays bounded on any input
                    raise DataError(f"{url}: line {line}: over {max(block_bytes, MAX_RECORD_BYTES) >> 20} MiB "
                                    f"without a line end{' outside quotes' if quoted else ''} — not a text table "
                                    f"of triples (a binary file, or an unclosed quote?)")
                rest = data
                continue
            yield line, data[:cut]
            line += data.count(NEWLINE, 0, cut)
            rest = data[cut:]
    if rest.strip():
        yield line, rest + NEWLINE


class TripleTextReader:
    """Parses byte blocks of one file into (head, relation, tail) label arrays."""

    def __init__(self, url: str, layout: TextLayout, report: SplitReport):
        self.url, self.layout, self.report = url, layout, report
        missing = [r for r in ROLES if r not in layout.columns]
        if missing or len(set(layout.columns) - {"_"}) != 3:
            raise DataError(f"columns {','.join(layout.columns)}: expected head, relation and tail once each "
                            "('_' ignores a field)")
        self.names = [c if c != "_" else f"_{i}" for i, c in enumerate(layout.columns)]
        self.delimiter = layout.delimiter_for(url)
        self.quoted = self.delimiter == ","

    def __iter__(self):
        for first_line, block in _blocks(self.url, BLOCK_BYTES, self.quoted):
            skip_header = self.layout.header and first_line == 1
            yield self._parse(first_line, block, skip_header)

    def _parse(self, first_line: int, block: bytes, skip_header: bool) -> tuple[pa.Array, pa.Array, pa.Array]:
        bad: list[str] = []

        def on_invalid(row) -> str:
            bad.append(row.text)
            return "skip" if self.layout.skip_malformed else "error"

        read = pacsv.ReadOptions(column_names=self.names, skip_rows=1 if skip_header else 0,
                                 block_size=1 << 24)
        parse = pacsv.ParseOptions(delimiter=self.delimiter, quote_char='"' if self.quoted else False,
                                   newlines_in_values=self.quoted,
                                   invalid_row_handler=on_invalid)
        convert = pacsv.ConvertOptions(column_types={n: pa.large_string() for n in self.names},
                                       include_columns=[n for n in self.names if not n.startswith("_")])
        try:
            table = pacsv.read_csv(io.BytesIO(block), read, parse, convert)
        except pa.ArrowInvalid as exc:
            where = self._line_of(block, first_line, bad[0]) if bad else f"block from line {first_line}"
            raise DataError(f"{self.url}: {where}: malformed row ({exc}); expected {len(self.names)} fields "
                            f"separated by {self.delimiter!r} ({','.join(self.layout.columns)})")
        if bad:
            self.report.malformed_skipped += len(bad)
            for text in bad[:max(0, 5 - len(self.report.first_skipped))]:
                self.report.first_skipped.append(f"{self._line_of(block, first_line, text)}: {text[:200]!r}")
        cols = tuple(table.column(role).combine_chunks() for role in ROLES)
        where = self._where(first_line, skip_header,
                            exact=not bad and block.count(NEWLINE) == table.num_rows + int(skip_header))
        if first_line == 1 and not self.layout.header and self.layout.check_header and table.num_rows:
            first = [col[0].as_py() for col in cols]
            if all(_header_word(v) for v in first):
                raise DataError(f"{self.url}: line 1 {first} looks like a header; pass --header if it is one, "
                                f"or --no-header if it is data")
        checked = []
        for role, col in zip(ROLES, cols):
            empty = pc.equal(pc.utf8_length(col), 0)
            if pc.any(empty).as_py():
                row = int(np.flatnonzero(empty.to_numpy(zero_copy_only=False))[0])
                raise DataError(f"{self.url}: {where(row)}: empty {role} label")
            trimmed = pc.utf8_trim_whitespace(col)
            spaced = pc.not_equal(trimmed, col)
            if pc.any(spaced).as_py():
                row = int(np.flatnonzero(spaced.to_numpy(zero_copy_only=False))[0])
                if not self.layout.strip_labels:
                    raise DataError(f"{self.url}: {where(row)}: {role} label {col[row].as_py()!r} has surrounding "
                                    f"whitespace; fix the file or pass --strip-labels (stripped labels are counted)")
                self.report.labels_stripped += int(pc.sum(spaced).as_py())
                if pc.any(pc.equal(pc.utf8_length(trimmed), 0)).as_py():
                    row = int(np.flatnonzero(pc.equal(pc.utf8_length(trimmed), 0).to_numpy(zero_copy_only=False))[0])
                    raise DataError(f"{self.url}: {where(row)}: {role} label is only whitespace")
                col = trimmed
            checked.append(col)
        self.report.rows += table.num_rows
        return tuple(checked)

    @staticmethod
    def _where(first_line: int, skip_header: bool, exact: bool):
        """Row of a block → 'line N' (exact when no row of the block was skipped and no field spans lines)."""
        if exact:
            return lambda row: f"line {first_line + int(skip_header) + row}"
        return lambda row: f"data row {row + 1} of the block from line {first_line}"

    @staticmethod
    def _line_of(block: bytes, first_line: int, text: str) -> str:
        at = block.find(text.encode())
        return f"line {first_line + block.count(NEWLINE, 0, at)}" if at >= 0 else f"block from line {first_line}"


def convert_triples(out_dir: str, sources: dict[str, str], layout: TextLayout | None = None,
                    name: str | None = None, progress: bool = True, row_group_rows: int = ROW_GROUP_ROWS,
                    overwrite: bool = False) -> dict:
    """Labeled triple files {split: url} → dataset at ``out_dir`` (crash-safe, ownership rule of outputs.py).
    Returns the manifest."""
    layout = layout or TextLayout()
    if "train" not in sources:
        raise DataError("no training triples given (--train)")
    name = name or os.path.basename(os.path.abspath(out_dir))
    return build_dataset_folder(out_dir, tuple(sources.values()), overwrite,
                                lambda root: _convert_into(root, sources, layout, name, progress, row_group_rows))


def _convert_into(root: str, sources: dict[str, str], layout: TextLayout, name: str, progress: bool,
                  row_group_rows: int) -> dict:
    entities, relations = Dictionary(shards=min(8, os.cpu_count() or 1)), Dictionary()
    stats = TripleStatistics()
    splits, reports = {}, {}
    kept: dict[str, list[np.ndarray]] = {}          # id triples for the duplicate/overlap checks (bounded)
    kept_rows = 0
    started = time.time()
    bar = tqdm(desc="convert", unit="edge", unit_scale=True, disable=not progress, dynamic_ncols=True)
    try:
        for split in ("train", "valid", "test"):
            if split not in sources:
                continue
            report = reports[split] = SplitReport()
            writer = TripleWriter(root, split, row_group_rows)

            kept[split] = []

            def consume(ids: np.ndarray, train: bool = split == "train", mine: list = kept[split]) -> None:
                nonlocal kept_rows
                if train:
                    stats.update(ids)
                writer.write(ids)
                kept_rows += len(ids)
                if kept_rows <= CHECK_ROWS:
                    mine.append(ids.astype(np.int32) if ids.max(initial=0) < (1 << 31) else ids)
                else:                   # over the budget: the checks are skipped, so free what was kept
                    for held in kept.values():
                        held.clear()

            # Two stages overlap (numpy, pyarrow and Parquet release the GIL): this thread parses and encodes
            # block i+1 while a worker counts and writes block i. One block in flight bounds memory.
            with ThreadPoolExecutor(1) as worker:
                pending = None
                for heads, rels, tails in TripleTextReader(sources[split], layout, report):
                    ends = entities.encode(pa.concat_arrays([heads, tails]))
                    ids = np.empty((len(heads), 3), np.int64)
                    ids[:, 0], ids[:, 2] = ends[:len(heads)], ends[len(heads):]
                    ids[:, 1] = relations.encode(rels)
                    if pending is not None:
                        pending.result()
                    pending = worker.submit(consume, ids)
                    bar.update(len(ids))
                if pending is not None:
                    pending.result()
            files = writer.close()
            if writer.rows == 0:
                raise DataError(f"{sources[split]}: no triples ({_why_empty(report, layout)}); expected lines of "
                                f"{','.join(layout.columns)} separated by {layout.delimiter_for(sources[split])!r}")
            splits[split] = {"rows": writer.rows, "files": files}
    finally:
        bar.close()        # before any error line, so the message starts a line of its own
    entities.close()
    n, r = len(entities), len(relations)
    checks = SplitChecks(checked=False)
    relation_table, counted = stats.relation_table(r), f"exact up to {SKETCH_SIZE}, KMV estimate above"
    if kept_rows <= CHECK_ROWS:
        names = entities.names(), relations.names()
        held = {s: np.concatenate(v) for s, v in kept.items()}
        checks = check_splits(held, sources, layout.allow_duplicates, layout.allow_overlap,
                              describe=lambda row: _labels(row, *names))
        # The ids are at hand: count distinct heads/tails exactly instead of estimating them.
        relation_table, counted = exact_relation_table(held["train"].astype(np.int64), r), "exact"
    else:
        log.warning("duplicate and overlap checks skipped: %d rows exceed the %d-row check budget", kept_rows,
                    CHECK_ROWS)
    write_name_tables(root, {"id": pa.array(np.arange(n, dtype=np.int64)), "name": entities.names(),
                             "degree": pa.array(stats.degrees(n))}, relations.names(), relation_table)
    seconds = time.time() - started
    return manifest_record(
        name, dict(sources), n, r, splits, {},
        statistics={"from_split": "train", "distinct_per_relation": counted},
        checks=checks.as_manifest(),
        conversion={split: {"rows": rep.rows, "malformed_skipped": rep.malformed_skipped,
                            "labels_stripped": rep.labels_stripped,
                            "first_skipped": rep.first_skipped} for split, rep in reports.items()}
        | {"seconds": round(seconds, 2)})


def _why_empty(report: SplitReport, layout: TextLayout) -> str:
    if report.malformed_skipped:
        return f"all {report.malformed_skipped} rows were malformed and skipped"
    return "the file is empty or holds only a header" if layout.header else "the file is empty"


def _labels(row: np.ndarray, entity_names, relation_names) -> str:
    h, r, t = (int(v) for v in row)
    return f"{entity_names[h].as_py()} {relation_names[r].as_py()} {entity_names[t].as_py()}"
