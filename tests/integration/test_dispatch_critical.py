"""CRITICAL events from a source are put ahead of the ordered chunks, without a position."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from test_dispatch import Calls, MakeEvent, from_list, q, run, write_lines

from eventqueue import Dispatcher, EventQueue, InvalidEventError, Priority
from eventqueue.runtime.sources import jsonl_source

__all__ = ["q"]  # the fixture, shared with test_dispatch


async def test_a_source_of_only_critical_events_stores_them_all_and_its_position(
    q: EventQueue, tmp_path: Path, make_event: MakeEvent, query: Any
) -> None:
    path = tmp_path / "in.jsonl"
    write_lines(path, [make_event("payment_failed", aggregate_id=i) for i in range(5)])
    calls = Calls()
    dispatcher = Dispatcher(q)
    dispatcher.add_handler("*", calls)

    await run(dispatcher, jsonl_source(path))

    assert sorted(e.payload["aggregate_id"] for e in calls.events) == list(range(5))
    assert all(e.priority == Priority.CRITICAL for e in calls.events)
    assert query("SELECT source, position FROM source_positions") == [(f"jsonl:{path}", "5")]


async def test_critical_and_other_events_are_all_stored_with_the_last_position(
    q: EventQueue, tmp_path: Path, make_event: MakeEvent, query: Any
) -> None:
    path = tmp_path / "in.jsonl"
    names = ["order_created", "payment_failed"] * 10 + ["order_created"]
    write_lines(path, [make_event(name, aggregate_id=i) for i, name in enumerate(names)])
    calls = Calls()
    dispatcher = Dispatcher(q)
    dispatcher.add_handler("*", calls)

    await run(dispatcher, jsonl_source(path))

    assert sorted(e.payload["aggregate_id"] for e in calls.events) == list(range(len(names)))
    assert query("SELECT count(*) FROM events") == [(len(names),)]
    assert await q.source_position(f"jsonl:{path}") == str(len(names))


async def test_an_invalid_critical_event_is_counted_and_skipped(
    q: EventQueue, make_event: MakeEvent
) -> None:
    bad = make_event("payment_failed", aggregate_id=2, attributes={"x": float("nan")})
    calls = Calls()
    dispatcher = Dispatcher(q)
    dispatcher.add_handler("*", calls)

    events = [make_event("a", aggregate_id=1), bad, make_event("payment_failed", aggregate_id=3)]
    await run(dispatcher, from_list(events))

    assert sorted(e.payload["aggregate_id"] for e in calls.events) == [1, 3]
    assert q.metrics.outcomes["invalid"] == 1


async def test_with_on_invalid_stop_no_critical_event_after_the_bad_one_is_stored(
    q: EventQueue, tmp_path: Path, make_event: MakeEvent, query: Any
) -> None:
    path = tmp_path / "in.jsonl"
    nan_line = json.dumps(make_event("a", aggregate_id=2)).replace(
        '"attributes": {}', '"attributes": {"x": 1e999}'
    )
    lines = [make_event("a", aggregate_id=1), nan_line, make_event("x_failed", aggregate_id=3)]
    write_lines(path, lines)
    dispatcher = Dispatcher(q, on_invalid="stop")
    dispatcher.add_handler("*", Calls())

    with pytest.raises(InvalidEventError, match="position 2"):
        await run(dispatcher, jsonl_source(path))

    assert query("SELECT json_extract(payload, '$.aggregate_id') FROM events") == [(1,)]
