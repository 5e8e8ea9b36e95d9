"""The Dispatcher on real database files: outcomes, priorities, batching, leases and shutdown.

Time that matters is the queue's fake clock; the dispatcher is synchronised with handshakes
(asyncio.Event), never with sleeps. Retries are immediate (backoff_base_s=0).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

from eventqueue import Dispatcher, EventQueue, InvalidEventError, PartialFailure, Priority
from eventqueue.core.models import Event
from eventqueue.runtime.sources import jsonl_source

DEADLINE_S = 20  # a bound on every run, so a hang fails the test instead of stalling it
MakeEvent = Callable[..., dict[str, Any]]


class Calls:
    """Records handler calls in order; `reached(n)` waits until n calls were made."""

    def __init__(self, fail: Callable[[list[Event]], Exception | None] | None = None) -> None:
        self.batches: list[list[Event]] = []
        self._fail = fail
        self._changed = asyncio.Event()

    async def __call__(self, events: list[Event]) -> None:
        self.batches.append(list(events))
        self._changed.set()
        error = self._fail(events) if self._fail else None
        if error is not None:
            raise error

    @property
    def events(self) -> list[Event]:
        return [e for batch in self.batches for e in batch]

    async def reached(self, count: int) -> None:
        async with asyncio.timeout(DEADLINE_S):
            while len(self.batches) < count:
                self._changed.clear()
                await self._changed.wait()


async def from_list(events: Iterable[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
    for event in events:
        yield event


async def run(dispatcher: Dispatcher, source: Any = None) -> None:
    async with asyncio.timeout(DEADLINE_S):
        await dispatcher.run(source)


def write_lines(path: Path, events: Iterable[dict[str, Any] | str], mode: str = "w") -> None:
    with path.open(mode) as f:
        for e in events:
            f.write((e if isinstance(e, str) else json.dumps(e)) + "\n")


@pytest.fixture
async def q(open_queue: Any) -> EventQueue:
    # batch_window_ms=0: every key is ready at once, whatever the fake clock says.
    queue: EventQueue = await open_queue(batch_window_ms=0, max_attempts=3, backoff_base_s=0)
    return queue


# --- source to handlers -------------------------------------------------------------------------


async def test_events_from_a_file_reach_handlers_with_hash_and_attempt(
    q: EventQueue, tmp_path: Path, make_event: MakeEvent, query: Any
) -> None:
    path = tmp_path / "in.jsonl"
    write_lines(path, [make_event("order_created", aggregate_id=i) for i in range(5)])
    calls = Calls()
    dispatcher = Dispatcher(q)
    dispatcher.add_handler("order_created", calls)

    await run(dispatcher, jsonl_source(path))

    events = calls.events
    assert sorted(e.payload["aggregate_id"] for e in events) == list(range(5))
    assert all(e.attempts == 1 and len(e.content_hash) == 64 for e in events)
    assert query("SELECT status, count(*) FROM events GROUP BY status") == [("done", 5)]
    assert query("SELECT source, position FROM source_positions") == [(f"jsonl:{path}", "5")]
    assert q.metrics.outcomes["handled"] == 5
    assert q.metrics.outcomes["read"] == 5


async def test_a_new_run_resumes_after_the_stored_position(
    q: EventQueue, tmp_path: Path, make_event: MakeEvent
) -> None:
    path = tmp_path / "in.jsonl"
    write_lines(path, [make_event("a", aggregate_id=i) for i in range(3)])
    first, second = Calls(), Calls()
    d1 = Dispatcher(q)
    d1.add_handler("*", first)
    await run(d1, jsonl_source(path))
    write_lines(path, [make_event("a", aggregate_id=i) for i in range(3, 5)], mode="a")

    d2 = Dispatcher(q)
    d2.add_handler("*", second)
    await run(d2, jsonl_source(path))

    assert [e.payload["aggregate_id"] for e in second.events] == [3, 4]
    assert q.metrics.outcomes["duplicate"] == 0  # not re-read: resumed, not absorbed by dedup
    assert await q.source_position(f"jsonl:{path}") == "5"


async def test_without_resume_the_source_starts_over_and_dedup_absorbs_it(
    q: EventQueue, tmp_path: Path, make_event: MakeEvent
) -> None:
    path = tmp_path / "in.jsonl"
    write_lines(path, [make_event("a", aggregate_id=i) for i in range(3)])
    calls = Calls()
    d1 = Dispatcher(q)
    d1.add_handler("*", calls)
    await run(d1, jsonl_source(path))

    d2 = Dispatcher(q)
    d2.add_handler("*", calls)
    async with asyncio.timeout(DEADLINE_S):
        await d2.run(jsonl_source(path), resume=False)

    assert len(calls.events) == 3
    assert q.metrics.outcomes["duplicate"] == 3


# --- priorities and batching ----------------------------------------------------------------------


async def test_critical_events_overtake_a_backlog_of_normal_ones(
    q: EventQueue, make_event: MakeEvent
) -> None:
    await q.put_many([make_event(f"normal_{i}") for i in range(20)])  # 20 keys: 20 batches
    gate = asyncio.Event()
    calls = Calls()

    async def handle(events: list[Event]) -> None:
        await calls(events)
        if len(calls.batches) == 1:
            await gate.wait()  # the first NORMAL batch holds the only consumer

    dispatcher = Dispatcher(q, concurrency=1)
    dispatcher.add_handler("*", handle)
    running = asyncio.create_task(run(dispatcher))
    await calls.reached(1)
    await q.put_many([make_event("payment_failed", aggregate_id=i) for i in range(3)])
    gate.set()
    await running

    priorities = [batch[0].priority for batch in calls.batches]
    assert priorities[0] == Priority.NORMAL
    assert priorities[1] == Priority.CRITICAL
    assert len(calls.batches[1]) == 3
    assert priorities[2:] == [Priority.NORMAL] * 19


async def test_a_burst_of_one_key_is_delivered_in_batches_of_max_batch_size(
    open_queue: Any, make_event: MakeEvent
) -> None:
    # The fake clock never moves: the batch window never closes, only full batches are ready.
    q = await open_queue(max_batch_size=5)
    calls = Calls()
    dispatcher = Dispatcher(q, concurrency=3)
    dispatcher.add_handler("*", calls)

    await run(dispatcher, from_list(make_event("burst", aggregate_id=i) for i in range(15)))

    assert [len(batch) for batch in calls.batches] == [5, 5, 5]
    assert {e.batch_key for e in calls.events} == {"burst-handler"}
    assert q.metrics.as_dict()["avg_batch_size"] == 5


# --- handler outcomes -----------------------------------------------------------------------------


async def test_a_failing_handler_is_retried_then_dead_lettered(
    q: EventQueue, make_event: MakeEvent, query: Any
) -> None:
    calls = Calls(fail=lambda events: RuntimeError("downstream is down"))
    dispatcher = Dispatcher(q)
    dispatcher.add_handler("*", calls)

    await run(dispatcher, from_list([make_event("a")]))

    assert [e.attempts for e in calls.events] == [1, 2, 3]
    assert query("SELECT status, attempts, last_error FROM events") == [
        ("dead", 3, "RuntimeError: downstream is down")
    ]
    assert (q.metrics.outcomes["retried"], q.metrics.outcomes["dead"]) == (2, 1)


async def test_a_handler_that_fails_once_is_retried_and_done(
    q: EventQueue, make_event: MakeEvent, query: Any
) -> None:
    calls = Calls(fail=lambda events: ValueError("flaky") if events[0].attempts == 1 else None)
    dispatcher = Dispatcher(q)
    dispatcher.add_handler("*", calls)

    await run(dispatcher, from_list([make_event("a")]))

    assert query("SELECT status, attempts, last_error FROM events") == [("done", 2, None)]


async def test_per_event_handlers_get_one_event_and_fail_alone(
    q: EventQueue, make_event: MakeEvent, query: Any
) -> None:
    seen: list[Any] = []

    async def handle(event: Event) -> None:
        seen.append(event)
        if event.payload["aggregate_id"] == 2 and event.attempts == 1:
            raise RuntimeError("only this one")

    dispatcher = Dispatcher(q)
    dispatcher.add_handler("a", handle, per_event=True)
    await run(dispatcher, from_list([make_event("a", aggregate_id=i) for i in range(1, 4)]))

    assert all(isinstance(e, Event) for e in seen)
    assert len(seen) == 4
    rows = query("SELECT json_extract(payload, '$.aggregate_id'), status, attempts FROM events")
    assert sorted(rows) == [(1, "done", 1), (2, "done", 2), (3, "done", 1)]


async def test_partial_failure_acks_the_rest_and_retries_or_buries_the_named_events(
    open_queue: Any, make_event: MakeEvent, query: Any
) -> None:
    q = await open_queue(batch_window_ms=0, max_attempts=1)
    calls = Calls(fail=lambda events: PartialFailure({events[1].id: "card declined"}))
    dispatcher = Dispatcher(q)
    dispatcher.add_handler("*", calls)

    await run(dispatcher, from_list([make_event("pay", aggregate_id=i) for i in range(3)]))

    assert len(calls.batches) == 1
    failed = calls.batches[0][1].id
    rows = query("SELECT id, status, last_error FROM events ORDER BY id")
    assert [(status, error) for i, status, error in rows if i == failed] == [
        ("dead", "card declined")
    ]
    assert [status for i, status, _ in rows if i != failed] == ["done", "done"]
    assert (q.metrics.outcomes["handled"], q.metrics.outcomes["dead"]) == (2, 1)


async def test_partial_failure_retries_only_the_named_events(
    q: EventQueue, make_event: MakeEvent, query: Any
) -> None:
    def fail(events: list[Event]) -> Exception | None:
        return PartialFailure({events[0].id: "later"}) if len(events) == 3 else None

    calls = Calls(fail=fail)
    dispatcher = Dispatcher(q)
    dispatcher.add_handler("*", calls)
    await run(dispatcher, from_list([make_event("pay", aggregate_id=i) for i in range(3)]))

    assert [len(batch) for batch in calls.batches] == [3, 1]
    assert sorted(a for (a,) in query("SELECT attempts FROM events")) == [1, 1, 2]
    assert query("SELECT DISTINCT status FROM events") == [("done",)]


async def test_a_handler_timeout_is_a_nack(
    q: EventQueue, make_event: MakeEvent, query: Any
) -> None:
    never = asyncio.Event()

    async def slow_first(events: list[Event]) -> None:
        if events[0].attempts == 1:
            await never.wait()

    dispatcher = Dispatcher(q, handler_timeout_s=0.05)
    dispatcher.add_handler("*", slow_first)
    await run(dispatcher, from_list([make_event("a")]))

    assert query("SELECT status, attempts FROM events") == [("done", 2)]
    assert q.metrics.outcomes["retried"] == 1


async def test_a_timeout_names_the_deadline_but_a_handler_s_own_timeout_error_does_not(
    open_queue: Any, make_event: MakeEvent, query: Any
) -> None:
    q = await open_queue(batch_window_ms=0, max_attempts=1)
    never = asyncio.Event()

    async def stuck(events: list[Event]) -> None:
        await never.wait()

    async def own_timeout(events: list[Event]) -> None:
        raise TimeoutError("the API timed out")

    dispatcher = Dispatcher(q)
    dispatcher.add_handler("stuck", stuck, timeout_s=0.05)
    dispatcher.add_handler("own", own_timeout)
    await run(dispatcher, from_list([make_event("stuck"), make_event("own")]))

    rows = dict(query("SELECT json_extract(payload, '$.event_name'), last_error FROM events"))
    assert rows == {
        "stuck": "handler timed out after 0.05 s",
        "own": "TimeoutError: the API timed out",
    }


async def test_an_event_without_a_handler_is_dead_lettered_with_the_reason(
    q: EventQueue, make_event: MakeEvent, query: Any
) -> None:
    dispatcher = Dispatcher(q)
    dispatcher.add_handler("other", Calls())
    await run(dispatcher, from_list([make_event("nobody")]))

    assert query("SELECT status, attempts, last_error FROM events") == [
        ("dead", 3, "no handler registered for event_name 'nobody'")
    ]


def test_handlers_must_be_async(q: EventQueue) -> None:
    def not_async(events: list[Event]) -> None: ...

    with pytest.raises(TypeError, match="async def"):
        Dispatcher(q).add_handler("a", not_async)


# --- leases -------------------------------------------------------------------------------------


async def test_a_long_handler_has_its_lease_renewed(
    open_queue: Any, clock: Any, make_event: MakeEvent, query: Any, monkeypatch: Any
) -> None:
    q = await open_queue(batch_window_ms=0, lease_s=0.3)
    renewed = asyncio.Event()
    extend = q.extend

    async def extend_and_tell(batch: Any, seconds: float | None = None) -> None:
        await extend(batch, seconds)
        renewed.set()

    monkeypatch.setattr(q, "extend", extend_and_tell)
    thief_got: list[Any] = []

    async def long_handler(events: list[Event]) -> None:
        clock.advance(3600)  # the lease as claimed has long expired ...
        await renewed.wait()  # ... until the dispatcher renews it
        thief_got.append(await q.claim("thief"))

    dispatcher = Dispatcher(q, concurrency=1)  # no idle consumer to take the expired lease
    dispatcher.add_handler("*", long_handler)
    await run(dispatcher, from_list([make_event("a")]))

    assert thief_got == [None]
    assert query("SELECT status, attempts FROM events") == [("done", 1)]


async def test_a_batch_whose_lease_was_taken_over_is_not_acked_by_the_stale_consumer(
    q: EventQueue, clock: Any, make_event: MakeEvent, query: Any, monkeypatch: Any
) -> None:
    async def lose_the_lease(events: list[Event]) -> None:
        clock.advance(q.config.lease_s + 1)
        stolen = await q.claim("thief")
        assert stolen is not None and stolen.ids == [e.id for e in events]
        await q.nack(stolen, "thief gave up", retry_in=3600)

    tried_alone = asyncio.Event()
    ack = q.ack

    async def ack_and_tell(batch: Any, ids: Any = None) -> None:
        try:
            await ack(batch, ids)
        finally:
            tried_alone.set()

    # The folded ack (in the next claim) is refused; the dispatcher then acks alone to see why.
    monkeypatch.setattr(q, "ack", ack_and_tell)
    dispatcher = Dispatcher(q)
    dispatcher.add_handler("*", lose_the_lease)
    running = asyncio.create_task(run(dispatcher, from_list([make_event("a")])))
    async with asyncio.timeout(DEADLINE_S):
        await tried_alone.wait()
    dispatcher.stop()
    await running

    # The dispatcher's ack was refused: the thief's nack stands.
    assert query("SELECT status, attempts, last_error FROM events") == [
        ("pending", 2, "thief gave up")
    ]
    assert (q.metrics.outcomes["lease_lost"], q.metrics.outcomes["handled"]) == (1, 0)


# --- shutdown -----------------------------------------------------------------------------------


async def test_stop_releases_in_flight_batches_and_a_new_run_finishes_them(
    q: EventQueue, make_event: MakeEvent, query: Any
) -> None:
    await q.put_many([make_event(name, aggregate_id=i) for name in "ab" for i in range(2)])
    never = asyncio.Event()
    cancelled = 0
    calls = Calls()

    async def blocked(events: list[Event]) -> None:
        nonlocal cancelled
        await calls(events)
        try:
            await never.wait()
        except asyncio.CancelledError:
            cancelled += 1
            raise

    dispatcher = Dispatcher(q, concurrency=2, shutdown_grace_s=0)
    dispatcher.add_handler("*", blocked)
    running = asyncio.create_task(run(dispatcher))
    await calls.reached(2)  # both batches in flight
    dispatcher.stop()
    await running

    assert cancelled == 2
    assert (
        query(
            "SELECT status, lease_owner, lease_token, lease_expires_at, batch_id, attempts FROM events"
        )
        == [("pending", None, None, None, None, 1)] * 4
    )
    assert q.metrics.outcomes["released"] == 4

    again = Calls()
    second = Dispatcher(q)
    second.add_handler("*", again)
    await run(second)
    assert len(again.events) == 4
    assert query("SELECT DISTINCT status, attempts FROM events") == [("done", 2)]


async def test_stop_lets_in_flight_batches_finish_and_claims_nothing_new(
    q: EventQueue, make_event: MakeEvent, query: Any
) -> None:
    await q.put_many([make_event("a"), make_event("b")])  # two keys: two batches
    gate = asyncio.Event()
    calls = Calls()

    async def gated(events: list[Event]) -> None:
        await calls(events)
        await gate.wait()

    dispatcher = Dispatcher(q, concurrency=1, shutdown_grace_s=DEADLINE_S)
    dispatcher.add_handler("*", gated)
    running = asyncio.create_task(run(dispatcher))
    await calls.reached(1)
    dispatcher.stop()
    gate.set()
    await running

    rows = query("SELECT json_extract(payload, '$.event_name'), status, attempts FROM events")
    first = calls.batches[0][0].name
    assert sorted(rows) == sorted(
        [(first, "done", 1), ({"a", "b"}.difference(first).pop(), "pending", 0)]
    )


async def test_force_stop_cancels_handlers_at_once_and_releases_their_batches(
    q: EventQueue, make_event: MakeEvent, query: Any
) -> None:
    await q.put(make_event("a"))
    never = asyncio.Event()
    calls = Calls()

    async def blocked(events: list[Event]) -> None:
        await calls(events)
        await never.wait()

    dispatcher = Dispatcher(q, shutdown_grace_s=3600)
    dispatcher.add_handler("*", blocked)
    running = asyncio.create_task(run(dispatcher))
    await calls.reached(1)
    dispatcher.stop()
    dispatcher.force_stop()
    await running  # well within DEADLINE_S, not after the hour of grace

    assert query("SELECT status, lease_token FROM events") == [("pending", None)]


async def test_stop_stores_what_was_read_before_returning(
    q: EventQueue, make_event: MakeEvent, query: Any
) -> None:
    read_all = asyncio.Event()

    async def endless() -> AsyncIterator[dict[str, Any]]:
        for i in range(50):
            yield make_event("a", aggregate_id=i)
        read_all.set()
        await asyncio.Event().wait()  # a stream that goes quiet

    dispatcher = Dispatcher(q)
    dispatcher.add_handler("*", Calls())
    running = asyncio.create_task(run(dispatcher, endless()))
    async with asyncio.timeout(DEADLINE_S):
        await read_all.wait()
    dispatcher.stop()
    await running

    assert query("SELECT count(*) FROM events") == [(50,)]


# --- bad input ----------------------------------------------------------------------------------


async def test_an_event_the_queue_rejects_is_counted_and_skipped(
    q: EventQueue, make_event: MakeEvent, query: Any
) -> None:
    bad = make_event("a", aggregate_id=2, attributes={"x": float("nan")})
    calls = Calls()
    dispatcher = Dispatcher(q)
    dispatcher.add_handler("*", calls)

    await run(dispatcher, from_list([make_event("a", aggregate_id=1), bad, make_event("a", 3)]))

    assert sorted(e.payload["aggregate_id"] for e in calls.events) == [1, 3]
    assert q.metrics.outcomes["invalid"] == 1


async def test_an_event_the_queue_rejects_stops_the_run_with_on_invalid_stop(
    q: EventQueue, tmp_path: Path, make_event: MakeEvent, query: Any
) -> None:
    path = tmp_path / "in.jsonl"
    nan_line = json.dumps(make_event("a", aggregate_id=2)).replace(
        '"attributes": {}', '"attributes": {"x": 1e999}'
    )
    write_lines(path, [make_event("a", aggregate_id=1), nan_line, make_event("a", aggregate_id=3)])
    dispatcher = Dispatcher(q, on_invalid="stop")
    dispatcher.add_handler("*", Calls())

    with pytest.raises(InvalidEventError, match="position 2"):
        await run(dispatcher, jsonl_source(path))

    assert query("SELECT json_extract(payload, '$.aggregate_id') FROM events") == [(1,)]
    assert await q.source_position(f"jsonl:{path}") == "1"


async def test_a_bad_line_with_on_error_stop_ends_the_run_after_storing_the_lines_before(
    q: EventQueue, tmp_path: Path, make_event: MakeEvent, query: Any
) -> None:
    path = tmp_path / "in.jsonl"
    write_lines(path, [make_event("a", aggregate_id=1), make_event("a", aggregate_id=2), "{oops"])
    dispatcher = Dispatcher(q)
    dispatcher.add_handler("*", Calls())

    with pytest.raises(InvalidEventError, match="line 3"):
        await run(dispatcher, jsonl_source(path, on_error="stop"))

    assert query("SELECT count(*) FROM events") == [(2,)]
    assert await q.source_position(f"jsonl:{path}") == "2"


async def test_a_stop_before_the_run_starts_ends_it_at_once(
    q: EventQueue, make_event: MakeEvent, query: Any
) -> None:
    dispatcher = Dispatcher(q)
    dispatcher.add_handler("*", Calls())
    dispatcher.stop()

    await run(dispatcher, from_list([make_event("a")]))

    assert query("SELECT count(*) FROM events") == [(0,)]


async def test_one_claim_serves_every_consumer_that_finished_at_the_same_moment(
    q: EventQueue, make_event: MakeEvent
) -> None:
    # Fast handlers finish within a few loop passes of each other: the claim pool lets them
    # all come back before it claims, so one transaction leases a batch for each of them
    # (and carries all their acks) instead of one claim per consumer.
    await q.put_many([make_event(f"kind{i}", aggregate_id=i) for i in range(40)])
    asked: list[int] = []
    claim_batches = q.claim_batches

    async def spy(consumer: str = "consumer", max_batches: int = 1, **kw: Any) -> list[Any]:
        found = await claim_batches(consumer, max_batches, **kw)
        if found:
            asked.append(max_batches)
        return found

    q.claim_batches = spy  # type: ignore[method-assign]
    dispatcher = Dispatcher(q, concurrency=4)
    handled = 0

    async def handler(events: list[Event]) -> None:
        nonlocal handled
        handled += len(events)
        if handled == 40:
            dispatcher.stop()
        for _ in range(handled % 4):  # a few loop passes apart, not all in the same one
            await asyncio.sleep(0)

    dispatcher.add_handler("*", handler)
    await run(dispatcher)

    assert handled == 40
    assert asked[1:-1] and all(n == 4 for n in asked[1:-1]), asked  # the first and last: fewer


async def test_a_handler_that_finishes_within_a_third_of_its_lease_costs_no_renewal_task(
    q: EventQueue, make_event: MakeEvent
) -> None:
    # The renewal is a timer until its first extend is due: no task per batch on the hot path.
    running: list[set[str]] = []
    dispatcher = Dispatcher(q, concurrency=1)

    async def handler(events: list[Event]) -> None:
        running.append({t.get_coro().__qualname__ for t in asyncio.all_tasks()})  # type: ignore[union-attr]
        dispatcher.stop()

    dispatcher.add_handler("*", handler)
    await run(dispatcher, from_list([make_event("a")]))

    assert running and "HandlerRunner._renew" not in running[0], sorted(running[0])
