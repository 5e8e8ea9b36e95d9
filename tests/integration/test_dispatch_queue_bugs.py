"""A defect found in the queue while building the dispatcher, pinned by a test."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from eventqueue.store.sqlite.store import NewEvent


async def test_a_stored_position_never_passes_an_event_that_is_not_stored_yet(
    open_queue: Any, make_event: Callable[..., dict[str, Any]], monkeypatch: Any
) -> None:
    q = await open_queue(intake_size=1)
    spilling, proceed = asyncio.Event(), asyncio.Event()
    append = q.overflow.append

    async def slow_append(rows: Sequence[NewEvent]) -> None:
        spilling.set()
        await proceed.wait()  # the fsync of the spill log, taking its time
        await append(rows)

    monkeypatch.setattr(q.overflow, "append", slow_append)
    first = asyncio.create_task(q.put(make_event("a", 1), source="s", position="1"))
    second = asyncio.create_task(q.put(make_event("a", 2), source="s", position="2"))  # spilled
    third = asyncio.create_task(q.put(make_event("x_failed", 3), source="s", position="3"))
    async with asyncio.timeout(10):
        await spilling.wait()
        await first
        await third
        stored = await q.source_position("s")  # a crash here: event 2 is nowhere, 3 is stored
        proceed.set()
        await second

    assert stored in (None, "1")
