"""Wall-clock steps on a real file: events put before the clock stepped back are not held up."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from eventqueue import Priority

MakeEvent = Callable[..., dict[str, Any]]
HOUR = 3600.0


async def test_a_partial_batch_put_before_the_clock_stepped_back_is_claimable(
    open_queue, clock, make_event: MakeEvent
) -> None:
    q = await open_queue(batch_window_ms=100, max_batch_size=10)
    result = await q.put(make_event("job"))
    clock.advance(-HOUR)

    batch = await q.claim()

    assert batch is not None
    assert batch.ids == [result.id]


async def test_stepping_the_clock_back_does_not_sink_an_events_priority(
    open_queue, clock, make_event: MakeEvent
) -> None:
    q = await open_queue(batch_window_ms=0, aging_s=60)
    high = await q.put(make_event("old_job"), priority=Priority.HIGH)
    clock.advance(-HOUR)
    low = await q.put(make_event("new_job"), priority=Priority.LOW)

    first = await q.claim()
    second = await q.claim()

    assert first is not None and second is not None
    assert (first.ids, second.ids) == ([high.id], [low.id])


async def test_a_nack_backoff_still_holds_the_event_back(
    open_queue, clock, make_event: MakeEvent
) -> None:
    q = await open_queue(batch_window_ms=0)
    await q.put(make_event())
    batch = await q.claim()
    assert batch is not None
    await q.nack(batch, error="boom", retry_in=30)

    assert await q.claim() is None
    clock.advance(30)
    assert await q.claim() is not None


async def test_stepping_the_clock_forward_makes_waiting_batches_due(
    open_queue, clock, make_event: MakeEvent
) -> None:
    q = await open_queue(batch_window_ms=100, max_batch_size=10)
    result = await q.put(make_event("job"))
    assert await q.claim() is None
    clock.advance(HOUR)

    batch = await q.claim()

    assert batch is not None
    assert batch.ids == [result.id]
