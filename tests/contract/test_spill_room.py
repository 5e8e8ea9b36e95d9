"""The queue's bound and the spill on every backend (issue 18): EVENT_QUEUE_SIZE counts the
events that wait, not the ones consumers hold; a spilled event is promoted as soon as there is
room for it; a spilled repeat is judged by the dedup window at its arrival.

These open a whole EventQueue on the backend under test (its spill folder in tmp_path) with an
injected clock. No sleeps: each wait is for a change of the queue, bounded by a deadline.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from eventqueue import EventQueue
from eventqueue.core.config import Config
from eventqueue.core.models import Event

DEADLINE_S = 30.0


class Clock:
    """A wall clock that only moves when told to."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def order(aggregate_id: str, **fields: Any) -> dict[str, Any]:
    return {
        "event_type": "t",
        "event_name": "order_created",
        "aggregate_id": aggregate_id,
        "attributes": {"v": 1},
        **fields,
    }


def opened(config: Config, clock: Clock, **settings: Any) -> Any:
    return EventQueue.open(config=config, clock=clock, **settings)


async def until(q: EventQueue, condition: Callable[[], bool]) -> None:
    """Wait (bounded) for a condition only a change of `q` can make true."""

    async def wait() -> None:
        while True:
            changed = q.changed_event()  # taken before looking: no change is missed
            if condition():
                return
            await changed.wait()

    await asyncio.wait_for(wait(), DEADLINE_S)


async def drain(q: EventQueue) -> list[Event]:
    """Claim and ack until nothing is left: not pending, claimed, queued or spilled."""
    delivered: list[Event] = []

    async def run() -> None:
        while True:
            changed = q.changed_event()
            batch = await q.claim("drain")
            if batch is not None:
                delivered.extend(batch.events)
                await q.ack(batch)
            elif await q.outstanding() == 0:
                return
            else:
                await changed.wait()  # a promotion (or a duplicate found by it) is a change

    await asyncio.wait_for(run(), DEADLINE_S)
    return delivered


async def test_a_repeat_spilled_inside_the_window_is_a_duplicate_when_promoted_after_it(
    backend_config: Config,
) -> None:
    clock = Clock()
    async with opened(backend_config, clock, dedup_ttl_s=1, queue_size=2, batch_window_ms=0) as q:
        x = order("x")
        original = await q.put(x)
        assert (await q.put(order("filler"))).accepted  # the queue is full now
        resent = await q.put({**x, "event_id": "re-sent"})
        assert resent.spilled
        clock.now += 1.5  # promoted after the original's window closed; it arrived inside it

        delivered = await drain(q)

        assert sorted(e.payload["aggregate_id"] for e in delivered) == ["filler", "x"]
        assert [e.id for e in delivered if e.payload["aggregate_id"] == "x"] == [original.id]
        assert {e.attempts for e in delivered} == {1}
        assert (await q.stats()).duplicates_suppressed == 1


async def test_held_claims_leave_room_for_the_next_event(backend_config: Config) -> None:
    clock = Clock()
    async with opened(backend_config, clock, queue_size=10, enable_batching=False) as q:
        for i in range(10):
            assert (await q.put(order(str(i)))).accepted
        held = [await q.claim("c") for _ in range(10)]
        assert all(batch is not None for batch in held)

        eleventh = await q.put(order("10"))

        assert eleventh.accepted, "10 held claims are not 10 waiting events"
        batch = await q.next_batch("c", timeout=DEADLINE_S)  # ready now: returns at once
        assert batch is not None and [e.id for e in batch.events] == [eleventh.id]
        assert q.overflow.pending() == 0


async def test_a_spilled_event_is_promoted_as_soon_as_one_event_is_claimed(
    backend_config: Config,
) -> None:
    clock = Clock()
    async with opened(
        backend_config, clock, queue_size=10, enable_batching=False, batch_window_ms=0
    ) as q:
        results = [await q.put(order(str(i))) for i in range(12)]
        assert [r.spilled for r in results] == [False] * 10 + [True] * 2

        first = await q.claim("c")  # 9 wait now: room for one, far above half of the bound
        assert first is not None

        await until(q, lambda: q.overflow.pending() == 1)
        assert await q.store.waiting_count() == 10  # the bound still holds
        await q.ack(first)
        rest = await drain(q)
        assert sorted(int(e.payload["aggregate_id"]) for e in rest) == list(range(1, 12))


async def test_repeats_spilled_further_apart_than_the_window_are_each_judged_on_their_own(
    backend_config: Config,
) -> None:
    # Unspilled, x at t and x at t + 2 with a 1 s window are two events: spilled and promoted
    # in one chunk they must be too (not folded into the first as one put's repeats are).
    clock = Clock()
    async with opened(backend_config, clock, dedup_ttl_s=1, queue_size=2, batch_window_ms=0) as q:
        assert (await q.put(order("filler-1"))).accepted
        assert (await q.put(order("filler-2"))).accepted  # the queue is full now
        x = order("x")
        assert (await q.put(x)).spilled
        clock.now += 2
        assert (await q.put({**x, "event_id": "re-sent"})).spilled

        delivered = await drain(q)  # the fillers' claim makes room for both at once

        names = sorted(e.payload["aggregate_id"] for e in delivered)
        assert names == ["filler-1", "filler-2", "x", "x"]
        assert {e.attempts for e in delivered} == {1}
        assert (await q.stats()).duplicates_suppressed == 0
