"""Bad input through a real queue: refused with InvalidEventError and nothing stored, or stored,
claimed and delivered exactly as put. Never a foreign exception.

Hypothesis drives a synchronous test; each test function owns one queue on its own event loop
and runs one short coroutine per example on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import decimal
import random
import sqlite3
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventqueue import EventQueue, InvalidEventError, PutStatus

T = TypeVar("T")
MAX_BYTES = 4096
MAX_DEPTH = 8
INT64 = (-(2**63), 2**63 - 1)
PROPERTY = settings(
    max_examples=150,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

texts = st.text(max_size=10) | st.sampled_from(
    ["\x00", "a\x00b", "\ue000\x00", "🎉", "'; DROP TABLE events;--"]
)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(*INT64)
    | st.floats(allow_nan=False, allow_infinity=False)
    | texts
)
json_like = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.tuples(inner) | st.dictionaries(texts, inner, max_size=3)
    ),
    max_leaves=16,
)
events = st.dictionaries(
    st.sampled_from(
        ["event_type", "event_name", "aggregate_id", "attributes", "event_id", "timestamp"]
    )
    | texts,
    json_like,
    max_size=6,
)
priorities = st.none() | st.sampled_from([1, 2, 3, 4, "low", "Critical", 0, 5, "urgent", 1.5, True])


class Opaque:
    """Not JSON."""


def deep(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = {"d": value}
    return value


bad_values = st.one_of(
    st.sampled_from([float("nan"), float("inf"), float("-inf")]),
    st.binary(max_size=3),
    st.frozensets(st.integers(0, 2), max_size=2),
    st.sets(st.integers(0, 2), max_size=2),
    st.decimals(allow_nan=False, allow_infinity=False),
    st.integers(min_value=2**63, max_value=2**70),
    st.integers(max_value=-(2**63) - 1, min_value=-(2**70)),
    st.sampled_from([10**5000, "\ud800", "x\udfff", Opaque(), 1j]),
    st.integers(MAX_DEPTH + 1, 200).map(deep),
    st.integers(MAX_BYTES, MAX_BYTES * 3).map(lambda n: "x" * n),
)


def plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def shuffled(value: Any, rnd: random.Random) -> Any:
    if isinstance(value, dict):
        keys = list(value)
        rnd.shuffle(keys)
        return {k: shuffled(value[k], rnd) for k in keys}
    if isinstance(value, list):
        return [shuffled(v, rnd) for v in value]
    return value


class Harness:
    """One queue on its own event loop; `run` executes one coroutine on it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: EventQueue, path: str) -> None:
        self.loop = loop
        self.q = queue
        self.path = path

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def rows(self) -> int:
        with contextlib.closing(sqlite3.connect(self.path)) as db:
            return int(db.execute("SELECT count(*) FROM events").fetchone()[0])

    def stored(self) -> list[tuple[Any, ...]]:
        with contextlib.closing(sqlite3.connect(self.path)) as db:
            return db.execute("SELECT id, payload, status FROM events ORDER BY id").fetchall()


@contextlib.contextmanager
def harness(db_path: str, **settings: Any) -> Iterator[Harness]:
    loop = asyncio.new_event_loop()
    queue = loop.run_until_complete(
        EventQueue.open(
            db_path,
            batch_window_ms=0,
            enable_batching=False,
            max_event_bytes=MAX_BYTES,
            max_depth=MAX_DEPTH,
            **settings,
        )
    )
    try:
        yield Harness(loop, queue, db_path)
    finally:
        loop.run_until_complete(queue.close())
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()


@pytest.fixture
def plain_queue(db_path: str) -> Iterator[Harness]:
    """Dedup off: every accepted put is a new row to claim."""
    with harness(db_path, enable_dedup=False) as h:
        yield h


@pytest.fixture
def dedup_queue(db_path: str) -> Iterator[Harness]:
    with harness(db_path, enable_dedup=True) as h:
        yield h


async def put_claim_ack(q: EventQueue, event: Any, priority: Any) -> Any:
    """Put; if accepted, claim it back and ack it; return the payload delivered."""
    result = await q.put(event, priority)
    assert result.status is PutStatus.ACCEPTED, result
    batch = await q.claim()
    assert batch is not None and batch.ids == [result.id]
    await q.ack(batch)
    return batch.events[0].payload


@PROPERTY
@given(event=events, priority=priorities)
def test_any_event_shape_is_refused_cleanly_or_delivered_exactly(
    plain_queue: Harness, event: dict[str, Any], priority: Any
) -> None:
    h = plain_queue
    before = h.stored()
    try:
        delivered = h.run(put_claim_ack(h.q, event, priority))
    except InvalidEventError as exc:
        assert str(exc)
        assert h.stored() == before, "a refused put changed what is stored"
        return
    assert delivered == plain(event)


@PROPERTY
@given(event=events, bad=bad_values, data=st.data())
def test_a_malformed_value_is_refused_and_nothing_is_stored(
    plain_queue: Harness, event: dict[str, Any], bad: Any, data: st.DataObject
) -> None:
    h = plain_queue
    rows = h.rows()
    event = plain(event)
    where = data.draw(st.sampled_from(["attributes", "top", "list"]))
    if where == "attributes":
        event["attributes"] = {"x": bad}
    elif where == "top":
        event["event_id"] = bad  # the one top-level field that may hold any JSON value
    else:
        event["attributes"] = {"items": [1, {"y": [bad]}]}
    with pytest.raises(InvalidEventError):
        h.run(h.q.put(event))
    assert h.rows() == rows
    assert h.q.overflow.pending() == 0


@PROPERTY
@given(good=st.lists(events, min_size=1, max_size=4), bad=bad_values, data=st.data())
def test_put_many_with_one_bad_event_stores_none_of_them(
    plain_queue: Harness, good: list[dict[str, Any]], bad: Any, data: st.DataObject
) -> None:
    h = plain_queue
    rows = h.rows()
    batch: list[Any] = [{"event_name": "ok", "attributes": {}} for _ in good]
    batch.insert(data.draw(st.integers(0, len(batch))), {"attributes": {"x": bad}})
    with pytest.raises(InvalidEventError, match=r"event \d+"):
        h.run(h.q.put_many(batch))
    assert h.rows() == rows


@PROPERTY
@given(event=events, rnd=st.randoms(use_true_random=False))
def test_key_order_never_changes_the_hash_through_the_queue(
    dedup_queue: Harness, event: dict[str, Any], rnd: random.Random
) -> None:
    h = dedup_queue

    async def twice() -> tuple[Any, Any]:
        first = await h.q.put(event)
        second = await h.q.put(shuffled(plain(event), rnd))
        return first, second

    try:
        first, second = h.run(twice())
    except InvalidEventError:
        return
    assert second.content_hash == first.content_hash
    assert second.status is PutStatus.DUPLICATE
    assert second.id == first.id


FIXED_BAD: dict[str, Callable[[], Any]] = {
    "nan": lambda: {"attributes": {"x": float("nan")}},
    "inf": lambda: {"attributes": {"x": [float("inf")]}},
    "bytes": lambda: {"attributes": {"x": b"\x00"}},
    "set": lambda: {"attributes": {"x": {1}}},
    "decimal": lambda: {"attributes": {"x": decimal.Decimal("1")}},
    "int-2**63": lambda: {"attributes": {"x": 2**63}},
    "lone-surrogate-key": lambda: {"attributes": {"\ud800": 1}},
    "lone-surrogate-name": lambda: {"event_name": "\udfff"},
    "too-deep": lambda: {"attributes": deep(MAX_DEPTH + 1)},
    "deeper-than-the-recursion-limit": lambda: {"attributes": deep(5000)},
    "oversize": lambda: {"attributes": {"x": "é" * (MAX_BYTES // 2)}},
    "name-not-text": lambda: {"event_name": 1},
    "unknown-top-level-field": lambda: {"event_name": "x", "source": "replay"},
    "attributes-not-an-object": lambda: {"event_name": "x", "attributes": [1]},
    "aggregate_id-a-float": lambda: {"event_name": "x", "aggregate_id": 1.5},
    "not-a-dict": lambda: [("event_name", "x")],
}


@pytest.mark.parametrize("make", FIXED_BAD.values(), ids=FIXED_BAD.keys())
async def test_fixed_malformed_cases_store_nothing(open_queue, query, make) -> None:
    q = await open_queue(max_event_bytes=MAX_BYTES, max_depth=MAX_DEPTH)
    await q.put({"event_name": "before"})
    before = query("SELECT * FROM events")
    with pytest.raises(InvalidEventError):
        await q.put(make())
    assert query("SELECT * FROM events") == before
    assert (await q.put({"event_name": "after"})).accepted
