"""A study's storage: what ``--storage`` names, what study.yaml records of it, and opening it with every fault
reported in one line naming ``--storage``.

A study folder is bound to one study in one storage: study.yaml records the storage's full identity (the
absolute path of an SQLite or journal file; driver, user, host, port and database of another RDB — never a
password), the study's name and a unique id written into the study itself (its user attribute ``STUDY_UID``).
Storages that do not persist (in-memory SQLite) cannot hold a study that other invocations continue, so they are
refused.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import warnings
from dataclasses import dataclass

from ..errors import ConfigError

log = logging.getLogger("mmkgc_dist")
DEFAULT = "study.db"
STUDY_UID = "mmkgc_dist.study_uid"
# Python modules of the database drivers SQLAlchemy names in its errors, and what installs them
DRIVERS = {"psycopg2": "psycopg2-binary", "pymysql": "pymysql", "MySQLdb": "mysqlclient", "psycopg": "psycopg",
           "asyncpg": "asyncpg", "cx_Oracle": "cx_Oracle", "pyodbc": "pyodbc"}


@dataclass(frozen=True)
class StorageRef:
    """``url``: what Optuna opens; ``identity``: what study.yaml records (comparable across invocations)."""
    given: str
    url: str
    identity: str

    @property
    def journal_file(self) -> str | None:
        return self.url[len("journal:"):] if self.url.startswith("journal:") else None


def storage_ref(study_dir: str, storage: str) -> StorageRef:
    """The storage ``--storage`` names (the study folder's SQLite file when empty); ConfigError for an
    unparsable URL or one that does not persist."""
    if not isinstance(storage, str):
        raise ConfigError(f"--storage {storage!r}: expected a URL string (sqlite:///FILE, postgresql://..., "
                          f"journal:FILE)")
    if not storage:
        path = os.path.abspath(os.path.join(study_dir, DEFAULT))
        return StorageRef(storage, f"sqlite:///{path}", f"sqlite: {DEFAULT} in the study folder")
    if storage.startswith("journal:"):
        path = storage[len("journal:"):]
        if not path:
            raise ConfigError("--storage journal:: expected journal:FILE (a file on a filesystem every worker sees)")
        return StorageRef(storage, storage, f"journal: {os.path.realpath(path)}")
    from sqlalchemy.engine import make_url
    try:
        url = make_url(storage)
    except Exception:                                      # noqa: BLE001 — any unparsable URL is the user's
        raise ConfigError(f"--storage {_shown(storage)}: not an RDB URL (sqlite:///FILE, postgresql://..., "
                          f"mysql://...) or journal:FILE") from None
    if url.get_backend_name() == "sqlite":
        if url.database in (None, "", ":memory:") or "mode=memory" in str(url):
            raise ConfigError(f"--storage {_shown(storage)}: an in-memory database does not persist, so no other "
                              f"invocation or worker could continue the study; give sqlite:///FILE (or leave "
                              f"--storage out for {DEFAULT} in the study folder)")
        return StorageRef(storage, storage, f"sqlite: {os.path.realpath(url.database)}")
    port = f":{url.port}" if url.port else ""
    user = f"{url.username}@" if url.username else ""
    return StorageRef(storage, storage, f"{url.drivername}: {user}{url.host or ''}{port}/{url.database or ''}")


def _shown(storage: str) -> str:
    """The URL as an error shows it: without a password, cut to a bounded length."""
    try:
        from sqlalchemy.engine import make_url
        text = make_url(storage).render_as_string(hide_password=True)
    except Exception:                                      # noqa: BLE001 — not a URL: shown as given
        text = storage
    return repr(text if len(text) <= 200 else text[:200] + "...")


def open_storage(ref: StorageRef, heartbeat: int):
    """The Optuna storage; any fault (a damaged file, garbage in a journal, an unreachable server, a missing
    driver) is a ConfigError naming --storage and what to do."""
    import optuna
    with storage_faults(ref):
        if ref.journal_file is not None:
            from optuna.storages.journal import JournalFileBackend, JournalStorage
            check_journal(ref)
            return JournalStorage(JournalFileBackend(ref.journal_file))
        kwargs = {"connect_args": {"timeout": 60}} if ref.url.startswith("sqlite") else \
            {"pool_pre_ping": True}
        if ref.url.startswith("sqlite"):
            _check_sqlite_file(ref)
        with warnings.catch_warnings():          # the heartbeat is "experimental" in Optuna's terms
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(ref.url, engine_kwargs=kwargs, heartbeat_interval=heartbeat or None,
                                              grace_period=2 * heartbeat if heartbeat else None)


def _check_sqlite_file(ref: StorageRef) -> None:
    """An existing file must be an SQLite database (SQLite would otherwise fail deep inside SQLAlchemy)."""
    from sqlalchemy.engine import make_url
    path = make_url(ref.url).database
    if not os.path.exists(path):
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            raise ConfigError(f"--storage {_shown(ref.given or ref.url)}: folder {parent} does not exist")
        return
    if os.path.isdir(path):
        raise ConfigError(f"--storage {_shown(ref.given or ref.url)}: {path} is a folder, not an SQLite file")
    with open(path, "rb") as fh:
        head = fh.read(16)
    if head and head != b"SQLite format 3\x00":
        raise ConfigError(f"--storage {_shown(ref.given or ref.url)}: {path} is not an SQLite database (damaged or "
                          f"another kind of file); restore it from a copy, or start a new study folder")


@contextlib.contextmanager
def storage_faults(ref: StorageRef):
    """Exceptions of the storage's libraries → one-line ConfigError naming --storage and what to do."""
    shown = _shown(ref.given or ref.url)
    try:
        yield
    except ConfigError:
        raise
    except (ModuleNotFoundError, ImportError) as exc:
        cause = exc.__cause__ if isinstance(exc.__cause__, ImportError) else exc    # Optuna wraps the driver's
        module = getattr(cause, "name", None) or _fault(cause)
        hint = f"pip install {DRIVERS[module]}" if module in DRIVERS else f"install the Python module {module!r}"
        raise ConfigError(f"--storage {shown}: its database driver is not installed ({module}); {hint}") from None
    except Exception as exc:                           # noqa: BLE001 — SQLAlchemy's, Optuna's and OS faults alike
        raise ConfigError(f"--storage {shown}: cannot be used ({_fault(exc)}); check the URL, that the server "
                          f"is reachable and the file is intact — or start a new study folder") from None


def _fault(exc: BaseException) -> str:
    name = type(exc).__name__
    orig = getattr(exc, "orig", None)                  # SQLAlchemy wraps the driver's exception
    text = " ".join(str(orig if orig is not None else exc).split())
    text = text.split(" (Background on this error")[0].split(" [SQL:")[0]
    return f"{name}: {text[:300]}"


def check_journal(ref: StorageRef) -> None:
    """A journal file holds one JSON record per line. A last line without its line end is a write a full disk
    or a kill cut short: it is cut off (with a warning), since Optuna would glue the next record onto it. Any
    other line that is not a JSON record is garbage: refused, naming the line."""
    path = ref.journal_file
    if not os.path.exists(path):
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            raise ConfigError(f"--storage {_shown(ref.given)}: folder {parent} does not exist")
        return
    if not os.path.isfile(path):
        raise ConfigError(f"--storage {_shown(ref.given)}: {path} is not a file")
    good = 0
    with open(path, "rb") as fh:
        for number, line in enumerate(fh, 1):
            if not line.endswith(b"\n"):
                _cut_torn_tail(ref, path, good, len(line))
                return
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if not isinstance(record, dict) or "op_code" not in record:
                raise ConfigError(f"--storage {_shown(ref.given)}: line {number} of {path} is not a journal record "
                                  f"(garbage or another kind of file); restore the file from a copy, or start a "
                                  f"new study folder")
            good += len(line)


def _cut_torn_tail(ref: StorageRef, path: str, keep: int, torn: int) -> None:
    from optuna.storages.journal import JournalFileSymlinkLock
    from optuna.storages.journal._file import get_lock_file
    with get_lock_file(JournalFileSymlinkLock(path)):   # the lock Optuna's appends take: none meanwhile
        with open(path, "r+b") as fh:
            fh.seek(keep)
            rest = fh.read()
            if rest.endswith(b"\n") or b"\n" in rest:   # another worker completed it meanwhile
                return
            fh.truncate(keep)
            fh.flush()
            os.fsync(fh.fileno())
    log.warning("tune: --storage %s: its last record was cut short (%d bytes, a full disk or a killed write); "
                "removed it — the trial it recorded is redone", ref.given, torn)
