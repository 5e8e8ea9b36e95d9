"""Ordering groups: an event with an ordering key is leased only when no earlier event of its
key (across every batch key) is pending, claimed or waiting to retry; order beats priority; a
nacked event holds its group, a dead one releases it; a held group holds nothing else."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from contract.conftest import (
    NOW_RULES,
    START,
    OpenStore,
    claim,
    claim_one,
    make_event,
    put,
    status_of,
)
from eventqueue.core.config import Config
from eventqueue.core.errors import ConfigError, InvalidEventError
from eventqueue.core.models import Batch, Priority
from eventqueue.core.records import Lease, NewEvent
from eventqueue.runtime.queue import EventQueue
from eventqueue.store.base import Store


def ordered(group: str | None, name: str = "thing", **kwargs: Any) -> NewEvent:
    """make_event with an ordering key."""
    return dataclasses.replace(make_event(name, **kwargs), ordering_key=group)


async def claim_all(store: Store, *, now: float = START, token: str = "t") -> list[Batch]:
    return await claim(store, now=now, batches=100, token=token)


def ids_of(batches: list[Batch]) -> set[int]:
    return {i for b in batches for i in b.ids}


async def test_a_group_is_leased_one_event_at_a_time_across_batch_keys(store: Store) -> None:
    a1, b2, a3, free = await put(
        store,
        [
            ordered("order-7", "alpha", n=1),
            ordered("order-7", "beta", n=2),
            ordered("order-7", "alpha", n=3),
            ordered(None, "beta", n=4),
        ],
    )

    first = await claim_all(store, token="t1")
    assert ids_of(first) == {a1, free}
    assert await claim_all(store, token="t2") == []
    for batch in first:
        await store.ack(batch.token, batch.ids, now=START)
    second = await claim_all(store, token="t3")
    assert ids_of(second) == {b2}
    await store.ack(second[0].token, second[0].ids, now=START)
    assert ids_of(await claim_all(store, token="t4")) == {a3}


async def test_a_group_keeps_its_order_across_a_reopen(
    store: Store, open_another: OpenStore
) -> None:
    first, second, third = await put(
        store, [ordered("order-7", "alpha", n=1), ordered("order-7", "beta", n=2)]
    ) + await put(store, [ordered("order-7", "alpha", n=3)])
    (leased,) = await claim_all(store, token="before")
    assert leased.ids == [first]
    await store.close()  # the lease is still held: a restart must not free the group

    reopened = await open_another()
    assert await claim_all(reopened, token="after") == []
    await reopened.ack(leased.token, leased.ids, now=START)
    handled = []
    for n in range(2):
        (batch,) = await claim_all(reopened, token=f"next-{n}")
        handled += batch.ids
        await reopened.ack(batch.token, batch.ids, now=START)

    assert handled == [second, third]


async def test_the_delivered_event_carries_its_ordering_key(store: Store) -> None:
    await put(store, [ordered("order-7"), ordered(None, "other")])

    events = [e for b in await claim_all(store) for e in b.events]

    assert sorted((e.name, e.ordering_key) for e in events) == [
        ("other", None),
        ("thing", "order-7"),
    ]


async def test_a_handed_over_critical_event_carries_its_ordering_key(store: Store) -> None:
    lease = Lease(consumer="reserved", token="h1", batch_id="hb", expires_at=START + 30)
    rows = [ordered("g", "payment_failed", n=1), ordered("g", "payment_failed", n=2)]
    commit = await store.put(rows, now=START, dedup_ttl_s=300.0, lease=lease)

    (batch,) = commit.claimed  # the group's first only: the second waits for it
    assert batch.ids == [commit.outcome[0][1]]
    assert [e.ordering_key for e in batch.events] == ["g"]
    assert await status_of(store, commit.outcome[1][1]) == "held"


async def test_order_beats_priority_inside_a_group(store: Store) -> None:
    first, critical = await put(
        store,
        [ordered("g", "slow", n=1), ordered("g", "payment_failed", n=2)],
    )
    (other,) = await put(store, [ordered("h", "payment_failed", n=3)])

    batches = await claim_all(store, token="t1")
    assert ids_of(batches) == {first, other}  # the CRITICAL event of g waits for g's first

    for batch in batches:
        await store.ack(batch.token, batch.ids, now=START)
    (batch,) = await claim_all(store, token="t2")
    assert batch.ids == [critical] and batch.priority == Priority.CRITICAL


async def test_a_nacked_event_holds_its_group_until_it_is_acked(store: Store) -> None:
    first, second = await put(store, [ordered("g", n=1), ordered("g", n=2)])
    batch = await claim_one(store, token="t1")
    await store.nack(batch.token, {first: START + 60}, [], error="boom", now=START)

    assert await claim_all(store, now=START + 1, token="t2") == []  # retrying holds g

    (again,) = await claim_all(store, now=START + 61, token="t3")
    assert again.ids == [first]
    await store.ack(again.token, again.ids, now=START + 61)
    (last,) = await claim_all(store, now=START + 61, token="t4")
    assert last.ids == [second]


async def test_an_expired_lease_keeps_the_group_held(store: Store) -> None:
    first, _ = await put(store, [ordered("g", n=1), ordered("g", n=2)])
    await claim_one(store, token="t1")
    later = START + NOW_RULES.lease_s + 1

    (again,) = await claim_all(store, now=later, token="t2")

    assert again.ids == [first] and again.events[0].attempts == 2


async def test_a_dead_event_releases_its_group_and_records_it(store: Store) -> None:
    first, second = await put(store, [ordered("g", n=1), ordered("g", n=2)])
    batch = await claim_one(store, token="t1")
    await store.nack(batch.token, {}, [first], error="poison", now=START)

    (next_batch,) = await claim_all(store, token="t2")

    assert next_batch.ids == [second]
    info = await store.show(first)
    assert info is not None and info["status"] == "dead"
    assert "poison" in info["last_error"] and "went on" in info["last_error"]


async def test_a_requeued_dead_event_goes_back_ahead_of_its_group(store: Store) -> None:
    first, second, third = await put(
        store, [ordered("g", n=1), ordered("g", n=2), ordered("g", n=3)]
    )
    batch = await claim_one(store, token="t1")
    await store.nack(batch.token, {}, [first], error="poison", now=START)

    await store.requeue([first], now=START)

    (again,) = await claim_all(store, token="t2")
    assert again.ids == [first]
    assert {await status_of(store, second), await status_of(store, third)} == {"held"}


async def test_an_event_put_with_an_earlier_receipt_goes_first(store: Store) -> None:
    # As a spilled event promoted late: its place in the group is its receipt time.
    (late,) = await put(store, [ordered("g", n=2, at=START + 1)], now=START + 1)
    (early,) = await put(store, [ordered("g", n=1, at=START)], now=START + 1)

    (batch,) = await claim_all(store, now=START + 1)

    assert batch.ids == [early]
    assert await status_of(store, late) == "held"


async def test_a_held_group_holds_nothing_else(store: Store) -> None:
    # One poisoned group beside 1,000 healthy ones: every healthy event is handled, in order.
    rows = [ordered("poison", "job", n=-i) for i in range(3)]
    rows += [ordered(f"h{g}", f"job{g % 7}", n=g * 10 + i) for i in range(3) for g in range(1000)]
    ids = await put(store, rows)
    group_of = {i: row.ordering_key for i, row in zip(ids, rows, strict=True)}
    handled: dict[str | None, list[int]] = {}
    for n in range(100):
        batches = await claim(store, batches=50, token=f"t{n}")
        if not batches:
            break
        for batch in batches:
            poisoned = [i for i in batch.ids if group_of[i] == "poison"]
            healthy = [i for i in batch.ids if group_of[i] != "poison"]
            for i in healthy:
                handled.setdefault(group_of[i], []).append(i)
            if poisoned:
                retry = dict.fromkeys(poisoned, START + 3600)
                await store.nack(batch.token, retry, [], error="poison", now=START)
            if healthy:
                await store.ack(batch.token, healthy, now=START)

    assert len(handled) == 1000
    assert all(got == sorted(got) and len(got) == 3 for got in handled.values())


async def test_the_order_holds_between_two_stores_on_one_database(
    store: Store, open_another: OpenStore
) -> None:
    other = await open_another()
    first, second = await put(store, [ordered("g", n=1), ordered("g", n=2)])

    batch = await claim_one(store, token="t1")
    assert batch.ids == [first]
    assert await claim_all(other, token="t2") == []

    await store.ack(batch.token, batch.ids, now=START)
    (next_batch,) = await claim_all(other, token="t3")
    assert next_batch.ids == [second]


async def test_unfinished_counts_held_events(store: Store) -> None:
    await put(store, [ordered("g", n=1), ordered("g", n=2), ordered("g", n=3)])

    assert await store.unfinished_count() == 3


# --- the queue: ordered_by and ordering_key ---------------------------------------------------


async def test_ordered_by_aggregate_id_and_explicit_keys(backend_config: Config) -> None:
    config = backend_config.replace(batch_window_ms=0, ordered_by="aggregate_id")
    async with EventQueue.open(config=config, migrate=True) as q:
        a = await q.put({"event_name": "x", "aggregate_id": 7})
        b = await q.put({"event_name": "y", "aggregate_id": "7"})  # the same group: "7"
        c = await q.put({"event_name": "z", "aggregate_id": 7}, ordering_key=None)
        d = await q.put({"event_name": "w"}, ordering_key="other")
        rs = await q.put_many(
            [{"event_name": "m", "attributes": {"i": i}} for i in range(2)],
            ordering_key=["m-group", None],
        )
        batches = await q.claim_batches("c", 10)

        groups = {e.id: e.ordering_key for batch in batches for e in batch.events}
        assert groups == {a.id: "7", c.id: None, d.id: "other", rs[0].id: "m-group", rs[1].id: None}
        assert b.id not in groups


async def test_ordered_by_a_callable(backend_config: Config) -> None:
    def by_tenant(event: Any) -> str | None:
        return event.get("attributes", {}).get("tenant")

    config = backend_config.replace(batch_window_ms=0)
    async with EventQueue.open(config=config, migrate=True, ordered_by=by_tenant) as q:
        first = await q.put({"event_name": "a", "attributes": {"tenant": "t1"}})
        await q.put({"event_name": "b", "attributes": {"tenant": "t1"}})
        (batch,) = await q.claim_batches("c", 10)

    assert batch.ids == [first.id] and batch.events[0].ordering_key == "t1"


@pytest.mark.parametrize("bad", [5, "", "x" * 1025, "a\x00b"])
async def test_a_bad_ordering_key_is_refused_at_put(queue: EventQueue, bad: Any) -> None:
    with pytest.raises(InvalidEventError, match="ordering_key"):
        await queue.put({"event_name": "x"}, ordering_key=bad)


async def test_put_many_needs_one_key_per_event(queue: EventQueue) -> None:
    with pytest.raises(InvalidEventError, match="one per event"):
        await queue.put_many([{"event_name": "x"}], ordering_key=["a", "b"])


def test_ordered_by_is_checked() -> None:
    with pytest.raises(ConfigError, match="EVENT_ORDERED_BY"):
        Config.load(env={"EVENT_ORDERED_BY": "tenant"})
    assert Config.load(env={"EVENT_ORDERED_BY": "aggregate_id"}).ordered_by == "aggregate_id"
    with pytest.raises(ConfigError, match="ordered_by"):
        EventQueue.open("x.db", ordered_by=42)
