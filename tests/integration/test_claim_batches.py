"""Several batches per claim, acks folded into the claim, and the background retention purge."""

from __future__ import annotations

import pytest

from eventqueue import LeaseLostError
from tests.conftest import FakeClock, OpenQueue, Query, event


async def test_claim_batches_leases_one_batch_per_ready_key_best_first(
    open_queue: OpenQueue, query: Query
) -> None:
    q = await open_queue(batch_window_ms=0, max_batch_size=3)
    await q.put_many([event("low_thing", attributes={"i": i}) for i in range(3)], priority="LOW")
    await q.put_many([event("high_thing", attributes={"i": i}) for i in range(5)], priority="HIGH")
    await q.put_many([event("normal_thing", attributes={"i": i}) for i in range(2)])

    batches = await q.claim_batches("w", 5)

    assert [b.key for b in batches] == [
        "high_thing-handler",
        "normal_thing-handler",
        "low_thing-handler",
    ]
    assert [len(b) for b in batches] == [3, 2, 3]
    assert len({b.token for b in batches}) == 3  # every batch is fenced on its own
    assert len({b.id for b in batches}) == 3
    rows = query("select count(*) from events where status = 'claimed'")
    assert rows == [(8,)]


async def test_claim_batches_takes_no_more_than_asked(open_queue: OpenQueue) -> None:
    q = await open_queue(batch_window_ms=0)
    for name in ("a", "b", "c"):
        await q.put(event(name))
    assert len(await q.claim_batches("w", 2)) == 2
    assert len(await q.claim_batches("w", 2)) == 1
    assert await q.claim_batches("w", 2) == []


async def test_acks_ride_along_with_the_next_claim(open_queue: OpenQueue, query: Query) -> None:
    q = await open_queue(batch_window_ms=0)
    for name in ("a", "b", "c"):
        await q.put(event(name))
    first = await q.claim_batches("w", 2)

    second = await q.claim_batches("w", 2, acks=first)

    done = query("select id from events where status = 'done' order by id")
    assert [row[0] for row in done] == sorted(e.id for b in first for e in b.events)
    assert [b.key for b in second] == ["c-handler"]


async def test_a_lost_lease_among_the_acks_changes_nothing(
    open_queue: OpenQueue, clock: FakeClock, query: Query
) -> None:
    q = await open_queue(batch_window_ms=0, lease_s=10)
    for name in ("a", "b"):
        await q.put(event(name))
    mine = await q.claim_batches("w1", 2)
    clock.advance(11)  # both leases expire; another consumer takes them
    theirs = await q.claim_batches("w2", 2)
    await q.put(event("c"))

    with pytest.raises(LeaseLostError):
        await q.claim_batches("w1", 5, acks=mine)

    assert query("select count(*) from events where status = 'done'") == [(0,)]
    assert query("select count(*) from events where status = 'pending'") == [(1,)]
    await q.claim_batches("w2", 5, acks=theirs)
    assert query("select count(*) from events where status = 'done'") == [(2,)]


async def test_purge_removes_done_events_past_retention_only(
    open_queue: OpenQueue, clock: FakeClock, query: Query
) -> None:
    # A dedup window shorter than retention: what it would keep is kept anyway (see below).
    q = await open_queue(batch_window_ms=0, retention_s=100, dedup_ttl_s=60)
    await q.put(event("old"))
    batch = await q.claim("w")
    assert batch is not None
    await q.ack(batch)
    clock.advance(50)
    await q.put(event("young"))
    young = await q.claim("w")
    assert young is not None
    await q.ack(young)
    await q.put(event("waiting"))

    assert await q.purge() == 0
    clock.advance(60)  # "old" finished 110 s ago, "young" 60 s ago
    assert await q.purge(chunk=1) == 1

    names = query("select json_extract(payload, '$.event_name'), status from events order by id")
    assert names == [("young", "done"), ("waiting", "pending")]


async def test_nack_of_an_id_outside_the_batch_is_refused_and_changes_nothing(
    open_queue: OpenQueue, query: Query
) -> None:
    q = await open_queue(batch_window_ms=0)
    await q.put(event("a"))
    batch = await q.claim("w")
    assert batch is not None
    with pytest.raises(LeaseLostError):
        await q.nack(batch, "boom", ids=[*batch.ids, 999])
    assert query("select status, attempts from events") == [("claimed", 1)]


async def test_purge_keeps_done_events_whose_dedup_window_is_open(
    open_queue: OpenQueue, clock: FakeClock, query: Query
) -> None:
    q = await open_queue(batch_window_ms=0, retention_s=0, dedup_ttl_s=300)
    await q.put(event("acked"))
    batch = await q.claim("w")
    assert batch is not None
    await q.ack(batch)
    clock.advance(60)

    assert await q.purge(older_than_s=0) == 0
    assert (await q.put(event("acked"))).duplicate
    clock.advance(241)  # the window (300 s) has closed
    assert await q.purge(older_than_s=0) == 1
    assert (await q.put(event("acked"))).accepted
