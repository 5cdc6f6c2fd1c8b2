"""What the package scores with, built from the config: the scoring function (``model.scoring``), how queries
are formed (``model.reciprocal``) and the kernels that score many candidates. Training, evaluation, predict and
export all take this one object."""
from __future__ import annotations

from dataclasses import dataclass

from .queries import Queries
from .scorers import Scorer, ScoreKernels, make_scorer


@dataclass
class Scoring:
    scorer: Scorer
    queries: Queries
    kernels: ScoreKernels

    @classmethod
    def build(cls, model_cfg, num_relations: int, modalities: int, compile: bool = False) -> "Scoring":
        """From the config's model section and the number of fused modalities; LookupError names an unknown
        ``model.scoring``, ValueError a scorer that cannot score this model."""
        scorer = make_scorer(model_cfg.scoring, model_cfg.dim, model_cfg.gamma, model_cfg.epsilon)
        scorer.for_modalities(modalities)
        return cls(scorer, Queries(scorer, num_relations, model_cfg.reciprocal), scorer.kernels(compile))

    @property
    def relation_rows(self) -> int:
        """Rows of the relation table (twice the graph's relations with reciprocal relations)."""
        return self.queries.table_rows
