"""Structured metrics: one JSON object per line, flushed as written (tail -f friendly)."""
from __future__ import annotations

import json
import time


class JsonlLogger:
    def __init__(self, path: str | None):
        self._fh = open(path, "a") if path else None
        self._start = time.time()

    def log(self, kind: str, **fields) -> None:
        if self._fh is None:
            return
        record = {"kind": kind, "time": round(time.time() - self._start, 3), **fields}
        self._fh.write(json.dumps(record) + "\n")
        self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
