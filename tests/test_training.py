"""Training behaviour on small generated graphs: learning, MAT wiring, frozen features, resume."""
import os

import numpy as np
import pytest
import torch

from mmkgc_dist.config import load_config
from mmkgc_dist.data.synthetic import generate
from mmkgc_dist.errors import TrainingDiverged
from mmkgc_dist.training.prefetch import to_device_ahead
from mmkgc_dist.compose import local_trainer
from support import LEARNING, pairs

SMALL = pairs(LEARNING)


def make(tmp_path=None, *extra):
    cfg = load_config(None, SMALL + list(extra))
    return local_trainer(cfg, generate(cfg.data.synthetic), str(tmp_path) if tmp_path else None, show_progress=False)


def params(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_mu_feeds_the_model_and_generator_trains():
    base = make(None, ("train.max_steps", "1"), ("mat.mu", "0.0"))
    adv = make(None, ("train.max_steps", "1"), ("mat.mu", "0.5"))
    g0 = params(adv.runtime.generators)
    base.fit(), adv.fit()
    assert not torch.equal(base.runtime.model.fusion.attention, adv.runtime.model.fusion.attention)   # μ>0 changes the model
    assert any(not torch.equal(g0[k], v) for k, v in params(adv.runtime.generators).items())  # generator stepped


def test_frozen_features_stay_fixed_trainable_move():
    frozen = make(None, ("train.max_steps", "2"), ("model.raw_features", "frozen"))
    trainable = make(None, ("train.max_steps", "2"))
    before = frozen.runtime.tables.features["visual"].weight.clone()
    frozen.fit(), trainable.fit()
    assert torch.equal(frozen.runtime.tables.features["visual"].weight, before)
    assert not torch.equal(trainable.runtime.tables.features["visual"].weight, before)
    assert not any(p is frozen.runtime.tables.features["visual"].weight for g in frozen.runtime.opt_model.param_groups
                   for p in g["params"])


@pytest.mark.parametrize("name, dtype, tolerance", [("fp16", torch.float16, 1e-3), ("bf16", torch.bfloat16, 8e-3)])
def test_frozen_features_in_half_precision(name, dtype, tolerance):
    """parallel.frozen_dtype=fp16/bf16 stores frozen feature tables in half precision in one process too; lookups
    give fp32 rows equal to the fp32 run's up to the half type's rounding, and training runs."""
    full = make(None, ("train.max_steps", "2"), ("model.raw_features", "frozen"))
    half = make(None, ("train.max_steps", "2"), ("model.raw_features", "frozen"), ("parallel.frozen_dtype", name))
    assert half.runtime.tables.features["visual"].weight.dtype == dtype
    ids = torch.arange(50)
    a, b = full.runtime.tables.entities(ids).features["visual"], half.runtime.tables.entities(ids).features["visual"]
    assert b.dtype == torch.float32 and torch.allclose(a, b, rtol=tolerance, atol=tolerance) and not torch.equal(a, b)
    assert torch.isfinite(torch.tensor(half.fit()["loss"]))


def test_training_never_writes_into_the_callers_dataset():
    """Trainable features are the trainer's own copy: two trainers built from one dataset (a sweep) both start
    from the dataset's features, and the same config trains the same model twice."""
    cfg = load_config(None, SMALL + [("train.max_steps", "3")])
    data = generate(cfg.data.synthetic)
    before = {m: f.values.copy() for m, f in data.features.items()}
    first = local_trainer(cfg, data, None, show_progress=False)
    first.fit()
    assert all((data.features[m].values == v).all() for m, v in before.items())
    second = local_trainer(cfg, data, None, show_progress=False)
    second.fit()
    assert torch.equal(first.runtime.tables.features["visual"].weight, second.runtime.tables.features["visual"].weight)
    assert torch.equal(first.runtime.tables.entity.weight, second.runtime.tables.entity.weight)


@pytest.mark.parametrize("negatives, stop", [("per_positive", "train.epochs=1"), ("chunk_shared", "train.epochs=1"),
                                             ("per_positive", "train.max_steps=7")])
def test_resume_matches_uninterrupted(tmp_path, negatives, stop):
    """Stop at an epoch boundary or mid-epoch (max_steps), resume, and land on the same parameters."""
    extra = [("train.negatives", negatives), ("train.chunk_size", "32")]
    straight = make(tmp_path / "a", ("train.epochs", "2"), *extra)
    straight.fit()
    first = make(tmp_path / "b", ("train.epochs", "2"), tuple(stop.split("=")), *extra)
    first.fit()
    first.save()
    second = make(tmp_path / "b", ("train.epochs", "2"), *extra)
    assert second.resume() and second.step == first.step
    second.fit()
    assert second.step == straight.step
    for key, value in params(straight.runtime.tables).items():
        assert torch.equal(value, params(second.runtime.tables)[key]), key
    for key, value in params(straight.runtime.generators).items():
        assert torch.equal(value, params(second.runtime.generators)[key]), key


@pytest.mark.slow
def test_features_beat_structure_only_and_untrained():
    fused = make(None, ("train.epochs", "8"), ("train.lr", "0.01"))
    untrained = fused.evaluate("test")["mrr"]
    fused.fit()
    trained = fused.evaluate("test")["mrr"]
    structure = make(None, ("train.epochs", "8"), ("train.lr", "0.01"), ("model.modalities", "[]"),
                     ("mat.enabled", "false"))
    structure.fit()
    struct_mrr = structure.evaluate("test")["mrr"]
    assert trained >= 5 * untrained, (trained, untrained)
    assert trained >= 2 * struct_mrr and trained - struct_mrr > 0.05, (trained, struct_mrr)


def test_batches_reach_the_device_in_order_and_unchanged():
    """prefetch.to_device_ahead: the same keys and rows in the same order; on the CPU the very same arrays (nothing
    to overlap), on CUDA device tensors copied one step ahead (checked where a GPU is present)."""
    batches = [(i, np.arange(6 * i, 6 * i + 6, dtype=np.int64).reshape(2, 3)) for i in range(4)]
    passed = list(to_device_ahead(iter(batches), torch.device("cpu")))
    assert [k for k, _ in passed] == [0, 1, 2, 3] and all(a is b for (_, a), (_, b) in zip(passed, batches))
    if torch.cuda.is_available():
        moved = list(to_device_ahead(iter(batches), torch.device("cuda")))
        assert [k for k, _ in moved] == [0, 1, 2, 3]
        assert all(t.is_cuda and (t.cpu().numpy() == a).all() for (_, t), (_, a) in zip(moved, batches))


def test_training_stops_with_a_clear_error_when_the_loss_goes_non_finite():
    """A NaN loss is caught at the next logging step (where the losses are read anyway), not trained on."""
    trainer = make(None, ("train.max_steps", "3"), ("train.log_every", "1"))
    with torch.no_grad():
        trainer.runtime.tables.entity.weight[:] = float("nan")
    with pytest.raises(TrainingDiverged, match="training diverged at epoch 0, step 1"):
        trainer.fit()


def nan_after_first_step(trainer):
    """Make the weights NaN right after step 1 (a logging step that saw a finite loss)."""
    step = trainer.step_fn

    def poisoned(*args):
        out = step(*args)
        with torch.no_grad():
            trainer.runtime.tables.entity.weight[:] = float("nan")
        return out
    trainer.step_fn = poisoned


def test_a_divergence_between_logging_steps_is_caught_at_the_end_of_training():
    trainer = make(None, ("train.max_steps", "3"), ("train.log_every", "100"))
    nan_after_first_step(trainer)
    with pytest.raises(TrainingDiverged, match="training diverged at epoch 0, step 3"):
        trainer.fit()


def test_no_checkpoint_of_a_diverged_model(tmp_path):
    """The step checkpoint after the weights went NaN (before any logging step saw it) is refused, not written;
    the earlier one stays the newest."""
    trainer = make(tmp_path, ("train.max_steps", "4"), ("train.log_every", "100"),
                   ("train.checkpoint_every_steps", "1"))
    step = trainer.step_fn
    calls = []

    def nan_at_step_2(*args):
        out = step(*args)
        calls.append(1)
        if len(calls) == 2:
            with torch.no_grad():
                trainer.runtime.tables.entity.weight[0, 0] = float("nan")
        return out
    trainer.step_fn = nan_at_step_2
    with pytest.raises(TrainingDiverged, match="not written: the model holds 1 NaN/inf weights at epoch 0, step 2"):
        trainer.fit()
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["step-000000001"]
