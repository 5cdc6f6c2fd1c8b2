"""Every random stream of the project, by name, in one place.

A stream is a pure function of (train.seed, its name, its counters) — never of call order, world size or
which process asks — so one process and N ranks draw the same numbers, and a resumed run draws what the
uninterrupted one would have:

    epoch_order       (epoch)                          permutation of the in-memory training triples
    negatives         (epoch, batch[, rank], round, part)  corruption sides and corrupting entities of a batch:
                                                       counter-based on the training device (``counter_bits``),
                                                       one counter per global position, so each rank draws only
                                                       its own slice and any world size draws the same values
    stream_groups     (epoch)                          order of a streamed split's row groups
    stream_window     (epoch, rank, window)            the bounded shuffle of a streamed window
    eval_subset       ()                               the seeded sample of eval.max_queries triples
    eval_candidates   (direction, chunk)               candidates of the sampled evaluation protocol
    entity_init, relation_init   (row block)           initial table rows (counter-based, see uniform_rows)
    dense_init, generator_init   ()                    torch's global RNG while the dense modules are built
    generator_noise   (rank)                           torch's global RNG during training (MAT noise)
"""
from __future__ import annotations

import numpy as np

STREAMS = {"epoch_order": 1, "negatives": 2, "stream_groups": 3, "stream_window": 4, "eval_subset": 5,
           "eval_candidates": 6, "entity_init": 7, "relation_init": 8, "dense_init": 9, "generator_init": 10,
           "generator_noise": 11}
ROW_BLOCK = 4096          # rows drawn per Philox counter block of the table initialisation


def numpy_rng(seed: int, stream: str, *counters: int) -> np.random.Generator:
    return np.random.default_rng([seed, STREAMS[stream], *counters])


def torch_seed(seed: int, stream: str, *counters: int) -> None:
    """Seed torch's global RNG (and CUDA's) for one named stream."""
    import torch

    state = np.random.SeedSequence([seed, STREAMS[stream], *counters]).generate_state(1, np.uint64)[0]
    torch.manual_seed(int(state >> np.uint64(1)))


def stream_key(seed: int, stream: str, *counters: int) -> int:
    """A 64-bit key (as a signed int64 value) for ``counter_bits``, derived from the stream's name and counters."""
    state = int(np.random.SeedSequence([seed, STREAMS[stream], *counters]).generate_state(1, np.uint64)[0])
    return state - (1 << 64) if state >= 1 << 63 else state


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


_GAMMA, _MIX1, _MIX2 = (_signed(c) for c in (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB))


def shift_right(x, bits: int):
    """Logical right shift of int64 values (torch's >> is arithmetic on negative values)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def counter_bits(key: int, counters):
    """SplitMix64's output number ``counters`` of the sequence seeded by ``key``: 64 well-mixed bits per counter
    (int64 tensor in, int64 tensor out, on the counters' device; int64 products wrap around). A pure function of
    (key, counter), so any subset of counters can be drawn by whoever needs it — the property that makes
    per-rank negatives independent of the world size."""
    z = counters * _GAMMA + key
    z = (z ^ shift_right(z, 30)) * _MIX1
    z = (z ^ shift_right(z, 27)) * _MIX2
    return z ^ shift_right(z, 31)


def split_bits(bits):
    """(high 32 bits, low 32 bits) of ``counter_bits`` output, each a non-negative int64 below 2^32."""
    return shift_right(bits, 32), bits & 0xFFFFFFFF


def uniform_rows(seed: int, stream: str, start: int, stop: int, width: int, bound: float):
    """Rows [start, stop) of a [rows, width] table drawn from U(-bound, bound), counter-based: row block b
    (ROW_BLOCK rows) comes from a Philox generator whose counter is b, so any rank can draw exactly the rows
    it owns — the values do not depend on who draws them. Returns a float32 torch tensor."""
    import torch

    out = np.empty((max(stop - start, 0), width), np.float32)
    key = np.random.SeedSequence([seed, STREAMS[stream], width]).generate_state(2, np.uint64)
    for block in range(start // ROW_BLOCK, -(-stop // ROW_BLOCK)):
        lo, hi = block * ROW_BLOCK, (block + 1) * ROW_BLOCK
        gen = np.random.Generator(np.random.Philox(key=key, counter=np.array([block, 0, 0, 0], np.uint64)))
        values = gen.random((ROW_BLOCK, width))
        a, b = max(lo, start), min(hi, stop)
        out[a - start:b - start] = ((values[a - lo:b - lo] * 2.0 - 1.0) * bound).astype(np.float32)
    return torch.from_numpy(out)
