"""What sampling and evaluation read of the training split, computed once: from the dataset's stored statistics
when the split streams from disk, counted from the triples in memory otherwise. Above both the format (which reads
the stored statistics) and the statistics' math, so neither imports the other."""
from __future__ import annotations

import numpy as np

from .format import read_training_statistics
from .statistics import exact_relation_table, head_probability


class TrainingStatistics:
    """What sampling and evaluation read of the training split — P(corrupt head | relation), entity degrees, the
    per-relation table — computed once: from the dataset's stored statistics when the split is streamed
    (``manifest`` given; ``root`` is the dataset), counted from the triples in memory otherwise."""

    def __init__(self, data, root: str | None = None, manifest: dict | None = None):
        self.data, self.root, self.manifest = data, root, manifest
        self._sampling: tuple[np.ndarray | None, np.ndarray] | None = None
        self._relations: dict[str, np.ndarray] | None = None

    @property
    def streamed(self) -> bool:
        return self.manifest is not None

    def sampling(self) -> tuple[np.ndarray | None, np.ndarray]:
        """(P(corrupt head | relation) or None — the sampler then counts its own —, entity degrees)."""
        if self._sampling is None:
            if self.streamed:
                relations, degree = read_training_statistics(self.root, self.manifest)
                self._sampling, self._relations = (head_probability(relations), degree), relations
            else:
                train = self.data.splits["train"]
                self._sampling = None, np.bincount(train[:, [0, 2]].ravel(), minlength=self.data.num_entities)
        return self._sampling

    def degree(self) -> np.ndarray:
        return self.sampling()[1]

    def relation_table(self) -> dict[str, np.ndarray]:
        """Triples, distinct heads and tails, tails per head and heads per tail of every relation."""
        if self._relations is None:
            if self.streamed:
                self.sampling()
            else:
                self._relations = exact_relation_table(self.data.splits["train"], self.data.num_relations)
        return self._relations
