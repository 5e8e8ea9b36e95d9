"""Leases on a real file: expiry, re-claim, fenced ack/nack/extend/release, partial acks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from eventqueue import Batch, EventQueue, LeaseLostError, NotInBatchError

MakeEvent = Callable[..., dict[str, Any]]

ROW = "SELECT id, status, lease_owner, lease_token, lease_expires_at, attempts, available_at, last_error FROM events ORDER BY id"


async def claim(q: EventQueue, consumer: str = "worker-1") -> Batch:
    batch = await q.claim(consumer)
    assert batch is not None
    return batch


async def put_three(q: EventQueue, make_event: MakeEvent) -> list[int]:
    results = await q.put_many([make_event("job", aggregate_id=str(i)) for i in range(3)])
    return [r.id for r in results]


@pytest.fixture
async def q(open_queue) -> EventQueue:
    return await open_queue(batch_window_ms=0, lease_s=30, max_attempts=5)


async def test_claim_records_the_lease(q, clock, make_event: MakeEvent, query) -> None:
    ids = await put_three(q, make_event)

    batch = await claim(q, "worker-1")

    assert batch.ids == ids
    assert batch.consumer == "worker-1"
    assert batch.lease_expires_at == clock.now + 30
    rows = query(
        "SELECT status, lease_owner, lease_token, lease_expires_at, attempts, batch_id FROM events"
    )
    assert set(rows) == {("claimed", "worker-1", batch.token, clock.now + 30, 1, batch.id)}


async def test_a_claimed_batch_is_not_claimed_again_while_leased(
    q, clock, make_event: MakeEvent
) -> None:
    await put_three(q, make_event)
    await claim(q)
    clock.advance(29)

    assert await q.claim("worker-2") is None


async def test_an_expired_lease_is_claimed_by_another_consumer(
    q, clock, make_event: MakeEvent
) -> None:
    ids = await put_three(q, make_event)
    stale = await claim(q, "worker-1")
    clock.advance(31)

    fresh = await claim(q, "worker-2")

    assert fresh.ids == ids
    assert fresh.token != stale.token
    assert [e.attempts for e in fresh.events] == [2, 2, 2]


async def test_stale_ack_is_refused_and_changes_nothing(
    q, clock, make_event: MakeEvent, query
) -> None:
    await put_three(q, make_event)
    stale = await claim(q, "worker-1")
    clock.advance(31)
    fresh = await claim(q, "worker-2")
    before = query(ROW)

    with pytest.raises(LeaseLostError):
        await q.ack(stale)

    assert query(ROW) == before
    assert {row[1:4] for row in before} == {("claimed", "worker-2", fresh.token)}


async def test_stale_nack_is_refused_and_changes_nothing(
    q, clock, make_event: MakeEvent, query
) -> None:
    await put_three(q, make_event)
    stale = await claim(q, "worker-1")
    clock.advance(31)
    await claim(q, "worker-2")
    before = query(ROW)

    with pytest.raises(LeaseLostError):
        await q.nack(stale, error="late failure")

    assert query(ROW) == before


async def test_stale_extend_is_refused_and_changes_nothing(
    q, clock, make_event: MakeEvent, query
) -> None:
    await put_three(q, make_event)
    stale = await claim(q, "worker-1")
    clock.advance(31)
    await claim(q, "worker-2")
    before = query(ROW)

    with pytest.raises(LeaseLostError):
        await q.extend(stale, seconds=600)

    assert query(ROW) == before


async def test_stale_release_is_refused_and_changes_nothing(
    q, clock, make_event: MakeEvent, query
) -> None:
    await put_three(q, make_event)
    stale = await claim(q, "worker-1")
    clock.advance(31)
    await claim(q, "worker-2")
    before = query(ROW)

    with pytest.raises(LeaseLostError):
        await q.release(stale)

    assert query(ROW) == before


async def test_the_new_holder_can_ack_after_a_stale_ack_was_refused(
    q, clock, make_event: MakeEvent, query
) -> None:
    await put_three(q, make_event)
    stale = await claim(q, "worker-1")
    clock.advance(31)
    fresh = await claim(q, "worker-2")
    with pytest.raises(LeaseLostError):
        await q.ack(stale)

    await q.ack(fresh)

    assert query("SELECT DISTINCT status FROM events") == [("done",)]


async def test_ack_twice_is_refused_the_second_time(q, make_event: MakeEvent, query) -> None:
    await put_three(q, make_event)
    batch = await claim(q)
    await q.ack(batch)

    with pytest.raises(LeaseLostError):
        await q.ack(batch)

    assert query("SELECT DISTINCT status FROM events") == [("done",)]


async def test_ack_marks_events_done_and_clears_the_lease(
    q, clock, make_event: MakeEvent, query
) -> None:
    await put_three(q, make_event)
    batch = await claim(q)
    clock.advance(5)

    await q.ack(batch)

    rows = query(
        "SELECT status, lease_owner, lease_token, lease_expires_at, finished_at FROM events"
    )
    assert set(rows) == {("done", None, None, None, clock.now)}
    assert await q.claim() is None


async def test_ack_of_a_subset_leaves_the_rest_claimed(q, make_event: MakeEvent, query) -> None:
    ids = await put_three(q, make_event)
    batch = await claim(q)

    await q.ack(batch, ids=ids[:2])

    rows = query("SELECT id, status FROM events ORDER BY id")
    assert rows == [(ids[0], "done"), (ids[1], "done"), (ids[2], "claimed")]
    await q.ack(batch, ids=ids[2:])
    assert query("SELECT DISTINCT status FROM events") == [("done",)]


async def test_ack_of_an_id_outside_the_batch_is_refused(q, make_event: MakeEvent, query) -> None:
    ids = await put_three(q, make_event)
    batch = await claim(q)
    other = await q.put(make_event("other"))

    with pytest.raises(LeaseLostError):
        await q.ack(batch, ids=[ids[0], other.id])

    assert query("SELECT count(*) FROM events WHERE status = 'done'") == [(0,)]


async def test_extend_keeps_the_batch_past_its_original_lease(
    q, clock, make_event: MakeEvent, query
) -> None:
    await put_three(q, make_event)
    batch = await claim(q, "worker-1")
    clock.advance(20)

    await q.extend(batch, seconds=60)
    clock.advance(30)  # 50 s after the claim: past the original 30 s lease

    assert await q.claim("worker-2") is None
    assert {r[0] for r in query("SELECT lease_expires_at FROM events")} == {clock.now + 30}
    await q.ack(batch)


async def test_extend_without_seconds_renews_for_the_lease_length(
    q, clock, make_event: MakeEvent, query
) -> None:
    await put_three(q, make_event)
    batch = await claim(q)
    clock.advance(10)

    await q.extend(batch)

    assert {r[0] for r in query("SELECT lease_expires_at FROM events")} == {clock.now + 30}


async def test_release_returns_events_to_pending_at_once(q, make_event: MakeEvent, query) -> None:
    ids = await put_three(q, make_event)
    batch = await claim(q, "worker-1")

    await q.release(batch)

    assert set(query("SELECT status, lease_owner, lease_token FROM events")) == {
        ("pending", None, None)
    }
    again = await claim(q, "worker-2")
    assert again.ids == ids


async def test_lease_expiring_on_the_last_attempt_makes_events_dead(
    open_queue, clock, make_event: MakeEvent, query
) -> None:
    q = await open_queue(batch_window_ms=0, lease_s=10, max_attempts=2)
    await q.put(make_event())
    await claim(q, "worker-1")
    clock.advance(11)
    await claim(q, "worker-2")
    clock.advance(11)

    assert await q.claim("worker-3") is None

    assert query("SELECT status, attempts, last_error FROM events") == [
        ("dead", 2, "lease expired")
    ]


@pytest.mark.parametrize("settle", ["ack", "nack"])
async def test_ids_never_in_the_batch_are_named_not_called_a_lost_lease(
    q, make_event: MakeEvent, query, settle: str
) -> None:
    await q.put_many([make_event("job", aggregate_id=str(i)) for i in range(3)])
    other = await q.put(make_event("other"))
    batch = await claim(q)
    assert other.id is not None and other.id not in batch.ids
    before = query(ROW)

    with pytest.raises(NotInBatchError) as raised:
        if settle == "ack":
            await q.ack(batch, ids=[batch.ids[0], other.id, 999])
        else:
            await q.nack(batch, "boom", ids=[other.id])

    assert isinstance(raised.value, LeaseLostError)  # callers catching the parent still do
    message = str(raised.value)
    assert message.startswith("ids not in this batch: ") and str(other.id) in message
    assert "expired" not in message
    assert query(ROW) == before
