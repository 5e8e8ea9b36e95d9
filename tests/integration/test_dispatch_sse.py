"""A real SSE server on 127.0.0.1 into the Dispatcher: duplicates, a dropped connection, a restart."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from eventqueue import Dispatcher, EventQueue
from eventqueue.core.models import Event
from eventqueue.runtime.sources import sse_source
from eventqueue.tools.sse_server import SSEServer

DEADLINE_S = 20


def order(n: int) -> dict[str, Any]:
    return {
        "event_type": "order",
        "event_name": "order_created",
        "aggregate_id": n,
        "attributes": {},
    }


def with_duplicates(numbers: range) -> list[dict[str, Any]]:
    """Each event once, and every third one twice (the second sending is a duplicate)."""
    stream: list[dict[str, Any]] = []
    for n in numbers:
        if n % 3 == 0:
            stream.append(order(n))  # the same content again: a duplicate for dedup
        stream.append(order(n))
    return stream


class Seen:
    """Counts deliveries per aggregate id; `all_of(numbers)` waits until each arrived."""

    def __init__(self) -> None:
        self.count: Counter[int] = Counter()
        self._changed = asyncio.Event()

    async def __call__(self, events: list[Event]) -> None:
        self.count.update(e.payload["aggregate_id"] for e in events)
        self._changed.set()

    async def all_of(self, numbers: range) -> None:
        async with asyncio.timeout(DEADLINE_S):
            while not set(numbers) <= set(self.count):
                self._changed.clear()
                await self._changed.wait()


async def listen_until(q: EventQueue, url: str, seen: Seen, numbers: range) -> None:
    """Run a dispatcher on the stream until every number was handled, then stop it."""
    dispatcher = Dispatcher(q)
    dispatcher.add_handler("order_created", seen)
    running = asyncio.create_task(dispatcher.run(sse_source(url, reconnect_initial_s=0.01)))
    await seen.all_of(numbers)
    dispatcher.stop()
    async with asyncio.timeout(DEADLINE_S):
        await running


async def test_duplicates_and_a_dropped_connection_reach_handlers_exactly_once(
    open_queue: Any, query: Any
) -> None:
    stream = with_duplicates(range(1, 32))  # 41 messages, 10 of them duplicates
    q = await open_queue(batch_window_ms=0)
    seen = Seen()
    async with SSEServer(stream, disconnect_after=12, retry_ms=5) as server:
        await listen_until(q, server.url, seen, range(1, 32))

    assert seen.count == Counter({n: 1 for n in range(1, 32)})
    assert server.last_event_ids_seen[:2] == [None, "12"]  # resumed after the drop
    # The last message is a first sending: when it was handled, all 41 had been stored.
    assert (await q.stats()).duplicates_suppressed == 10
    assert query("SELECT position FROM source_positions") == [("41",)]
    assert query("SELECT count(*), min(status), max(status) FROM events") == [(31, "done", "done")]


async def test_a_restarted_listener_sends_the_stored_position_and_gets_only_the_rest(
    open_queue: Any,
) -> None:
    q = await open_queue(batch_window_ms=0)
    seen = Seen()
    async with SSEServer(with_duplicates(range(1, 11)), retry_ms=5) as server:
        await listen_until(q, server.url, seen, range(1, 11))
        stored = await q.source_position(f"sse:{server.url}")
        for event in [*with_duplicates(range(11, 21)), order(4)]:  # and an old event re-sent
            server.add(event)
        server.add(order(21))
        connections = server.connections

        await listen_until(q, server.url, seen, range(1, 22))

    assert stored == "13"
    assert server.last_event_ids_seen[connections] == stored
    assert seen.count == Counter({n: 1 for n in range(1, 22)})
