"""Claim order on a real file: priority levels, aging, order within a key, classifiers."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from eventqueue import EventQueue, InvalidEventError, Priority

MakeEvent = Callable[..., dict[str, Any]]


async def drain(q: EventQueue) -> list[list[int]]:
    """Claim and ack until nothing is ready; the ids of each batch in claim order."""
    batches = []
    while (batch := await q.claim()) is not None:
        batches.append(batch.ids)
        await q.ack(batch)
    return batches


async def test_claims_follow_all_four_priority_levels(open_queue, make_event: MakeEvent) -> None:
    q = await open_queue(batch_window_ms=0)
    low = await q.put(make_event("heartbeat"))
    normal = await q.put(make_event("order_created"))
    high = await q.put(make_event("step_done", event_type="workflow_event"))
    critical = await q.put(make_event("payment_failed"))
    assert [r.priority for r in (low, normal, high, critical)] == [
        Priority.LOW,
        Priority.NORMAL,
        Priority.HIGH,
        Priority.CRITICAL,
    ]

    claimed = []
    while (batch := await q.claim()) is not None:
        claimed.append(batch.priority)
        await q.ack(batch)

    assert claimed == [Priority.CRITICAL, Priority.HIGH, Priority.NORMAL, Priority.LOW]


async def test_same_priority_keys_are_served_oldest_first(
    open_queue, clock, make_event: MakeEvent
) -> None:
    q = await open_queue(batch_window_ms=0)
    first = await q.put(make_event("b_thing"))
    clock.advance(1)
    second = await q.put(make_event("a_thing"))

    assert await drain(q) == [[first.id], [second.id]]


async def test_aging_lifts_an_old_low_event_past_newer_normal_ones(
    open_queue, clock, make_event: MakeEvent
) -> None:
    q = await open_queue(batch_window_ms=0, aging_s=60)
    low = await q.put(make_event("heartbeat"))
    clock.advance(61)
    normals = [await q.put(make_event(f"normal_{i}")) for i in range(3)]

    order = await drain(q)

    assert order[0] == [low.id]
    assert sorted(i for batch in order[1:] for i in batch) == sorted(r.id for r in normals)


async def test_without_aging_time_a_low_event_waits_behind_normal_ones(
    open_queue, clock, make_event: MakeEvent
) -> None:
    q = await open_queue(batch_window_ms=0, aging_s=60)
    low = await q.put(make_event("heartbeat"))
    clock.advance(30)
    normal = await q.put(make_event("order_created"))

    assert await drain(q) == [[normal.id], [low.id]]


async def test_aging_never_lifts_an_event_to_critical(
    open_queue, clock, make_event: MakeEvent
) -> None:
    q = await open_queue(batch_window_ms=0, aging_s=1)
    low = await q.put(make_event("heartbeat"))
    clock.advance(3600)  # thousands of aging periods
    critical = await q.put(make_event("disk_error"))

    assert await drain(q) == [[critical.id], [low.id]]


async def test_within_a_key_priority_then_fifo(open_queue, clock, make_event: MakeEvent) -> None:
    q = await open_queue(batch_window_ms=0)
    n1 = await q.put(make_event("job", aggregate_id="1"))
    clock.advance(1)
    h1 = await q.put(make_event("job", aggregate_id="2"), priority=Priority.HIGH)
    clock.advance(1)
    n2 = await q.put(make_event("job", aggregate_id="3"))
    clock.advance(1)
    h2 = await q.put(make_event("job", aggregate_id="4"), priority=Priority.HIGH)
    low = await q.put(make_event("job", aggregate_id="5"), priority=Priority.LOW)

    batch = await q.claim()

    assert batch is not None
    assert batch.ids == [h1.id, h2.id, n1.id, n2.id, low.id]
    assert batch.priority is Priority.HIGH
    assert batch.key == "job-handler"


async def test_batch_events_carry_what_was_put(open_queue, make_event: MakeEvent) -> None:
    q = await open_queue(batch_window_ms=0)
    payload = make_event("order_created", attributes={"total": 12, "note": "nul\x00ok"})
    result = await q.put(payload)

    batch = await q.claim()

    assert batch is not None
    (only,) = batch.events
    assert only.id == result.id
    assert only.payload == payload
    assert only.content_hash == result.content_hash
    assert only.priority is Priority.NORMAL
    assert only.batch_key == "order_created-handler"
    assert only.attempts == 1


async def test_explicit_priority_wins_over_the_classifier(
    open_queue, make_event: MakeEvent
) -> None:
    q = await open_queue(batch_window_ms=0)
    demoted = await q.put(make_event("payment_failed"), priority=Priority.LOW)
    by_name = await q.put(make_event("heartbeat", aggregate_id="b"), priority="critical")
    by_value = await q.put(make_event("order_created"), priority=3)

    assert demoted.priority is Priority.LOW
    assert by_name.priority is Priority.CRITICAL
    assert by_value.priority is Priority.HIGH
    assert await drain(q) == [[by_name.id], [by_value.id], [demoted.id]]


async def test_an_invalid_explicit_priority_is_refused_and_nothing_stored(
    open_queue, make_event: MakeEvent, query
) -> None:
    q = await open_queue(batch_window_ms=0)
    for bad in (0, 5, "urgent", True):
        try:
            await q.put(make_event(), priority=bad)
        except InvalidEventError:
            continue
        raise AssertionError(f"priority {bad!r} was accepted")
    assert query("SELECT count(*) FROM events") == [(0,)]


async def test_a_custom_classifier_replaces_the_plans_rules(
    open_queue, make_event: MakeEvent
) -> None:
    def by_attribute(event: Mapping[str, Any]) -> Priority:
        return Priority.CRITICAL if event["attributes"].get("vip") else Priority.LOW

    q = await open_queue(batch_window_ms=0, classifier=by_attribute)
    plain_error = await q.put(make_event("payment_failed"))
    vip = await q.put(make_event("heartbeat", attributes={"vip": True}))

    assert plain_error.priority is Priority.LOW
    assert vip.priority is Priority.CRITICAL
    assert await drain(q) == [[vip.id], [plain_error.id]]


async def test_a_custom_batch_key_groups_events(open_queue, make_event: MakeEvent) -> None:
    q = await open_queue(batch_window_ms=0, batch_key=lambda e: str(e["aggregate_id"]))
    a1 = await q.put(make_event("created", aggregate_id="A"))
    b1 = await q.put(make_event("created", aggregate_id="B"))
    a2 = await q.put(make_event("updated", aggregate_id="A"))

    assert await drain(q) == [[a1.id, a2.id], [b1.id]]
