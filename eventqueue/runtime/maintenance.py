"""Maintenance without an operator: purge what retention allows, and let the backend tidy up
(SQLite: a WAL checkpoint), at a gentle pace in the background; keep this queue's owner row
fresh and give back the leases of owners that are gone."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

from eventqueue.core.config import Config
from eventqueue.core.errors import EventQueueError
from eventqueue.runtime.metrics import Metrics
from eventqueue.runtime.owners import Owners
from eventqueue.store.base import Store

log = logging.getLogger(__name__)


class _Purges(Protocol):
    async def purge(self, older_than_s: float | None = None, *, chunk: int = 500) -> int: ...


class Maintenance:
    """The background task of one queue."""

    def __init__(self, *tasks: asyncio.Task[None]) -> None:
        self._tasks = tasks

    @classmethod
    def start(
        cls,
        queue: _Purges,
        store: Store,
        config: Config,
        metrics: Metrics,
        owners: Owners | None = None,
    ) -> Maintenance:
        """Start purging and tidying every min(60 s, retention / 10), at least every second;
        and, with `owners`, the owner heartbeat every EVENT_OWNER_HEARTBEAT_S."""
        interval_s = min(60.0, max(1.0, config.retention_s / 10))
        tasks = [
            asyncio.create_task(
                _maintain(queue, store, metrics, interval_s), name="eventqueue-maintenance"
            )
        ]
        if owners is not None:
            beat = _heartbeat(owners, metrics, config.owner_heartbeat_s)
            tasks.append(asyncio.create_task(beat, name="eventqueue-owner-heartbeat"))
        return cls(*tasks)

    async def stop(self) -> None:
        """Stop the tasks (a purge or heartbeat in flight is one small transaction)."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


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


async def _heartbeat(owners: Owners, metrics: Metrics, period_s: float) -> None:
    while True:
        await asyncio.sleep(period_s)
        try:
            released = await owners.heartbeat()
        except EventQueueError as exc:
            log.warning("owner heartbeat failed, will retry: %s", exc)
            continue
        if released:
            metrics.count("owner_leases_released", released)
