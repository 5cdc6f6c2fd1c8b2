"""Batches reach the training device one step ahead.

On CUDA a host batch is copied into pinned memory and sent on a side stream while the current step runs, so the
step (and the negative sampler, which draws on the device from the batch) never waits for a pageable host copy.
On the CPU the batches pass through unchanged: there is nothing to overlap.
"""
from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np
import torch


def to_device_ahead(items: Iterable[tuple[object, np.ndarray]], device: torch.device
                    ) -> Iterator[tuple[object, np.ndarray | torch.Tensor]]:
    """(key, host batch) pairs as (key, batch on ``device``), the next batch's copy in flight while the caller
    works on the current one. Order and content are unchanged; only where the rows live differs."""
    if device.type != "cuda":
        yield from items
        return
    copies = torch.cuda.Stream(device)

    def start(item):
        key, batch = item
        with torch.cuda.stream(copies):
            return key, torch.from_numpy(np.ascontiguousarray(batch)).pin_memory().to(device, non_blocking=True)

    def ready(started):
        key, batch = started
        current = torch.cuda.current_stream(device)
        current.wait_stream(copies)        # the copy is done before the step reads the rows
        batch.record_stream(current)       # made on the side stream, freed after the step's use
        return key, batch

    pending = None
    for item in items:
        ahead = start(item)
        if pending is not None:
            yield ready(pending)
        pending = ahead
    if pending is not None:
        yield ready(pending)
