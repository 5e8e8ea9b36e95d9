"""What only the SQLite backend has: vacuum, backup and the read-only SQL console.

Each call opens the file, works briefly and closes it again: an open reader stops WAL
checkpoints (failure mode F7). The SQL console is guarded by an authorizer, not just `mode=ro`,
which still allows ATTACH (F17). Never creates the database file.
"""

from __future__ import annotations

import contextlib
import math
import os
import sqlite3
import tempfile
from collections.abc import Callable, Iterator
from typing import Any, TypedDict
from urllib.parse import quote

from eventqueue.core.config import Config
from eventqueue.core.errors import EventQueueError, QueryError, SchemaError, StorageError
from eventqueue.core.records import schema_problem
from eventqueue.store.sqlite.errors import is_busy, storage_error
from eventqueue.store.sqlite.migrations import schema_status
from eventqueue.store.sqlite.pragmas import pragmas
from eventqueue.store.sqlite.store import require_file


class VacuumResult(TypedDict):
    freed_pages: int
    checkpoint_busy: bool
    wal_frames: int
    checkpointed_frames: int


class BackupResult(TypedDict):
    source: str
    path: str
    pages: int
    bytes: int


class SqlResult(TypedDict):
    columns: list[str]
    rows: list[list[Any]]
    truncated: bool


def vacuum(config: Config) -> VacuumResult:
    """Hand free pages back to the filesystem, then checkpoint and truncate the WAL."""
    with _raw(config, write=True) as connection:
        freed = incremental_vacuum(connection)
        busy, log, done = connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    return VacuumResult(
        freed_pages=freed, checkpoint_busy=bool(busy), wal_frames=log, checkpointed_frames=done
    )


def compact(config: Config) -> int:
    """Hand free pages back after a purge; the pages freed."""
    with _raw(config, write=True) as connection:
        return incremental_vacuum(connection)


def backup(config: Config, destination: str, *, force: bool = False) -> BackupResult:
    """A consistent copy via SQLite's backup API (never a file copy, F8), renamed into place."""
    target = os.path.abspath(destination)
    _check_destination(config.db_path, target, force)
    fd, temp = tempfile.mkstemp(prefix=".eventqueue-backup-", dir=os.path.dirname(target))
    os.close(fd)
    try:
        with (
            _raw(config, write=False) as source,
            contextlib.closing(sqlite3.connect(temp)) as copy,
        ):
            source.backup(copy)  # one step: one consistent snapshot
            copy.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
            pages = int(copy.execute("PRAGMA page_count").fetchone()[0])
        _fsync(temp)
        os.replace(temp, target)
        _fsync(os.path.dirname(target))
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
    size = os.path.getsize(target)
    return BackupResult(source=config.db_path, path=target, pages=pages, bytes=size)


def sql(config: Config, query: str, *, max_rows: int = 1000) -> SqlResult:
    """Run one read-only statement; anything else is refused before it runs (F17)."""
    denied: list[str] = []
    with _raw(config, write=False) as connection:
        connection.set_authorizer(_authorizer(denied))
        try:
            cursor = connection.execute(query)
            rows = cursor.fetchmany(max_rows + 1)
        except (sqlite3.Warning, sqlite3.ProgrammingError) as exc:
            raise QueryError(f"refused: {exc} (nothing was run)") from None
        except sqlite3.DatabaseError as exc:
            raise _query_error(exc, denied) from exc
        finally:
            connection.set_authorizer(None)
    columns = [d[0] for d in cursor.description or ()]
    cells = [[_cell(v) for v in row] for row in rows[:max_rows]]
    return SqlResult(columns=columns, rows=cells, truncated=len(rows) > max_rows)


@contextlib.contextmanager
def _raw(config: Config, *, write: bool) -> Iterator[sqlite3.Connection]:
    """A plain sqlite3 connection on the existing file at head (mode=rw or ro), no transaction."""
    path, timeout = config.db_path, config.busy_timeout_ms
    require_file(path)
    status = schema_status(path, busy_timeout_ms=timeout)
    if status["state"] != "current":
        raise SchemaError(schema_problem(status))
    uri = f"file:{quote(os.path.abspath(path))}?mode={'rw' if write else 'ro'}"
    reading = [f"PRAGMA busy_timeout={timeout}", "PRAGMA query_only=ON"]
    try:
        # isolation_level=None: no implicit transactions (F4); PRAGMAs first (F5).
        connection = sqlite3.connect(uri, uri=True, timeout=timeout / 1000, isolation_level=None)
    except sqlite3.Error as exc:
        raise storage_error(path, exc) from exc
    try:
        for statement in pragmas(config.durability, timeout) if write else reading:
            connection.execute(statement)
        yield connection
    except sqlite3.Error as exc:  # the console translates its own; these are vacuum's, backup's
        raise storage_error(path, exc) from exc
    finally:
        connection.close()


def _check_destination(path: str, target: str, force: bool) -> None:
    require_file(path)
    folder = os.path.dirname(target)
    if not os.path.isdir(folder):
        raise StorageError(f"cannot write {target}: folder {folder} does not exist")
    if not os.path.lexists(target):
        return
    if os.path.exists(target) and os.path.samefile(target, path):
        raise StorageError(f"{target} is the database itself: give another backup path")
    if not force or not os.path.isfile(target):
        raise StorageError(f"{target} exists: give a new path, or --force to replace a file")
    if os.path.exists(f"{target}-wal") and os.path.getsize(f"{target}-wal"):
        # A stale WAL beside the target would be replayed into the fresh copy.
        raise StorageError(f"{target}-wal exists (is {target} in use?): remove it first")


def incremental_vacuum(connection: sqlite3.Connection) -> int:
    """Run incremental_vacuum to the end, outside a transaction; the pages handed back."""
    before = connection.execute("PRAGMA freelist_count").fetchone()[0]
    # executescript steps the PRAGMA to completion; execute() would free only one page.
    connection.executescript("PRAGMA incremental_vacuum;")
    return int(before - connection.execute("PRAGMA freelist_count").fetchone()[0])


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- the SQL console's authorizer (F17) -------------------------------------------------------

_ALLOWED = frozenset({sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_RECURSIVE})
_DENIED_FUNCTIONS = frozenset({"load_extension", "fts3_tokenizer", "readfile", "writefile", "edit"})
# PRAGMAs that only read: with an argument (a table or index name, a row limit) ...
_READ_PRAGMAS_ARG = frozenset({
    "table_info", "table_xinfo", "index_list", "index_info", "index_xinfo", "foreign_key_list",
    "foreign_key_check", "integrity_check", "quick_check",
})  # fmt: skip
# ... and without one (given a value, most of these would set it).
_READ_PRAGMAS = _READ_PRAGMAS_ARG | {
    "page_count", "page_size", "freelist_count", "journal_mode", "auto_vacuum", "encoding",
    "user_version", "application_id", "schema_version", "data_version", "compile_options",
    "database_list", "collation_list", "function_list", "module_list", "pragma_list", "table_list",
}  # fmt: skip
_ACTION_NAMES = {
    getattr(sqlite3, f"SQLITE_{name}"): name
    for name in ("ATTACH", "DETACH", "INSERT", "UPDATE", "DELETE", "TRANSACTION", "SAVEPOINT")
}
Authorizer = Callable[[int, str | None, str | None, str | None, str | None], int]


def _authorizer(denied: list[str]) -> Authorizer:
    """Allow SELECT, reads, functions, recursive CTEs and read-only PRAGMAs; deny the rest."""

    def authorize(
        action: int, arg1: str | None, arg2: str | None, _db: str | None, _src: str | None
    ) -> int:
        why = _why_denied(action, arg1, arg2)
        if why is None:
            return sqlite3.SQLITE_OK
        denied.append(why)
        return sqlite3.SQLITE_DENY

    return authorize


def _why_denied(action: int, arg1: str | None, arg2: str | None) -> str | None:
    if action in _ALLOWED:
        return None
    if action == sqlite3.SQLITE_FUNCTION:
        name = (arg2 or "").lower()
        return f"the function {name}()" if name in _DENIED_FUNCTIONS else None
    if action == sqlite3.SQLITE_PRAGMA:
        name = (arg1 or "").lower()
        if name in _READ_PRAGMAS_ARG or (arg2 is None and name in _READ_PRAGMAS):
            return None
        return f"PRAGMA {arg1}" + ("" if arg2 is None else f"={arg2}")
    if action == sqlite3.SQLITE_ATTACH:
        return f"ATTACH {arg1!r}"
    if action in _ACTION_NAMES:
        return _ACTION_NAMES[action] + (f" on {arg1}" if arg1 else "")
    return "a schema change"


def _query_error(exc: sqlite3.DatabaseError, denied: list[str]) -> EventQueueError:
    if denied:
        return QueryError(
            f"refused: {denied[0]} is not allowed; `eventqueue sql` runs one read-only "
            "statement (SELECT, WITH, or a reading PRAGMA such as table_info); nothing was changed"
        )
    if is_busy(exc):
        return StorageError(f"database is locked: {exc}; retry, or raise EVENT_BUSY_TIMEOUT_MS")
    return QueryError(f"query failed: {exc}")


def _cell(value: Any) -> Any:
    """A JSON-ready cell: blobs as hex, infinities as text."""
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value
