"""Table optimizers, identical for one process and for sharded tables on any number of ranks.

``train.table_optimizer=adam`` (default) is *lazy* Adam, the rule of FBGEMM's fused Adam: a table row moves,
and its moments decay, only in steps where it has a gradient; bias correction uses the global step. With the
paper's batches (1024 positives x 128 negatives on 12.8k entities) every row has a gradient every step, and
lazy Adam is torch's Adam exactly; on graphs of millions of entities it is the standard rule for sparse
embeddings (a dense Adam would touch every row of every shard every step). ``rowwise_adagrad`` is the rule of
FBGEMM's EXACT_ROWWISE_ADAGRAD. The dense fusion weights always use torch's Adam.

``adam_rows_`` and ``adagrad_rows_`` are the update rules; ``LazyAdam`` and ``RowwiseAdagrad`` apply them to
table parameters (one process: sparse gradients of the looked-up rows; replicated tables: dense gradients),
``parallel.tables.ShardedRowOptimizer`` to the rows the owners of sharded tables looked up — one implementation
of each rule at every world size.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor
from torch.optim.adam import adam

BETAS, EPS = (0.9, 0.999), 1e-8
# Most runs of consecutive rows updated in place before gathering instead: on a CPU gathering wide rows is the
# slow part; on a GPU gathers are cheap and every run costs its own handful of kernel launches.
MAX_RUNS = {"cpu": 64, "cuda": 4}


@torch.no_grad()
def adam_rows_(weight: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, rows: Tensor, grad: Tensor, step: int,
               lr: float, betas: tuple[float, float] = BETAS, eps: float = EPS, max_runs: int | None = None) -> None:
    """Adam on ``weight[rows]`` with gradient ``grad`` ([len(rows), width]); ``rows`` unique and sorted;
    ``step`` counts from 1.

    Rows that fall in at most ``max_runs`` runs of consecutive ids (small graphs: nearly every row of a shard has
    a gradient every step) are updated in place run by run — no gathers, no scatters, and the same cost whether
    or not a few rows are missing, so ranks stay in step. Otherwise the rows are gathered, updated and written
    back. Both ways run the same kernel (``adam_block_``). ``max_runs`` defaults by device (MAX_RUNS)."""
    if max_runs is None:
        max_runs = MAX_RUNS.get(weight.device.type, MAX_RUNS["cuda"])
    runs = [(0, 0, len(rows))] if every_row(rows, len(weight)) else row_runs(rows, max_runs)
    if runs is not None:
        for first, offset, length in runs:
            adam_block_(weight[first:first + length], exp_avg[first:first + length],
                        exp_avg_sq[first:first + length], grad[offset:offset + length], step, lr, betas, eps)
        return
    blocks = [t[rows] for t in (weight, exp_avg, exp_avg_sq)]
    adam_block_(*blocks, grad, step, lr, betas, eps)
    for table, block in zip((weight, exp_avg, exp_avg_sq), blocks):
        table.index_copy_(0, rows, block)


def adam_block_(weight: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, grad: Tensor, step: int, lr: float,
                betas: tuple[float, float], eps: float) -> None:
    """torch's fused Adam kernel (the rule of ``torch.optim.Adam``) on one block of rows: one pass over them,
    where the same update in separate tensor operations reads and writes each row-sized array about a dozen
    times (this is most of the table optimizer's time). The kernel needs contiguous blocks — on a strided view
    it would write outside the view — so a column view of a padded table goes through a contiguous copy."""
    tensors = (weight, exp_avg, exp_avg_sq)
    blocks = [t if t.is_contiguous() else t.contiguous() for t in tensors]
    done = torch.full((), step - 1, dtype=torch.float32, device=weight.device)     # the kernel counts it up
    adam(blocks[:1], [grad.contiguous()], blocks[1:2], blocks[2:], [], [done], fused=True, amsgrad=False,
         beta1=betas[0], beta2=betas[1], lr=lr, weight_decay=0.0, eps=eps, maximize=False)
    for table, block in zip(tensors, blocks):
        if block is not table:
            table.copy_(block)


def row_runs(rows: Tensor, max_runs: int) -> list[tuple[int, int, int]] | None:
    """(first row, its position in ``rows``, length) of each run of consecutive ids in the sorted ``rows``;
    None when there are more than ``max_runs`` runs."""
    if len(rows) == 0:
        return []
    offsets = torch.nonzero(rows[1:] - rows[:-1] != 1).squeeze(1) + 1
    if len(offsets) + 1 > max_runs:
        return None
    offsets = torch.cat([offsets.new_zeros(1), offsets])
    # one read of the host for every run's offset and first row (a GPU waits once, not once per run)
    offsets, firsts = torch.stack([offsets, rows[offsets]]).tolist()
    ends = offsets[1:] + [len(rows)]
    return [(first, o, e - o) for first, o, e in zip(firsts, offsets, ends)]


def every_row(rows: Tensor, count: int) -> bool:
    """True when the unique, sorted ``rows`` of a table of ``count`` rows are 0 .. count - 1, i.e. the whole
    table: ``count`` distinct ids in [0, count) can be no others, so the length decides (no read of the ids,
    which on a GPU would wait for them)."""
    return len(rows) == count


@torch.no_grad()
def adagrad_rows_(weight: Tensor, acc: Tensor, rows: Tensor, grad: Tensor, lr: float, eps: float = EPS) -> None:
    """Row-wise Adagrad on ``weight[rows]``: ``acc`` holds one accumulator per row; the mean of the squared
    gradient runs over the width rounded up to a multiple of 4 (TorchRec's padded rows, FBGEMM's rule)."""
    padded = -(-weight.shape[1] // 4) * 4
    a = acc[rows].add_(grad.float().pow(2).sum(1) / padded)
    acc[rows] = a
    weight[rows] -= lr * grad / (a.sqrt() + eps).unsqueeze(1)


def touched_rows(grad: Tensor) -> tuple[Tensor, Tensor]:
    """(sorted rows, their gradient) of a table's gradient. A sparse gradient (the single-process tables'
    lookups) holds exactly the looked-up rows — the rows the sharded owners update too; a dense one (a
    replicated table whose gradient was summed over ranks) gives the rows whose gradient is not zero."""
    if grad.is_sparse:
        rows = grad._indices()[0]
        # looked up as sorted unique ids (entities: one read of the host to be sure; more lookups than rows, as
        # for relations, cannot be unique)
        if len(rows) <= len(grad) and (len(rows) < 2 or bool((rows[1:] > rows[:-1]).all())):
            return rows, grad._values()
        grad = grad.coalesce()          # sorts; a row looked up twice (relations) gets the sum
        return grad.indices()[0], grad.values()
    rows = grad.ne(0).any(dim=1).nonzero().squeeze(1)
    return rows, grad if every_row(rows, len(grad)) else grad[rows]


class _TableOptimizer(torch.optim.Optimizer):
    """Steps every 2-d table parameter that has a gradient (dense or sparse) through ``update``."""

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self.update(p, self.state[p], group)

    def update(self, p: Tensor, state: dict, group: dict) -> None:
        raise NotImplementedError


class LazyAdam(_TableOptimizer):
    """Lazy Adam over table parameters: rows without a gradient (``touched_rows``) are skipped."""

    def __init__(self, params, lr: float, betas: tuple[float, float] = BETAS, eps: float = EPS):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})

    def update(self, p: Tensor, state: dict, group: dict) -> None:
        if not state:
            state["step"] = torch.zeros((), dtype=torch.int64)
            state["exp_avg"], state["exp_avg_sq"] = torch.zeros_like(p), torch.zeros_like(p)
        state["step"] += 1
        rows, grad = touched_rows(p.grad)
        adam_rows_(p, state["exp_avg"], state["exp_avg_sq"], rows, grad, int(state["step"]),
                   group["lr"], group["betas"], group["eps"])


class RowwiseAdagrad(_TableOptimizer):
    """Row-wise Adagrad as FBGEMM's EXACT_ROWWISE_ADAGRAD computes it: one accumulator per row, += mean of the
    row's squared gradient, update g / (sqrt(acc) + eps). The mean runs over the width rounded up to a multiple
    of 4, as TorchRec pads its rows; rows without gradient do not move."""

    def __init__(self, params, lr: float, eps: float = EPS):
        super().__init__(params, {"lr": lr, "eps": eps})

    def update(self, p: Tensor, state: dict, group: dict) -> None:
        if not state:
            state["sum"] = torch.zeros(p.shape[0], dtype=torch.float32, device=p.device)
        rows, grad = touched_rows(p.grad)
        adagrad_rows_(p, state["sum"], rows, grad, group["lr"], group["eps"])


class OptimizerGroup:
    """Several optimizers stepped as one (tables and dense parameters follow different rules). Their state is
    saved by each runtime under world-size-independent names (checkpoint/format.py), not from here.
    ``local``: optimizers whose gradients are final on this process (the owners' table rows); they step first,
    while the dense gradients' sum over ranks is in flight, and ``gradients_ready`` then waits for that sum.
    The parameters are disjoint, so the order changes no number."""

    def __init__(self, *optimizers, local: tuple = (), gradients_ready: Callable[[], None] | None = None):
        self.local = [o for o in local if o is not None]
        self.gradients_ready = gradients_ready
        self.optimizers = self.local + [o for o in optimizers if o is not None]

    @property
    def param_groups(self) -> list[dict]:
        return [g for opt in self.optimizers for g in getattr(opt, "param_groups", [])]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for opt in self.local:
            opt.step()
        if self.gradients_ready is not None:
            self.gradients_ready()
        for opt in self.optimizers[len(self.local):]:
            opt.step()


def table_optimizer(name: str, params: list, lr: float, adagrad_lr: float):
    """The configured rule (train.table_optimizer) for table parameters with dense gradients."""
    if not params:
        return None
    return LazyAdam(params, lr=lr) if name == "adam" else RowwiseAdagrad(params, lr=adagrad_lr)


# ---------------------------------------------------------------------------------- checkpoint state
# Checkpoints hold table-optimizer state under names that do not depend on who updates the table:
# "<table>.exp_avg", "<table>.exp_avg_sq", "<table>.step" (adam) or "<table>.sum" (rowwise_adagrad), at the
# table's own width. ``LazyAdam``/``RowwiseAdagrad`` here and ``parallel.tables.ShardedRowOptimizer`` write and
# read the same names, so a checkpoint of one process resumes on N ranks and back.
def table_state(opt, params: dict[str, Tensor], widths: dict[str, int],
                rows: dict[str, int] | None = None) -> dict[str, Tensor]:
    """The named state of a dense-gradient table optimizer (zeros for tables not stepped yet), of the first
    ``rows[name]`` rows of a table (default: all; a modality table's placeholder row is not saved). Tensors
    that are the optimizer's own are returned as they are (or as views of their first rows), so a checkpoint
    load can fill them in place."""
    out = {}
    for name, p in params.items():
        state, width, count = opt.state.get(p, {}), widths[name], (rows or {}).get(name, p.shape[0])
        if isinstance(opt, LazyAdam):
            out[f"{name}.step"] = state.get("step", torch.zeros((), dtype=torch.int64))
            for key in ("exp_avg", "exp_avg_sq"):
                moment = state.get(key)
                out[f"{name}.{key}"] = moment[:count, :width].contiguous() if moment is not None \
                    else torch.zeros(count, width, device=p.device)
        else:
            out[f"{name}.sum"] = state["sum"][:count] if "sum" in state else torch.zeros(count, device=p.device)
    return out


@torch.no_grad()
def load_table_state(opt, params: dict[str, Tensor], values: dict[str, Tensor]) -> None:
    """Install named state (as ``table_state`` returns it, filled by a checkpoint load) into ``opt``; state
    of fewer rows than the table fills its first rows."""
    def installed(current: Tensor | None, value: Tensor, shape: tuple[int, ...], device) -> Tensor:
        value = value.to(device, torch.float32)
        if current is not None and current.data_ptr() == value.data_ptr():
            return current                                   # filled in place
        whole = torch.zeros(shape, device=device)
        whole[tuple(slice(0, n) for n in value.shape)] = value
        return whole

    for name, p in params.items():
        state = opt.state[p]
        if isinstance(opt, LazyAdam):
            state["step"] = values[f"{name}.step"].to("cpu", torch.int64, copy=True)   # a host counter
            for key in ("exp_avg", "exp_avg_sq"):
                state[key] = installed(state.get(key), values[f"{name}.{key}"], p.shape, p.device)
        else:
            state["sum"] = installed(state.get("sum"), values[f"{name}.sum"], p.shape[:1], p.device)


def load_optimizer_state(opt: torch.optim.Optimizer, state: dict) -> None:
    """The saved state (moments, step counts) into ``opt``, keeping every hyperparameter and implementation flag
    ``opt`` was built with: the config is the source of truth for lr, betas, eps and weight decay, and a checkpoint
    of DeepSpeed's Adam loads into the fused Adam of one process and back (same rule, different kernels)."""
    kept = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
    opt.load_state_dict(state)
    for group, own in zip(opt.param_groups, kept):
        group.update(own)
