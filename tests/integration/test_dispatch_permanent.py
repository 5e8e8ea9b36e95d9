"""A handler can say "this will never succeed": PermanentFailure, or PartialFailure's
`permanent=`, and the Dispatcher dead-letters those events at once instead of retrying them
(issue 18.4). Retries are immediate (backoff_base_s=0) and max_attempts is 3."""

from __future__ import annotations

from typing import Any

import pytest
from test_dispatch import Calls, MakeEvent, from_list, q, run

from eventqueue import (
    Dispatcher,
    EventQueue,
    InvalidArgumentError,
    PartialFailure,
    PermanentFailure,
)
from eventqueue.core.models import Event

__all__ = ["q"]  # the fixture, shared with test_dispatch


async def test_a_permanent_failure_dead_letters_the_batch_at_its_first_attempt(
    q: EventQueue, make_event: MakeEvent, query: Any
) -> None:
    calls = Calls(fail=lambda events: PermanentFailure("unknown customer"))
    dispatcher = Dispatcher(q)
    dispatcher.add_handler("*", calls)

    await run(dispatcher, from_list([make_event("pay", aggregate_id=i) for i in range(3)]))

    assert len(calls.events) == 3  # one delivery each: no retry
    rows = query("SELECT status, attempts, last_error FROM events")
    assert rows == [("dead", 1, "PermanentFailure: unknown customer")] * 3
    assert (q.metrics.outcomes["dead"], q.metrics.outcomes["retried"]) == (3, 0)


async def test_a_per_event_handler_dead_letters_only_the_event_it_gave_up_on(
    q: EventQueue, make_event: MakeEvent, query: Any
) -> None:
    async def handle(event: Event) -> None:
        if event.payload["aggregate_id"] == 1:
            raise PermanentFailure("malformed")

    dispatcher = Dispatcher(q)
    dispatcher.add_handler("*", handle, per_event=True)

    await run(dispatcher, from_list([make_event("pay", aggregate_id=i) for i in range(3)]))

    rows = query(
        "SELECT json_extract(payload, '$.aggregate_id'), status, attempts FROM events ORDER BY 1"
    )
    assert rows == [(0, "done", 1), (1, "dead", 1), (2, "done", 1)]


async def test_partial_failure_dead_letters_its_permanent_ids_and_retries_the_others(
    q: EventQueue, make_event: MakeEvent, query: Any
) -> None:
    def fail(events: list[Event]) -> Exception | None:
        if len(events) != 3:
            return None  # the retry of the transient one succeeds
        return PartialFailure(
            {events[0].id: "timeout", events[1].id: "no such account"},
            permanent=[events[1].id],
        )

    calls = Calls(fail=fail)
    dispatcher = Dispatcher(q)
    dispatcher.add_handler("*", calls)

    await run(dispatcher, from_list([make_event("pay", aggregate_id=i) for i in range(3)]))

    assert [len(batch) for batch in calls.batches] == [3, 1]
    rows = query(
        "SELECT json_extract(payload, '$.aggregate_id'), status, attempts, last_error"
        " FROM events ORDER BY 1"
    )
    assert rows == [
        (0, "done", 2, None),
        (1, "dead", 1, "no such account"),
        (2, "done", 1, None),
    ]
    assert (q.metrics.outcomes["dead"], q.metrics.outcomes["retried"]) == (1, 1)


def test_partial_failure_refuses_permanent_ids_that_did_not_fail() -> None:
    with pytest.raises(InvalidArgumentError, match=r"not failed: \[7\]"):
        PartialFailure({5: "x"}, permanent={5, 7})
    assert PartialFailure({5: "x"}).permanent == frozenset()  # the old form still works
