"""Structured metrics: one JSON object per line, flushed as written (tail -f friendly), and optionally the
same scalars as TensorBoard events (``run.tensorboard=true``; needs the ``tensorboard`` package)."""
from __future__ import annotations

import errno
import json
import time


class JsonlLogger:
    def __init__(self, path: str | None, tensorboard_dir: str | None = None):
        self.path = path
        self._fh = open(path, "a") if path else None
        self._start = time.time()
        self._tb = None
        if tensorboard_dir:
            from torch.utils.tensorboard import SummaryWriter   # raises if tensorboard is not installed
            self._tb = SummaryWriter(tensorboard_dir)

    def log(self, kind: str, **fields) -> None:
        if self._fh is None:
            return
        record = {"kind": kind, "time": round(time.time() - self._start, 3), **fields}
        try:
            self._fh.write(json.dumps(record) + "\n")
            self._fh.flush()
        except OSError as exc:
            from ..data.errors import DataError
            reason = "disk full" if exc.errno == errno.ENOSPC else exc.strerror or str(exc)
            raise DataError(f"{self.path}: could not write metrics ({reason})") from exc
        if self._tb is not None and "step" in fields:
            for key, value in fields.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "step":
                    self._tb.add_scalar(f"{kind}/{key}", value, fields["step"])

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
