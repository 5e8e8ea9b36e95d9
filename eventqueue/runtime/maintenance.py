"""Maintenance without an operator: purge what retention allows, and let the backend tidy up
(SQLite: a WAL checkpoint), at a gentle pace in the background."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

from eventqueue.core.config import Config
from eventqueue.core.errors import EventQueueError
from eventqueue.runtime.metrics import Metrics
from eventqueue.store.base import Store

log = logging.getLogger("eventqueue.queue")


class _Purges(Protocol):
    async def purge(self, older_than_s: float | None = None, *, chunk: int = 500) -> int: ...


class Maintenance:
    """The background task of one queue."""

    def __init__(self, task: asyncio.Task[None]) -> None:
        self._task = task

    @classmethod
    def start(cls, queue: _Purges, store: Store, config: Config, metrics: Metrics) -> Maintenance:
        """Start purging and tidying every min(60 s, retention / 10), at least every second."""
        interval_s = min(60.0, max(1.0, config.retention_s / 10))
        task = asyncio.create_task(
            _maintain(queue, store, metrics, interval_s), name="eventqueue-maintenance"
        )
        return cls(task)

    async def stop(self) -> None:
        """Stop the task (a purge in flight is one small transaction: it finishes or not)."""
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


async def _maintain(queue: _Purges, store: Store, metrics: Metrics, interval_s: float) -> None:
    while True:
        await asyncio.sleep(interval_s)
        try:
            purged = await queue.purge()
            await store.maintain()
        except EventQueueError as exc:
            log.warning("maintenance (purge, checkpoint) failed, will retry: %s", exc)
            continue
        if purged:
            metrics.count("purged", purged)
