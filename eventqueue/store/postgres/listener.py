"""LISTEN on the queue's channel from one dedicated connection, reconnecting when it drops.

Commits that make work available (puts, retries, releases, expired leases, requeues) NOTIFY
the channel inside their transaction, so the notification goes out at commit. A notification
sent while this connection was down is lost: after every reconnect `on_change` is called once,
and the runtime's own timer poll stays the last fallback.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import asyncpg

from eventqueue.core.errors import StorageError
from eventqueue.store.postgres.connection import connect

# Reconnect pauses after the listening connection is lost: short first, then backing off.
_FIRST_PAUSE_S = 0.05
_MAX_PAUSE_S = 5.0
_CONNECT_TIMEOUT_S = 5.0


class Listener:
    """One LISTEN connection calling `on_change` for every notification not sent by `ignore`."""

    def __init__(
        self, dsn: str, channel: str, *, ignore: str, on_change: Callable[[], None]
    ) -> None:
        self._dsn = dsn
        self._channel = channel
        self._ignore = ignore
        self._on_change = on_change
        self._task: asyncio.Task[None] | None = None
        self._connection: asyncpg.Connection | None = None

    async def start(self) -> None:
        """LISTEN before returning (a commit after this wakes us); then keep it up."""
        self._connection = await self._listen()
        self._task = asyncio.create_task(self._supervise(), name="eventqueue-pg-listen")

    async def close(self) -> None:
        """Stop listening and close the connection (idempotent)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._drop()

    async def _listen(self) -> asyncpg.Connection:
        connection = await connect(self._dsn, timeout_s=_CONNECT_TIMEOUT_S)
        try:
            await connection.add_listener(self._channel, self._notified)
        except BaseException:
            await connection.close()
            raise
        return connection

    def _notified(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        if payload != self._ignore:
            self._on_change()

    async def _supervise(self) -> None:
        pause = _FIRST_PAUSE_S
        while True:
            connection = self._connection
            assert connection is not None
            await _terminated(connection)
            await self._drop()
            while self._connection is None:
                await asyncio.sleep(pause)
                pause = min(pause * 2, _MAX_PAUSE_S)
                with contextlib.suppress(StorageError, OSError, asyncpg.PostgresError):
                    self._connection = await self._listen()
            pause = _FIRST_PAUSE_S
            self._on_change()  # whatever was notified while we were away

    async def _drop(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None and not connection.is_closed():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.close(), timeout=2.0)


async def _terminated(connection: asyncpg.Connection) -> None:
    """Return when `connection` is closed or lost."""
    lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def on_lost(_connection: object) -> None:
        if not lost.done():
            lost.set_result(None)

    connection.add_termination_listener(on_lost)
    if connection.is_closed():
        on_lost(connection)
    await lost
