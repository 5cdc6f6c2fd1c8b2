"""The dense gradients' sum over two real gloo ranks (file rendezvous, 1 thread each): every rank ends with the
sum of every rank's gradient, bucket by bucket; a parameter one rank left unused gets the other rank's gradient
there too (even an all-zero one), and a parameter no rank used keeps no gradient (one process would not step it
either). Also the global softmax over columns (the MAT term's three kinds of fake in one collective)."""
import json
import os

import pytest
import torch
import torch.distributed as dist

from support import run_gloo_ranks

GRADS = {0: {"a": [1.0, 2.0], "b": None, "c": None, "d": [[0.5, 0.5]], "e": [0.0]},
         1: {"a": [3.0, -1.0], "b": [4.0], "c": None, "d": [[1.5, -0.5]], "e": None}}
LOGITS = [[0.5, -1.0], [2.0, 0.3], [1.1, -0.4], [3.0, 0.0], [-2.0, 1.0]]    # rows split 2 / 3 over the ranks


def _rank(rank: int, init_file: str, out: str) -> None:
    from mmkgc_dist.parallel.distributed import DenseGradients
    from mmkgc_dist.parallel.env import global_softmax

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    params = {"a": torch.zeros(2), "b": torch.zeros(1), "c": torch.zeros(3), "d": torch.zeros(1, 2),
              "e": torch.zeros(1)}
    for name, grad in GRADS[rank].items():
        params[name].grad = None if grad is None else torch.tensor(grad)
    dense = DenseGradients(list(params.values()), bucket_mb=0)   # bucket_mb=0: one parameter per bucket
    dense()                                                      # starts the all-reduces
    dense.wait()                                                 # writes the sums
    rows = LOGITS[:2] if rank == 0 else LOGITS[2:]
    weights = global_softmax(torch.tensor(rows))
    with open(os.path.join(out, f"rank-{rank}.json"), "w") as fh:
        json.dump({"grads": {n: None if p.grad is None else p.grad.tolist() for n, p in params.items()},
                   "weights": weights.tolist()}, fh)
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.slow
def test_dense_gradients_are_summed_and_present_wherever_any_rank_used_them(tmp_path):
    run_gloo_ranks(_rank, 2, tmp_path)
    ranks = [json.load(open(tmp_path / f"rank-{r}.json")) for r in range(2)]
    for out in ranks:
        # "e": used (with a zero gradient) on rank 0 only — every rank steps it, as one process would
        assert out["grads"] == {"a": [4.0, 1.0], "b": [4.0], "c": None, "d": [[2.0, 0.0]], "e": [0.0]}
    weights = torch.tensor(ranks[0]["weights"] + ranks[1]["weights"])
    assert torch.allclose(weights, torch.softmax(torch.tensor(LOGITS), dim=0), atol=1e-6)
