"""Process-group setup from torchrun's environment (or Slurm's, under srun), device and backend choice."""
from __future__ import annotations

import math
import os
import subprocess
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _first_slurm_host() -> str:
    nodelist = os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST", "")
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True)
        return out.stdout.split()[0]
    except (OSError, subprocess.CalledProcessError, IndexError):
        return "127.0.0.1"


def adopt_slurm_environment() -> None:
    """Under ``srun python launch/train.py`` (one task per rank, no torchrun) map Slurm's variables."""
    if "RANK" in os.environ or "SLURM_PROCID" not in os.environ:
        return
    os.environ["RANK"] = os.environ["SLURM_PROCID"]
    os.environ["WORLD_SIZE"] = os.environ["SLURM_NTASKS"]
    os.environ["LOCAL_RANK"] = os.environ.get("SLURM_LOCALID", "0")
    os.environ.setdefault("MASTER_ADDR", _first_slurm_host())
    os.environ.setdefault("MASTER_PORT", str(29500 + int(os.environ.get("SLURM_JOB_ID", "0")) % 1000))


def world_size_from_environment() -> int:
    adopt_slurm_environment()
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_distributed() -> DistEnv:
    """Initialise the default process group once: nccl on GPUs, gloo on CPUs (chosen, never edited in)."""
    adopt_slurm_environment()
    cuda = torch.cuda.is_available()
    backend = "nccl" if cuda else "gloo"
    if not cuda:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")   # DeepSpeed then uses gloo and its CPU ops
    if "WORLD_SIZE" not in os.environ:              # a lone process (not torchrun/srun): a world of one
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=os.environ.get("MASTER_PORT") or str(_free_port()))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        store = _elastic_store()
        if store is None:
            dist.init_process_group(backend)
        else:
            dist.init_process_group(backend, store=store, rank=int(os.environ["RANK"]),
                                    world_size=int(os.environ["WORLD_SIZE"]))
    return DistEnv(dist.get_rank(), dist.get_world_size(), local_rank, device, backend)


def shutdown_distributed() -> None:
    """Barrier, then destroy the process group before the interpreter exits.

    Without it a rank that finishes first can be torn down while gloo's background threads are still
    joinable; seen here: "terminate called without an active exception" (SIGABRT) on a finished rank.
    """
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def exit_distributed(code: int = 0) -> None:
    """``shutdown_distributed``, then leave the process at once with ``code`` (stdio and logging flushed).

    Even after the process group is destroyed, a rank's interpreter teardown can still abort with "terminate
    called without an active exception" (a library's native thread still joinable when its owner is destroyed);
    seen here on 1 run in ~3 of the 2-rank export and semantics jobs. Everything the command writes is closed
    by then, so nothing is lost by skipping the teardown."""
    import logging
    import sys

    shutdown_distributed()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _elastic_store():
    """Under torchrun's agent store, a store namespaced by restart attempt.

    After an elastic restart the agent's store still holds the previous attempt's process-group keys;
    seen here (torch 2.13, gloo): a restarted rank read a dead peer's address and the restart failed.
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    from datetime import timedelta
    base = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                         timeout=timedelta(minutes=10))
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return dist.PrefixStore(f"mmkgc/{os.environ.get('TORCHELASTIC_RUN_ID', '')}/attempt-{attempt}", base)


def _free_port() -> int:
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def allreduce_sum_hook(_state, bucket):
    """DDP comm hook: sum gradients instead of averaging (each loss is pre-weighted by its rank's share of the batch,
    see step.py)."""
    return dist.all_reduce(bucket.buffer(), async_op=True).get_future().then(lambda fut: fut.value()[0])


@torch.no_grad()
def global_softmax(logits: torch.Tensor) -> torch.Tensor:
    """This rank's entries of a softmax over the concatenation of every rank's ``logits`` along dim 0, each
    column on its own. One collective: every rank shares (its maximum, its sum of exp(x − maximum)) per column,
    and each combines them into the global maximum and normaliser."""
    columns = logits.shape[1:]
    flat = logits.reshape(len(logits), math.prod(columns)).double()     # no -1: a rank may hold 0 rows
    top = flat.max(dim=0).values if len(flat) else flat.new_full((flat.shape[1],), float("-inf"))
    total = torch.exp(flat - top).sum(dim=0)
    mine = torch.stack([top, total])
    shared = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(shared, mine)
    tops, totals = torch.stack(shared).unbind(1)              # [world, columns] each
    overall = tops.max(dim=0).values
    normaliser = (totals * torch.exp(tops - overall).nan_to_num(0.0)).sum(dim=0)
    return (torch.exp(flat - overall) / normaliser).to(logits.dtype).reshape(len(logits), *columns)


class _GatherRows(torch.autograd.Function):
    """Every rank's rows (padded to the longest) concatenated in rank order; the backward sums the gradients of
    every rank's copy and returns this rank's rows (an all-reduce: gloo has no reduce-scatter)."""

    @staticmethod
    def forward(ctx, rows: torch.Tensor, counts: list[int]):
        longest = max(counts)
        padded = torch.nn.functional.pad(rows, (0, 0, 0, longest - len(rows))).contiguous()
        parts = [torch.empty_like(padded) for _ in counts]
        dist.all_gather(parts, padded)
        ctx.counts, ctx.rank = counts, dist.get_rank()
        return torch.cat([p[:n] for p, n in zip(parts, counts)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous()
        dist.all_reduce(grad)
        start = sum(ctx.counts[:ctx.rank])
        return grad[start:start + ctx.counts[ctx.rank]], None


def gather_rows_differentiable(rows: torch.Tensor) -> tuple[torch.Tensor, slice]:
    """(every rank's rows in rank order, the slice of them that are this rank's); gradients flow back to the
    rows' owners."""
    count = torch.tensor([len(rows)], dtype=torch.int64)
    counts = [torch.zeros_like(count) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, count)
    counts = [int(c) for c in counts]
    start = sum(counts[:dist.get_rank()])
    return _GatherRows.apply(rows, counts), slice(start, start + len(rows))


class _SumOverRanks(torch.autograd.Function):
    """All-reduce sum whose backward is the all-reduce sum of the gradients (every rank's loss reads the sum)."""

    @staticmethod
    def forward(ctx, t: torch.Tensor):
        out = t.clone().contiguous()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.clone().contiguous()
        dist.all_reduce(grad)
        return grad


def sum_over_ranks(t: torch.Tensor) -> torch.Tensor:
    return _SumOverRanks.apply(t)


@torch.no_grad()
def max_over_ranks(t: torch.Tensor) -> torch.Tensor:
    out = t.clone().contiguous()
    dist.all_reduce(out, op=dist.ReduceOp.MAX)
    return out
