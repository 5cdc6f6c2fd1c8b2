"""Negatives are drawn per rank, on the training device, and a global batch gets the same negatives at any
world size (the sampler's draws are keyed by global position; ``DistributedRuntime.split`` gives each rank its
slice and offset)."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from mmkgc_dist.data.sampling import NegativeSampler, triple_index
from mmkgc_dist.parallel.distributed import DistributedRuntime

N, R = 500, 7


def graph(seed=0, rows=6000):
    rng = np.random.default_rng(seed)
    return np.unique(np.stack([rng.integers(0, N, rows), rng.integers(0, R, rows), rng.integers(0, N, rows)], 1),
                     axis=0)


def slices_at(world: int, batch: np.ndarray, sampler: NegativeSampler, counters=(3, 5)):
    """What every rank of a ``world``-rank job holds for this global batch, through the runtime's batch slice."""
    parts = []
    for rank in range(world):
        runtime = SimpleNamespace(env=SimpleNamespace(rank=rank, world_size=world))
        lo, hi = DistributedRuntime.batch_slice(runtime, len(batch))
        parts.append((batch[lo:hi], sampler.sample(batch[lo:hi], counters, offset=lo, share=(hi - lo) / len(batch))))
    return parts


SAMPLERS = {
    "per-negative sides, filtered": dict(),
    "per-positive sides, filtered": dict(side="per_positive"),
    "degree-proportional, filtered": dict(degree=True),
    "chunk-shared": dict(mode="chunk_shared", chunk_size=16),
    "uniform corruption, unfiltered": dict(corruption="uniform", filter_negatives=False),
}


@pytest.mark.parametrize("kind", list(SAMPLERS))
def test_a_global_batch_gets_the_same_negatives_at_world_sizes_1_2_and_4(kind):
    train = graph()
    options = dict(SAMPLERS[kind])
    if options.pop("degree", False):
        options["degree"] = np.bincount(train[:, [0, 2]].ravel(), minlength=N)
    sampler = NegativeSampler(train, N, R, num_negatives=32, seed=11, **options)
    batch = train[np.random.default_rng(1).permutation(len(train))[:256]]
    (whole, one), = slices_at(1, batch, sampler)
    assert np.array_equal(whole, batch)
    for world in (2, 4):
        parts = slices_at(world, batch, sampler)
        assert np.array_equal(np.concatenate([p[0] for p in parts]), batch)
        for field in ("entities", "head_mode"):
            joined = torch.cat([getattr(p[1], field) for p in parts])
            assert torch.equal(joined, getattr(one, field)), (world, field)
        assert sum(p[1].false_negatives for p in parts) == one.false_negatives
    # another batch (or epoch) draws other negatives
    other = sampler.sample(batch, (3, 6))
    assert not torch.equal(other.entities, one.entities)


def test_filtering_leaves_only_counted_known_triples_and_draws_uniformly():
    train = graph(rows=20000)                       # dense: ~5.7 triples per (entity, relation), many collisions
    sampler = NegativeSampler(train, N, R, num_negatives=64, seed=2, max_rounds=10)
    batch = train[:2000]
    neg = sampler.sample(batch, (0, 0))
    assert neg.entities.dtype == torch.int64 and neg.entities.shape == (2000, 64)
    assert int(neg.entities.min()) >= 0 and int(neg.entities.max()) < N
    head = neg.head_mode.numpy()
    h = np.where(head, neg.entities.numpy(), batch[:, :1])
    t = np.where(head, batch[:, 2:3], neg.entities.numpy())
    cand = np.stack([h.ravel(), np.repeat(batch[:, 1], 64), t.ravel()], 1)
    known = np.isin(triple_index(cand, N, R), triple_index(train, N, R))
    assert known.sum() == neg.false_negatives       # survivors after 10 rounds are counted, never hidden
    unfiltered = NegativeSampler(train, N, R, num_negatives=64, seed=2, filter_negatives=False).sample(batch, (0, 0))
    assert unfiltered.false_negatives == 0
    counts = torch.bincount(unfiltered.entities.ravel(), minlength=N).double()
    expected = unfiltered.entities.numel() / N
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < N + 5 * np.sqrt(2 * N), chi2      # χ² with N−1 degrees of freedom, 5 standard deviations
    # without filtering ~ train density of the graph's candidates are known; filtering removed nearly all
    assert neg.false_negatives < 0.01 * known.size


def test_sampler_refuses_graphs_beyond_its_32_bit_draws():
    with pytest.raises(ValueError, match="at most"):
        NegativeSampler(None, (1 << 31) + 1, 3, 8, corruption="uniform", filter_negatives=False)
