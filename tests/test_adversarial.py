"""The reference adversarial term at any world size: two real gloo ranks (file rendezvous, 1 thread each), each
holding half of a batch of fakes, give the one-process loss and gradients — the softmax runs over the global
batch, and each rank's share is scaled so that the step's 1/world loss scaling sums it back."""
import json
import os

import pytest
import torch
import torch.distributed as dist

from support import run_gloo_ranks
from mmkgc_dist.model import batch_adversarial_loss

POSITIVE = [2.0, 1.0, 3.0, 0.5, -0.2, 1.5]
FAKE = [0.5, -1.0, 2.0, 0.3, 1.1, -0.4]
ALPHA = 2.0


WORLD = 2


def _rank(rank: int, init_file: str, out: str) -> None:
    from mmkgc_dist.parallel.env import global_softmax

    torch.set_num_threads(1)
    world = WORLD
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    per = len(FAKE) // world
    pos = torch.tensor(POSITIVE[rank * per:(rank + 1) * per])
    fake = torch.tensor(FAKE[rank * per:(rank + 1) * per], requires_grad=True)
    loss_scale = 1.0 / world                                  # as the distributed runtime sets it
    weights = global_softmax(ALPHA * fake.detach())
    local = batch_adversarial_loss(pos, fake, weights / loss_scale)
    (local * loss_scale).backward()
    total = (local * loss_scale).detach().clone()
    dist.all_reduce(total)
    with open(os.path.join(out, f"rank-{rank}.json"), "w") as fh:
        json.dump({"loss": total.item(), "weights": weights.tolist(), "grad": fake.grad.tolist()}, fh)
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.slow
def test_reference_adversarial_term_is_the_same_on_two_ranks(tmp_path):
    run_gloo_ranks(_rank, WORLD, tmp_path)
    ranks = [json.load(open(tmp_path / f"rank-{r}.json")) for r in range(2)]
    fake = torch.tensor(FAKE, requires_grad=True)
    one = batch_adversarial_loss(torch.tensor(POSITIVE), fake, torch.softmax(ALPHA * fake.detach(), dim=0))
    one.backward()
    assert abs(ranks[0]["loss"] - one.item()) < 1e-6 and abs(ranks[1]["loss"] - one.item()) < 1e-6
    assert torch.allclose(torch.tensor(ranks[0]["weights"] + ranks[1]["weights"]),
                          torch.softmax(ALPHA * torch.tensor(FAKE), dim=0), atol=1e-7)
    assert torch.allclose(torch.tensor(ranks[0]["grad"] + ranks[1]["grad"]), fake.grad, atol=1e-7)
