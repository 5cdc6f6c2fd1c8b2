"""Image feature extraction (`mmkgc-dist features images`, EfficientNet-Lite0, 1280-d) on generated images:
images/s per process, 2 ranks vs 1 (torchrun, one thread each), and peak memory as the image count grows.

    python benchmarks/extraction.py [--sizes 1000,4000,16000] [--ranks-at 2000] [--workers 1] [--threads 2]
                                    [--memory-sizes 1000,10000,100000]

``--memory-sizes`` repeats the size sweep with a small TorchScript encoder (average-pool to 4×4, one linear layer,
64-d) that the benchmark writes: the pipeline (listing, decoding workers, batching, Parquet parts, the merge) is
the same, and the image count it can reach in minutes shows whether memory grows with it; the model's own
memory is a constant on top (the EfficientNet rows).

Each run is its own process tree; its peak memory is the largest sum of PSS over the tree (ranks and decoding
workers; PSS counts a page shared by forked processes once in total, where summing RSS would count it in each),
sampled every 0.2 s. Wall time includes start-up (model load, listing). Images are 320x240 JPEGs of coloured
shapes. Writes results/extraction/{extraction.json,extraction.md}.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

from _common import REPO, machine, results_dir, write_json, write_report


def make_images(folder: str, names: list[str], seed: int = 0) -> None:
    from PIL import Image, ImageDraw
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    for name in names:
        image = Image.new("RGB", (320, 240), tuple(int(c) for c in rng.integers(0, 255, 3)))
        draw = ImageDraw.Draw(image)
        for _ in range(4):
            x, y = rng.integers(0, 280), rng.integers(0, 200)
            draw.ellipse((x, y, x + rng.integers(20, 120), y + rng.integers(20, 120)),
                         fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
        image.save(os.path.join(folder, f"{name}.jpg"), quality=90)


def make_dataset(work: str, n: int) -> tuple[str, str]:
    ds, imgs = os.path.join(work, f"ds-{n}"), os.path.join(work, f"imgs-{n}")
    cli = [sys.executable, "-m", "mmkgc_dist.cli"]
    subprocess.run(cli + ["prepare", "synthetic", ds, f"--num_entities={n}", f"--num_triples={2 * n}",
                          "--visual_dim=4", "--text_dim=4"], check=True, capture_output=True, env=_env(1))
    make_images(imgs, [f"entity_{i:06d}" for i in range(n)])
    return ds, imgs


def _env(threads: int) -> dict:
    return dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS=str(threads), TQDM_DISABLE="1",
                MMKGC_DIST_CACHE=os.environ.get("MMKGC_DIST_CACHE", tempfile.gettempdir()))


def measured(cmd: list[str], env: dict) -> tuple[float, float, str]:
    """(seconds, peak tree PSS MiB, stdout) of one command."""
    import psutil
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    root, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        try:
            tree = [root] + root.children(recursive=True)
            peak = max(peak, sum(p.memory_full_info().pss for p in tree if p.is_running()))
        except psutil.Error:
            pass
        time.sleep(0.2)
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{err[-3000:]}")
    return time.perf_counter() - start, peak / 2**20, out


def tiny_encoder(path: str) -> str:
    """A small TorchScript image model ([B, 3, h, w] -> [B, 64]), written to ``path``."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(48, 64)).eval()
    torch.jit.script(model).save(path)
    return path


def extract(ds: str, imgs: str, ranks: int, threads: int, workers: int, encoder: str | None = None) -> dict:
    args = ["features", "images", ds, "--images", imgs, "--workers", str(workers), "--restart"] + \
        (["--encoder", encoder] if encoder else [])
    cmd = [sys.executable, "-m", "mmkgc_dist.cli", *args] if ranks == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}",
         "--module", "mmkgc_dist.cli", *args]
    seconds, rss, out = measured(cmd, _env(threads))
    n = int(out.split(" images,")[0].rsplit(" ", 1)[-1])
    return {"images": n, "encoder": "tiny TorchScript (64-d)" if encoder else "efficientnet-lite0 (1280-d)",
            "ranks": ranks, "threads_per_rank": threads, "workers": workers,
            "seconds": round(seconds, 2), "images_per_s": round(n / seconds, 1),
            "images_per_s_per_process": round(n / seconds / ranks, 1), "peak_pss_mib": round(rss, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,4000,16000")
    ap.add_argument("--ranks-at", type=int, default=2000, help="image count of the 1-rank vs 2-rank comparison")
    ap.add_argument("--workers", type=int, default=1, help="decoding processes per rank")
    ap.add_argument("--threads", type=int, default=2, help="threads of the one-process size sweep")
    ap.add_argument("--memory-sizes", default="", help="image counts of the sweep with the small encoder")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    work = args.workdir or tempfile.mkdtemp(prefix="extraction-")
    rows, scaling = [], []
    sweeps = [(int(s), None) for s in args.sizes.split(",") if s]
    if args.memory_sizes:
        os.makedirs(work, exist_ok=True)
        tiny = tiny_encoder(os.path.join(work, "tiny.pt"))
        sweeps += [(int(s), tiny) for s in args.memory_sizes.split(",")]
    try:
        for n, encoder in sweeps:
            ds, imgs = make_dataset(work, n)
            rows.append(extract(ds, imgs, 1, args.threads, args.workers, encoder))
            print(rows[-1], flush=True)
            shutil.rmtree(ds), shutil.rmtree(imgs)
        if args.ranks_at:
            ds, imgs = make_dataset(work, args.ranks_at)
            for ranks in (1, 2, 1, 2):                 # alternated: the ratio is read within one invocation
                scaling.append(extract(ds, imgs, ranks, 1, 0))
                print(scaling[-1], flush=True)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    one = [r["images_per_s"] for r in scaling if r["ranks"] == 1]
    two = [r["images_per_s"] for r in scaling if r["ranks"] == 2]
    result = {"machine": machine(), "encoder": "efficientnet-lite0 (1280-d)", "sizes": rows, "scaling": scaling,
              "two_vs_one": round(float(np.mean(two) / np.mean(one)), 3) if scaling else None}
    out = results_dir("extraction")
    write_json(os.path.join(out, "extraction.json"), result)
    lines = ["| images | encoder | ranks × threads | workers | seconds | images/s | peak PSS (tree) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows + scaling:
        lines.append(f"| {r['images']:,} | {r['encoder']} | {r['ranks']} × {r['threads_per_rank']} | {r['workers']} | "
                     f"{r['seconds']} | {r['images_per_s']} | {r['peak_pss_mib']:.0f} MiB |")
    if scaling:
        lines.append(f"\n2 ranks vs 1 (one thread each, no decoding workers): {result['two_vs_one']}×")
    write_report(os.path.join(out, "extraction.md"), lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
