"""Batch readiness on a real file: by size, by window, CRITICAL at once, batching off."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from eventqueue import Priority

MakeEvent = Callable[..., dict[str, Any]]


async def put_n(q, make_event: MakeEvent, n: int, name: str = "job", **kw: Any) -> list[int]:
    results = await q.put_many([make_event(name, aggregate_id=str(i)) for i in range(n)], **kw)
    return [r.id for r in results]


async def test_a_full_batch_is_ready_at_once(open_queue, make_event: MakeEvent) -> None:
    q = await open_queue(max_batch_size=10, batch_window_ms=100)
    ids = await put_n(q, make_event, 10)

    batch = await q.claim()

    assert batch is not None
    assert batch.ids == ids


async def test_a_partial_batch_waits_for_the_window(
    open_queue, clock, make_event: MakeEvent
) -> None:
    q = await open_queue(max_batch_size=10, batch_window_ms=100)
    await put_n(q, make_event, 9)

    assert await q.claim() is None
    clock.advance(0.05)
    assert await q.claim() is None


async def test_a_partial_batch_is_ready_once_its_oldest_event_waited_the_window(
    open_queue, clock, make_event: MakeEvent
) -> None:
    q = await open_queue(max_batch_size=10, batch_window_ms=100)
    early = await q.put(make_event("job", aggregate_id="early"))
    clock.advance(0.06)
    late = await q.put(make_event("job", aggregate_id="late"))
    assert await q.claim() is None
    clock.advance(0.05)  # the oldest has now waited 110 ms, the newest 50 ms

    batch = await q.claim()

    assert batch is not None
    assert batch.ids == [early.id, late.id]


async def test_more_than_a_batch_pending_is_claimed_in_batches_of_max_size(
    open_queue, make_event: MakeEvent
) -> None:
    q = await open_queue(max_batch_size=4, batch_window_ms=100)
    ids = await put_n(q, make_event, 9)

    first = await q.claim()
    second = await q.claim()
    rest = await q.claim()

    assert first is not None and second is not None
    assert first.ids == ids[:4]
    assert second.ids == ids[4:8]
    assert rest is None  # one event left: not a full batch, window not passed


async def test_keys_become_ready_independently(open_queue, clock, make_event: MakeEvent) -> None:
    q = await open_queue(max_batch_size=3, batch_window_ms=100)
    await put_n(q, make_event, 1, name="slow")
    full = await put_n(q, make_event, 3, name="busy")

    batch = await q.claim()

    assert batch is not None
    assert batch.ids == full
    assert await q.claim() is None


async def test_critical_event_does_not_wait_for_the_window(
    open_queue, make_event: MakeEvent
) -> None:
    q = await open_queue(max_batch_size=10, batch_window_ms=60_000)
    result = await q.put(make_event("disk_error"))

    batch = await q.claim()

    assert batch is not None
    assert batch.ids == [result.id]
    assert batch.priority is Priority.CRITICAL


async def test_critical_event_takes_only_critical_events_of_a_waiting_key(
    open_queue, clock, make_event: MakeEvent
) -> None:
    q = await open_queue(max_batch_size=10, batch_window_ms=100)
    normal = await put_n(q, make_event, 3)
    critical = await q.put(make_event("job", aggregate_id="urgent"), priority=Priority.CRITICAL)

    batch = await q.claim()

    assert batch is not None
    assert batch.ids == [critical.id]
    assert await q.claim() is None  # the NORMAL events keep waiting for their window
    clock.advance(0.2)
    rest = await q.claim()
    assert rest is not None
    assert rest.ids == normal


async def test_critical_event_in_a_due_key_goes_with_the_rest(
    open_queue, clock, make_event: MakeEvent
) -> None:
    q = await open_queue(max_batch_size=10, batch_window_ms=100)
    normal = await put_n(q, make_event, 2)
    clock.advance(0.2)
    critical = await q.put(make_event("job", aggregate_id="urgent"), priority=Priority.CRITICAL)

    batch = await q.claim()

    assert batch is not None
    assert batch.ids == [critical.id, *normal]


async def test_batching_off_makes_every_event_its_own_batch(
    open_queue, make_event: MakeEvent
) -> None:
    q = await open_queue(enable_batching=False, max_batch_size=10, batch_window_ms=60_000)
    ids = await put_n(q, make_event, 3)

    claimed = []
    while (batch := await q.claim()) is not None:
        claimed.append(batch.ids)

    assert claimed == [[i] for i in ids]


async def test_window_zero_makes_any_pending_event_ready(open_queue, make_event: MakeEvent) -> None:
    q = await open_queue(max_batch_size=10, batch_window_ms=0)
    ids = await put_n(q, make_event, 3)

    batch = await q.claim()

    assert batch is not None
    assert batch.ids == ids


async def test_put_many_with_explicit_priority_applies_it_to_all(
    open_queue, make_event: MakeEvent
) -> None:
    q = await open_queue(max_batch_size=10, batch_window_ms=60_000)
    ids = await put_n(q, make_event, 2, priority=Priority.CRITICAL)

    batch = await q.claim()

    assert batch is not None
    assert batch.ids == ids


async def test_environment_variables_configure_the_queue(
    open_queue, make_event: MakeEvent, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ENABLE_BATCHING", "false")
    monkeypatch.setenv("BATCH_WINDOW_MS", "60000")
    q = await open_queue()
    ids = await put_n(q, make_event, 2)

    first = await q.claim()

    assert q.config.enable_batching is False
    assert first is not None
    assert first.ids == ids[:1]


async def test_keyword_settings_beat_environment_variables(
    open_queue, make_event: MakeEvent, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ENABLE_BATCHING", "false")
    q = await open_queue(enable_batching=True, batch_window_ms=0)
    ids = await put_n(q, make_event, 2)

    batch = await q.claim()

    assert batch is not None
    assert batch.ids == ids
