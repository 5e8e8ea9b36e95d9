"""The benchmark's events: ~300 bytes each, 4 priorities, 20 % duplicates; and loading a backlog."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

from eventqueue.core.models import Priority
from eventqueue.runtime.queue import EventQueue

DUPLICATE_SHARE = 0.2
_NORMAL_NAMES = ("order_created", "order_updated", "invoice_sent", "stock_changed")
_REGIONS = ("eu-west", "eu-central", "us-east", "us-west", "ap-south")
_PAD = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiu"  # ~300 bytes in all
_SLOT_OF = {Priority.CRITICAL: 0, Priority.HIGH: 1, Priority.NORMAL: 5, Priority.LOW: 15}


def make_event(i: int, *, duplicates: bool = True, only: Priority | None = None) -> dict[str, Any]:
    """Event number `i`: ~300 bytes of canonical JSON; the default classifier gives it one of 4
    priorities (5 % CRITICAL, 20 % HIGH, 50 % NORMAL, 25 % LOW, or `only`). With `duplicates`,
    every fifth event repeats the content of the event three before it (20 % duplicates)."""
    content = i - 3 if duplicates and i % 5 == 4 else i
    slot = content % 20 if only is None else _SLOT_OF[only]
    event_type, name = _kind(slot, content)
    return {
        "event_type": event_type,
        "event_name": name,
        "aggregate_id": f"agg-{content:09d}",
        "event_id": f"evt-{i:012d}",
        "timestamp": 1_700_000_000.0 + i / 1000.0,
        "attributes": {
            "amount": content % 10_000,
            "currency": "EUR",
            "region": _REGIONS[content % 5],
            "status": "confirmed",
            "note": _PAD,
        },
    }


def _kind(slot: int, content: int) -> tuple[str, str]:
    """(event_type, event_name) of a slot out of 20: 1 CRITICAL, 4 HIGH, 10 NORMAL, 5 LOW."""
    if slot == 0:
        return "entity_event", "payment_failed"  # CRITICAL
    if slot < 5:
        return "workflow_event", ("workflow_started", "workflow_step")[content % 2]
    if slot < 15:
        return "entity_event", _NORMAL_NAMES[content % 4]
    return "entity_event", ("heartbeat", "metrics")[content % 2]  # LOW


def events(n: int, *, start: int = 0, **kwargs: Any) -> Iterator[dict[str, Any]]:
    """Events `start` to `start + n` (keywords as `make_event`)."""
    return (make_event(i, **kwargs) for i in range(start, start + n))


async def source(
    n: int, *, start: int = 0, duplicates: bool = True
) -> AsyncIterator[dict[str, Any]]:
    """The same events as an async source for the Dispatcher."""
    for event in events(n, start=start, duplicates=duplicates):
        yield event


async def fill(q: EventQueue, n: int, *, start: int = 0, only: Priority | None = None) -> float:
    """Load `n` unique events (numbered from `start`) through put_many in lists of 1,000,
    8 lists in flight; seconds taken."""
    t0 = time.perf_counter()
    slots = asyncio.Semaphore(8)
    tasks: set[asyncio.Task[Any]] = set()

    async def put_many(chunk: list[dict[str, Any]]) -> None:
        try:
            await q.put_many(chunk)
        finally:
            slots.release()

    for offset in range(0, n, 1_000):
        count = min(1_000, n - offset)
        chunk = list(events(count, start=start + offset, duplicates=False, only=only))
        await slots.acquire()
        task = asyncio.create_task(put_many(chunk))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks)
    return time.perf_counter() - t0
