"""What a GPU step pays besides its arithmetic, counted on the CPU: operator calls (each one a kernel launch on a
GPU) and host synchronisations (each one a wait of the host for the device) per single-process training step at
the DB15K config, split into sampling and the step, each sync attributed to the line that causes it.

On a GPU a step of 1024 positives is launch-bound well before it is bandwidth-bound (issue #10: the H100 ran the
structure-only step in 17 ms, its memory roofline is under 1 ms), so these counts are the budget the GPU targets
are won or lost in, and they can be watched here without a GPU. Counted eagerly (``train.compile=false``:
compiled regions would fuse some elementwise calls, not remove syncs).

    python benchmarks/step_overhead.py [--modes structure,scalable,exact] [--steps 3] [--graph db15k|small]
        [--set KEY=VALUE ...]

A sync is: reading a tensor's value on the host (``.item()``/``int()``/``bool()``, ``.tolist()``), an output
whose size depends on the values (``nonzero``, boolean-mask indexing, ``unique``, ``masked_select``, a sparse
gradient's ``coalesce``), or ``torch.equal``. The optimizers' step counters live on the host and are not
counted. Writes results/step_overhead/step_overhead.json.
"""
from __future__ import annotations

import argparse
import collections
import gc
import os
import sys
import traceback
import warnings

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import machine, results_dir, write_json  # noqa: E402
from throughput import MODES, db15k_shaped  # noqa: E402

VALUE_SIZED = {"nonzero", "unique", "_unique", "_unique2", "unique_consecutive", "unique_dim", "masked_select",
               "_coalesce", "_local_scalar_dense", "equal"}


def _caller() -> str:
    """The innermost frame of the project (file:line function)."""
    for frame in reversed(traceback.extract_stack()):
        if "mmkgc_dist" in frame.filename:
            return f"{frame.filename[frame.filename.rindex('mmkgc_dist'):]}:{frame.lineno} {frame.name}"
    return "?"


def _bool_index(args) -> bool:
    indices = args[1] if len(args) > 1 and isinstance(args[1], (list, tuple)) else ()
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices)


def host_counters() -> set[int]:
    """Storage addresses of the optimizers' step counters: torch's Adam (not capturable) and the table
    optimizers keep them on the host even when training on a GPU, so reading them waits for nothing."""
    counters = set()
    with warnings.catch_warnings():          # isinstance on some lazily imported modules warns
        warnings.simplefilter("ignore")
        optimizers = [obj for obj in gc.get_objects() if isinstance(obj, torch.optim.Optimizer)]
    for obj in optimizers:
        counters.update(state["step"].data_ptr() for state in obj.state.values()
                        if isinstance(state.get("step"), torch.Tensor))
    return counters


class OverheadCounter(TorchDispatchMode):
    """Counts operator calls and host syncs (with their project line) while active; ``Tensor.tolist`` does not
    go through the dispatcher, so it is wrapped while the counter runs. Reads of ``host`` tensors (by storage
    address) are not syncs."""

    def __init__(self, host: set[int] = frozenset()):
        super().__init__()
        self.ops, self.host = 0, host
        self.syncs: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        name = func.__name__.split(".")[0]
        host_read = name == "_local_scalar_dense" and args[0].data_ptr() in self.host
        if not host_read and (name in VALUE_SIZED or (name in ("index", "index_put", "index_put_")
                                                      and _bool_index(args))):
            self.syncs[f"{name} @ {_caller()}"] += 1
        return func(*args, **(kwargs or {}))

    def __enter__(self):
        original = self._original_tolist = torch.Tensor.tolist
        counter = self

        def tolist(tensor):
            counter.syncs[f"tolist @ {_caller()}"] += 1
            return original(tensor)
        torch.Tensor.tolist = tolist
        return super().__enter__()

    def __exit__(self, *exc):
        torch.Tensor.tolist = self._original_tolist
        return super().__exit__(*exc)


# The DB15K config, and a small one for the test suite (same code paths, seconds instead of a minute).
GRAPHS = {"db15k": (dict(), [("model.dim", "250"), ("train.batch_size", "1024"), ("train.num_negatives", "128")]),
          "small": (dict(n=2000, r=50, triples=20000, visual=64, text=32),
                    [("model.dim", "16"), ("train.batch_size", "256"), ("train.num_negatives", "32")])}


def count_mode(data, size: list, mode: str, steps: int, extra: list | None = None) -> dict:
    from mmkgc_dist.config import load_config
    from mmkgc_dist.compose import local_trainer

    cfg = load_config(None, size + [("train.filter_negatives", "true"), ("train.epochs", "1"),
                                    ("train.compile", "false")] + MODES[mode] + (extra or []))
    trainer = local_trainer(cfg, data, None, show_progress=False)
    batches = trainer.batches()
    batch, negatives = next(batches)
    trainer.step_fn(batch, negatives)           # first step: optimizer state is created lazily
    host = host_counters()
    sampling, step = OverheadCounter(host), OverheadCounter(host)
    for _ in range(steps):
        with sampling:
            batch, negatives = next(batches)
        with step:
            trainer.step_fn(batch, negatives)
    per_step = lambda c: {"ops": c.ops / steps, "syncs": sum(c.syncs.values()) / steps,
                          "sync_sites": {k: v / steps for k, v in c.syncs.most_common()}}
    return {"mode": mode, "sampling": per_step(sampling), "step": per_step(step)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--modes", default="structure,scalable,exact")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--graph", choices=sorted(GRAPHS), default="db15k")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="extra config override for every mode, e.g. --set mat.enabled=false")
    ap.add_argument("--out", default=None, help="folder for step_overhead.json (default results/step_overhead)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    shape, size = GRAPHS[args.graph]
    data = db15k_shaped(np.random.default_rng(0), **shape)
    rows = []
    for mode in args.modes.split(","):
        row = count_mode(data, size, mode, args.steps, [tuple(o.split("=", 1)) for o in args.set])
        rows.append(row)
        s, t = row["sampling"], row["step"]
        print(f"{mode:>10}: sampling {s['ops']:6.0f} ops {s['syncs']:4.1f} syncs | step {t['ops']:6.0f} ops "
              f"{t['syncs']:4.1f} syncs", flush=True)
        for site, n in list(s["sync_sites"].items()) + list(t["sync_sites"].items()):
            print(f"{'':>12}{n:5.1f}  {site}")
    out = args.out or results_dir("step_overhead")
    os.makedirs(out, exist_ok=True)
    command = "python benchmarks/step_overhead.py" + "".join(
        f" --{flag} {value}" for flag, value, default in [("modes", args.modes, "structure,scalable,exact"),
                                                          ("steps", args.steps, 3), ("graph", args.graph, "db15k")]
        if value != default) + "".join(f" --set {o}" for o in args.set)
    write_json(os.path.join(out, "step_overhead.json"),
               {"machine": machine(), "command": command, "graph": args.graph, "shape": shape,
                "config": size + [tuple(o.split("=", 1)) for o in args.set],
                "note": "filtering on, eager (train.compile=false), single process", "rows": rows})
    print(f"wrote {out}/step_overhead.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
