"""Distributed scaling at the DB15K config: 1 rank x 1 thread vs 2 ranks x 1 thread (gloo), same global
batch (1024 positives, 128 per-positive negatives, d=250, 4096-d visual + 384-d text, MAT on), with the
step time split into data, embed (lookup + fusion + all-to-alls), score, backward (incl. gradient all-to-alls and the
fused table update), dense optimizer, generator (DeepSpeed).

    python benchmarks/scaling.py [--steps 4] [--repeats 3] [--mode exact|scalable]

Runs 1 rank and 2 ranks alternately ``--repeats`` times and reports the median speed-up; the communication share
is the wall time rank 0 spends inside torch.distributed collectives (transfer and waiting) over the step time.
After each pair, two independent 1-rank runs at once give the contention ceiling: what two processes that never
communicate reach together on this machine (shared cores, caches, memory bandwidth), the bound for any 2-rank run.

Writes results/scaling/{scaling.json,scaling.md,scaling.png}. Each world size runs under real torchrun.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from _common import machine, new_plot, results_dir, save_plot, write_json  # noqa: E402

MODES = {"exact": [("train.negatives", "per_positive")],
         "scalable": [("train.negatives", "chunk_shared"), ("train.chunk_size", "64"),
                      ("model.raw_features", "frozen")]}
PHASES = ["data", "embed", "score", "backward", "optimizer", "generator"]
COLLECTIVES = ["all_to_all_single", "all_reduce", "all_gather", "all_gather_into_tensor", "reduce_scatter_tensor",
               "broadcast", "barrier", "all_gather_object", "broadcast_object_list"]


def _bytes_sent(name: str, args, kwargs) -> int:
    """Bytes this rank hands to a collective: the input of all_to_all_single / all_gather, the buffer of
    all_reduce / broadcast (0 for object collectives and barriers)."""
    import torch

    index = 1 if name in ("all_to_all_single", "all_gather", "all_gather_into_tensor", "reduce_scatter_tensor") else 0
    tensor = args[index] if len(args) > index else kwargs.get("input", kwargs.get("tensor"))
    return tensor.numel() * tensor.element_size() if isinstance(tensor, torch.Tensor) else 0


class CollectiveClock:
    """Counts the torch.distributed collectives of the timed steps and the wall time spent inside them
    (transfer plus waiting for the slower rank): the communication share is that time over the step's."""

    def __init__(self):
        import torch.distributed as dist

        self.calls, self.seconds, self.enabled, self.bytes = {}, 0.0, False, {}
        self.by_call: list[tuple[str, float, int]] = []   # (name, seconds, bytes sent) in call order
        for name in COLLECTIVES:
            if hasattr(dist, name):
                setattr(dist, name, self._wrap(name, getattr(dist, name)))

    def _wrap(self, name, fn):
        def timed(*args, **kwargs):
            if not self.enabled:
                return fn(*args, **kwargs)
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                sent = _bytes_sent(name, args, kwargs)
                self.seconds += time.perf_counter() - start
                self.calls[name] = self.calls.get(name, 0) + 1
                self.bytes[name] = self.bytes.get(name, 0) + sent
                self.by_call.append((name, time.perf_counter() - start, sent))
        return timed


def wait_at_gate(gate: str, parties: int) -> None:
    """A file rendezvous between independent jobs: sign in, then wait until ``parties`` have signed in, so the
    concurrent 1-rank jobs of the contention ceiling time the same stretch of wall time."""
    open(os.path.join(gate, f"{os.getpid()}"), "w").close()
    while len(os.listdir(gate)) < parties:
        time.sleep(0.005)


def worker(out: str, steps: int, mode: str, extra: list[str], warmup: int, gate: str | None = None) -> None:
    import numpy as np
    import torch
    from throughput import db15k_shaped
    from mmkgc_dist.config import load_config
    from mmkgc_dist.compose import distributed_trainer

    torch.set_num_threads(1)
    clock = CollectiveClock()             # before anything binds the functions
    cfg = load_config(None, [("model.dim", "250"), ("train.batch_size", "1024"), ("train.num_negatives", "128"),
                             ("train.epochs", "1")] + MODES[mode] + [tuple(o.split("=", 1)) for o in extra])
    trainer = distributed_trainer(cfg, db15k_shaped(np.random.default_rng(0)), run_dir=None, show_progress=False)
    timer = trainer.step_fn.timer
    batches = trainer.batches()
    totals = []
    for i in range(steps + warmup):
        if i == warmup:                             # after warm-up (compilation, the heap reaching its peak)
            timer.enabled = True
            timer.seconds.clear()
            if gate:
                wait_at_gate(gate, 2)
        torch.distributed.barrier()
        clock.enabled = i >= warmup
        start = time.perf_counter()
        with timer("data"):
            batch, negatives = next(batches)
        trainer.step_fn(batch, negatives)
        clock.enabled = False
        torch.distributed.barrier()                 # the step ends when the slowest rank is done
        if i >= warmup:
            totals.append(time.perf_counter() - start)
    phases = {k: v / steps for k, v in timer.seconds.items()}
    mine = {"phases_s": phases, "collective_s_per_step": clock.seconds / steps}
    every_rank = [None] * trainer.runtime.env.world_size
    torch.distributed.all_gather_object(every_rank, mine)     # outside the timed steps
    if trainer.runtime.env.is_main:
        step = float(np.median(totals))
        with open(out, "w") as fh:
            json.dump({"world_size": trainer.runtime.env.world_size, "step_s": step, "positives_per_s": 1024 / step,
                       "phases_s": phases, "steps": totals, "per_rank": every_rank,
                       "collectives_per_step": {k: v / steps for k, v in clock.calls.items()},
                       "collective_s_per_step": clock.seconds / steps,
                       "communication_share": clock.seconds / sum(totals),
                       "collective_bytes_per_step": {k: v / steps for k, v in clock.bytes.items()},
                       "collective_sequence": [(n, round(t, 4), b) for n, t, b in clock.by_call[:len(clock.by_call) // steps]]},
                      fh)


def launch(world: int, path: str, args, gate: str | None = None) -> subprocess.Popen:
    """Start one torchrun job; its output goes to ``path``.log (a file, not a pipe: while two jobs run at once,
    the one not being waited on must never block on a full pipe)."""
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    with open(path + ".log", "w") as log:
        return subprocess.Popen([torchrun, "--standalone", f"--nproc_per_node={world}", __file__, "--worker", path,
                                 "--steps", str(args.steps), "--warmup", str(args.warmup), "--mode", args.mode,
                                 *[f"--set={o}" for o in args.set], *(["--gate", gate] if gate else [])],
                                env=env, stdout=log, stderr=subprocess.STDOUT)


def finish(proc: subprocess.Popen, what: str, path: str) -> dict:
    if proc.wait() != 0:
        with open(path + ".log") as log:
            raise SystemExit(f"{what} failed:\n{log.read()[-3000:]}")
    return json.load(open(path))


def contention_ceiling(one: dict, out: str, args) -> dict:
    """Two independent 1-rank runs at once (no communication at all): how much the two processes slow each
    other down by sharing the machine's cores, caches and memory bandwidth. Twice the alone step time over
    the together step time is the most any 2-rank run can reach here."""
    paths = [os.path.join(out, f"alone_together{i}.json") for i in (0, 1)]
    gate = tempfile.mkdtemp(prefix="scaling_gate_")        # both start timing together (wait_at_gate)
    procs = [launch(1, path, args, gate) for path in paths]
    together = [finish(p, "concurrent 1-rank run", path)["step_s"] for p, path in zip(procs, paths)]
    shutil.rmtree(gate)
    ceiling = 2 * one["step_s"] / max(together)
    print(f"two 1-rank runs at once: steps {together[0]:.2f}s / {together[1]:.2f}s vs {one['step_s']:.2f}s alone "
          f"-> ceiling {ceiling:.2f}x", flush=True)
    return {"together_step_s": together, "ceiling": ceiling}


def run(world: int, path: str, args) -> dict:
    r = finish(launch(world, path, args), f"world {world}", path)
    calls = sum(r["collectives_per_step"].values())
    print(f"world {world}: {r['positives_per_s']:.1f} positives/s, step {r['step_s']:.2f}s, phases " +
          ", ".join(f"{k} {r['phases_s'].get(k, 0):.2f}" for k in PHASES) +
          f"; {calls:.0f} collectives/step, {r['collective_s_per_step']:.2f}s in them "
          f"({100 * r['communication_share']:.0f}%)", flush=True)
    return r


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3, help="1-rank/2-rank pairs, run alternately")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    ap.add_argument("--mode", choices=list(MODES), default="exact")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="extra config override for both runs, e.g. --set mat.enabled=false")
    ap.add_argument("--no-ceiling", dest="ceiling", action="store_false",
                    help="skip the contention ceiling (two 1-rank runs at once after each pair)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--gate", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.steps, args.mode, args.set, args.warmup, args.gate)
        from mmkgc_dist.parallel.env import exit_distributed
        exit_distributed(0)           # a finished rank's teardown must not abort (see env.exit_distributed)
    out = results_dir("scaling")
    pairs = []
    ceilings = []
    for repeat in range(args.repeats):
        pair = [run(world, os.path.join(out, f"world{world}.json"), args) for world in (1, 2)]
        pair.append(pair[1]["positives_per_s"] / pair[0]["positives_per_s"])
        print(f"run {repeat + 1}: speed-up {pair[2]:.2f}x", flush=True)
        pairs.append(pair)
        if args.ceiling:
            ceilings.append(contention_ceiling(pair[0], out, args))
    middle = sorted(pairs, key=lambda p: p[2])[len(pairs) // 2]      # the run with the median speed-up
    rows, speedup = middle[:2], middle[2]
    comm = rows[1]["communication_share"]
    report = {"machine": machine(), "mode": args.mode, "overrides": args.set,
              "command": " ".join(["python", "benchmarks/scaling.py", *sys.argv[1:]]),
              "runs": [{"one_rank": p[0], "two_ranks": p[1], "speedup": p[2],
                        **({"contention": ceilings[i]} if ceilings else {})} for i, p in enumerate(pairs)],
              "speedups": [p[2] for p in pairs], "median_speedup": speedup, "rows": rows,
              "communication_share_two_ranks": comm}
    if ceilings:
        report["contention_ceilings"] = [c["ceiling"] for c in ceilings]
        report["median_contention_ceiling"] = sorted(report["contention_ceilings"])[len(ceilings) // 2]
    write_json(os.path.join(out, "scaling.json"), report)
    with open(os.path.join(out, "scaling.md"), "w") as fh:
        fh.write(f"DB15K config ({args.mode}), 1 thread per rank, gloo; {report['machine']['date']}; "
                 f"the run with the median speed-up of {len(pairs)}\n\n")
        fh.write("| ranks | positives/s | step (s) | " + " | ".join(PHASES) + " | collectives/step | in them |\n")
        fh.write("|---" * (5 + len(PHASES)) + "|\n")
        for r in rows:
            fh.write(f"| {r['world_size']} | {r['positives_per_s']:.1f} | {r['step_s']:.2f} | " +
                     " | ".join(f"{r['phases_s'].get(k, 0):.2f}" for k in PHASES) +
                     f" | {sum(r['collectives_per_step'].values()):.0f} | {100 * r['communication_share']:.0f}% |\n")
        fh.write(f"\nspeed-ups 2 vs 1 rank: {', '.join(f'{p[2]:.2f}x' for p in pairs)} (median {speedup:.2f}x); "
                 f"time inside collectives on rank 0 of 2: {comm:.0%} of the step\n")
        if ceilings:
            fh.write(f"\ncontention ceiling (two independent 1-rank runs at once, 2 x alone / together): "
                     f"{', '.join(f'{c:.2f}x' for c in report['contention_ceilings'])} "
                     f"(median {report['median_contention_ceiling']:.2f}x)\n")
    plot(rows, os.path.join(out, "scaling.png"))
    print(f"median speed-up {speedup:.2f}x of {[round(p[2], 2) for p in pairs]}, communication {comm:.0%}; "
          f"wrote {out}")
    return 0


def plot(rows, path):
    fig, ax = new_plot()
    bottom = [0.0] * len(rows)
    for phase in PHASES:
        vals = [r["phases_s"].get(phase, 0) for r in rows]
        ax.bar([str(r["world_size"]) for r in rows], vals, bottom=bottom, label=phase)
        bottom = [b + v for b, v in zip(bottom, vals)]
    save_plot(fig, ax, path, "ranks (1 thread each)", "seconds per step (per rank)",
              "Step time by phase, DB15K config")


if __name__ == "__main__":
    sys.exit(main())
