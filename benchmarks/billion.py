"""A billion edges end to end on one box: generate → prepare triples → 2-rank streamed training with step
checkpoints → kill -9 of one rank → torchrun restart at the same stream position → sampled evaluation → export
→ answers (predict with known marks, a batch of queries, neighbours). Time, disk and memory per phase.

    python benchmarks/billion.py --edges 1e9 --entities 1e7 --relations 1000 --workdir /big/scratch
    python benchmarks/billion.py --edges 3e5 --entities 2e4 --relations 50 --batch 2048 --steps 80 --kill-at 40 \
        --eval-triples 2000                                                                       # smoke
    python benchmarks/billion.py --project results/billion/billion.json       # recompute the GPU projection
    python benchmarks/billion.py --table results/billion/billion.json         # the phases as a markdown table

Before each phase the free disk of the work folder and the available memory are checked against what the
phase needs (estimated from the sizes); a shortfall stops the run with one line naming it. Every process's
peak RSS is sampled from /proc (training: per rank), and compared with a model of what a rank must hold: its
shard of the tables and their Adam state. The generated data is removed at the end (--keep keeps it); the
result JSON and the loss-curve PNG stay in results/billion/.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from _common import REPO, machine, new_plot, results_dir, save_plot, write_json  # noqa: E402
from loader import generate  # noqa: E402

GIB = 1 << 30


class Refused(SystemExit):
    pass


def need(path: str, disk_bytes: float, memory_bytes: float, phase: str) -> dict:
    """Refuse (one line) unless ``path``'s filesystem has ``disk_bytes`` free and the machine ``memory_bytes``
    available; the check's numbers otherwise."""
    import psutil
    free, available = shutil.disk_usage(path).free, psutil.virtual_memory().available
    if free < disk_bytes:
        raise Refused(f"billion: {phase} needs {disk_bytes / GIB:.1f} GiB free at {path}; {free / GIB:.1f} GiB free")
    if available < memory_bytes:
        raise Refused(f"billion: {phase} needs {memory_bytes / GIB:.1f} GiB of available memory; "
                      f"{available / GIB:.1f} GiB available")
    return {"disk_free_gib": round(free / GIB, 1), "memory_available_gib": round(available / GIB, 1),
            "disk_needed_gib": round(disk_bytes / GIB, 1), "memory_needed_gib": round(memory_bytes / GIB, 1)}


class PeakRSS:
    """Samples the RSS of a process and its descendants every ``every`` seconds; peak per process and in total."""

    def __init__(self, pid: int, every: float = 0.5):
        import psutil
        self.root, self.every, self.peaks, self.total = psutil.Process(pid), every, {}, 0
        self.names: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psutil
        while not self._stop.is_set():
            try:
                procs = [self.root] + self.root.children(recursive=True)
                total = 0
                for p in procs:
                    try:
                        rss = p.memory_info().rss
                        self.names.setdefault(p.pid, " ".join(p.cmdline()[-3:]))
                    except psutil.Error:
                        continue
                    self.peaks[p.pid] = max(self.peaks.get(p.pid, 0), rss)
                    total += rss
                self.total = max(self.total, total)
            except psutil.Error:
                pass
            self._stop.wait(self.every)

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        return {"peak_total_gib": round(self.total / GIB, 3),
                "peak_per_process_gib": {str(pid): round(v / GIB, 3) for pid, v in sorted(self.peaks.items())}}


def run_phase(name: str, cmd: list[str], log_path: str, env=None, watch=None) -> dict:
    """Run a command, its output to ``log_path``; seconds, exit code and peak RSS. ``watch(proc)``: called
    every second while it runs (the kill of a rank)."""
    t0 = time.time()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                                env=dict(os.environ, OMP_NUM_THREADS="1", TQDM_MININTERVAL="10", **(env or {})))
        rss = PeakRSS(proc.pid)
        while proc.poll() is None:
            if watch:
                watch(proc)
            time.sleep(1)
    peaks = rss.stop()
    if proc.returncode != 0:
        with open(log_path) as fh:
            tail = fh.read()[-3000:]
        raise SystemExit(f"billion: phase {name} failed (exit {proc.returncode}); its log {log_path}:\n{tail}")
    print(f"[{name}] {time.time() - t0:.1f} s, peak RSS {peaks['peak_total_gib']:.2f} GiB", flush=True)
    return {"seconds": round(time.time() - t0, 1), **peaks}


def disk(path: str) -> int:
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def write_features(path: str, names_from: str, fraction: float, width: int, seed: int = 0) -> int:
    """Text-like features (a few topics, noise) for a seeded fraction of the dataset's entities, keyed by name."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    entities = pq.read_table(next(os.path.join(names_from, f) for f in os.listdir(names_from)
                                  if f.startswith("entities")), columns=["name"]).column("name")
    rng = np.random.default_rng(seed)
    pick = np.flatnonzero(rng.random(len(entities)) < fraction)
    topics = rng.standard_normal((32, width)).astype(np.float32)
    with pq.ParquetWriter(path, pa.schema([("name", entities.type), ("feature", pa.list_(pa.float32(), width))])) as w:
        for lo in range(0, len(pick), 1 << 20):
            ids = pick[lo:lo + (1 << 20)]
            noise = rng.standard_normal((len(ids), width)).astype(np.float32)
            vec = topics[rng.integers(0, 32, len(ids))] + 0.3 * noise
            w.write_table(pa.table({"name": entities.take(pa.array(ids)),
                                    "feature": pa.FixedSizeListArray.from_arrays(pa.array(vec.reshape(-1)), width)}))
    return int(len(pick))


def child_stream(dataset: str, batch: int) -> None:
    """One pass of one rank's loader over the whole training split; RSS (now and peak) at every tenth of it and
    at 10^8 edges: the loader's memory must not grow with the edges read."""
    from mmkgc_dist.data.stream import StreamingTriples
    stream = StreamingTriples(dataset, rank=0, world_size=1, batch_size=batch, seed=1)
    total = stream.total_rows
    pending = sorted({total * i // 10 for i in range(1, 11)} | ({10 ** 8} if total > 10 ** 8 else set()))
    marks, edges, t0 = [], 0, time.time()
    for b in stream:
        edges += len(b)
        while pending and edges >= pending[0]:
            pending.pop(0)
            marks.append({"edges": edges, "seconds": round(time.time() - t0, 1), **rss_now_and_peak()})
    print(json.dumps({"edges": edges, "seconds": round(time.time() - t0, 1),
                      "edges_per_s": round(edges / max(time.time() - t0, 1e-9)), "marks": marks}))


def rss_now_and_peak() -> dict:
    with open("/proc/self/status") as fh:
        fields = dict(line.split(":", 1) for line in fh)
    return {"rss_mib": round(int(fields["VmRSS"].split()[0]) / 1024, 1),
            "peak_rss_mib": round(int(fields["VmHWM"].split()[0]) / 1024, 1)}


def project(record: dict) -> dict:
    """What the same epoch takes on 8 GPUs (one node) and 2 and 4 nodes of 8, from scaling_model.py's per-step
    model (bytes per collective measured on gloo, one H100's measured compute rate, the fabric's rates) and
    this run's measured inputs: the loader's edges/s per rank (must keep ahead of the GPUs) and the rank's shard
    plus optimizer state (divided over W ranks)."""
    from scaling_model import predict
    bench = os.path.join(REPO, "docs", "benchmarks")
    measured = json.load(open(os.path.join(bench, "scaling_scalable_cpu.json")))
    gpu = json.load(open(os.path.join(bench, "gpu_check_h100.json")))
    # one H100 on the measured graph nearest this one in size (a million entities)
    rate = next(r["positives_per_s"] for r in gpu["rows"] if r["graph"] == "large-1M" and r["mode"] == "scalable")
    edges, phases = record["edges"], record["phases"]
    shard_two = phases["train"]["model_shard_plus_adam_gib_per_rank"]
    loader = phases["stream"]["edges_per_s"]
    rows = []
    for world in (8, 16, 32):
        p = predict(measured, rate, world)
        rows.append({"world": world, "nodes": world // 8, "positives_per_s": round(p["positives_per_s"]),
                     "efficiency": round(p["efficiency"], 3),
                     "epoch_hours": round(edges / p["positives_per_s"] / 3600, 2),
                     "loader_edges_per_s_needed_per_rank": round(p["positives_per_s"] / world),
                     "loader_headroom": round(loader / (p["positives_per_s"] / world), 1),
                     "shard_plus_adam_gib_per_gpu": round(shard_two * 2 / world, 3)})
    cpu = phases["train"].get("positives_per_s_median")
    return {"basis": "scaling_model.predict (scalable mode: chunk-shared negatives; bytes per step measured on "
                     "gloo, one H100's measured positives/s on a 1M-entity graph) with this run's loader rate and "
                     "shard sizes",
            "gpu_positives_per_s_1": rate, "cpu_two_ranks_positives_per_s": cpu,
            "cpu_epoch_hours_two_ranks": round(edges / cpu / 3600, 1) if cpu else None, "rows": rows}


def table(record: dict) -> str:
    """The phases as a markdown table (seconds, peak RSS of the phase's processes, what it measured)."""
    ph = record["phases"]
    rows = ["| phase | seconds | peak RSS (all processes) | measured |", "|---|---:|---:|---|"]

    def row(name: str, what: str) -> None:
        if name in ph:
            p = ph[name]
            rss = f"{p['peak_total_gib']:.2f} GiB" if "peak_total_gib" in p else "—"
            rows.append(f"| {name} | {p['seconds']:,.0f} | {rss} | {what} |")
    row("generate", f"{record['edges']:,} edges as TSV ({ph.get('generate', {}).get('tsv_gib', 0)} GiB)")
    if "prepare" in ph:
        row("prepare", f"{ph['prepare']['edges_per_s']:,} edges/s → {ph['prepare']['parquet_gib']} GiB of Parquet")
    if "stream" in ph:
        s = ph["stream"]
        marks = s["marks"]
        at_1e8 = next((m for m in marks if m["edges"] >= 10 ** 8), marks[0])
        row("stream", f"one loader pass, {s['edges_per_s']:,} edges/s; RSS {at_1e8['rss_mib']:.0f} MiB at "
                      f"{at_1e8['edges']:,} edges → {marks[-1]['rss_mib']:.0f} MiB at {marks[-1]['edges']:,} "
                      f"(peak {marks[-1]['peak_rss_mib']:.0f} MiB)")
    if "features" in ph:
        row("features", f"text features for {ph['features']['entities_with_text']:,} entities")
    if "train" in ph:
        t = ph["train"]
        k = t.get("kill", {})
        row("train", f"2 ranks, median {t.get('positives_per_s_median') or 0:,.0f} positives/s; kill -9 after "
                     f"checkpoint step {k.get('after_checkpoint', {}).get('step')}, resumed there: "
                     f"{k.get('resumed_at_the_checkpoint')}; sampled test MRR {t['test']['mrr']:.4f} on "
                     f"{t['test']['count']:,} queries")
    if "export" in ph:
        row("export", f"{ph['export']['gib']} GiB")
    if "answers" in ph:
        a = ph["answers"]
        n = a["neighbours"]
        row("answers", f"known index {a['known_index_seconds']:,.0f} s; one marked query "
                       f"{a['single_query_seconds']['max']:.3f} s (max of 5); batch {a['batch']['queries_per_s']:,.0f} "
                       f"queries/s; neighbours recall@10 {n['recall_at_k']:.3f} at "
                       f"{n['approximate_queries_per_s'] / max(n['exact_queries_per_s'], 1e-9):.0f}x exact" +
                       (f"; batch through the answer index {a['batch_approximate']['queries_per_s']:,.0f} queries/s, "
                        f"recall@10 {a['batch_approximate']['recall_at_10']:.3f}" if "batch_approximate" in a else ""))
    return "\n".join(rows)


def loss_curve(metrics_path: str, png: str, restart_step: int | None) -> list[dict]:
    records = [json.loads(line) for line in open(metrics_path)]
    train = [r for r in records if r.get("kind") == "train"]
    fig, ax = new_plot((7, 4))
    ax.plot([r["step"] for r in train], [r["loss"] for r in train], lw=1)
    if restart_step is not None:
        ax.axvline(restart_step, color="red", ls="--", lw=1, label=f"kill -9 of rank 1; resumed at step {restart_step}")
        ax.legend()
    save_plot(fig, ax, png, "step", "loss", "2-rank streamed training across a kill -9 and restart")
    return train


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child-stream"]:
        child_stream(argv[1], int(argv[2]))
        return 0
    if argv[:1] == ["--table"]:
        print(table(json.load(open(argv[1]))))
        return 0
    if argv[:1] == ["--project"]:             # recompute the projection of a saved result
        record = json.load(open(argv[1]))
        record["projection"] = project(record)
        write_json(argv[1], record)
        print(json.dumps(record["projection"], indent=1))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--edges", type=float, default=1e9)
    ap.add_argument("--entities", type=float, default=1e7)
    ap.add_argument("--relations", type=int, default=1000)
    ap.add_argument("--eval-triples", type=int, default=100_000, help="valid and test triples each (sampled eval)")
    ap.add_argument("--dim", type=int, default=16, help="complex dimension (rows are 2 x dim wide)")
    ap.add_argument("--scoring", default="complex", help="model.scoring (a dot-product scorer scores 10^7 "
                                                         "candidates per query as one matrix product)")
    ap.add_argument("--batch", type=int, default=8192, help="global batch")
    ap.add_argument("--steps", type=int, default=2000, help="training budget (steps)")
    ap.add_argument("--checkpoint-every", type=int, default=0, help="steps (default: steps // 8)")
    ap.add_argument("--kill-at", type=int, default=0, help="kill -9 rank 1 once this step is checkpointed "
                                                           "(default: steps // 2)")
    ap.add_argument("--text-fraction", type=float, default=0.2)
    ap.add_argument("--text-width", type=int, default=32)
    ap.add_argument("--workdir", default=os.path.join(results_dir("billion"), "work"))
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args(argv)
    edges, entities = int(args.edges), int(args.entities)
    every = args.checkpoint_every or max(1, args.steps // 8)
    kill_at = args.kill_at or args.steps // 2
    if args.steps * args.batch > edges:
        raise SystemExit(f"billion: --steps {args.steps} x --batch {args.batch} is more than one epoch of "
                         f"{edges:,} edges; the run trains within the first epoch")
    out = results_dir("billion")
    work = args.workdir
    os.makedirs(work, exist_ok=True)
    py = sys.executable
    record = {"benchmark": "billion", "machine": machine(), "date": time.strftime("%Y-%m-%d"),
              "edges": edges, "entities": entities, "relations": args.relations,
              "args": {k: v for k, v in vars(args).items() if k not in ("workdir", "keep")}, "phases": {}}
    phases = record["phases"]
    tsv = {s: os.path.join(work, f"{s}.tsv") for s in ("train", "valid", "test")}
    ds, run, export = (os.path.join(work, n) for n in ("dataset", "run", "export"))
    try:
        check = need(work, edges * 30, 2 * GIB, "generate")
        t0 = time.time()
        generate(tsv["train"], edges, entities, args.relations, seed=0)
        for i, split in enumerate(("valid", "test")):
            generate(tsv[split], args.eval_triples, entities, args.relations, seed=i + 1)
        phases["generate"] = {"seconds": round(time.time() - t0, 1), "tsv_gib": round(disk(tsv["train"]) / GIB, 2),
                              "check": check}

        check = need(work, edges * 14, 4 * GIB + entities * 200, "prepare triples")
        phases["prepare"] = run_phase("prepare", [py, "-m", "mmkgc_dist.cli", "prepare", "triples", ds, "--train",
                                                  tsv["train"], "--valid", tsv["valid"], "--test", tsv["test"],
                                                  "--allow-duplicates", "--allow-overlap"],
                                      os.path.join(out, "prepare.log"))
        phases["prepare"].update(check=check, parquet_gib=round(disk(ds) / GIB, 2),
                                 edges_per_s=round(edges / phases["prepare"]["seconds"]))
        if not args.keep:
            os.remove(tsv["train"])

        phases["stream"] = run_phase("stream", [py, os.path.abspath(__file__), "--child-stream", ds,
                                                str(args.batch // 2)], os.path.join(out, "stream.log"))
        with open(os.path.join(out, "stream.log")) as fh:
            phases["stream"].update(json.loads(fh.read().strip().splitlines()[-1]))

        feats = os.path.join(work, "text.parquet")
        count = write_features(feats, ds, args.text_fraction, args.text_width)
        phases["features"] = run_phase("features", [py, "-m", "mmkgc_dist.cli", "prepare", "features", ds,
                                                    "--modality", "text", feats], os.path.join(out, "features.log"))
        phases["features"]["entities_with_text"] = count

        # a rank's shard: its half of the entity rows (2d wide) and of the text table (one row per entity, rows
        # without a feature included), Adam's two moments each
        width = 2 * args.dim
        shard_bytes = (entities / 2) * (width + args.text_width) * 4 * 3
        check = need(work, shard_bytes * 2 * 3, shard_bytes * 2 + 4 * GIB, "train")
        train_cmd = [py, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "--max-restarts=1",
                     "-m", "mmkgc_dist.cli", "train", "--run-dir", run, "--data.source=parquet", f"--data.path={ds}",
                     "--data.loader=stream", "--train.filter_negatives=false", "--train.negatives=chunk_shared",
                     "--train.negative_entities=degree", f"--model.scoring={args.scoring}", f"--model.dim={args.dim}",
                     "--model.modalities=[text]",
                     f"--train.batch_size={args.batch}", f"--train.max_steps={args.steps}", "--train.epochs=1",
                     f"--train.checkpoint_every_steps={every}", "--train.keep_checkpoints=2", "--train.log_every=10",
                     "--eval.protocol=sampled",
                     f"--eval.max_queries={args.eval_triples}", "--eval.splits=[test]", "--train.compile=false",
                     "--mat.hidden=128"]
        killed: dict = {}

        def kill_one_rank(proc) -> None:
            if killed or not os.path.exists(os.path.join(run, "metrics.jsonl")):
                return
            saved = [json.loads(line) for line in open(os.path.join(run, "metrics.jsonl"))
                     if '"checkpoint"' in line]
            if not saved or saved[-1]["step"] < kill_at:
                return
            import psutil
            ranks = [p for p in psutil.Process(proc.pid).children(recursive=True)
                     if "mmkgc_dist.cli" in " ".join(p.cmdline()) and p.pid != proc.pid]
            victim = sorted(ranks, key=lambda p: p.pid)[-1]
            os.kill(victim.pid, signal.SIGKILL)
            killed.update(pid=victim.pid, after_checkpoint=saved[-1], at=time.time())
            print(f"[train] kill -9 of rank pid {victim.pid} after checkpoint step {saved[-1]['step']}", flush=True)

        phases["train"] = run_phase("train", train_cmd, os.path.join(out, "train.log"), watch=kill_one_rank)
        phases["train"]["check"] = check
        log_text = open(os.path.join(out, "train.log")).read()
        resumed = [line for line in log_text.splitlines() if line.startswith("resumed at epoch")]
        cursor = killed.get("after_checkpoint", {})
        phases["train"]["kill"] = {**killed, "resumed_lines": resumed,
                                   "resumed_at_the_checkpoint": bool(resumed) and all(
                                       f"batch {cursor.get('batch_in_epoch')}, step {cursor.get('step')}" in line
                                       for line in resumed)}
        train = loss_curve(os.path.join(run, "metrics.jsonl"), os.path.join(out, "loss.png"), cursor.get("step"))
        rates = [r["positives_per_s"] for r in train if "positives_per_s" in r]
        phases["train"]["positives_per_s_median"] = sorted(rates)[len(rates) // 2] if rates else None
        phases["train"]["model_shard_plus_adam_gib_per_rank"] = round(shard_bytes / GIB, 3)
        results = json.load(open(os.path.join(run, "results.json")))
        phases["train"]["test"] = {k: results["test"][k] for k in ("mrr", "hits@10", "count", "protocol")}

        phases["export"] = run_phase("export", [py, "-m", "torch.distributed.run", "--standalone",
                                                "--nproc_per_node=2", "-m", "mmkgc_dist.cli", "export", run, export],
                                     os.path.join(out, "export.log"))
        phases["export"]["gib"] = round(disk(export) / GIB, 2)
        # the known-triple index: two sorted uint64 key files, built through bucket files of the same size
        check = need(work, edges * 8 * 2 * 2, entities * width * 4 * 4 + 2 * GIB, "answers")
        phases["answers"] = run_phase("answers", [py, os.path.join(HERE, "answers.py"), run, "--queries", "10000",
                                                  "--approximate"],
                                      os.path.join(out, "answers.log"))
        phases["answers"].update(check=check, **json.load(open(os.path.join(results_dir("answers"), "answers.json"))))
        record["projection"] = project(record)
    except Refused as exc:
        record["refused"] = str(exc)
        print(exc, file=sys.stderr)
    finally:
        write_json(os.path.join(out, "billion.json"), record)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {os.path.join(out, 'billion.json')}")
    return 2 if "refused" in record else 0


if __name__ == "__main__":
    sys.exit(main())
