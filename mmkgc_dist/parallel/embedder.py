"""Owner-computes fusion: each entity is looked up and fused on the rank that owns its rows, and only the
fused embedding travels.

Data parallelism over positives does not shrink the fusion work: with 128 negatives per positive, every
rank's half of a DB15K batch still touches nearly all 12.8k entities, so each rank would project all of
their 4096-d features and pull them through TorchRec's all-to-all. Fusing at the owner splits the
projection work by world size and ships 2d-wide joint rows (plus the positives' 2d structural rows for
MAT) instead of the raw features. The exchange is an autograd-aware all-to-all, so gradients return to the
owners, flow through the fusion (its gradients are summed over ranks: distributed.DenseGradients) and into the
sharded tables.

Owners are contiguous id blocks of ceil(N / world) rows — the layout of TorchRec's row-wise sharding, so
the owner's own table lookup stays on the rank.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.nn.functional import all_to_all_single as differentiable_all_to_all

from ..data.extraction import owner_block
from ..model.kgc import EmbeddedEntities, unique_ids


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
        owners = entity_ids // self.block
        # per peer rank: how many ids I ask of it and how many of them are marked; the one exchange of sizes
        # and the step's one wait for the host (split sizes must be Python ints)
        send_counts = torch.stack([torch.bincount(owners, minlength=self.world),
                                   torch.bincount(owners, weights=flags, minlength=self.world).long()], dim=1)
        recv_counts = torch.empty_like(send_counts)
        dist.all_to_all_single(recv_counts, send_counts)
        (send, marked_mine), (recv, marked_theirs) = send_counts.T.tolist(), recv_counts.T.tolist()
        requested = torch.empty(sum(recv), dtype=torch.long, device=entity_ids.device)
        dist.all_to_all_single(requested, (2 * entity_ids + flags).contiguous(), recv, send)
        requested, marked = requested >> 1, (requested & 1).bool()
        if positives is not None:
            self._positives = (entity_ids[positives], requested[marked], marked_mine, marked_theirs)

        owned, position = unique_ids(requested, self.num_entities)   # requests from several ranks coincide
        joint, structural = self._fuse_owned(owned, relation_ids)
        if positives is None or structural is None:   # no MAT: the joint rows alone travel
            received = differentiable_all_to_all(joint.new_empty(len(entity_ids), joint.shape[1]), joint[position],
                                                 send, recv)
            return self._entities(entity_ids, received, received if structural is None else None), self._relations
        # per requesting rank: its ids' joint rows, then the structural rows of its marked ids
        parts = zip(torch.split(joint[position], recv), torch.split(structural[position[marked]], marked_theirs))
        outgoing = torch.cat([piece for pair in parts for piece in pair])
        incoming = [a + b for a, b in zip(send, marked_mine)]
        received = differentiable_all_to_all(joint.new_empty(sum(incoming), joint.shape[1]), outgoing,
                                             incoming, [a + b for a, b in zip(recv, marked_theirs)])
        pieces = torch.split(received, [n for pair in zip(send, marked_mine) for n in pair])
        # the marked rows arrive in id order (owners hold contiguous id blocks), as structural_of expects
        return self._entities(entity_ids, torch.cat(pieces[0::2]), torch.cat(pieces[1::2]), positives), \
            self._relations

    def _fuse_owned(self, owned: Tensor, relation_ids: Tensor) -> tuple[Tensor, Tensor | None]:
        """Joint and structural rows of owned ids; structural is None for structure-only models (the joint row
        is the structural row)."""
        rows, self._relations = self.tables.lookup_owned(owned, relation_ids)
        joint, _ = self.model(rows)
        return joint, (None if joint is rows.structural else rows.structural)

    def _entities(self, entity_ids: Tensor, joint: Tensor, structural: Tensor | None,
                  structural_of: Tensor | None = None) -> EmbeddedEntities:
        masks = {m: getattr(self.tables, f"present_{m}")[entity_ids] for m in self.tables.modalities}
        return EmbeddedEntities(joint, structural, masks, structural_of)

    @torch.no_grad()
    def positives(self, entity_ids: Tensor, relation_ids: Tensor) -> tuple[EmbeddedEntities, Tensor]:
        """The positives' rows again, with the updated model (the generator step): the owners already hold the
        marked ids from the last exchange, so only the fused rows travel — one all-to-all, no id exchange.
        ``entity_ids`` must be the marked ids of that exchange (sorted unique heads and tails)."""
        mine, requested, receive_counts, send_counts = self._positives
        if not torch.equal(entity_ids, mine):
            raise ValueError("positives() must ask for the ids marked in the last exchange")
        owned, position = unique_ids(requested, self.num_entities)
        joint, structural = self._fuse_owned(owned, relation_ids)
        answers = joint if structural is None else torch.cat([joint, structural], dim=1)
        received = answers.new_empty(len(entity_ids), answers.shape[1])
        dist.all_to_all_single(received, answers[position].contiguous(), receive_counts, send_counts)
        width = joint.shape[1]
        return self._entities(entity_ids, received[:, :width], received[:, width:] if structural is not None
                              else received), self._relations
