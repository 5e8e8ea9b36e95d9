"""The dispatcher's intake: a source read in order into the queue, never blocked by handlers.

A reader task fills a bounded buffer in source order; a committer task stores it with one
`put_many` at a time, with the position of its last event, so the stored position never passes
an event not yet stored (concurrent puts may commit out of order, or one spill while the next
commits). CRITICAL events are put at once, ahead of the chunks, without a position.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

from eventqueue.core.errors import InvalidEventError
from eventqueue.runtime.metrics import Metrics
from eventqueue.runtime.queue import EventQueue

log = logging.getLogger(__name__)

# Events per put_many: validating one costs ~20 µs of loop time, so a chunk holds the loop (and
# with it the handlers of CRITICAL events) for a few ms at most.
_CHUNK_EVENTS = 128
# Events read but not yet stored: how far reading may run ahead of the disk.
_BUFFER_EVENTS = 1024
# An event as read, the source position it came from, and for a CRITICAL event the put already
# started for it (stored ahead of the ordered chunks, without a position).
Item = tuple[Any, str | None, "asyncio.Task[Any] | None"]


class _Buffer:
    """Events read and not yet stored, oldest first; bounded, so a slow disk slows reading."""

    def __init__(self, limit: int) -> None:
        self._items: deque[Item] = deque()
        self._limit = limit
        self._closed = False
        self._has_items = asyncio.Event()
        self._has_room = asyncio.Event()

    async def add(self, item: Item) -> None:
        """Append, then wait for room: a reader cancelled while it waits keeps what it read."""
        self._items.append(item)
        self._has_items.set()
        while len(self._items) >= self._limit:
            self._has_room.clear()
            await self._has_room.wait()

    def close(self) -> None:
        """Nothing more will be added."""
        self._closed = True
        self._has_items.set()

    async def take(self, limit: int) -> list[Item]:
        """Up to `limit` items, oldest first, once there is one; [] when closed and empty."""
        while not self._items and not self._closed:
            self._has_items.clear()
            await self._has_items.wait()
        taken = [self._items.popleft() for _ in range(min(limit, len(self._items)))]
        self._has_room.set()
        return taken


class Intake:
    """Reads one source into the queue: a reader task and a committer task."""

    def __init__(self, queue: EventQueue, metrics: Metrics, on_invalid: str) -> None:
        self.queue = queue
        self.metrics = metrics
        self.on_invalid = on_invalid

    def start(self, source: AsyncIterable[Any]) -> tuple[asyncio.Task[None], asyncio.Task[None]]:
        """Start reading and storing; returns (reader, committer)."""
        buffer = _Buffer(_BUFFER_EVENTS)
        reader = asyncio.create_task(self._read(source, buffer), name="eventqueue-reader")
        reader.add_done_callback(lambda _: buffer.close())  # also if cancelled before it ran
        name = name_of(source)
        committer = asyncio.create_task(self._store_all(buffer, name), name="eventqueue-committer")
        return reader, committer

    async def _read(self, source: AsyncIterable[Any], buffer: _Buffer) -> None:
        """Source to buffer, in order; closes the source when reading ends.

        A CRITICAL event is put at once, on its own and without a position, instead of waiting
        behind the chunks before it; it keeps its place in the buffer, so the committer stores
        no position past it before its put is committed. With on_invalid="stop" nothing after
        an invalid event may be stored, so there every event keeps to the ordered chunks.
        """
        iterator = aiter(source)
        bypass = self.on_invalid != "stop"
        try:
            while True:
                try:
                    event = await anext(iterator)
                except StopAsyncIteration:
                    return
                self.metrics.count("read")
                early = None
                if bypass and self.queue.is_critical(event):
                    early = asyncio.create_task(self.queue.put(event), name="eventqueue-critical")
                    early.add_done_callback(_retrieve)
                await buffer.add((event, getattr(source, "position", None), early))
        finally:
            await _close(iterator)

    async def _store_all(self, buffer: _Buffer, source: str | None) -> None:
        """Buffer to queue: one put_many at a time, so positions are stored in source order."""
        while chunk := await buffer.take(min(_CHUNK_EVENTS, self.queue.config.commit_max_events)):
            await self._stored_early(chunk, source)
            ordered = [item for item in chunk if item[2] is None]
            try:
                await self._put(ordered, source, last=chunk[-1])
            except InvalidEventError:
                # rare: find the bad ones, store the rest
                await self._put_valid(ordered, source, last=chunk[-1])

    async def _stored_early(self, chunk: list[Item], source: str | None) -> None:
        """Wait for the CRITICAL events of `chunk` put ahead: committed before its position."""
        for _event, position, early in chunk:
            if early is None:
                continue
            try:
                await asyncio.shield(early)  # cancelling the committer must not cancel the put
            except InvalidEventError as exc:
                self._rejected(exc, source, position)

    async def _put(self, items: list[Item], source: str | None, last: Item | None = None) -> None:
        """Store `items`; the position of `last` (default: the last item) commits with them."""
        if last is None:
            if not items:
                return
            last = items[-1]
        position = last[1]
        if not items:  # only events stored early: their position still has to be recorded
            if position is not None and source is not None:
                await self.queue.record_position(source, position)
            return
        # A None position would overwrite the stored one: store no position then.
        await self.queue.put_many(
            [item[0] for item in items],
            source=source if position is not None else None,
            position=position,
        )

    async def _put_valid(
        self, chunk: list[Item], source: str | None, last: Item | None = None
    ) -> None:
        valid: list[Item] = []
        for event, position, early in chunk:
            try:
                self.queue.prepare(event)
            except InvalidEventError as exc:
                if self.on_invalid == "stop":
                    await self._put(valid, source)  # what came before the bad event is kept
                self._rejected(exc, source, position)
                continue
            valid.append((event, position, early))
        await self._put(valid, source, last=last or (chunk[-1] if chunk else None))

    def _rejected(self, error: InvalidEventError, source: str | None, position: str | None) -> None:
        """Count and report an event the queue refused; raise it when `on_invalid` is stop."""
        self.metrics.count("invalid")
        where = f"{source or 'the source'}" + (f" at position {position}" if position else "")
        log.error("rejected an event from %s: %s", where, error)
        if self.on_invalid == "stop":
            raise InvalidEventError(f"rejected an event from {where}: {error}") from error


def name_of(source: object) -> str | None:
    name = getattr(source, "name", None)
    return name if isinstance(name, str) else None


async def _close(iterator: AsyncIterator[Any]) -> None:
    closer = getattr(iterator, "aclose", None)
    if closer is None:
        return
    try:
        await closer()
    except Exception as exc:  # closing is cleanup: it must not hide why reading ended
        log.warning("closing the source failed: %s", exc)


def _retrieve(task: asyncio.Task[Any]) -> None:
    # The committer reports an early put's failure; this only keeps asyncio from warning.
    if not task.cancelled():
        task.exception()
