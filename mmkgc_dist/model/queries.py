"""How queries are formed from relation ids — a regime, orthogonal to the scoring function.

Without reciprocal relations a head query (?, r, t) is the scorer's own head query of r. With
``model.reciprocal`` the relation table holds 2R rows, an inverse r + R per relation r, and every head query is
the tail query (t, r + R, ?): the model learns a separate relation for each direction (Lacroix et al., 2018),
and every query takes the scorer's tail form.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .scorers import Scorer


@dataclass
class Queries:
    scorer: Scorer
    num_relations: int                 # relations of the graph (the table holds twice as many with reciprocal)
    reciprocal: bool = False

    @property
    def table_rows(self) -> int:
        return 2 * self.num_relations if self.reciprocal else self.num_relations

    def relation_ids(self, relations: Tensor) -> Tensor:
        """The relation rows a batch of relations needs: r (and r + R with reciprocal relations, after them)."""
        return torch.cat([relations, relations + self.num_relations]) if self.reciprocal else relations

    def forms(self, rows: Tensor) -> tuple[Tensor, Tensor]:
        """(tail form, head form) of the rows looked up for ``relation_ids``: the relation for tail queries and
        the relation head queries use (r itself, or its inverse)."""
        if self.reciprocal:
            tail, head = rows.chunk(2)
            return self.scorer.relation_form(tail), self.scorer.relation_form(head)
        form = self.scorer.relation_form(rows)
        return form, form

    def query(self, anchor: Tensor, tail_form: Tensor, head_form: Tensor, head_mode: Tensor | None) -> Tensor:
        """Queries from anchors: tail queries, and head queries where ``head_mode`` (the anchor is the tail)."""
        if head_mode is None:
            return self.scorer.query(anchor, tail_form)
        if self.reciprocal:
            return self.scorer.query(anchor, torch.where(head_mode.unsqueeze(-1), head_form, tail_form))
        return self.scorer.query(anchor, tail_form, head_mode)

    def head_query(self, tail_anchor: Tensor, tail_form: Tensor, head_form: Tensor) -> Tensor:
        """Head queries (?, r, t) from the tails."""
        if self.reciprocal:
            return self.scorer.query(tail_anchor, head_form)
        return self.scorer.query(tail_anchor, tail_form, torch.ones(len(tail_anchor), dtype=torch.bool,
                                                                   device=tail_anchor.device))

    def direction_forms(self, relations: Tensor, table: Tensor, head: bool) -> Tensor:
        """Relation forms for a batch of relation ids read from the whole table (evaluation, predict)."""
        ids = relations + self.num_relations if (head and self.reciprocal) else relations
        return self.scorer.relation_form(table[ids.to(table.device)])

    def evaluation_query(self, anchor: Tensor, relations: Tensor, table: Tensor, head: bool) -> Tensor:
        """Queries of a batch of (anchor, relation) for one direction, from the whole relation table."""
        form = self.direction_forms(relations, table, head)
        if head and not self.reciprocal:
            return self.scorer.query(anchor, form, torch.ones(len(anchor), dtype=torch.bool, device=anchor.device))
        return self.scorer.query(anchor, form)
