"""Waiting for work on a real file: next_batch wakes on a put, times out, and ends on close."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

MakeEvent = Callable[..., dict[str, Any]]


async def test_next_batch_returns_a_batch_put_while_it_waits(
    open_queue, make_event: MakeEvent
) -> None:
    q = await open_queue(batch_window_ms=0)
    waiting = asyncio.create_task(q.next_batch("worker-1", timeout=60))

    result = await q.put(make_event())
    batch = await waiting

    assert batch is not None
    assert batch.ids == [result.id]


async def test_next_batch_returns_what_is_already_ready(open_queue, make_event: MakeEvent) -> None:
    q = await open_queue(batch_window_ms=0)
    result = await q.put(make_event())

    batch = await q.next_batch("worker-1", timeout=0)

    assert batch is not None
    assert batch.ids == [result.id]


async def test_next_batch_with_zero_timeout_returns_none_when_nothing_is_ready(
    open_queue,
) -> None:
    q = await open_queue(batch_window_ms=0)

    assert await q.next_batch("worker-1", timeout=0) is None


async def test_next_batch_returns_none_once_the_queue_is_closed(open_queue) -> None:
    q = await open_queue()
    await q.close()

    assert await q.next_batch("worker-1") is None


async def test_next_batch_returns_none_when_close_races_its_claim(open_queue, clock) -> None:
    claiming = asyncio.Event()
    armed = False

    def signalling_clock() -> float:
        if armed:
            claiming.set()  # claim() reads the clock just before it awaits the store
        return clock()

    q = await open_queue(clock=signalling_clock)
    armed = True
    waiting = asyncio.create_task(q.next_batch("worker-1", timeout=60))
    await claiming.wait()

    await q.close()

    assert await waiting is None
