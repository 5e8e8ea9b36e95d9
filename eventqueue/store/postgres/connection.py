"""A small asyncpg pool and its transactions: shielded from cancellation, busy waits bounded,
deadlocks retried, driver errors translated at this one boundary.

Why asyncpg (measured on this machine against psycopg 3 async, see the PostgreSQL notes in the
README): one driver for the runtime and the migrations (SQLAlchemy's asyncpg dialect), a pool
with an acquire timeout (the fail-fast put), LISTEN/NOTIFY callbacks, and server-side
prepared statements cached per connection for the fixed texts in queries.py.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

import asyncpg

from eventqueue.core.errors import QueueClosedError, StoreBusyError
from eventqueue.store.postgres.errors import RETRYABLE, storage_error
from eventqueue.store.postgres.urls import display_name as display_name
from eventqueue.store.postgres.urls import driver_dsn as driver_dsn

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

T = TypeVar("T")
# A pooled connection, as transaction bodies receive it.
Conn: TypeAlias = "PoolConnectionProxy[asyncpg.Record]"
Body = Callable[[Conn], Awaitable[T]]

# A few connections per process are plenty: the runtime's writer and urgent writer, two claims
# in flight (claim_pool.py), the consumers' own acks and the promoter. Every process on every
# host holds its own, within max_connections.
POOL_MIN = 1
POOL_MAX = 6
# How often a transaction rolled back by a deadlock or serialization failure is run again.
RETRIES = 3


async def connect(dsn: str, *, timeout_s: float, **settings: str) -> asyncpg.Connection:
    """One connection outside the pool (listener, admin, migrations), errors translated."""
    try:
        return await asyncpg.connect(
            driver_dsn(dsn), timeout=timeout_s, server_settings=settings or None
        )
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
        raise storage_error(display_name(dsn), exc) from exc


async def _keep_session(_connection: object) -> None:
    """The pool's reset on release, instead of asyncpg's (`RESET ALL`, `UNLISTEN *`, ... : one
    more round trip per transaction, 0.26 ms median and 15 ms p99 end to end, issue 21). These
    sessions change no setting beyond a transaction (only SET LOCAL) and LISTEN on their own
    connection; asyncpg still rolls back a transaction left open before calling this."""


class Pool:
    """The store's connections: transactions one method each, never left half-open."""

    def __init__(self, dsn: str, pool: asyncpg.Pool, *, busy_timeout_ms: int, spill_after_ms: int):
        self.dsn = dsn
        self.name = display_name(dsn)
        self._pool = pool
        self._busy_timeout_s = busy_timeout_ms / 1000.0
        self._spill_after_ms = spill_after_ms
        self._closed = False
        self._running: set[asyncio.Future[Any]] = set()

    @classmethod
    async def open(
        cls, dsn: str, *, busy_timeout_ms: int, spill_after_ms: int, readonly: bool
    ) -> Pool:
        """Connect (bounded by busy_timeout_ms); every session gets the same settings."""
        settings = {
            "application_name": "eventqueue",
            # A lock held elsewhere fails the transaction after this wait (StoreBusyError)
            # instead of hanging; fail-fast puts lower it for themselves.
            "lock_timeout": f"{int(busy_timeout_ms)}ms",
            # A session that dies inside a transaction must not hold row locks for long.
            "idle_in_transaction_session_timeout": f"{max(60_000, 10 * int(busy_timeout_ms))}ms",
            # No JIT: every statement here runs in milliseconds, but the generic plan of a
            # prepared claim at a large backlog is costed above jit_above_cost, and compiling it
            # took 100-1,500 ms per claim at 1M pending (EXPLAIN ANALYZE EXECUTE, issue 21).
            "jit": "off",
        }
        if readonly:
            settings["default_transaction_read_only"] = "on"
        try:
            pool = await asyncio.wait_for(
                asyncpg.create_pool(
                    driver_dsn(dsn),
                    min_size=POOL_MIN,
                    max_size=POOL_MAX,
                    server_settings=settings,
                    timeout=busy_timeout_ms / 1000.0,
                    reset=_keep_session,
                ),
                timeout=max(2.0, 2 * busy_timeout_ms / 1000.0),
            )
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            raise storage_error(display_name(dsn), exc) from exc
        return cls(dsn, pool, busy_timeout_ms=busy_timeout_ms, spill_after_ms=spill_after_ms)

    async def close(self) -> None:
        """Let running transactions finish, then close every connection (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        try:
            await asyncio.wait_for(self._pool.close(), timeout=self._busy_timeout_s + 1.0)
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            self._pool.terminate()

    async def write(self, body: Body[T], *, fail_fast: bool = False) -> T:
        """Run `body` in one read-committed transaction, shielded from cancellation.

        `fail_fast`: raise StoreBusyError when no connection is free, or a lock is held
        elsewhere, for longer than EVENT_SPILL_AFTER_MS (the caller spills instead).
        """
        if fail_fast:
            begin = f"BEGIN; SET LOCAL lock_timeout = '{int(self._spill_after_ms)}ms'"
            return await self._shielded(body, begin, self._spill_after_ms / 1000.0)
        return await self._shielded(body, "BEGIN", self._busy_timeout_s)

    async def statement(self, body: Body[T]) -> T:
        """Run `body`, one statement, as its own transaction (no BEGIN and COMMIT round trips:
        the server commits it durably before answering), shielded from cancellation."""
        return await self._shielded(body, None, self._busy_timeout_s)

    async def read(self, body: Body[T]) -> T:
        """Run `body` in one read-only snapshot (several statements, one consistent view)."""
        return await self._shielded(
            body, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", self._busy_timeout_s
        )

    async def _shielded(self, body: Body[T], begin: str | None, acquire_s: float) -> T:
        # A cancelled caller leaves the transaction to finish on its own (commit or roll
        # back), as on SQLite (F2): a put whose caller was cancelled may still be committed,
        # and the connection never goes back to the pool inside a transaction.
        if self._closed:
            raise QueueClosedError("the queue is closed")
        task = asyncio.ensure_future(self._run(body, begin, acquire_s))
        self._running.add(task)
        task.add_done_callback(self._finished)
        return await asyncio.shield(task)

    def _finished(self, task: asyncio.Future[Any]) -> None:
        self._running.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: a cancelled caller will never read it

    async def _run(self, body: Body[T], begin: str | None, acquire_s: float) -> T:
        for attempt in range(RETRIES + 1):
            try:
                return await self._attempt(body, begin, acquire_s)
            except asyncpg.PostgresError as exc:
                if getattr(exc, "sqlstate", None) in RETRYABLE and attempt < RETRIES:
                    continue
                raise storage_error(self.name, exc) from exc
            except (OSError, asyncpg.InterfaceError) as exc:
                raise storage_error(self.name, exc) from exc
        raise AssertionError("unreachable")

    async def _attempt(self, body: Body[T], begin: str | None, acquire_s: float) -> T:
        try:
            connection = await self._pool.acquire(timeout=acquire_s)
        except TimeoutError as exc:
            raise StoreBusyError(
                f"database {self.name}: no connection free within {acquire_s * 1000:.0f} ms "
                f"(all {POOL_MAX} of this process's are busy, or the server is slow to accept)"
            ) from exc
        try:
            if begin is None:
                return await body(connection)
            await connection.execute(begin)
            try:
                result = await body(connection)
                await connection.execute("COMMIT")
            except BaseException:
                if not connection.is_closed():
                    with contextlib.suppress(Exception):
                        await connection.execute("ROLLBACK")
                raise
            return result
        finally:
            await self._pool.release(connection)
