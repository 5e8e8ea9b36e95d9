"""Inspection and repair for the `eventqueue` command: short synchronous transactions, plain dicts.

Every method opens the file, runs one or a few short transactions and closes it again: an open
reader stops WAL checkpoints (RELIABILITY F7). Reads open the file read-only and never create it.
The SQL console is guarded by an authorizer, not just `mode=ro`, which still allows ATTACH (F17).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shlex
import sqlite3
import tempfile
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, Literal, TypedDict, cast
from urllib.parse import quote

from sqlalchemy import Engine, create_engine
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection
from sqlalchemy.pool import NullPool

from eventqueue.core.config import Config
from eventqueue.core.errors import EventQueueError, SchemaError, StorageError
from eventqueue.core.models import Priority, QueueStats, Status
from eventqueue.store.sqlite import migrations
from eventqueue.store.sqlite import queries as sql
from eventqueue.store.sqlite.pragmas import BEGIN_MODE, install_hooks, is_locked_error, pragmas
from eventqueue.store.sqlite.store import ClaimRules, ready_params

SchemaState = Literal["current", "behind", "missing", "unknown"]
# One event in a list: id, event_name, priority, attempts, then what the list is about.
EventBrief = dict[str, Any]
# `show`: every column of one event; times as ISO 8601 (UTC), priority by name, payload decoded.
EventInfo = dict[str, Any]
_TIME_COLUMNS = ("received_at", "available_at", "lease_expires_at", "finished_at")


class QueryError(EventQueueError, ValueError):
    """`eventqueue sql` refused a statement (not read-only, or more than one) or it failed."""


class SchemaStatus(TypedDict):
    """The database's schema revision against this eventqueue's head."""

    db: str
    current: str | None
    head: str
    state: SchemaState


class PeekBatch(TypedDict):
    """The batch the next claim of this key would lease."""

    key: str
    priority: str
    top_priority: str
    oldest_age_s: float
    events: list[EventBrief]


class Refusal(TypedDict):
    id: int
    status: str  # "missing" when there is no such event


class RequeueResult(TypedDict):
    requeued: int
    refused: list[Refusal]


class PurgeResult(TypedDict):
    purged: int
    cutoff: str | None
    freed_pages: int


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


class Inspector:
    """The CLI's access to one database file; every method opens, works briefly and closes."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.path = config.db_path

    def schema_status(self) -> SchemaStatus:
        """The schema revision against head, read-only: never creates the file."""
        if not os.path.exists(self.path):
            head = migrations.head_revision()
            return SchemaStatus(db=self.path, current=None, head=head, state="missing")
        with self._engine(write=False) as engine:
            return self._status(engine)

    def migrate(self) -> SchemaStatus:
        """Upgrade to head, creating the file and schema if needed; the status before."""
        folder = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(folder):
            raise StorageError(f"cannot create {self.path}: folder {folder} does not exist")
        before = self.schema_status()
        if before["state"] == "unknown":
            raise _schema_error(before)
        if before["state"] != "current":
            with _translated(self.config):
                migrations.upgrade(self.path, busy_timeout_ms=self.config.busy_timeout_ms)
        return before

    # --- reads ------------------------------------------------------------------------------

    def stats(self, *, now: float) -> QueueStats:
        """Counts by status and priority, oldest pending age, ready batches, dedup hits."""
        with self._connect() as c, c.begin():
            counts = _dense_counts(c.execute(sql.count_by_status_priority()).all())
            counters = {name: int(value) for name, value in c.execute(sql.select_counters())}
            oldest = c.execute(sql.oldest_pending()).scalar()
            params = ready_params(now, self._rules(c))
            ready = int(c.execute(sql.count_ready_keys(), params).scalar_one())
        return QueueStats(
            counts=counts,
            oldest_pending_age_s=None if oldest is None else round(max(0.0, now - oldest), 3),
            duplicates_suppressed=counters.get("duplicates_suppressed", 0),
            ready_batches=ready,
        )

    def spill_positions(self, spill_log: str) -> dict[int, tuple[int, int]]:
        """How far spill log `spill_log` was promoted, per priority: (segment, offset)."""
        with self._connect() as c, c.begin():
            rows = c.execute(sql.select_spill_positions(), {"b_log": spill_log}).all()
        return {int(p): (int(seg), int(off)) for p, seg, off in rows}

    def peek(self, *, now: float, limit: int) -> list[PeekBatch]:
        """The next batches in claim order (one per ready key), claiming nothing."""
        with self._connect() as c, c.begin():
            rules = self._rules(c)
            keys = c.execute(sql.select_ready_keys(limit), ready_params(now, rules)).all()
            return [_peek_batch(c, row, now, rules) for row in keys]

    def show(self, event_id: int) -> EventInfo | None:
        """One event with every column, or None when there is no such id."""
        with self._connect() as c, c.begin():
            row = c.execute(sql.select_event(event_id)).first()
        if row is None:
            return None
        info = dict(row._mapping)
        info.update({k: _iso(info[k]) for k in _TIME_COLUMNS})
        return {**info, "priority": _priority_name(row.priority), "payload": _payload(row.payload)}

    def dead(self, *, limit: int) -> list[EventBrief]:
        """Dead letters, most recent first, with their last error."""
        with self._connect() as c, c.begin():
            rows = c.execute(sql.select_dead(limit)).all()
        return [
            {
                **_brief(r),
                "batch_key": r.batch_key,
                "last_error": r.last_error,
                "died_at": _iso(r.finished_at),
            }
            for r in rows
        ]

    # --- repair -----------------------------------------------------------------------------

    def requeue(self, ids: Sequence[int] | None, *, now: float) -> RequeueResult:
        """Dead events (these ids, or all) back to pending; nothing changes if an id is not dead."""
        with self._connect(write=True) as c, c.begin():
            refused = [] if ids is None else _refusals(c, ids)
            if refused:
                return RequeueResult(requeued=0, refused=refused)
            params: dict[str, Any] = {"b_now": now}
            if ids is not None:
                params["b_ids"] = sorted(set(ids))
            count = c.execute(sql.requeue_events(all_dead=ids is None), params).rowcount
        return RequeueResult(requeued=count, refused=[])

    def purge(self, *, cutoff: float, chunk: int = 500) -> PurgeResult:
        """Delete done events finished before `cutoff`, one small transaction per chunk."""
        purged = 0
        with self._connect(write=True) as c:
            while True:
                with c.begin():
                    params = {"b_cutoff": cutoff, "b_chunk": chunk}
                    deleted = c.execute(sql.purge_done(), params).rowcount
                purged += deleted
                if deleted < chunk:
                    break
            freed = _incremental_vacuum(_driver(c.connection))
        return PurgeResult(purged=purged, cutoff=_iso(cutoff), freed_pages=freed)

    def vacuum(self) -> VacuumResult:
        """Hand free pages back to the filesystem, then checkpoint and truncate the WAL."""
        with self._raw(write=True) as connection:
            freed = _incremental_vacuum(connection)
            busy, log, done = connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        return VacuumResult(
            freed_pages=freed, checkpoint_busy=bool(busy), wal_frames=log, checkpointed_frames=done
        )

    def backup(self, destination: str, *, force: bool = False) -> BackupResult:
        """A consistent copy via SQLite's backup API (never a file copy, F8), renamed into place."""
        target = os.path.abspath(destination)
        self._check_destination(target, force)
        fd, temp = tempfile.mkstemp(prefix=".eventqueue-backup-", dir=os.path.dirname(target))
        os.close(fd)
        try:
            with (
                self._raw(write=False) as source,
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
        return BackupResult(source=self.path, path=target, pages=pages, bytes=size)

    def sql(self, query: str, *, max_rows: int = 1000) -> SqlResult:
        """Run one read-only statement; anything else is refused before it runs (F17)."""
        denied: list[str] = []
        with self._raw(write=False) as connection:
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

    # --- connections --------------------------------------------------------------------------

    @contextlib.contextmanager
    def _engine(self, *, write: bool) -> Iterator[Engine]:
        """An engine on the existing file (mode=rw or ro: never created), PRAGMAs from engine.py."""
        self._require_file()
        uri = f"file:{quote(os.path.abspath(self.path))}?mode={'rw' if write else 'ro'}"
        timeout = self.config.busy_timeout_ms
        # timeout=: the PRAGMAs before busy_timeout must not wait sqlite3's default 5 s either.
        engine = create_engine(
            "sqlite://",
            creator=lambda: sqlite3.connect(uri, uri=True, timeout=timeout / 1000),
            poolclass=NullPool,
        )
        reading = [f"PRAGMA busy_timeout={timeout}", "PRAGMA query_only=ON"]
        install_hooks(engine, pragmas(self.config.durability, timeout) if write else reading)
        # Writes read first (requeue checks statuses): BEGIN IMMEDIATE (F3); reads: DEFERRED.
        mode = "IMMEDIATE" if write else "DEFERRED"
        try:
            with _translated(self.config):
                yield engine.execution_options(**{BEGIN_MODE: mode})
        finally:
            engine.dispose()

    @contextlib.contextmanager
    def _connect(self, *, write: bool = False) -> Iterator[Connection]:
        """A connection on a file whose schema is at head."""
        with self._engine(write=write) as engine:
            status = self._status(engine)
            if status["state"] != "current":
                raise _schema_error(status)
            with engine.connect() as connection:
                yield connection

    @contextlib.contextmanager
    def _raw(self, *, write: bool) -> Iterator[sqlite3.Connection]:
        """The plain sqlite3 connection (PRAGMAs applied, no transaction open)."""
        with (
            self._engine(write=write) as engine,
            contextlib.closing(engine.raw_connection()) as raw,
        ):
            yield _driver(raw)

    def _status(self, engine: Engine) -> SchemaStatus:
        current, head = migrations.current_revision(engine), migrations.head_revision()
        return SchemaStatus(db=self.path, current=current, head=head, state=_state(current, head))

    def _rules(self, c: Connection) -> ClaimRules:
        """The batching rules of the last process that opened the queue, else this config's."""
        stored = {name: value for name, value in c.execute(sql.select_settings())}
        config = self.config

        def number(name: str, default: float) -> float:
            try:
                return float(stored[name])
            except (KeyError, ValueError):
                return default

        return ClaimRules(
            max_batch=max(1, int(number("max_batch_size", config.max_batch_size))),
            window_s=number("batch_window_ms", config.batch_window_ms) / 1000.0,
            aging_s=number("aging_s", config.aging_s) or config.aging_s,
            batching=stored.get("enable_batching", str(config.enable_batching).lower()) != "false",
            lease_s=config.lease_s,
            max_attempts=config.max_attempts,
        )

    def _require_file(self) -> None:
        if os.path.isdir(self.path):
            raise StorageError(f"{self.path} is a folder: give the database file with --db PATH")
        if not os.path.isfile(self.path):
            raise StorageError(
                f"no database at {self.path}: run `eventqueue migrate --db "
                f"{shlex.quote(self.path)}` to create one"
            )

    def _check_destination(self, target: str, force: bool) -> None:
        self._require_file()
        folder = os.path.dirname(target)
        if not os.path.isdir(folder):
            raise StorageError(f"cannot write {target}: folder {folder} does not exist")
        if not os.path.lexists(target):
            return
        if os.path.exists(target) and os.path.samefile(target, self.path):
            raise StorageError(f"{target} is the database itself: give another backup path")
        if not force or not os.path.isfile(target):
            raise StorageError(f"{target} exists: give a new path, or --force to replace a file")
        if os.path.exists(f"{target}-wal") and os.path.getsize(f"{target}-wal"):
            # A stale WAL beside the target would be replayed into the fresh copy.
            raise StorageError(f"{target}-wal exists (is {target} in use?): remove it first")


# --- helpers ----------------------------------------------------------------------------------


def _state(current: str | None, head: str) -> SchemaState:
    if current == head:
        return "current"
    if current is None or migrations.is_known_revision(current):
        return "behind"
    return "unknown"


def _schema_error(status: SchemaStatus) -> SchemaError:
    path, current, head = status["db"], status["current"], status["head"]
    fix = f"`eventqueue migrate --db {shlex.quote(path)}`"
    if status["state"] == "unknown":
        return SchemaError(
            f"{path} has schema revision {current}, unknown to this eventqueue (head {head}): "
            "it was migrated by a newer version; upgrade eventqueue"
        )
    if current is None:
        return SchemaError(f"{path} holds no eventqueue schema: run {fix}")
    return SchemaError(f"{path} has schema revision {current}, behind head {head}: run {fix}")


@contextlib.contextmanager
def _translated(config: Config) -> Iterator[None]:
    """Driver errors become StorageError saying what to do next; the cause is kept."""
    try:
        yield
    except sa_exc.DBAPIError as exc:
        raise _storage_error(config, exc.orig or exc) from exc
    except sqlite3.Error as exc:
        raise _storage_error(config, exc) from exc


_HINTS = (
    ("not a database", "the file is not an eventqueue database (or is damaged); check --db"),
    ("readonly", "check the permissions of the file and its folder"),
    ("unable to open", "check the path and its permissions"),
    ("full", "the disk is full; free space and retry"),
)


def _storage_error(config: Config, orig: BaseException) -> StorageError:
    message = str(orig)
    hints = [hint for needle, hint in _HINTS if needle in message.lower()]
    if is_locked_error(orig):
        timeout = config.busy_timeout_ms
        hints = [
            "another process holds the lock; retry, or raise EVENT_BUSY_TIMEOUT_MS "
            f"(now {timeout} ms)"
        ]
    return StorageError(f"database {config.db_path}: {'; '.join([message, *hints[:1]])}")


def _driver(connection: Any) -> sqlite3.Connection:
    """The sqlite3 connection under a SQLAlchemy pooled connection."""
    return cast(sqlite3.Connection, connection.driver_connection)


def _peek_batch(c: Connection, row: Any, now: float, rules: ClaimRules) -> PeekBatch:
    key, effective, oldest, top = row
    size = rules.max_batch if rules.batching else 1
    events = c.execute(
        sql.select_pending_for_key(),
        {"b_key": key, "b_limit": size, **ready_params(now, rules)},
    ).all()
    # As the claim does: a key ready only because of CRITICAL events leases just those.
    due = not rules.batching or oldest <= now - rules.window_s
    if top == sql.CRITICAL and not due and len(events) < rules.max_batch:
        events = [e for e in events if e.priority == sql.CRITICAL]
    return PeekBatch(
        key=key,
        priority=_priority_name(effective),
        top_priority=_priority_name(top),
        oldest_age_s=round(max(0.0, now - oldest), 3),
        events=[{**_brief(e), "received_at": _iso(e.received_at)} for e in events],
    )


def _brief(row: Any) -> EventBrief:
    return {
        "id": row.id,
        "event_name": _event_name(row.payload),
        "priority": _priority_name(row.priority),
        "attempts": row.attempts,
    }


def _dense_counts(rows: Sequence[Any]) -> dict[str, dict[str, int]]:
    """Every status × every priority, zeros included: a stable shape for scripts."""
    counts = {str(s): {p.name: 0 for p in Priority} for s in Status}
    for status, priority, count in rows:
        counts.setdefault(status, {})[_priority_name(priority)] = int(count)
    return counts


def _refusals(c: Connection, ids: Sequence[int]) -> list[Refusal]:
    wanted = sorted(set(ids))
    rows = c.execute(sql.select_statuses(), {"b_ids": wanted}).all()
    found: dict[int, str] = {row_id: status for row_id, status in rows}
    return [
        Refusal(id=i, status=found.get(i, "missing"))
        for i in wanted
        if found.get(i) != str(Status.DEAD)
    ]


def _priority_name(value: Any) -> str:
    try:
        return Priority(int(value)).name
    except (TypeError, ValueError):
        return str(value)


def _payload(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text  # shown as stored, never hidden


def _event_name(text: str) -> str:
    payload = _payload(text)
    name = payload.get("event_name") if isinstance(payload, dict) else None
    return name if isinstance(name, str) else ""


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    try:
        return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds")
    except (OverflowError, OSError, ValueError):
        return str(timestamp)


def _incremental_vacuum(connection: sqlite3.Connection) -> int:
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
    if is_locked_error(exc):
        return StorageError(f"database is locked: {exc}; retry, or raise EVENT_BUSY_TIMEOUT_MS")
    return QueryError(f"query failed: {exc}")


def _cell(value: Any) -> Any:
    """A JSON-ready cell: blobs as hex, infinities as text."""
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value
