"""Bad input at put on a real file: InvalidEventError, nothing stored, stored rows untouched."""

from __future__ import annotations

import decimal
from collections.abc import Callable
from typing import Any

import pytest

from eventqueue import EventQueueError, InvalidEventError

MakeEvent = Callable[..., dict[str, Any]]


def deep(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = {"a": value}
    return value


def cyclic() -> dict[str, Any]:
    attributes: dict[str, Any] = {}
    attributes["loop"] = attributes
    return {"event_name": "loop", "attributes": attributes}


def attrs(value: Any) -> Callable[[], dict[str, Any]]:
    return lambda: {"event_type": "t", "event_name": "n", "attributes": {"x": value}}


BAD: dict[str, Callable[[], Any]] = {
    "not-a-dict": lambda: ["event"],
    "nan": attrs(float("nan")),
    "inf": attrs(float("inf")),
    "minus-inf": attrs(float("-inf")),
    "bytes": attrs(b"\x00\x01"),
    "set": attrs({"a"}),
    "decimal": attrs(decimal.Decimal("0.1")),
    "int-2**63": attrs(2**63),
    "int-below-int64": attrs(-(2**63) - 1),
    "int-10**5000": attrs(10**5000),
    "lone-surrogate-value": attrs("\udc80"),
    "lone-surrogate-key": lambda: {"attributes": {"\ud800key": 1}},
    "too-deep": lambda: {"attributes": deep(200)},
    "cyclic": cyclic,
    "oversize": attrs("x" * 5000),
    "event_name-not-str": lambda: {"event_name": 7},
    "aggregate_id-float": lambda: {"aggregate_id": 0.5},
    "attributes-not-dict": lambda: {"attributes": ["a"]},
    "non-str-key": lambda: {"attributes": {1: "a"}},
}


@pytest.mark.parametrize("make", BAD.values(), ids=BAD.keys())
async def test_put_refuses_a_malformed_event_and_stores_nothing(
    open_queue, make_event: MakeEvent, query, make: Callable[[], Any]
) -> None:
    q = await open_queue(max_event_bytes=4096)
    stored = await q.put(make_event("kept"))
    before = query("SELECT * FROM events")

    with pytest.raises(InvalidEventError) as raised:
        await q.put(make())

    assert isinstance(raised.value, EventQueueError)
    assert query("SELECT * FROM events") == before
    assert [row[0] for row in before] == [stored.id]


async def test_the_queue_keeps_working_after_a_refused_put(
    open_queue, make_event: MakeEvent
) -> None:
    q = await open_queue(batch_window_ms=0)
    with pytest.raises(InvalidEventError):
        await q.put(make_event(attributes={"x": float("nan")}))

    result = await q.put(make_event())

    batch = await q.claim()
    assert batch is not None
    assert batch.ids == [result.id]


async def test_nul_characters_are_stored_and_delivered_intact(
    open_queue, make_event: MakeEvent
) -> None:
    q = await open_queue(batch_window_ms=0)
    payload = make_event("with\x00nul", attributes={"k\x00ey": "va\x00lue"})
    await q.put(payload)

    batch = await q.claim()

    assert batch is not None
    assert batch.events[0].payload == payload


async def test_batch_keys_differing_after_a_nul_stay_distinct(
    open_queue, make_event: MakeEvent, query
) -> None:
    q = await open_queue(batch_window_ms=0)
    first = await q.put(make_event("x\x00a"))
    second = await q.put(make_event("x\x00b"))

    batch = await q.claim()

    assert batch is not None
    assert batch.key == "x\x00a-handler"
    assert batch.ids == [first.id]
    keys = query("SELECT id, batch_key FROM events ORDER BY id")
    assert keys == [(first.id, "x\x00a-handler"), (second.id, "x\x00b-handler")]


async def test_batch_key_with_nul_and_private_use_characters_round_trips(
    open_queue, make_event: MakeEvent
) -> None:
    q = await open_queue(batch_window_ms=0)
    name = "\ue000\x00\ue001\x00"
    await q.put_many([make_event(name), make_event("plain")])

    keys = set()
    while (batch := await q.claim()) is not None:
        keys.add(batch.key)

    assert keys == {f"{name}-handler", "plain-handler"}


async def test_sql_text_in_fields_is_stored_literally(
    open_queue, make_event: MakeEvent, query
) -> None:
    q = await open_queue(batch_window_ms=0)
    hostile = "x'); DROP TABLE events; --"
    payload = make_event(hostile, aggregate_id=hostile, attributes={hostile: hostile})
    await q.put(payload)

    batch = await q.claim()

    assert batch is not None
    assert batch.events[0].payload == payload
    assert query("SELECT count(*) FROM events") == [(1,)]
