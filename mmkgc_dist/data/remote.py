"""Remote reads bounded in time, and their faults in one line naming the URL.

fsspec's HTTP filesystem waits forever by default: a server that accepts a connection and never answers would
hang a training start. ``bounded_remote_reads`` sets connect and read timeouts as fsspec defaults for http(s) and
s3 (explicit storage options still win); ``remote_faults`` turns what fsspec and its backends raise — a missing
backend package, a host that cannot be reached, a timeout, which fsspec's HTTP filesystem reports as "file not
found" — into a DataError naming the URL and what to do.
"""
from __future__ import annotations

import contextlib
import os

from ..errors import DataError

BACKENDS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs"}     # URL scheme → install.sh EXTRAS name
_applied: tuple | None = None     # the (connect, read) seconds set as fsspec defaults


def timeouts() -> tuple[float, float]:
    """(connect, read) seconds: $MMKGC_DIST_CONNECT_TIMEOUT (default 20) and $MMKGC_DIST_READ_TIMEOUT (120)."""
    def seconds(name: str, default: float) -> float:
        text = os.environ.get(name, "")
        try:
            value = float(text) if text else default
        except ValueError:
            raise DataError(f"${name}={text!r}: expected seconds > 0") from None
        if not value > 0:
            raise DataError(f"${name}={text!r}: expected seconds > 0")
        return value
    return seconds("MMKGC_DIST_CONNECT_TIMEOUT", 20.0), seconds("MMKGC_DIST_READ_TIMEOUT", 120.0)


def bounded_remote_reads() -> None:
    """fsspec defaults: connect and read timeouts for http(s) and s3 (set again when the environment's values
    change; timeouts a user configured for fsspec are left alone)."""
    global _applied
    import fsspec.config
    connect, read = timeouts()
    if _applied == (connect, read):
        return
    try:
        import aiohttp
        timeout = aiohttp.ClientTimeout(total=None, connect=connect, sock_connect=connect, sock_read=read)
        for proto in ("http", "https"):
            client = fsspec.config.conf.setdefault(proto, {}).setdefault("client_kwargs", {})
            if "timeout" not in client or _applied is not None:
                client["timeout"] = timeout
    except ImportError:                     # no HTTP backend installed: remote_faults names it when one is needed
        pass
    s3 = fsspec.config.conf.setdefault("s3", {}).setdefault("config_kwargs", {})
    for key, value in (("connect_timeout", connect), ("read_timeout", read)):
        if key not in s3 or _applied is not None:
            s3[key] = value
    _applied = (connect, read)


def _chain(exc: BaseException):
    while exc is not None:
        yield exc
        exc = exc.__cause__ or exc.__context__


def remote_fault(url: str, exc: BaseException) -> DataError | None:
    """The one-line error for a remote read's failure, or None when ``exc`` is not about reaching ``url``."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if not scheme or scheme in ("file", "local"):
        return None
    if isinstance(exc, ValueError) and "Protocol not known" in str(exc):
        return DataError(f"{url}: cannot open: no filesystem reads {scheme}:// URLs (fsspec knows none by that "
                         f"name; a typo?)")
    if isinstance(exc, ImportError):
        extra = BACKENDS.get(scheme)
        hint = f"install the {extra} extra (EXTRAS={extra} bash scripts/install.sh, or pip install " \
               f"{'s3fs' if extra == 's3' else 'gcsfs'})" if extra else f"install fsspec's backend for {scheme}://"
        return DataError(f"{url}: cannot read {scheme}:// URLs here: {hint}")
    connect, read = timeouts()
    for cause in _chain(exc):
        name = type(cause).__name__
        if isinstance(cause, TimeoutError) or "Timeout" in name:
            return DataError(f"{url}: no answer within the time limit (connect {connect:g} s, read {read:g} s; "
                             f"$MMKGC_DIST_CONNECT_TIMEOUT / $MMKGC_DIST_READ_TIMEOUT) — is the server up?")
        if "Connector" in name or "ConnectionRefused" in name or isinstance(cause, ConnectionError):
            text = " ".join(str(cause).split())[:200]
            return DataError(f"{url}: cannot connect ({text}); check the host, the port and the network")
    return None


@contextlib.contextmanager
def remote_faults(url: str):
    """Run a remote read; a fault reaching ``url`` becomes one line (other exceptions pass unchanged)."""
    bounded_remote_reads()
    try:
        yield
    except DataError:
        raise
    except Exception as exc:                         # noqa: BLE001 — classified below, re-raised otherwise
        fault = remote_fault(url, exc)
        if fault is None:
            raise
        raise fault from None


def check_reachable(url: str) -> None:
    """Before a remote input is opened: a missing backend, a host that cannot be reached or a server that does
    not answer is one line naming the URL (a file that is simply not there is left to the caller to report)."""
    if "://" not in url or url.split("://", 1)[0].lower() in ("file", "local"):
        return
    import fsspec
    with remote_faults(url):
        fs, path = fsspec.core.url_to_fs(url)
        try:
            fs.info(path)
        except FileNotFoundError as exc:
            if remote_fault(url, exc) is not None:
                raise
