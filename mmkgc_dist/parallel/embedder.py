"""Owner-computes fusion: each entity is looked up and fused on the rank that owns its rows, and only the
fused embedding travels.

Data parallelism over positives does not shrink the fusion work: with 128 negatives per positive, every
rank's half of a DB15K batch still touches nearly all 12.8k entities, so each rank would project all of
their 4096-d features and pull them through TorchRec's all-to-all. Fusing at the owner splits the
projection work by world size and ships 2d-wide joint rows (plus the positives' 2d structural rows for
MAT) instead of the raw features. The exchange is an autograd-aware all-to-all, so gradients return to the
owners, flow through the fusion (DDP keeps its parameters in sync) and into the sharded tables.

Owners are contiguous id blocks of ceil(N / world) rows — the layout of TorchRec's row-wise sharding, so
the owner's own table lookup stays on the rank.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.nn.functional import all_to_all_single as differentiable_all_to_all

from ..model.kgc import EmbeddedEntities, unique_ids


def owner_block(num_entities: int, world_size: int) -> int:
    """Rows per owner: rank r owns ids [r·block, (r+1)·block) — TorchRec's row-wise layout."""
    return -(-num_entities // world_size)


class OwnerEmbedder:
    def __init__(self, tables, model: nn.Module, num_entities: int, world_size: int):
        self.tables, self.model, self.num_entities, self.world = tables, model, num_entities, world_size
        self.block = owner_block(num_entities, world_size)
        # the last exchange's marked ids: (mine, requested of me, counts I receive, counts I send)
        self._positives = None

    def __call__(self, entity_ids: Tensor, relation_ids: Tensor,
                 positives: Tensor | None = None) -> tuple[EmbeddedEntities, Tensor]:
        """entity_ids must be sorted (``unique_ids`` returns them so): requests are then grouped by owner.
        ``positives`` (bool per id) marks the ids whose structural rows MAT needs and that the generator step
        will ask for again: they travel as 2·id + 1 so each owner knows them, and ``positives`` then needs no
        id exchange of its own. Every id's joint row travels; a structural row only for a marked id (MAT
        reads no other — about half the bytes of shipping both for every id)."""
        flags = positives.long() if positives is not None else torch.zeros_like(entity_ids)
        send_counts = torch.bincount(entity_ids // self.block, minlength=self.world)
        recv_counts = torch.empty_like(send_counts)
        dist.all_to_all_single(recv_counts, send_counts)     # the step's one host-blocking exchange (sizes)
        send, recv = send_counts.tolist(), recv_counts.tolist()
        requested = torch.empty(sum(recv), dtype=torch.long, device=entity_ids.device)
        dist.all_to_all_single(requested, (2 * entity_ids + flags).contiguous(), recv, send)
        requested, marked = requested >> 1, (requested & 1).bool()
        marked_mine = self._split_counts(positives, send) if positives is not None else [0] * self.world
        marked_theirs = self._split_counts(marked, recv)
        if positives is not None:
            self._positives = (entity_ids[positives], requested[marked], marked_mine, marked_theirs)

        owned, position = unique_ids(requested, self.num_entities)   # requests from several ranks coincide
        rows, self._relations = self.tables.lookup_owned(owned, relation_ids)
        joint, _ = self.model(rows)
        if joint is rows.structural:                  # structure-only: the joint row is the structural row
            received = differentiable_all_to_all(joint.new_empty(len(entity_ids), joint.shape[1]), joint[position],
                                                 send, recv)
            return self._entities(entity_ids, received, received), self._relations
        # per requesting rank: its ids' joint rows, then the structural rows of its marked ids
        parts = zip(torch.split(joint[position], recv), torch.split(rows.structural[position[marked]], marked_theirs))
        outgoing = torch.cat([piece for pair in parts for piece in pair])
        incoming = [a + b for a, b in zip(send, marked_mine)]
        received = differentiable_all_to_all(joint.new_empty(sum(incoming), joint.shape[1]), outgoing,
                                             incoming, [a + b for a, b in zip(recv, marked_theirs)])
        pieces = torch.split(received, [n for pair in zip(send, marked_mine) for n in pair])
        structural = joint.new_full((len(entity_ids), joint.shape[1]), float("nan"))   # unread: NaN if ever read
        if positives is not None:
            structural = structural.index_copy(0, positives.nonzero().squeeze(1), torch.cat(pieces[1::2]))
        return self._entities(entity_ids, torch.cat(pieces[0::2]), structural), self._relations

    @staticmethod
    def _split_counts(mask: Tensor, counts: list[int]) -> list[int]:
        return [int(part.sum()) for part in torch.split(mask, counts)]

    def _fuse_owned(self, owned: Tensor, relation_ids: Tensor) -> tuple[Tensor, int, bool]:
        """[joint | structural] rows of owned ids (the joint row alone for structure-only models)."""
        rows, self._relations = self.tables.lookup_owned(owned, relation_ids)
        joint, _ = self.model(rows)
        fused = joint is not rows.structural          # structure-only: the joint row is the structural row
        return (torch.cat([joint, rows.structural], dim=1) if fused else joint), joint.shape[1], fused

    def _entities(self, entity_ids: Tensor, joint: Tensor, structural: Tensor) -> EmbeddedEntities:
        masks = {m: getattr(self.tables, f"present_{m}")[entity_ids] for m in self.tables.modalities}
        return EmbeddedEntities(joint, structural, masks)

    @torch.no_grad()
    def positives(self, entity_ids: Tensor, relation_ids: Tensor) -> tuple[EmbeddedEntities, Tensor]:
        """The positives' rows again, with the updated model (the generator step): the owners already hold the
        marked ids from the last exchange, so only the fused rows travel — one all-to-all, no id exchange.
        ``entity_ids`` must be the marked ids of that exchange (sorted unique heads and tails)."""
        mine, requested, receive_counts, send_counts = self._positives
        if not torch.equal(entity_ids, mine):
            raise ValueError("positives() must ask for the ids marked in the last exchange")
        owned, position = unique_ids(requested, self.num_entities)
        answers, width, fused = self._fuse_owned(owned, relation_ids)
        received = answers.new_empty(len(entity_ids), answers.shape[1])
        dist.all_to_all_single(received, answers[position].contiguous(), receive_counts, send_counts)
        joint, structural = (received[:, :width], received[:, width:]) if fused else (received, received)
        return self._entities(entity_ids, joint, structural), self._relations
