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
from ..model import (Scoring, batch_adversarial_loss, one_vs_all_loss, pairwise_sigmoid_loss, regularization,
                     self_adversarial_loss)
from ..model.dropout import StructureDropout
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
    tail_form: Tensor          # the relation as tail queries use it
    head_form: Tensor          # ... as head queries use it (itself, or its inverse with reciprocal relations)
    head_mode: Tensor
    relation: Tensor


class TrainStep:
    def __init__(self, cfg: Config, runtime, scoring: Scoring, num_entities: int):
        """Built on a runtime (``runtime.Runtime``, built): ``runtime.embedder(entity_ids, relation_ids,
        positives) -> (EmbeddedEntities, relation rows)`` is lookup + fusion, local or computed by the rows'
        owners; ``embedder.positives`` gives the marked (positive) ids' rows again for the generator step.
        ``batch_softmax``: softmax of this process's scores over the *global* batch, column by column.
        ``sync_gradients``: starts summing the dense gradients over ranks after backward (one process: None);
        ``opt_model.step`` waits for the sums where it needs them (optim.OptimizerGroup). ``scoring``: the
        scoring function, how queries are formed and its kernels (model/scoring.py)."""
        self.cfg, self.num_entities = cfg, num_entities
        self.scorer, self.queries, self.kernels = scoring.scorer, scoring.queries, scoring.kernels
        self.runtime = runtime
        self.embed, self.model, self.generators = runtime.embedder, runtime.model, runtime.generators
        self.opt_model, self.update_generator = runtime.opt_model, runtime.update_generator
        self.world_size, self.device = runtime.world_size, runtime.device
        self.batch_softmax, self.sync_gradients = runtime.batch_softmax, runtime.sync_gradients
        self.mu = cfg.mat.mu if self.generators is not None else 0.0
        self.timer = PhaseTimer()
        if cfg.model.structure_dropout:          # the fusion leaves out a seeded share of structures per batch
            self.model.structure_dropout = StructureDropout(cfg.model.structure_dropout, cfg.train.seed)

    def __call__(self, batch: np.ndarray | Tensor, negatives: NegativeBatch) -> dict:
        """One step on this process's part of a global batch; returns its metrics as device tensors, each this
        process's share of the global value (summed over ranks when read)."""
        dropout = self.model.structure_dropout
        if dropout is None:
            return self._step(batch, negatives)
        dropout.key = negatives.key[:2]          # (epoch, batch): the global batch's, on every rank
        try:
            return self._step(batch, negatives)
        finally:
            dropout.key = None                   # evaluation and answers fuse every structure

    def _step(self, batch: np.ndarray | Tensor, negatives: NegativeBatch) -> dict:
        timer = self.timer
        triples = torch.as_tensor(batch, device=self.device)    # already there when prefetched (prefetch.py)
        cand = negatives.entities.to(self.device)
        if negatives.layout == "all":      # this process's candidate shard, looked up and fused with the batch
            lo, hi = self.runtime.candidate_range()
            cand = torch.arange(lo, hi, device=self.device)
        ids, inverse = unique_ids(torch.cat([triples[:, 0], triples[:, 2], cand.reshape(-1)]), self.num_entities)
        positives = None            # the ids MAT reads again (their structural rows, the generator step)
        if self.generators is not None:
            positives = torch.zeros(len(ids), dtype=torch.bool, device=ids.device)
            positives[inverse[:2 * len(triples)]] = True
        with timer("embed"):        # table lookup (incl. all-to-all) and fusion of each unique entity
            entities, relation_rows = self.embed(ids, self.queries.relation_ids(triples[:, 1]), positives)
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

    def _view(self, inverse: Tensor, relation_rows: Tensor, triples: Tensor, head_mode: Tensor) -> PositiveView:
        b = len(triples)
        tail_form, head_form = self.queries.forms(relation_rows)
        return PositiveView(inverse[:b], inverse[b:2 * b], tail_form, head_form, head_mode, triples[:, 1])

    def _discriminator_forward(self, entities: EmbeddedEntities, relation_rows, inverse, cand, triples, negatives):
        """The discriminator's loss (KGC + regulariser + μ·adversarial), the positives' view and the step's
        metrics."""
        if negatives.layout == "all":
            view = self._view(inverse, relation_rows, triples,
                              torch.zeros(len(triples), dtype=torch.bool, device=self.device))
            kgc_loss, positive = self._one_vs_all(entities.joint, view, inverse[2 * len(triples):])
        else:
            kgc_loss, view, positive = self._sampled(entities.joint, relation_rows, inverse, cand, triples,
                                                     negatives)
        loss = kgc_loss
        metrics = {"loss": kgc_loss.detach(), "false_negatives": negatives.false_negatives}   # read on logging steps
        if self.cfg.model.regularizer != "none":
            joint = entities.joint
            reg = regularization(self.cfg.model.regularizer, [joint[view.head_local], relation_rows,
                                                               joint[view.tail_local]], self.scorer.complex_rows)
            loss = loss + self.cfg.model.regularizer_weight * reg
            metrics["reg_loss"] = reg.detach()
        if self.mu > 0:
            fakes = self._fake_scores(entities, view, self._generate_in_discriminator, detach_attention=False)
            adv = self._adversarial_loss(positive, torch.stack(fakes, dim=1), negatives.share)
            loss = loss + self.mu * adv
            metrics["adv_loss"] = adv.detach()
        return loss, view, metrics

    def _sampled(self, joint: Tensor, relation_rows, inverse, cand, triples, negatives):
        """Self-adversarial loss over drawn negatives: (loss, view, the positives' scores)."""
        b = len(triples)
        sides = negatives.head_mode.to(self.device)
        per_negative = sides.dim() == 2           # a corruption side per negative: positives in tail form
        view = self._view(inverse, relation_rows, triples,
                          torch.zeros(b, dtype=torch.bool, device=self.device) if per_negative else sides)
        cand_local = inverse[2 * b:].view_as(cand)
        query, target = self._queries(joint, view)
        if per_negative:                          # both queries of a positive
            head_query = self.queries.head_query(target, view.tail_form, view.head_form)   # compared with h'
            similarity = self.kernels.two_sided(query, head_query, joint, cand_local, sides)
        else:
            similarity = self.kernels.chunk_shared(query, joint, cand_local, negatives.chunk_size) \
                if negatives.layout == "chunk_shared" else self.kernels.gathered(query, joint, cand_local)
        bias = self.scorer.bias
        positive = bias + self.kernels.pairs(query, target)
        loss = self_adversarial_loss(positive, bias + similarity, self.cfg.train.adversarial_temperature)
        return loss, view, positive

    def _one_vs_all(self, joint: Tensor, view: PositiveView, shard_local: Tensor) -> tuple[Tensor, Tensor]:
        """Cross-entropy of both queries of every positive over all entities: (loss, the positives' tail-form
        scores). Each process scores the whole global batch's queries (gathered) against the entities it owns
        (``shard_local``: their rows in ``joint``); the normaliser and the mean score are summed over
        processes, and the gradients go back to the queries' and the candidates' owners."""
        head, tail = joint[view.head_local], joint[view.tail_local]
        queries = torch.cat([self.queries.query(head, view.tail_form, view.head_form, None),
                             self.queries.head_query(tail, view.tail_form, view.head_form)])
        bias, b = self.scorer.bias, len(view.head_local)
        target = bias + self.kernels.pairs(queries, torch.cat([tail, head]))
        every, own = self.runtime.gather_queries(queries)
        scores = self.kernels.all_pairs(every, joint[shard_local])                 # [all queries, owned]
        if bias:                  # the dot scorers have none: no second [queries, owned] block
            scores = scores + bias
        peak = scores.detach().amax(1) if scores.shape[1] else scores.new_full((len(every),), float("-inf"))
        peak = self.runtime.max_over_ranks(peak)
        normaliser = self.runtime.sum_over_ranks(torch.stack([(scores - peak[:, None]).exp().sum(1),
                                                              scores.sum(1)]))
        log_normaliser = (peak + normaliser[0].log())[own]
        candidate_mean = normaliser[1][own] / self.num_entities
        loss = one_vs_all_loss(target, log_normaliser, candidate_mean, self.cfg.train.label_smoothing)
        return loss, target[:b]

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
        return self.queries.query(anchor, view.tail_form, view.head_form, view.head_mode), target

    def _generate_in_discriminator(self, structural: Tensor) -> dict[str, Tensor]:
        """The fakes of the discriminator's adversarial term. As in the reference, its gradient reaches the
        structural rows through the generators (``mat.detach_fakes=false``), but never the generators' weights:
        they are read as constants here (the generator step owns them)."""
        if self.cfg.mat.detach_fakes:
            with torch.no_grad():
                return self.generators(structural)
        frozen = {name: p.detach() for name, p in self.generators.named_parameters()}
        return torch.func.functional_call(self.generators, frozen, (structural,))

    def _fake_scores(self, entities: EmbeddedEntities, view: PositiveView,
                     generate: Callable[[Tensor], dict], detach_attention: bool) -> list[Tensor]:
        """Scores of (fake h, r, t), (h, r, fake t), (fake h, r, fake t) for every positive (tail form)."""
        b = len(view.head_local)
        pos_ids, pos_inv = unique_ids(torch.cat([view.head_local, view.tail_local]), len(entities.joint))
        pos = entities.select(pos_ids)
        fake = self.model.embed_fake(pos.structural, pos.masks, generate(pos.structural), detach_attention,
                                    self.cfg.mat.fakes_fill_missing)
        real = pos.joint
        hi, ti = pos_inv[:b], pos_inv[b:]
        score = lambda h, t: self.scorer.bias + self.kernels.pairs(self.scorer.query(h, view.tail_form), t)
        return [score(fake[hi], real[ti]), score(real[hi], fake[ti]), score(fake[hi], fake[ti])]

    def _generator_step(self, ids: Tensor, view: PositiveView, share: float) -> Tensor:
        """Recompute real and fake scores with the updated model; only the generators get gradients. The update
        averages the ranks' gradients (DeepSpeed's rule), so each rank's loss is weighted by share × world."""
        b = len(view.head_local)
        pos_ids, pos_inv = unique_ids(torch.cat([ids[view.head_local], ids[view.tail_local]]), self.num_entities)
        entities, relation_rows = self.embed.positives(pos_ids, self.queries.relation_ids(view.relation))
        tail_form, head_form = self.queries.forms(relation_rows)
        local = PositiveView(pos_inv[:b], pos_inv[b:], tail_form, head_form, view.head_mode, view.relation)
        with torch.no_grad():
            positive = self.scorer.bias + self.kernels.pairs(*self._queries(entities.joint, local))
        fakes = self._fake_scores(entities, local, self.generators, detach_attention=True)
        gen_loss = sum(pairwise_sigmoid_loss(f, positive) for f in fakes)
        weight = share * self.world_size
        self.update_generator(gen_loss if weight == 1.0 else gen_loss * weight)
        return gen_loss.detach()
