"""Coalescing, debounce and the sliding dedup window (issue 23), on every backend: latest wins
in the pending event of a (batch key, coalesce key), which keeps its id and place; a claimed
event is never changed; CRITICAL events are never coalesced; identical content is still a
duplicate first (the replaced versions too, inside their window); debounce and its maximum;
across a reopen, a spill and two writers. Times are injected (`now`, `received_at`)."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from contract.conftest import (
    START,
    OpenStore,
    claim,
    claim_one,
    claim_rules,
    make_event,
    status_of,
)
from contract.test_spill_room import Clock, drain, opened, until
from eventqueue.core.coalesce import Debounce
from eventqueue.core.config import Config
from eventqueue.core.models import Priority, PutStatus
from eventqueue.core.records import NewEvent
from eventqueue.store.base import Store

TTL = 300.0
READY = claim_rules(window_s=0.0)


def version(v: int, *, at: float = START, key: str = "o1", **kwargs: Any) -> NewEvent:
    """Version `v` of order `key`'s state, coalescing by the order."""
    row = make_event("order_updated", at=at, aggregate_id=key, v=v, **kwargs)
    return row.with_coalesce_key(key)


async def put(store: Store, rows: list[NewEvent], *, now: float = START, **kwargs: Any) -> Any:
    kwargs.setdefault("dedup_ttl_s", TTL)
    return (await store.put(rows, now=now, **kwargs)).outcome


# --- sliding and fixed windows ----------------------------------------------------------------


async def test_a_fixed_window_runs_from_the_original_whatever_repeats_it(store: Store) -> None:
    ((_, original),) = await put(store, [make_event()])
    at = START + 200
    assert await put(store, [make_event(at=at)], now=at) == [(PutStatus.DUPLICATE, original)]

    at = START + TTL + 1  # 101 s after the repeat, 301 s after the original
    ((status, _),) = await put(store, [make_event(at=at)], now=at)

    assert status is PutStatus.ACCEPTED


async def test_a_sliding_window_restarts_at_each_suppressed_repeat(store: Store) -> None:
    ((_, original),) = await put(store, [make_event()], sliding=True)
    for at in (START + 200, START + 500, START + 800):  # each exactly inside the last window
        outcome = await put(store, [make_event(at=at)], now=at, sliding=True)
        assert outcome == [(PutStatus.DUPLICATE, original)], at
    assert (await store.show(original) or {})["duplicates"] == 3

    at = START + 800 + TTL  # exactly the window after the last repeat: still a duplicate
    assert await put(store, [make_event(at=at)], now=at, sliding=True) == [
        (PutStatus.DUPLICATE, original)
    ]
    at += TTL + 0.001  # past the window of the last repeat
    ((status, new_id),) = await put(store, [make_event(at=at)], now=at, sliding=True)

    assert (status, new_id != original) == (PutStatus.ACCEPTED, True)


async def test_a_sliding_window_keeps_a_done_event_from_the_purge(store: Store) -> None:
    ((_, original),) = await put(store, [make_event()], sliding=True)
    batch = await claim_one(store, rules=READY)
    await store.ack(batch.token, batch.ids, now=START)
    at = START + 250
    await put(store, [make_event(at=at)], now=at, sliding=True)  # the window now ends at +550

    now = START + 400
    kept = await store.purge_done(cutoff=now, dedup_since=now - TTL, now=now, limit=100)

    assert kept == 0
    assert await status_of(store, original) == "done"


async def test_a_sliding_window_holds_for_a_coalesced_event_and_a_replaced_version(
    store: Store,
) -> None:
    outcome = await put(store, [version(1), version(2, at=START + 1)], now=START + 1, sliding=True)
    (event_id,) = {i for _, i in outcome}
    for at in (START + 250, START + 500):  # each repeat inside the window of the last one
        repeats = [version(1, at=at), version(2, at=at)]
        assert (
            await put(store, repeats, now=at, sliding=True) == [(PutStatus.DUPLICATE, event_id)] * 2
        )

    at = START + 500 + TTL + 1  # past the last repeat's window: version 1 is new again
    ((status, again),) = await put(store, [version(1, at=at)], now=at, sliding=True)

    assert (status, again) == (PutStatus.ACCEPTED, event_id)  # and folds in: latest wins


# --- latest wins --------------------------------------------------------------------------------


async def test_the_pending_event_takes_the_latest_payload_and_keeps_its_id(store: Store) -> None:
    first = await put(store, [version(1)])
    later = await put(store, [version(2, at=START + 1), version(3, at=START + 2)], now=START + 2)

    (event_id,) = {i for _, i in first + later}
    assert [s for s, _ in first + later] == [PutStatus.ACCEPTED] * 3
    (event,) = (await claim_one(store, rules=READY)).events
    assert (event.id, event.payload["attributes"], event.superseded) == (event_id, {"v": 3}, 2)
    assert event.received_at == START  # its place: the first version's arrival
    assert (await store.stats(now=START, rules=READY)).counters.get("superseded") == 2


async def test_other_keys_and_other_batch_keys_are_not_coalesced(store: Store) -> None:
    rows = [version(1, key="o1"), version(1, key="o2")]
    other_name = make_event("order_shipped", aggregate_id="o1", v=1).with_coalesce_key("o1")

    outcome = await put(store, [*rows, other_name])

    assert len({i for _, i in outcome}) == 3


async def test_an_event_in_front_keeps_its_place_when_a_later_one_is_coalesced(
    store: Store,
) -> None:
    ((_, a),) = await put(store, [version(1, key="a")])
    ((_, b),) = await put(store, [version(1, key="b", at=START + 1)], now=START + 1)
    await put(store, [version(2, key="a", at=START + 2)], now=START + 2)

    batch = await claim_one(store, rules=READY)

    assert batch.ids == [a, b]
    assert [e.payload["attributes"]["v"] for e in batch.events] == [2, 1]


async def test_a_claimed_event_is_never_changed(store: Store) -> None:
    ((_, first),) = await put(store, [version(1)])
    batch = await claim_one(store, rules=READY)

    ((status, second),) = await put(store, [version(2, at=START + 1)], now=START + 1)

    assert status is PutStatus.ACCEPTED and second != first
    shown = await store.show(first)
    assert shown is not None and shown["payload"]["attributes"] == {"v": 1}
    await store.ack(batch.token, batch.ids, now=START + 1)
    (event,) = (await claim_one(store, now=START + 1, rules=READY, token="t2")).events
    assert (event.id, event.payload["attributes"], event.superseded) == (second, {"v": 2}, 0)


async def test_an_event_in_retry_back_off_is_never_changed(store: Store) -> None:
    ((_, first),) = await put(store, [version(1)])
    batch = await claim_one(store, rules=READY)
    await store.nack(batch.token, {first: START + 60}, [], error="boom", now=START)

    ((_, second),) = await put(store, [version(2, at=START + 1)], now=START + 1)

    assert second != first


async def test_identical_content_is_a_duplicate_before_it_coalesces(store: Store) -> None:
    ((_, event_id),) = await put(store, [version(1)])

    outcome = await put(store, [version(1, at=START + 1)], now=START + 1)

    assert outcome == [(PutStatus.DUPLICATE, event_id)]
    (event,) = (await claim_one(store, rules=READY)).events
    assert event.superseded == 0


async def test_each_repeat_on_the_coalescing_path_counts_once(store: Store) -> None:
    await put(store, [version(1), version(2, at=START + 1)], now=START + 1)

    await put(store, [version(2, at=START + 2)], now=START + 2)  # a repeat of the live version
    await put(store, [version(1, at=START + 3)], now=START + 3)  # a repeat of a replaced one

    stats = await store.stats(now=START + 3, rules=READY)
    assert stats.counters["duplicates_suppressed"] == 2


async def test_a_replaced_version_repeated_in_its_window_is_a_duplicate(store: Store) -> None:
    outcome = await put(store, [version(1), version(2, at=START + 1)], now=START + 1)
    (event_id,) = {i for _, i in outcome}

    stale = await put(store, [version(1, at=START + 2)], now=START + 2)  # a re-sent old state

    assert stale == [(PutStatus.DUPLICATE, event_id)]
    (event,) = (await claim_one(store, now=START + 2, rules=READY)).events
    assert event.payload["attributes"] == {"v": 2}, "a stale re-send never wins"
    at = START + 1 + TTL + 1  # its window closed: new again, and it coalesces
    await put(store, [version(1, at=at)], now=at)


async def test_without_a_coalesce_key_nothing_is_coalesced(store: Store) -> None:
    rows = [make_event("order_updated", aggregate_id="o1", v=v) for v in (1, 2)]

    outcome = await put(store, rows)

    assert len({i for _, i in outcome}) == 2


# --- CRITICAL -----------------------------------------------------------------------------------


async def test_critical_events_are_never_coalesced(backend_config: Config) -> None:
    config = backend_config.replace(coalesce_by="aggregate_id", batch_window_ms=0)
    async with opened(config, Clock()) as q:
        failed = {"event_name": "payment_failed", "aggregate_id": "o1"}
        results = [await q.put(failed | {"attributes": {"n": n}}) for n in range(3)]
        explicit = await q.put(failed | {"attributes": {"n": 2}}, coalesce_key="o1")

        assert {r.priority for r in results} == {Priority.CRITICAL}
        assert len({r.id for r in results}) == 3
        assert explicit.duplicate  # identical content: a duplicate, never a coalesce


async def test_the_queue_coalesces_by_aggregate_id_and_by_a_function(
    backend_config: Config,
) -> None:
    config = backend_config.replace(coalesce_by="aggregate_id", batch_window_ms=0)
    async with opened(config, Clock()) as q:
        a = [
            await q.put({"event_name": "u", "aggregate_id": 7, "attributes": {"v": v}})
            for v in (1, 2)
        ]
        b = await q.put({"event_name": "u", "aggregate_id": "7", "attributes": {"v": 3}})
        assert a[0].id == a[1].id != b.id  # 7 and "7" are different aggregates

    def by_tenant(event: Any) -> str | None:
        return str(event.get("attributes", {}).get("tenant")) if event.get("attributes") else None

    async with opened(backend_config, Clock(), coalesce_by=by_tenant, batch_window_ms=0) as q:
        x = await q.put({"event_name": "u", "attributes": {"tenant": "t", "v": 1}})
        y = await q.put({"event_name": "u", "attributes": {"tenant": "t", "v": 2}})
        assert x.id == y.id


# --- debounce -----------------------------------------------------------------------------------


async def test_a_debounced_event_waits_for_quiet_then_is_ready(store: Store) -> None:
    debounce = Debounce(10.0, None)
    await put(store, [version(1)], debounce=debounce)
    await put(store, [version(2, at=START + 8)], now=START + 8, debounce=debounce)

    assert await claim(store, now=START + 17.9, rules=READY) == []
    wakeup = await store.next_wakeup(START + 17.9)
    assert wakeup.next_retry_at == START + 18

    (event,) = (await claim_one(store, now=START + 18, rules=READY)).events
    assert (event.payload["attributes"], event.superseded) == ({"v": 2}, 1)


async def test_a_constant_stream_is_delivered_at_the_debounce_maximum(store: Store) -> None:
    debounce = Debounce(10.0, 25.0)
    for n, at in enumerate((0, 8, 16, 24)):
        await put(store, [version(n, at=START + at)], now=START + at, debounce=debounce)

    assert await claim(store, now=START + 24.9, rules=READY) == []
    (event,) = (await claim_one(store, now=START + 25, rules=READY)).events
    assert (event.payload["attributes"], event.superseded) == ({"v": 3}, 3)


# --- durable: reopen, spill, two writers --------------------------------------------------------


async def test_coalescing_holds_across_a_reopen(store: Store, open_another: OpenStore) -> None:
    ((_, first),) = await put(store, [version(1)], debounce=Debounce(10.0))
    await store.close()
    reopened = await open_another()

    ((_, again),) = await put(reopened, [version(2, at=START + 5)], now=START + 5)

    assert again == first
    assert await claim(reopened, now=START + 9, rules=READY) == []  # still debounced
    (event,) = (await claim_one(reopened, now=START + 10, rules=READY)).events
    assert (event.payload["attributes"], event.superseded) == ({"v": 2}, 1)


async def test_a_promoted_event_coalesces_with_a_pending_one(backend_config: Config) -> None:
    config = backend_config.replace(coalesce_by="aggregate_id", queue_size=2, batch_window_ms=0)
    async with opened(config, Clock()) as q:
        first = await q.put(
            {"event_name": "order_updated", "aggregate_id": "o1", "attributes": {"v": 1}}
        )
        await q.put({"event_name": "filler", "aggregate_id": "f"})  # the queue is full now
        spilled = await q.put(
            {"event_name": "order_updated", "aggregate_id": "o1", "attributes": {"v": 2}}
        )
        assert spilled.spilled
        filler = await q.claim("c")  # room: the spilled version is promoted
        assert filler is not None and filler.events[0].name == "filler"
        await until(q, lambda: q.overflow.pending() == 0)
        await q.ack(filler)

        (event,) = await drain(q)

        assert (event.id, event.payload["attributes"], event.superseded) == (first.id, {"v": 2}, 1)


async def test_two_writers_putting_one_key_leave_one_pending_event(
    store: Store, open_another: OpenStore
) -> None:
    other = await open_another()

    async def versions(s: Store, tag: str) -> None:
        for n in range(15):
            await put(s, [version(n, tag=tag, at=START + n)], now=START + n)

    await asyncio.gather(versions(store, "a"), versions(other, "b"))

    (batch,) = await claim(store, now=START + 20, rules=dataclasses.replace(READY, max_batch=50))
    (event,) = batch.events
    assert event.superseded == 29


async def test_show_names_the_coalesce_key_and_the_versions_replaced(store: Store) -> None:
    outcome = await put(
        store, [version(1, key="o\x00NUL"), version(2, key="o\x00NUL", at=START + 1)]
    )

    info = await store.show(outcome[0][1])

    assert info is not None
    assert (info["coalesce_key"], info["superseded"]) == ("o\x00NUL", 1)
    assert info["dedup_at"] is not None  # the window runs from the latest version
