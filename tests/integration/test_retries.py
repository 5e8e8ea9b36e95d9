"""nack on a real file: back-off, retry_in, dead after max attempts with the last error kept."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from eventqueue import Batch, EventQueue

MakeEvent = Callable[..., dict[str, Any]]


async def claim(q: EventQueue) -> Batch:
    batch = await q.claim()
    assert batch is not None
    return batch


@pytest.fixture
async def q(open_queue) -> EventQueue:
    return await open_queue(
        batch_window_ms=0, max_attempts=3, backoff_base_s=10, backoff_max_s=1000
    )


async def test_nack_puts_the_event_back_after_a_backoff(
    q, clock, make_event: MakeEvent, query
) -> None:
    await q.put(make_event())
    batch = await claim(q)

    await q.nack(batch, error="boom")

    ((status, available_at, last_error, owner),) = query(
        "SELECT status, available_at, last_error, lease_owner FROM events"
    )
    assert (status, last_error, owner) == ("pending", "boom", None)
    # first retry: backoff_base_s with +-25 % jitter
    assert clock.now + 7.5 <= available_at <= clock.now + 12.5


async def test_a_nacked_event_is_not_claimable_until_its_backoff_passes(
    q, clock, make_event: MakeEvent, query
) -> None:
    result = await q.put(make_event())
    await q.nack(await claim(q), error="boom")
    ((available_at,),) = query("SELECT available_at FROM events")

    clock.advance(available_at - clock.now - 0.5)
    assert await q.claim() is None
    clock.advance(1)
    retry = await claim(q)

    assert retry.ids == [result.id]
    assert retry.events[0].attempts == 2


async def test_backoff_grows_with_each_attempt(q, clock, make_event: MakeEvent, query) -> None:
    await q.put(make_event())
    delays = []
    for _ in range(2):
        await q.nack(await claim(q), error="boom")
        ((available_at,),) = query("SELECT available_at FROM events")
        delays.append(available_at - clock.now)
        clock.advance(delays[-1])

    assert 7.5 <= delays[0] <= 12.5
    assert 15 <= delays[1] <= 25


async def test_backoff_is_capped(open_queue, clock, make_event: MakeEvent, query) -> None:
    q = await open_queue(batch_window_ms=0, max_attempts=10, backoff_base_s=10, backoff_max_s=12)
    await q.put(make_event())
    for _ in range(4):
        await q.nack(await claim(q), error="boom")
        ((available_at,),) = query("SELECT available_at FROM events")
        assert available_at - clock.now <= 12
        clock.advance(12)


async def test_nack_with_retry_in_uses_that_delay(q, clock, make_event: MakeEvent, query) -> None:
    await q.put(make_event())

    await q.nack(await claim(q), error="rate limited", retry_in=42)

    assert query("SELECT available_at FROM events") == [(clock.now + 42,)]
    clock.advance(41.9)
    assert await q.claim() is None
    clock.advance(0.2)
    assert await q.claim() is not None


async def test_event_is_dead_after_max_attempts_with_the_last_error(
    q, clock, make_event: MakeEvent, query
) -> None:
    result = await q.put(make_event())
    for attempt in range(1, 4):
        batch = await claim(q)
        assert batch.events[0].attempts == attempt
        await q.nack(batch, error=f"failure {attempt}", retry_in=1)
        clock.advance(1)

    assert await q.claim() is None
    assert query(
        "SELECT id, status, attempts, last_error, finished_at IS NOT NULL FROM events"
    ) == [(result.id, "dead", 3, "failure 3", 1)]


async def test_dead_event_is_listed_in_the_dead_letter_view(
    open_queue, make_event: MakeEvent, query
) -> None:
    q = await open_queue(batch_window_ms=0, max_attempts=1)
    result = await q.put(make_event("order_created"))

    await q.nack(await claim(q), error="handler crashed")

    rows = query("SELECT id, event_name, priority, attempts, last_error FROM eq_dead_letters")
    assert rows == [(result.id, "order_created", "NORMAL", 1, "handler crashed")]


async def test_nack_of_some_events_leaves_the_others_claimed(
    q, make_event: MakeEvent, query
) -> None:
    results = await q.put_many([make_event("job", aggregate_id=str(i)) for i in range(3)])
    ids = [r.id for r in results]
    batch = await claim(q)

    await q.nack(batch, error="bad one", ids=[ids[1]])

    assert query("SELECT id, status FROM events ORDER BY id") == [
        (ids[0], "claimed"),
        (ids[1], "pending"),
        (ids[2], "claimed"),
    ]
    await q.ack(batch, ids=[ids[0], ids[2]])


async def test_ack_after_a_retry_clears_the_last_error(
    q, clock, make_event: MakeEvent, query
) -> None:
    await q.put(make_event())
    await q.nack(await claim(q), error="flaky", retry_in=1)
    clock.advance(1)

    await q.ack(await claim(q))

    assert query("SELECT status, attempts, last_error FROM events") == [("done", 2, None)]


@pytest.mark.parametrize("retry_in", [float("inf"), float("nan")])
async def test_nack_with_a_non_finite_retry_in_is_refused_and_changes_nothing(
    q, make_event: MakeEvent, query, retry_in: float
) -> None:
    await q.put(make_event())
    batch = await claim(q)
    before = query("SELECT * FROM events")

    with pytest.raises(ValueError, match="finite"):
        await q.nack(batch, error="boom", retry_in=retry_in)

    assert query("SELECT * FROM events") == before
    await q.ack(batch)
