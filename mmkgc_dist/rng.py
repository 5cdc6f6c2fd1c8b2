"""Every random stream of the project, by name, in one place.

A stream is a pure function of (train.seed, its name, its counters) — never of call order, world size or
which process asks — so one process and N ranks draw the same numbers, and a resumed run draws what the
uninterrupted one would have:

    epoch_order       (epoch)                          permutation of the in-memory training triples
    negatives         (epoch, batch[, rank])           corruption side and corrupting entities of a batch
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
