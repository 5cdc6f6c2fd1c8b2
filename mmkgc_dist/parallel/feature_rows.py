"""Sparse modality tables: a modality's table holds a row (and optimizer state) only for the entities that have
the feature. At 20% image coverage a dense table would be 80% zeros that are never read: the fusion masks an
absent modality out (model/fusion.py), so its row can neither reach a score nor receive a gradient.

Layout. Entities are owned in contiguous blocks of ``owner_block(N, world)`` ids (the owner-computes fusion,
embedder.py). Block ``b``'s present entities take rows ``b·M … b·M + count_b − 1`` of a table of ``world·M`` rows,
M the largest block count (at least 1), so TorchRec's row-wise sharding of that table in ``world`` equal blocks
puts every owner's rows on the owner; the rows past ``count_b`` are padding, never looked up. One process is one
block: the present rows in id order, then one zero row that the entities without the feature look up
(local_tables.py: a lookup then needs no host wait to find who has it).

Checkpoints hold the canonical table at every world size: the present rows in id order, ``[P, width]``
(``canonical_spans``), so a run saved on N ranks resumes on M and back.

A sharded lookup asks the table for present entities only and returns zeros for the others
(``scatter_present``): the optimizers then touch exactly the rows that have a gradient, as they would in a dense
table. (The one-process zero row gets an exactly zero gradient — the fusion masks an absent modality — so it
stays zero and moves no other row.)
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..data.extraction import owner_block

READ_SPAN = 1 << 16        # ids read from a feature file at once while a table is filled


class SparseRows:
    """Where each entity's row of one modality's table lives (see the module's docstring)."""

    def __init__(self, present: np.ndarray, world: int):
        self.present = present
        self.num_entities, self.world = len(present), world
        self.block = owner_block(self.num_entities, world)
        self.starts = [min(r * self.block, self.num_entities) for r in range(world + 1)]
        self.counts = [int(np.count_nonzero(present[self.starts[r]:self.starts[r + 1]])) for r in range(world)]
        self.prefix = np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64)
        self.total = int(self.prefix[-1])
        self.rows_per_block = max(max(self.counts, default=0), 1)
        self.table_rows = world * self.rows_per_block
        self._cumulative: Tensor | None = None
        self._block_ids: tuple[int, np.ndarray] | None = None

    def block_rows(self, rank: int) -> Tensor:
        """int32 [ids owned by ``rank``]: each owned entity's row within the owner's block, −1 where absent."""
        present = self.present[self.starts[rank]:self.starts[rank + 1]]
        rows = np.cumsum(present, dtype=np.int64) - 1
        rows[~present] = -1
        return torch.from_numpy(rows.astype(np.int32))

    def table_rows_of(self, ids: Tensor) -> Tensor:
        """Rows in the padded table of the present entities ``ids`` (any owner; TorchRec's own lookup path).
        The cumulative count it reads is built on first use: the owners' layout never asks."""
        if self._cumulative is None:
            self._cumulative = torch.from_numpy(np.cumsum(self.present, dtype=np.int64))
        owner = ids // self.block
        return owner * self.rows_per_block + self._cumulative[ids] - 1 - torch.from_numpy(self.prefix)[owner]

    def _present_ids(self, block: int) -> np.ndarray:
        """Ids of block ``block``'s present entities (the last block's kept: a shard's fill asks for one block
        many times)."""
        if self._block_ids is None or self._block_ids[0] != block:
            lo, hi = self.starts[block], self.starts[block + 1]
            self._block_ids = (block, lo + np.flatnonzero(self.present[lo:hi]))
        return self._block_ids[1]

    def padded_values(self, read_rows, span: int = READ_SPAN):
        """``rows(g0, g1)`` of the padded table from ``read_rows(lo, hi)``, a reader of the dense feature rows
        of ids [lo, hi) (a ``Features``' rows: the file is read at most ``span`` ids at a time, never whole)."""
        def rows(g0: int, g1: int) -> Tensor:
            out = torch.zeros(g1 - g0, 0)
            for start, stop, _ in self.canonical_spans(g0, g1 - g0):
                block = (g0 + start) // self.rows_per_block
                first = g0 + start - block * self.rows_per_block
                ids = self._present_ids(block)[first:first + stop - start]
                at = 0
                while at < len(ids):
                    end = int(np.searchsorted(ids, ids[at] + span))
                    values = np.asarray(read_rows(int(ids[at]), int(ids[end - 1]) + 1))[ids[at:end] - ids[at]]
                    if not out.shape[1]:
                        out = torch.zeros(g1 - g0, values.shape[1])
                    out[start + at:start + end] = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))
                    at = end
            return out
        return rows

    def canonical_spans(self, first: int, count: int) -> list[tuple[int, int, int]]:
        """(start, stop, canonical row) of the rows of padded rows [first, first + count) that hold an entity:
        positions relative to ``first``, and the row of ``start`` in the canonical table."""
        spans, m = [], self.rows_per_block
        for b in range(first // m, (first + count - 1) // m + 1) if count else ():
            lo, hi = max(first, b * m), min(first + count, b * m + self.counts[b])
            if hi > lo:
                spans.append((lo - first, hi - first, int(self.prefix[b]) + lo - b * m))
        return spans


def scatter_present(count: int, hit: Tensor, rows: Tensor) -> Tensor:
    """[count, width] float rows: ``rows`` at positions ``hit``, zeros elsewhere (differentiable in ``rows``)."""
    out = torch.zeros(count, rows.shape[1], dtype=torch.float32, device=rows.device)
    return out.index_copy(0, hit, rows.float())
