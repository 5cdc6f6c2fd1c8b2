"""Rank-sharded streaming of a triple split from Parquet at any fsspec URL, in memory bounded by the shuffle
window (never by the number of edges).

One epoch, seen from every rank at once:
1. the split's row groups are put in an order drawn from (seed, epoch) and laid end to end;
2. that sequence of E rows is cut into ``world`` contiguous ranges of E/world rows (±1), one per rank, so
   every rank gets the same number of steps and each edge belongs to exactly one rank — ranges follow row
   groups except at the W-1 cuts, where a group is split between two neighbours;
3. a rank walks its range in windows of whole row-group pieces holding at least ``window_rows`` rows; each
   window is read by ``workers`` threads (disjoint pieces; pyarrow decodes outside the GIL) and permuted
   with a generator seeded by (seed, epoch, rank, window) — the bounded shuffle buffer;
4. the rank's N rows are dealt out as B = ceil(max_rank_rows / batch_size) batches, batch i holding rows
   [floor(i·N/B), floor((i+1)·N/B)) — all ranks take B steps, nothing is dropped or repeated.

Because every step of this is a pure function of (seed, epoch, rank, world), the cursor (epoch, batch) is
the whole loader state: ``state_dict`` is two integers and a resumed loader re-reads only the window that
holds its next batch. Windows are prefetched by a background thread.
"""
from __future__ import annotations

import os
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import fsspec
import fsspec.implementations.local
import numpy as np
import pyarrow.parquet as pq

from ..rng import numpy_rng
from ..errors import DataError
from .remote import remote_faults
from .format import TRIPLE_SCHEMA, _join, dataset_identity, first_null, read_manifest, recorded_path


@dataclass(frozen=True)
class RowGroup:
    file: str
    index: int          # row group within the file
    rows: int
    bytes: int | None = None     # the file's size the manifest records (checked before each local read)


@dataclass(frozen=True)
class Piece:
    group: RowGroup
    start: int          # rows [start, stop) of the group
    stop: int


def row_groups(root: str, manifest: dict, split: str) -> list[RowGroup]:
    """Row groups of a split from the Parquet footers only (no data read); checks schema and row count."""
    groups = []
    for rel in manifest["splits"][split]["files"]:
        path = recorded_path(root, manifest, rel)
        try:
            with remote_faults(path), fsspec.open(path, "rb") as fh:
                meta = pq.ParquetFile(fh).metadata
                schema = meta.schema.to_arrow_schema()
        except DataError:
            raise
        except FileNotFoundError:
            raise DataError(f"{path}: file listed in the manifest is missing")
        except Exception as exc:
            raise DataError(f"{path}: not a readable Parquet file ({type(exc).__name__}: {exc})")
        if not schema.equals(TRIPLE_SCHEMA):
            raise DataError(f"{path}: schema {schema.to_string()!r} differs from the expected "
                            "head:int64, relation:int64, tail:int64")
        size = ((manifest.get("files") or {}).get(rel) or {}).get("bytes")
        groups += [RowGroup(path, i, meta.row_group(i).num_rows, size) for i in range(meta.num_row_groups)]
    total = sum(g.rows for g in groups)
    if total != manifest["splits"][split]["rows"]:
        raise DataError(f"{_join(root, 'manifest.json')}: split {split!r} declares "
                        f"{manifest['splits'][split]['rows']} rows, its row groups hold {total}")
    return groups


def _local_size(path: str) -> int | None:
    """A local file's size (None for a remote URL: its size is checked when the loader starts)."""
    fs, local_path = fsspec.core.url_to_fs(path)
    if not isinstance(fs, fsspec.implementations.local.LocalFileSystem):
        return None
    try:
        return os.path.getsize(local_path)
    except OSError:
        return -1


class StreamingTriples:
    def __init__(self, root: str, split: str = "train", *, rank: int = 0, world_size: int = 1,
                 batch_size: int = 1024, seed: int = 0, window_rows: int = 1 << 20, workers: int = 2,
                 prefetch: int = 1, shuffle: bool = True, manifest: dict | None = None):
        self.root, self.split = root, split
        self.rank, self.world = rank, world_size
        self.batch_size, self.seed, self.window_rows = batch_size, seed, window_rows
        self.workers, self.prefetch, self.shuffle = max(1, workers), prefetch, shuffle
        self.manifest = manifest or read_manifest(root)
        self.identity = dataset_identity(self.manifest)
        self.groups = row_groups(root, self.manifest, split)
        self.total_rows = sum(g.rows for g in self.groups)
        self.epoch, self.batch = 0, 0

    # ----------------------------------------------------------------------------- the epoch plan
    def rank_rows(self, rank: int) -> int:
        bounds = self._bounds()
        return int(bounds[rank + 1] - bounds[rank])

    def _bounds(self) -> np.ndarray:
        return np.arange(self.world + 1) * self.total_rows // self.world

    @property
    def batches_per_epoch(self) -> int:
        """The same on every rank: enough batches for the largest rank range."""
        return -(-max(self.rank_rows(r) for r in range(self.world)) // self.batch_size) if self.total_rows else 0

    def group_order(self, epoch: int) -> list[RowGroup]:
        if not self.shuffle:
            return list(self.groups)
        order = numpy_rng(self.seed, "stream_groups", epoch).permutation(len(self.groups))
        return [self.groups[i] for i in order]

    def pieces(self, epoch: int) -> list[Piece]:
        """This rank's range of the epoch's row sequence, as row-group pieces in order."""
        lo, hi = self._bounds()[self.rank], self._bounds()[self.rank + 1]
        out, offset = [], 0
        for g in self.group_order(epoch):
            a, b = max(lo - offset, 0), min(hi - offset, g.rows)
            # a row group larger than the window is read in window-sized pieces: memory follows
            # shuffle_window_rows, never the file's row-group size
            out += [Piece(g, int(s), int(min(s + self.window_rows, b))) for s in range(a, b, self.window_rows)]
            offset += g.rows
            if offset >= hi:
                break
        return out

    def windows(self, epoch: int) -> list[list[Piece]]:
        """Consecutive pieces packed into windows of at most window_rows rows (no piece is larger), so the
        window buffers have one size for any edge count and any row-group size."""
        out, current, rows = [], [], 0
        for p in self.pieces(epoch):
            size = p.stop - p.start
            if current and rows + size > self.window_rows:
                out.append(current)
                current, rows = [], 0
            current.append(p)
            rows += size
        if current:
            out.append(current)
        return out

    def batch_share(self, index: int) -> float:
        """This rank's fraction of the rows all ranks take at batch ``index`` (0 when it holds none)."""
        b = self.batches_per_epoch
        sizes = [(index + 1) * n // b - index * n // b for n in map(self.rank_rows, range(self.world))]
        return sizes[self.rank] / sum(sizes) if sum(sizes) else 0.0

    def batch_bounds(self) -> np.ndarray:
        """Row offsets of this rank's batches within its range (B + 1 values)."""
        n, b = self.rank_rows(self.rank), self.batches_per_epoch
        return np.arange(b + 1) * n // max(b, 1)

    # ----------------------------------------------------------------------------- reading
    def check_unchanged(self) -> None:
        """Before each window: the dataset is still the version the stream started on (a ``prepare --overwrite``
        mid-run would otherwise switch the run to other part files)."""
        now = dataset_identity(read_manifest(self.root))
        if now != self.identity:
            raise DataError(f"{self.root}: the dataset changed while it was being streamed (identity "
                            f"{self.identity[:12]} at the start, {now[:12]} now); the run stops here — resume it "
                            f"with the version it trained on, or start a new run")

    @staticmethod
    def _read_group(path: str, index: int):
        """One row group. The file is opened per read, not cached: a cached reader keeps its last row
        group's buffers, which made memory grow with the number of part files (measured: +100 MiB at 10)."""
        fs, local_path = fsspec.core.url_to_fs(path)
        if isinstance(fs, fsspec.implementations.local.LocalFileSystem):
            source = local_path          # pyarrow's native reader: positional reads, no Python in the loop
            with pq.ParquetFile(source) as reader:
                return reader.read_row_group(index)
        with fs.open(local_path, "rb") as fh, pq.ParquetFile(fh) as reader:
            return reader.read_row_group(index)

    @staticmethod
    def _read_rows(path: str, index: int, start: int, stop: int, batch_rows: int = 1 << 16):
        """Rows [start, stop) of one row group, streamed in record batches through a buffered reader: memory is
        a batch and the piece, not the row group (for groups larger than the shuffle window)."""
        import pyarrow as pa

        fs, local_path = fsspec.core.url_to_fs(path)
        local = isinstance(fs, fsspec.implementations.local.LocalFileSystem)
        with (open(local_path, "rb") if local else fs.open(local_path, "rb")) as fh, \
                pq.ParquetFile(fh, buffer_size=1 << 20, pre_buffer=False) as reader:    # pages, not the chunk
            parts, seen = [], 0
            for batch in reader.iter_batches(batch_size=batch_rows, row_groups=[index], use_threads=False):
                lo, hi = max(start - seen, 0), min(stop - seen, len(batch))
                if lo < hi:
                    parts.append(batch.slice(lo, hi - lo))
                seen += len(batch)
                if seen >= stop:
                    break
            return pa.Table.from_batches(parts, schema=TRIPLE_SCHEMA) if parts else TRIPLE_SCHEMA.empty_table()

    def _read_piece(self, piece: Piece, out: np.ndarray) -> None:
        """Rows of one piece, written straight into its slice of the window (no intermediate copies)."""
        g = piece.group
        whole = g.rows <= self.window_rows          # the usual case: one read of the group, sliced below
        if g.bytes is not None and _local_size(g.file) not in (None, g.bytes):    # a stat: free on a local disk
            raise DataError(f"{g.file}: {_local_size(g.file)} bytes, the manifest records {g.bytes} — the part "
                            f"file was replaced or cut short while the run streamed it; the run stops here")
        try:
            table = self._read_group(g.file, g.index) if whole else \
                self._read_rows(g.file, g.index, piece.start, piece.stop)
        except Exception as exc:
            raise DataError(f"{g.file}: row group {g.index} unreadable ({type(exc).__name__}: {exc})")
        expected = g.rows if whole else piece.stop - piece.start
        if table.num_rows != expected:
            raise DataError(f"{g.file}: row group {g.index} holds {table.num_rows if whole else 'fewer'} rows, "
                            f"footer says {g.rows}")
        first = piece.start if whole else 0         # the piece's first row within ``table``
        limits = (self.manifest["num_entities"], self.manifest["num_relations"], self.manifest["num_entities"])
        for c, name in enumerate(("head", "relation", "tail")):
            if (row := first_null(table.column(name))) is not None:
                raise DataError(f"{g.file}: row group {g.index}, row {row + (0 if whole else piece.start)}: {name} "
                                f"is null; every triple needs three ids")
            column = table.column(name).to_numpy()[first:first + piece.stop - piece.start]
            bad = np.flatnonzero((column < 0) | (column >= limits[c]))
            if len(bad):
                row = piece.start + int(bad[0])
                raise DataError(f"{g.file}: row group {g.index}, row {row}: {name} id {column[bad[0]]} out of range "
                                f"[0, {limits[c]}) ({len(bad)} such rows in this piece)")
            out[:, c] = column

    def _load_window(self, pool: ThreadPoolExecutor, epoch: int, index: int, pieces: list[Piece],
                     buffers: "WindowBuffers", out: np.ndarray) -> np.ndarray:
        """Read a window's pieces in parallel and permute its rows into ``out`` (preallocated, reused)."""
        offsets = np.concatenate([[0], np.cumsum([p.stop - p.start for p in pieces])])
        n = int(offsets[-1])
        rows = buffers.staging[:n] if self.shuffle else out[:n]
        list(pool.map(lambda i: self._read_piece(pieces[i], rows[offsets[i]:offsets[i + 1]]), range(len(pieces))))
        if self.shuffle:
            order = buffers.order[:n]
            np.copyto(order, buffers.identity[:n])
            numpy_rng(self.seed, "stream_window", epoch, self.rank, index).shuffle(order)
            np.take(rows, order, axis=0, out=out[:n])
        return out[:n]

    # ----------------------------------------------------------------------------- iteration
    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])

    def __iter__(self):
        """Batches of the current epoch from the cursor on; the cursor advances as batches are taken."""
        bounds = self.batch_bounds()
        windows = self.windows(self.epoch)
        sizes = np.array([sum(p.stop - p.start for p in w) for w in windows], np.int64)
        starts = np.concatenate([[0], np.cumsum(sizes)])
        if self.batch >= self.batches_per_epoch:
            return
        first_row = bounds[self.batch]
        first_window = int(np.searchsorted(starts, first_row, side="right") - 1)
        epoch = self.epoch
        carry, carry_start = np.zeros((0, 3), np.int64), first_row     # rows [carry_start, window start): < 1 batch
        for index, rows, window_start in self._prefetched(epoch, windows, starts, first_window):
            if index == first_window:
                rows, window_start = rows[first_row - window_start:], first_row
            window_end = window_start + len(rows)
            while self.batch < len(bounds) - 1 and bounds[self.batch + 1] <= window_end:
                lo, hi = bounds[self.batch], bounds[self.batch + 1]
                if lo < window_start:           # the batch began in an earlier window
                    batch = np.concatenate([carry[lo - carry_start:], rows[:hi - window_start]])
                else:                           # a copy: the window's buffer is reused
                    batch = rows[lo - window_start:hi - window_start].copy()
                self.batch += 1
                yield batch
            lo = bounds[self.batch]
            carry = np.concatenate([carry[max(lo - carry_start, 0):] if lo < window_start else carry[:0],
                                    rows[max(lo - window_start, 0):]])
            carry_start = lo
        while self.batch < self.batches_per_epoch:     # a rank with fewer rows than batches: empty ones at the end
            self.batch += 1
            yield np.zeros((0, 3), np.int64)
        if self.batch >= self.batches_per_epoch:
            self.epoch, self.batch = epoch + 1, 0

    def _prefetched(self, epoch: int, windows, starts, first: int):
        """(index, permuted rows, first row offset) of each window from ``first``, read ahead in a thread.

        At most ``prefetch`` windows exist besides the one being consumed: the producer takes one of
        prefetch + 1 fixed buffers before reading, so memory is fixed whatever the edge count."""
        todo = list(range(first, len(windows)))
        if not todo:
            return
        sizes = np.diff(starts)
        buffers = WindowBuffers(int(sizes[first:].max()), self.prefetch + 1)
        out: queue.Queue = queue.Queue()
        stop = threading.Event()

        def produce():
            with ThreadPoolExecutor(self.workers) as pool:
                for i in todo:
                    slot = buffers.free.get()          # blocks while prefetch + 1 windows are alive
                    if stop.is_set():
                        return
                    try:
                        self.check_unchanged()
                        rows = self._load_window(pool, epoch, i, windows[i], buffers, buffers.slots[slot])
                        out.put((i, rows, int(starts[i]), slot))
                    except BaseException as exc:      # hand errors to the consumer
                        out.put(exc)
                        return

        thread = threading.Thread(target=produce, name="triple-prefetch", daemon=True)
        thread.start()
        try:
            for _ in todo:
                item = out.get()
                if isinstance(item, BaseException):
                    raise item
                index, rows, start, slot = item
                yield index, rows, start
                del item, rows
                buffers.free.put(slot)                # the consumer is done with that window
        finally:
            stop.set()
            buffers.free.put(-1)
            thread.join()


class WindowBuffers:
    """Fixed buffers for the windows in flight, reused all epoch: steady allocation-free streaming (fresh
    24 MB arrays per window fragment glibc's heap across threads and RSS creeps up)."""

    def __init__(self, capacity: int, count: int):
        self.slots = [np.empty((capacity, 3), np.int64) for _ in range(count)]
        self.staging = np.empty((capacity, 3), np.int64)
        self.order = np.empty(capacity, np.int64)
        self.identity = np.arange(capacity, dtype=np.int64)
        self.free: queue.Queue = queue.Queue()
        for i in range(count):
            self.free.put(i)

def rows_answering(root: str, split: str, queries: np.ndarray, num_relations: int, *, rank: int = 0,
                   world_size: int = 1, manifest: dict | None = None) -> np.ndarray:
    """Rows of ``split`` sharing (head, relation) or (tail, relation) with a query triple — all that filtered
    ranking of those queries needs from a split too large to hold, found in one streaming pass over this
    rank's share of the row groups."""
    tail_keys = np.unique(queries[:, 0] * num_relations + queries[:, 1])
    head_keys = np.unique(queries[:, 2] * num_relations + queries[:, 1])
    loader = StreamingTriples(root, split, rank=rank, world_size=world_size, batch_size=1 << 20, shuffle=False,
                              manifest=manifest)
    import pandas as pd               # a hash lookup per row: np.isin sorts every batch (minutes at 10^9 rows)
    tail_index, head_index = pd.Index(tail_keys), pd.Index(head_keys)
    found = [np.zeros((0, 3), np.int64)]
    for rows in loader:
        keep = (tail_index.get_indexer(rows[:, 0] * num_relations + rows[:, 1]) >= 0) | \
            (head_index.get_indexer(rows[:, 2] * num_relations + rows[:, 1]) >= 0)
        found.append(rows[keep])
    return np.concatenate(found)
