"""Dedup on a real file: within the TTL, after it, across a restart, shuffled keys, turned off."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from eventqueue import InvalidEventError, PutStatus

MakeEvent = Callable[..., dict[str, Any]]


def shuffled(event: dict[str, Any]) -> dict[str, Any]:
    """The same content with every dict's keys in reverse order."""
    if isinstance(event, dict):
        return {k: shuffled(event[k]) for k in reversed(list(event))}
    return event


async def test_repeat_within_ttl_is_a_duplicate_of_the_original(
    open_queue, clock, make_event: MakeEvent, query
) -> None:
    q = await open_queue(dedup_ttl_s=300)
    original = await q.put(make_event(event_id="e-1", timestamp="t1"))
    clock.advance(299)

    repeat = await q.put(make_event(event_id="e-2", timestamp="t2"))

    assert original.status is PutStatus.ACCEPTED
    assert repeat.status is PutStatus.DUPLICATE
    assert repeat.duplicate
    assert repeat.id == original.id
    assert repeat.content_hash == original.content_hash
    assert query("SELECT id, duplicates FROM events") == [(original.id, 1)]


async def test_every_suppressed_repeat_counts_on_the_original(
    open_queue, make_event: MakeEvent, query
) -> None:
    q = await open_queue()
    original = await q.put(make_event())
    for _ in range(3):
        await q.put(make_event())

    assert query("SELECT duplicates FROM events WHERE id = ?", (original.id,)) == [(3,)]
    assert (await q.stats()).duplicates_suppressed == 3


async def test_repeat_after_ttl_is_accepted_again(
    open_queue, clock, make_event: MakeEvent, query
) -> None:
    q = await open_queue(dedup_ttl_s=300)
    original = await q.put(make_event())
    clock.advance(301)

    again = await q.put(make_event())

    assert again.status is PutStatus.ACCEPTED
    assert again.id != original.id
    rows = query("SELECT id, duplicates, dedup_key IS NULL FROM events ORDER BY id")
    assert rows == [(original.id, 0, 1), (again.id, 0, 0)]


async def test_after_ttl_the_new_event_starts_a_new_window(
    open_queue, clock, make_event: MakeEvent
) -> None:
    q = await open_queue(dedup_ttl_s=300)
    await q.put(make_event())
    clock.advance(301)
    second = await q.put(make_event())
    clock.advance(100)

    third = await q.put(make_event())

    assert third.status is PutStatus.DUPLICATE
    assert third.id == second.id


async def test_repeat_of_an_acked_event_within_ttl_is_still_a_duplicate(
    open_queue, make_event: MakeEvent
) -> None:
    q = await open_queue(batch_window_ms=0)
    original = await q.put(make_event())
    batch = await q.claim()
    assert batch is not None
    await q.ack(batch)

    repeat = await q.put(make_event())

    assert repeat.status is PutStatus.DUPLICATE
    assert repeat.id == original.id


async def test_dedup_survives_close_and_reopen(
    open_queue, clock, make_event: MakeEvent, query
) -> None:
    first = await open_queue()
    original = await first.put(make_event())
    await first.close()
    clock.advance(10)
    second = await open_queue()

    repeat = await second.put(make_event())

    assert repeat.status is PutStatus.DUPLICATE
    assert repeat.id == original.id
    assert query("SELECT count(*), sum(duplicates) FROM events") == [(1, 1)]


async def test_shuffled_key_order_is_a_duplicate(open_queue, make_event: MakeEvent) -> None:
    q = await open_queue()
    event = make_event(attributes={"a": 1, "b": {"x": [1, {"p": 1, "q": 2}], "y": None}})
    original = await q.put(event)

    repeat = await q.put(shuffled(event))

    assert list(shuffled(event)) != list(event)
    assert repeat.status is PutStatus.DUPLICATE
    assert repeat.id == original.id


async def test_different_attributes_are_not_duplicates(open_queue, make_event: MakeEvent) -> None:
    q = await open_queue()
    first = await q.put(make_event(attributes={"n": 1}))
    second = await q.put(make_event(attributes={"n": 2}))

    assert second.status is PutStatus.ACCEPTED
    assert second.id != first.id


async def test_dedup_off_accepts_every_repeat(open_queue, make_event: MakeEvent, query) -> None:
    q = await open_queue(enable_dedup=False)
    results = [await q.put(make_event()) for _ in range(3)]

    assert [r.status for r in results] == [PutStatus.ACCEPTED] * 3
    assert len({r.id for r in results}) == 3
    assert query("SELECT count(*), sum(duplicates), count(dedup_key) FROM events") == [(3, 0, 0)]


async def test_concurrent_puts_of_the_same_content_store_one_event(
    open_queue, make_event: MakeEvent, query
) -> None:
    q = await open_queue()

    results = await asyncio.gather(*(q.put(make_event()) for _ in range(5)))

    assert sorted(r.status for r in results).count(PutStatus.ACCEPTED) == 1
    assert len({r.id for r in results}) == 1
    assert query("SELECT count(*), sum(duplicates) FROM events") == [(1, 4)]


async def test_put_many_dedups_within_the_group(open_queue, make_event: MakeEvent, query) -> None:
    q = await open_queue()
    a, b = make_event(aggregate_id="a"), make_event(aggregate_id="b")

    results = await q.put_many([a, b, shuffled(a), a])

    assert [r.status for r in results] == [
        PutStatus.ACCEPTED,
        PutStatus.ACCEPTED,
        PutStatus.DUPLICATE,
        PutStatus.DUPLICATE,
    ]
    assert results[2].id == results[3].id == results[0].id
    assert query("SELECT id, duplicates FROM events ORDER BY id") == [
        (results[0].id, 2),
        (results[1].id, 0),
    ]


async def test_put_many_dedups_against_stored_events(open_queue, make_event: MakeEvent) -> None:
    q = await open_queue()
    stored = await q.put(make_event(aggregate_id="a"))

    results = await q.put_many([make_event(aggregate_id="b"), make_event(aggregate_id="a")])

    assert results[0].status is PutStatus.ACCEPTED
    assert results[1].status is PutStatus.DUPLICATE
    assert results[1].id == stored.id


async def test_put_many_with_dedup_off_keeps_in_group_repeats(
    open_queue, make_event: MakeEvent, query
) -> None:
    q = await open_queue(enable_dedup=False)

    results = await q.put_many([make_event(), make_event()])

    assert [r.status for r in results] == [PutStatus.ACCEPTED] * 2
    assert query("SELECT count(*) FROM events") == [(2,)]


async def test_an_invalid_event_in_put_many_stores_nothing(
    open_queue, make_event: MakeEvent, query
) -> None:
    q = await open_queue()
    events = [make_event(aggregate_id="ok"), make_event(attributes={"x": float("nan")})]

    with pytest.raises(InvalidEventError, match="event 1"):
        await q.put_many(events)

    assert query("SELECT count(*) FROM events") == [(0,)]


async def test_put_many_of_nothing_returns_nothing(open_queue) -> None:
    q = await open_queue()

    assert await q.put_many([]) == []


async def test_enable_dedup_false_in_the_environment_turns_dedup_off(
    open_queue, make_event: MakeEvent, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ENABLE_DEDUP", "false")
    q = await open_queue()

    results = [await q.put(make_event()) for _ in range(2)]

    assert [r.status for r in results] == [PutStatus.ACCEPTED] * 2


async def test_dedup_ttl_from_the_environment_is_used(
    open_queue, clock, make_event: MakeEvent, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DEDUP_TTL_SECONDS", "10")
    q = await open_queue()
    await q.put(make_event())
    clock.advance(11)

    assert (await q.put(make_event())).status is PutStatus.ACCEPTED
