"""Process-wide CPU settings.

- Flushing denormals: gradients of the feature projections underflow to denormal floats, which x86 multiplies
  ~15x slower (the exact mode's backward GEMMs took 2.6 s instead of 0.17 s) and which make a run slow down step
  after step. Flushing them to zero changes values below 1.2e-38 only. The flag lives in each thread's MXCSR
  register and new threads copy it from the thread that starts them, so it must be set before torch starts its
  OpenMP workers (set later, only the calling thread would flush): when the package is imported after torch, or
  else when ``mmkgc_dist.model`` is (every path that computes imports it; the data commands never import torch,
  so they start in a fraction of a second).
- Keeping freed memory: glibc serves blocks over 32 MiB with fresh mmaps and unmaps them when freed, so every
  training step page-faults its ~200 MB row blocks anew (a quarter of a DB15K exact step). A training process
  keeps its peak heap instead (it reaches it again next step anyway); set by the trainer, not at import.
"""
from __future__ import annotations

import ctypes
import sys

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3      # glibc's mallopt parameters (malloc.h)


def flush_denormals() -> None:
    import torch

    torch.set_flush_denormal(True)


def keep_freed_memory() -> None:
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:          # not glibc (e.g. musl): nothing to tune
        return
    libc.mallopt(_M_MMAP_THRESHOLD, 1 << 30)
    libc.mallopt(_M_TRIM_THRESHOLD, (1 << 31) - 1)


def tune_training_process() -> None:
    flush_denormals()
    keep_freed_memory()
