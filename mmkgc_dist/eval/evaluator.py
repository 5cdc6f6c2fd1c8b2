"""Evaluation of a model held by a runtime: filtered ranking of a split by the one engine (engine.py) against
this process's candidate shard, the known triples it filters, and the per-relation and per-category breakdown.
Used alike by the trainer (validation, the final test) and by a trained model loaded without one
(``mmkgc_dist.serving.trained``)."""
from __future__ import annotations

import dataclasses

import numpy as np
import torch
from tqdm import tqdm

from ..data.sampling import DegreeDistribution
from ..data.training_statistics import TrainingStatistics
from ..data.stream import rows_answering
from .engine import rank_queries
from .metrics import link_prediction_metrics, relation_categories
from .ranking import TIE_POLICIES, eval_subset, protocol_label


def check_request(splits, ties: str | None, available) -> None:
    """QueryError before any ranking: a split the dataset does not hold, a tie policy that does not exist."""
    from ..errors import QueryError
    if ties is not None and (not isinstance(ties, str) or ties not in TIE_POLICIES):
        raise QueryError(f"evaluate: ties={ties!r}; expected one of {', '.join(TIE_POLICIES)}")
    if not isinstance(splits, (list, tuple)) or not all(isinstance(s, str) for s in splits):
        raise QueryError(f"evaluate: splits={splits!r}; expected a list of split names")
    unknown = [s for s in splits if s not in available]
    if unknown:
        raise QueryError(f"evaluate: split {unknown[0]!r} is not in the dataset (it has "
                         f"{', '.join(available) or 'no split held in memory'})")


class Evaluator:
    def __init__(self, cfg, data, runtime, scoring, statistics: TrainingStatistics, show_progress: bool = True):
        """``runtime``: a built ``runtime.Runtime`` holding the model; ``scoring``: ``model.Scoring``;
        ``statistics``: the training split's (streamed or in memory)."""
        self.cfg, self.data, self.runtime = cfg, data, runtime
        self.scoring, self.statistics = scoring, statistics
        self.show_progress = show_progress and runtime.is_main
        self._known: np.ndarray | None = None

    def known_triples(self) -> np.ndarray:
        """Triples filtered out of rankings. A streamed training split stays on disk: only its rows that share
        a query's (entity, relation) are collected, once, in one pass — the same filter, bounded memory."""
        held = [t for t in self.data.splits.values() if len(t)]
        if not self.statistics.streamed:
            return np.concatenate(held)
        if self._known is None:
            runtime = self.runtime
            found = rows_answering(self.cfg.data.path, "train", np.concatenate(held), self.data.num_relations,
                                   rank=runtime.rank, world_size=runtime.world_size,
                                   manifest=self.statistics.manifest)
            self._known = np.concatenate(held + [runtime.gather_rows(found)])
        return self._known

    def relation_categories(self) -> np.ndarray:
        """1-1 / 1-N / N-1 / N-N of every relation, from the training split's tails per head and heads per tail."""
        return relation_categories(self.statistics.relation_table())

    @torch.no_grad()
    def evaluate(self, split: str, ties: str | None = None, triples: np.ndarray | None = None,
                 protocol: str | None = None, breakdown: bool = True) -> dict:
        """Filtered ranking of the split's triples (or ``triples``) by eval.protocol (or ``protocol``);
        ``breakdown`` adds per-relation and per-category metrics."""
        cfg = self.cfg.eval
        if protocol and protocol != cfg.protocol:
            cfg = dataclasses.replace(cfg, protocol=protocol)
        ties = ties or cfg.ties
        check_request([split] if triples is None else [], ties, self.data.splits)
        pool = self.data.splits[split] if triples is None else triples
        triples = eval_subset(pool, cfg.max_queries, self.cfg.train.seed)
        bar = tqdm(total=2 * len(triples), desc=f"eval {split}", unit="query", disable=not self.show_progress,
                   dynamic_ncols=True, leave=False)
        sampled = (cfg, DegreeDistribution(self.statistics.degree()), self.data.num_entities,
                   self.cfg.train.seed) if cfg.protocol == "sampled" else None
        ranks = rank_queries(self.runtime.candidate_shard(), self.runtime.relation_table(), self.scoring, triples,
                             self.known_triples(), ties, cfg.batch_size, sampled, progress=bar)
        bar.close()
        label = protocol_label(cfg, self.cfg.train.seed, len(triples), len(self.data.splits[split]))
        metrics = link_prediction_metrics(ranks, triples, cfg.hits_at, self.data.relation_names,
                                          self.relation_categories()) if breakdown else \
            link_prediction_metrics(ranks, hits_at=cfg.hits_at)
        return {**metrics, "ties": ties, "split": split, "protocol": label + self.runtime.protocol_suffix()}
