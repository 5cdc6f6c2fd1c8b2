"""One AdaMF-MAT training step: the discriminator (KGC model) update, then the generator update.

Every unique entity of the batch (heads, tails, negatives) is looked up and fused exactly once;
scores index into that [U, 2d] block. Projecting per triple slot instead is what makes the
reference code slow (it projects 4096-d features for every one of B·(K+1)·2 slots).

The step is the same for one process and for many: it is built on a runtime, which supplies the table lookup
and fusion (local, or computed by the rows' owners), the dense model, how the generator is updated (local Adam or
a DeepSpeed engine) and the world size. Each process's loss is the mean over its own positives weighted by its
share of the global batch (``NegativeBatch.share``, b / B): summed over ranks that is the global-batch mean
for any split of the batch — ragged, or with no positive at all on some rank.
"""
from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from ..config import Config
from ..data.sampling import NegativeBatch
from ..model import (DistanceKernels, RotatE, batch_adversarial_loss, complex_l1_distance, pairwise_sigmoid_loss,
                     self_adversarial_loss)
from ..model.kgc import EmbeddedEntities, unique_ids


class PhaseTimer:
    """Wall time per step phase, for benchmarks; disabled it only yields."""

    def __init__(self, enabled: bool = False):
        self.enabled = enabled
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, phase: str):
        if not self.enabled:
            yield
            return
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] += time.perf_counter() - start


@dataclass
class PositiveView:
    """Positives in query form: q compared with the target (and with the negatives)."""
    head_local: Tensor
    tail_local: Tensor
    phase: Tensor
    head_mode: Tensor
    relation: Tensor


class TrainStep:
    def __init__(self, cfg: Config, runtime, rotate: RotatE, kernels: DistanceKernels, num_entities: int):
        """Built on a runtime (``runtime.Runtime``, built): ``runtime.embedder(entity_ids, relation_ids,
        positives) -> (EmbeddedEntities, relation rows)`` is lookup + fusion, local or computed by the rows'
        owners; ``embedder.positives`` gives the marked (positive) ids' rows again for the generator step.
        ``batch_softmax``: softmax of this process's scores over the *global* batch, column by column.
        ``sync_gradients``: starts summing the dense gradients over ranks after backward (one process: None);
        ``opt_model.step`` waits for the sums where it needs them (optim.OptimizerGroup)."""
        self.cfg, self.num_entities, self.rotate, self.kernels = cfg, num_entities, rotate, kernels
        self.embed, self.model, self.generators = runtime.embedder, runtime.model, runtime.generators
        self.opt_model, self.update_generator = runtime.opt_model, runtime.update_generator
        self.world_size, self.device = runtime.world_size, runtime.device
        self.batch_softmax, self.sync_gradients = runtime.batch_softmax, runtime.sync_gradients
        self.mu = cfg.mat.mu if self.generators is not None else 0.0
        self.timer = PhaseTimer()

    def __call__(self, batch: np.ndarray | Tensor, negatives: NegativeBatch) -> dict:
        """One step on this process's part of a global batch; returns its metrics as device tensors, each this
        process's share of the global value (summed over ranks when read)."""
        timer = self.timer
        triples = torch.as_tensor(batch, device=self.device)    # already there when prefetched (prefetch.py)
        cand = negatives.entities.to(self.device)
        ids, inverse = unique_ids(torch.cat([triples[:, 0], triples[:, 2], cand.reshape(-1)]), self.num_entities)
        positives = None            # the ids MAT reads again (their structural rows, the generator step)
        if self.generators is not None:
            positives = torch.zeros(len(ids), dtype=torch.bool, device=ids.device)
            positives[inverse[:2 * len(triples)]] = True
        with timer("embed"):        # table lookup (incl. all-to-all) and fusion of each unique entity
            entities, relation_rows = self.embed(ids, triples[:, 1], positives)
        with timer("score"):
            loss, view, metrics = self._discriminator_forward(entities, relation_rows, inverse, cand, triples,
                                                              negatives)
        if self.opt_model is not None:
            self.opt_model.zero_grad(set_to_none=True)
        with timer("backward"):     # includes the fused-row all-to-all backward and the dense gradients' sum
            (loss * negatives.share).backward()
            if self.sync_gradients is not None:
                self.sync_gradients()
        with timer("optimizer"):
            if self.opt_model is not None:
                self.opt_model.step()
        with timer("generator"):
            if self.generators is not None:
                metrics["gen_loss"] = self._generator_step(ids, view, negatives.share)
        if negatives.share == 1.0:           # one process: nothing to weight (no extra operations)
            return metrics
        return {k: v * negatives.share if k != "false_negatives" else v for k, v in metrics.items()}

    def _discriminator_forward(self, entities: EmbeddedEntities, relation_rows, inverse, cand, triples, negatives):
        """The discriminator's loss (KGC + μ·adversarial), the positives' view and the step's metrics."""
        b = len(triples)
        sides = negatives.head_mode.to(self.device)
        per_negative = sides.dim() == 2           # a corruption side per negative: positives in tail form
        view = PositiveView(inverse[:b], inverse[b:2 * b], self.rotate.phase(relation_rows),
                            torch.zeros(b, dtype=torch.bool, device=self.device) if per_negative else sides,
                            triples[:, 1])
        cand_local = inverse[2 * b:].view_as(cand)
        joint = entities.joint
        if per_negative:                          # both queries of a positive
            query, target = self._queries(joint, view)
            head_query = self.rotate.rotate(target, -view.phase)                    # t∘r̄, compared with h'
            dist = self.kernels.two_sided(query, head_query, joint, cand_local, sides)
        else:
            query, target = self._queries(joint, view)
            dist = self.kernels.chunk_shared(query, joint, cand_local, negatives.chunk_size) \
                if negatives.layout == "chunk_shared" else self.kernels.gathered(query, joint, cand_local)
        positive = self.rotate.gamma - complex_l1_distance(query, target)
        kgc_loss = self_adversarial_loss(positive, self.rotate.gamma - dist, self.cfg.train.adversarial_temperature)
        loss = kgc_loss
        metrics = {"loss": kgc_loss.detach(), "false_negatives": negatives.false_negatives}   # read on logging steps
        if self.mu > 0:
            fakes = self._fake_scores(entities, view, self._generate_as_data, detach_attention=False)
            adv = self._adversarial_loss(positive, torch.stack(fakes, dim=1), negatives.share)
            loss = loss + self.mu * adv
            metrics["adv_loss"] = adv.detach()
        return loss, view, metrics

    def _adversarial_loss(self, positive: Tensor, fakes: Tensor, share: float) -> Tensor:
        """Σ over the three kinds of fake (columns of ``fakes``) of L(f⁺, f_fake) of the discriminator
        (mat.adversarial_loss). The reference form weights the fakes by a softmax over the global batch, one
        column at a time (one collective for the three); each process holds a slice of that weighted sum, so it
        is divided by the process's ``share`` to cancel the weighting that turns the slices' means into the
        global mean."""
        if self.cfg.mat.adversarial_loss == "mean":
            return sum(pairwise_sigmoid_loss(positive, fake) for fake in fakes.unbind(1))
        weights = self.batch_softmax(self.cfg.train.adversarial_temperature * fakes.detach()) / (share or 1.0)
        return sum(batch_adversarial_loss(positive, fake, w) for fake, w in zip(fakes.unbind(1), weights.unbind(1)))

    def _queries(self, joint: Tensor, view: PositiveView) -> tuple[Tensor, Tensor]:
        hm = view.head_mode.unsqueeze(-1)
        anchor = torch.where(hm, joint[view.tail_local], joint[view.head_local])
        target = torch.where(hm, joint[view.head_local], joint[view.tail_local])
        return self.rotate.query(anchor, view.phase, view.head_mode), target

    def _generate_as_data(self, structural: Tensor) -> dict[str, Tensor]:
        """The discriminator step sees the generators' output as data: no gradient into the generators."""
        with torch.no_grad():
            return self.generators(structural)

    def _fake_scores(self, entities: EmbeddedEntities, view: PositiveView,
                     generate: Callable[[Tensor], dict], detach_attention: bool) -> list[Tensor]:
        """Scores of (fake h, r, t), (h, r, fake t), (fake h, r, fake t) for every positive."""
        b = len(view.head_local)
        pos_ids, pos_inv = unique_ids(torch.cat([view.head_local, view.tail_local]), len(entities.joint))
        pos = entities.select(pos_ids)
        fake = self.model.embed_fake(pos.structural, pos.masks, generate(pos.structural), detach_attention,
                                    self.cfg.mat.fakes_fill_missing)
        real = pos.joint
        hi, ti = pos_inv[:b], pos_inv[b:]
        score = lambda h, t: self.rotate.gamma - complex_l1_distance(self.rotate.rotate(h, view.phase), t)
        return [score(fake[hi], real[ti]), score(real[hi], fake[ti]), score(fake[hi], fake[ti])]

    def _generator_step(self, ids: Tensor, view: PositiveView, share: float) -> Tensor:
        """Recompute real and fake scores with the updated model; only the generators get gradients. The update
        averages the ranks' gradients (DeepSpeed's rule), so each rank's loss is weighted by share × world."""
        b = len(view.head_local)
        pos_ids, pos_inv = unique_ids(torch.cat([ids[view.head_local], ids[view.tail_local]]), self.num_entities)
        entities, relation_rows = self.embed.positives(pos_ids, view.relation)
        local = PositiveView(pos_inv[:b], pos_inv[b:], self.rotate.phase(relation_rows), view.head_mode,
                             view.relation)
        with torch.no_grad():
            positive = self.rotate.gamma - complex_l1_distance(*self._queries(entities.joint, local))
        fakes = self._fake_scores(entities, local, self.generators, detach_attention=True)
        gen_loss = sum(pairwise_sigmoid_loss(f, positive) for f in fakes)
        weight = share * self.world_size
        self.update_generator(gen_loss if weight == 1.0 else gen_loss * weight)
        return gen_loss.detach()
