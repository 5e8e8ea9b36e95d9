"""One SQLite connection and its transactions: writes in rounds of the round engine (rounds.py,
the only write path), short reads between rounds, shielded from cancellation, with the file
watched for deletion and the disk for space.

Statements are SQLAlchemy Core constructs (queries.py), compiled once (`Prepared`). A whole
transaction (BEGIN, its statements, COMMIT) runs as one function on aiosqlite's connection
thread and comes back once: one thread hop per transaction, not one per statement. (SQLAlchemy's
own async layer costs four hops per statement with aiosqlite: ~370 µs against ~100 µs for one
aiosqlite call, measured here.) Lists of ids are bound as one JSON parameter; new events as
plain values (bodies.insert_rows).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote

import aiosqlite
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.sql import ClauseElement

from eventqueue.core.errors import QueueClosedError, StorageError, StoreBusyError
from eventqueue.store.sqlite.checkpoints import Checkpointer
from eventqueue.store.sqlite.errors import is_busy, storage_error
from eventqueue.store.sqlite.pragmas import pragmas
from eventqueue.store.sqlite.rounds import Rank, RoundEngine, Steps

T = TypeVar("T")
_DIALECT = sqlite_dialect.dialect()
# RETURNING (3.35) and UPDATE ... FROM (3.33) are used on the hot paths.
MIN_SQLITE = (3, 35, 0)
# With less free space than this, the WAL is checkpointed and truncated after every round, on
# the writer itself. Otherwise it grows to the checkpointer's threshold (checkpoints.py, ~4 MiB)
# before a checkpoint, and on a nearly full disk it takes the space that returns before one can
# run (F14).
LOW_DISK_BYTES = 8 * 1024 * 1024
NO_AUTOCHECKPOINT = "PRAGMA wal_autocheckpoint=0"

Body = Callable[["Tx"], T]  # runs on the connection's thread, inside the transaction


class Tx:
    """The statements of one transaction, on the connection's own thread."""

    def __init__(self, connection: sqlite3.Connection, steps: Steps | None = None) -> None:
        self._connection = connection
        self._steps = steps if steps is not None else Steps()  # sqlite3 steps, for the profile

    def run(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Execute one statement to its end; the number of rows it changed."""
        cursor = self._connection.execute(sql, params)
        fetched = cursor.fetchall()  # a statement still stepping would keep COMMIT from ending it
        self._steps.count += 1 + len(fetched)
        return cursor.rowcount

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """Execute one statement; all its rows."""
        fetched = self._connection.execute(sql, params).fetchall()
        self._steps.count += 1 + len(fetched)
        return fetched

    def dicts(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Execute one statement; its rows as {column: value}."""
        cursor = self._connection.execute(sql, params)
        names = [d[0] for d in cursor.description]
        fetched = cursor.fetchall()
        self._steps.count += 1 + len(fetched)
        return [dict(zip(names, row, strict=True)) for row in fetched]

    def scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """Execute one statement; the first column of its first row (None without rows)."""
        rows = self._connection.execute(sql, params).fetchall()
        self._steps.count += 1 + len(rows)
        return rows[0][0] if rows else None

    def many(self, sql: str, params: Iterable[Sequence[Any]]) -> None:
        """Execute one statement once per parameter set."""
        listed = list(params)
        self._connection.executemany(sql, listed)
        self._steps.count += len(listed)


class _BeginBusy(Exception):
    """BEGIN found the write lock held by another connection (raised on the thread)."""

    def __init__(self, cause: sqlite3.OperationalError) -> None:
        super().__init__(str(cause))
        self.cause = cause


@dataclass(frozen=True, slots=True)
class Prepared:
    """A Core statement compiled once: SQL text and the order of its named parameters."""

    sql: str
    order: tuple[str, ...]
    defaults: Mapping[str, Any]

    @classmethod
    def of(cls, statement: ClauseElement) -> Prepared:
        compiled = statement.compile(dialect=_DIALECT)
        # The SQLite dialect compiles to qmark style; positiontup names each "?" in order.
        order = getattr(compiled, "positiontup", None) or ()
        return cls(compiled.string, tuple(order), dict(compiled.params))

    def bind(self, **values: Any) -> tuple[Any, ...]:
        """Positional parameters from named values (compiled-in constants as defaults)."""
        return tuple(values[n] if n in values else self.defaults[n] for n in self.order)


class Connection:
    """One aiosqlite connection on one file: writes in rounds (rounds.py), reads between them."""

    def __init__(
        self,
        path: str,
        db: aiosqlite.Connection,
        *,
        busy_timeout_ms: int,
        checkpointer: Checkpointer | None = None,
    ) -> None:
        self.path = path
        self._checkpointer = checkpointer
        self._db = db
        self._busy_timeout_s = busy_timeout_ms / 1000.0
        self._closed = False
        self._identity = _file_identity(path)
        self._wal_identity = _file_identity(path + "-wal")
        self._directory = os.path.dirname(os.path.abspath(path))
        self._engine = RoundEngine(
            path,
            functools.partial(on_connection_thread, db),
            Tx,
            self._check_file,
            self._after_round,
            self._busy_timeout_s,
            self._between_rounds,
        )

    @classmethod
    async def open(
        cls,
        path: str,
        *,
        durability: str,
        busy_timeout_ms: int,
        lock_wait_ms: int,
        readonly: bool = False,
    ) -> Connection:
        """Connect with the PRAGMAs in place; `readonly`: mode=ro and query_only (never creates)."""
        if sqlite3.sqlite_version_info < MIN_SQLITE:
            raise StorageError(
                f"SQLite {sqlite3.sqlite_version} is too old; eventqueue needs 3.35 or newer"
            )
        # mode=ro: a reader never creates the file (the caller checked it exists).
        target = f"file:{quote(path)}?mode=ro" if readonly else path
        try:
            # isolation_level=None: we emit BEGIN ourselves (F4); PRAGMAs run before any
            # transaction, where they take effect (F5).
            db = await aiosqlite.connect(target, isolation_level=None, uri=readonly)
        except sqlite3.Error as exc:
            raise storage_error(path, exc) from exc
        reading = [f"PRAGMA busy_timeout={int(busy_timeout_ms)}", "PRAGMA query_only=ON"]
        # The writer never checkpoints inside a COMMIT: the checkpointer does, on its thread.
        writing = [*pragmas(durability, min(busy_timeout_ms, lock_wait_ms)), NO_AUTOCHECKPOINT]
        try:
            for statement in reading if readonly else writing:
                await db.execute(statement)
        except sqlite3.Error as exc:
            await db.close()
            raise storage_error(path, exc) from exc
        checkpointer = None if readonly else Checkpointer(path)
        return cls(path, db, busy_timeout_ms=busy_timeout_ms, checkpointer=checkpointer)

    @property
    def engine(self) -> RoundEngine:
        """The round engine: every write of this connection goes through it."""
        return self._engine

    def critical_waiting(self) -> bool:
        """Whether a CRITICAL put waits for the round in progress."""
        return self._engine.critical_waiting()

    async def close(self) -> None:
        """Finish the queued writes, checkpoint the WAL and close the connection (idempotent)."""
        if self._closed:
            return
        self._closed = True
        await self._engine.close()
        if self._checkpointer is not None:
            await self._checkpointer.close()
        try:
            await self._outside_transaction("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error:
            pass  # an optimisation: a reader in another process may hold the WAL
        finally:
            await self._db.close()

    async def checkpoint(self) -> None:
        """Copy the WAL into the database file so it stays small (F7); skipped when busy.
        The checkpointer's connection does it, on its own thread (a TRUNCATE when idle)."""
        if self._checkpointer is not None:
            self._checkpointer.maintain()
            return
        if not self._closed:
            with contextlib.suppress(sqlite3.Error):
                await self._outside_transaction("PRAGMA wal_checkpoint(PASSIVE)")

    async def _outside_transaction(self, sql: str) -> None:
        # Stepped to its end on the thread: a half-read PRAGMA would stay "in progress".
        # One function on the thread: it never lands inside a round's transaction.
        await on_connection_thread(self._db, _statement, sql)

    async def write(
        self, body: Body[T], *, fail_fast: bool = False, rank: Rank = Rank.OTHER, rows: int = 0
    ) -> T:
        """Run `body` in the next round (one BEGIN IMMEDIATE transaction with the other requests
        queued, F3), in its own savepoint; its result after the round's COMMIT. Shielded from
        cancellation: a cancelled caller leaves its request to its round.

        While another connection holds the write lock, the round retries until busy_timeout_ms
        has passed; `fail_fast`: raise StoreBusyError after the connection's short wait instead.
        `rank`: where the request goes in its round (CRITICAL puts first); `rows`: the rows it
        puts (a round's cap).
        """
        if self._closed:
            raise QueueClosedError("the queue is closed")
        result: T = await self._engine.submit(body, rank=rank, rows=rows, fail_fast=fail_fast)
        return result

    async def read(self, body: Body[T]) -> T:
        """Run `body` in one short read transaction (between rounds: one function on the
        thread, so never inside a round's transaction)."""
        task = asyncio.ensure_future(self._read(body))
        task.add_done_callback(_retrieve)
        return await asyncio.shield(task)

    async def _read(self, body: Body[T]) -> T:
        deadline = time.monotonic() + self._busy_timeout_s
        pause = 0.005
        while True:
            if self._closed:
                raise QueueClosedError("the queue is closed")
            retry = time.monotonic() < deadline
            try:
                began, result = await on_connection_thread(
                    self._db, _transaction, body, "BEGIN DEFERRED", retry
                )
            except _BeginBusy as busy:
                raise StoreBusyError(
                    f"database {self.path} is locked by another connection "
                    f"({busy}); retry, or raise EVENT_BUSY_TIMEOUT_MS"
                ) from busy.cause
            except sqlite3.Error as exc:
                raise storage_error(self.path, exc) from exc
            if began:
                return result  # type: ignore[return-value]
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.1)

    async def _after_round(self) -> None:
        # Deleted while this round ran: it committed into an unlinked file (F13), so its work
        # must not be reported as stored.
        self._check_file()
        if not await self._relieve_disk() and self._checkpointer is not None:
            self._checkpointer.after_round()

    async def _between_rounds(self) -> None:
        # After a round's answers, before the next round: the frames the checkpointer could not
        # copy while rounds appended them (a few rounds' worth). Once copied, the next round's
        # BEGIN restarts the WAL (checkpoints.py). Not while a CRITICAL put waits: it goes
        # first, the catch-up after a later round.
        if self._checkpointer is None or self._engine.critical_waiting():
            return
        if self._checkpointer.catch_up_due():
            with contextlib.suppress(sqlite3.Error):
                await self._outside_transaction("PRAGMA wal_checkpoint(PASSIVE)")

    async def _relieve_disk(self) -> bool:
        """On a nearly full disk, TRUNCATE the WAL on the writer itself, between rounds
        (whether it did). An optimisation, so failures are ignored."""
        try:
            st = os.statvfs(self._directory)
        except OSError:
            return False
        if st.f_bavail * st.f_frsize >= LOW_DISK_BYTES:
            return False
        with contextlib.suppress(sqlite3.Error):
            await self._outside_transaction("PRAGMA wal_checkpoint(TRUNCATE)")
        return True

    def _check_file(self) -> None:
        # A database file deleted or replaced under an open WAL connection keeps accepting
        # writes into the unlinked inode: fail loudly rather than acknowledge lost events (F13).
        # Likewise the WAL: SQLite never deletes it while a connection is open, so once seen, a
        # missing or different -wal was deleted under us (commits would go where no other
        # connection looks, and a crash would lose them).
        wal = _file_identity(self.path + "-wal")
        if self._wal_identity is None:
            self._wal_identity = wal
        if _file_identity(self.path) != self._identity or wal != self._wal_identity:
            raise StorageError(
                f"database file {self.path} (or its -wal) was deleted or replaced while open; "
                "events written now would be lost. Restore the file or restart the process."
            )


def _retrieve(task: asyncio.Future[Any]) -> None:
    # The caller may have been cancelled and will never read this task's error: mark it
    # retrieved so asyncio does not warn. A caller still waiting gets it as usual.
    if not task.cancelled():
        task.exception()


def _file_identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino)


def _statement(connection: sqlite3.Connection, sql: str) -> None:
    connection.execute(sql).fetchall()


def _transaction(
    connection: sqlite3.Connection, body: Body[T], begin: str, retry: bool
) -> tuple[bool, T | None]:
    """BEGIN, `body`, COMMIT on the connection's thread; (False, None) if busy and `retry`."""
    tx = Tx(connection)
    try:
        try:
            tx.run(begin)
        except sqlite3.OperationalError as exc:
            if not is_busy(exc):
                raise
            if retry:
                return False, None
            raise _BeginBusy(exc) from exc
        result = body(tx)
        tx.run("COMMIT")
    except BaseException:
        # SQLite may already have rolled back by itself (disk full, F14): no blind ROLLBACK.
        # The original error is what the caller needs to see, not a failed ROLLBACK.
        if connection.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                connection.execute("ROLLBACK")
        raise
    return True, result


# --- aiosqlite's worker thread ---------------------------------------------------------------
# aiosqlite runs every call of a connection on one thread, through `Connection._execute(fn,
# *args)` (aiosqlite >= 0.22.1, pinned in pyproject; tests/integration/test_store.py checks
# this contract). A transaction is handed over as one function, so it costs one hop.


async def on_connection_thread(db: aiosqlite.Connection, fn: Callable[..., T], *args: Any) -> T:
    """Run `fn(connection, *args)` on `db`'s own thread, with its sqlite3 connection; one hop."""
    run: Callable[..., Awaitable[T]] = db._execute  # aiosqlite's own queue to its thread
    return await run(_with_connection, db, fn, *args)


def _with_connection(db: aiosqlite.Connection, fn: Callable[..., T], *args: Any) -> T:
    return fn(db._conn, *args)  # on the thread: the only place the sqlite3 object is touched
