"""nack: back to pending at its retry time, or dead with the last error; dead letters; requeue."""

from __future__ import annotations

import dataclasses
import math

import pytest

from contract.conftest import (
    START,
    claim,
    claim_one,
    claim_rules,
    make_event,
    many,
    put,
    snapshot,
    status_of,
)
from eventqueue.core.config import Config
from eventqueue.core.errors import InvalidArgumentError, LeaseLostError
from eventqueue.core.models import Batch
from eventqueue.core.rules import retry_plan, rules_from_config
from eventqueue.runtime.queue import EventQueue
from eventqueue.store.base import Store

RULES = claim_rules(window_s=0.0, max_attempts=3)


async def kill(store: Store, batch: Batch, *, now: float, error: str = "boom") -> None:
    """nack every event of `batch` as dead."""
    await store.nack(batch.token, {}, batch.ids, error=error, now=now)


async def test_a_nacked_event_is_pending_again_with_its_error(store: Store) -> None:
    (event_id,) = await put(store, [make_event()])
    batch = await claim_one(store, rules=RULES)

    await store.nack(batch.token, {event_id: START + 10}, [], error="boom", now=START)

    info = await store.show(event_id)
    assert info is not None
    assert (info["status"], info["last_error"], info["lease_owner"]) == ("pending", "boom", None)


async def test_a_nacked_event_is_claimable_only_once_its_retry_time_comes(store: Store) -> None:
    (event_id,) = await put(store, [make_event()])
    batch = await claim_one(store, rules=RULES)
    await store.nack(batch.token, {event_id: START + 10}, [], error="boom", now=START)

    assert await claim(store, now=START + 9.9, rules=RULES, token="t2") == []
    retry = await claim_one(store, now=START + 10, rules=RULES, token="t3")

    assert retry.ids == [event_id]
    assert retry.events[0].attempts == 2


async def test_a_retry_waiting_does_not_hold_back_the_rest_of_its_key(store: Store) -> None:
    first, second = await put(store, many("job", 2))
    batch = await claim_one(store, rules=RULES)
    await store.nack(batch.token, {first: START + 10}, [second], error="boom", now=START)
    (third,) = await put(store, [make_event("job", at=START + 1, i=2)], now=START + 1)

    later = await claim_one(store, now=START + 1, rules=RULES, token="t2")

    assert later.ids == [third]


async def test_nack_with_dead_ids_makes_them_dead_with_the_last_error(store: Store) -> None:
    (event_id,) = await put(store, [make_event()])
    batch = await claim_one(store, rules=RULES)

    await kill(store, batch, now=START + 1, error="handler crashed")

    info = await store.show(event_id)
    assert info is not None
    assert (info["status"], info["attempts"], info["last_error"]) == ("dead", 1, "handler crashed")
    assert info["finished_at"] is not None
    assert await claim(store, now=START + 1000, rules=RULES, token="t2") == []


async def test_nack_of_some_events_leaves_the_others_claimed(store: Store) -> None:
    ids = await put(store, many("job", 3))
    batch = await claim_one(store, rules=RULES)

    await store.nack(batch.token, {ids[1]: START + 10}, [], error="bad one", now=START)

    assert [await status_of(store, i) for i in ids] == ["claimed", "pending", "claimed"]


async def test_nack_of_an_id_outside_the_batch_is_refused_and_changes_nothing(
    store: Store,
) -> None:
    (event_id,) = await put(store, [make_event()])
    batch = await claim_one(store, rules=RULES)
    before = await snapshot(store, [event_id])

    with pytest.raises(LeaseLostError):
        await store.nack(
            batch.token, {event_id: START + 10, 999_999: START}, [], error="boom", now=START
        )

    assert await snapshot(store, [event_id]) == before


@pytest.mark.parametrize("retry_at", [math.inf, math.nan])
async def test_a_non_finite_retry_time_is_refused_and_changes_nothing(
    store: Store, retry_at: float
) -> None:
    (event_id,) = await put(store, [make_event()])
    batch = await claim_one(store, rules=RULES)
    before = await snapshot(store, [event_id])

    with pytest.raises(ValueError, match="finite"):
        await store.nack(batch.token, {event_id: retry_at}, [], error="boom", now=START)

    assert await snapshot(store, [event_id]) == before


async def test_an_ack_after_a_retry_clears_the_last_error(store: Store) -> None:
    (event_id,) = await put(store, [make_event()])
    first = await claim_one(store, rules=RULES)
    await store.nack(first.token, {event_id: START + 1}, [], error="flaky", now=START)
    second = await claim_one(store, now=START + 1, rules=RULES, token="t2")

    await store.ack(second.token, second.ids, now=START + 1)

    info = await store.show(event_id)
    assert info is not None
    assert (info["status"], info["attempts"], info["last_error"]) == ("done", 2, None)


async def test_dead_lists_dead_letters_newest_first_with_their_error(store: Store) -> None:
    (older,) = await put(store, [make_event("order_created")])
    (newer,) = await put(store, [make_event("payment_sent")])
    await put(store, [make_event("still_pending", at=START + 100)], now=START + 100)
    await kill(store, await claim_one(store, rules=RULES, token="t1"), now=START + 1, error="e1")
    await kill(store, await claim_one(store, rules=RULES, token="t2"), now=START + 2, error="e2")

    dead = await store.dead(limit=10)

    assert [(d["id"], d["event_name"], d["last_error"]) for d in dead] == [
        (newer, "payment_sent", "e2"),
        (older, "order_created", "e1"),
    ]
    assert (dead[0]["priority"], dead[0]["attempts"]) == ("NORMAL", 1)
    assert [d["id"] for d in await store.dead(limit=1)] == [newer]


async def test_dead_is_empty_without_dead_letters(store: Store) -> None:
    await put(store, [make_event()])

    assert await store.dead(limit=10) == []


async def test_requeue_returns_dead_events_to_pending_with_fresh_attempts(store: Store) -> None:
    (event_id,) = await put(store, [make_event()])
    await kill(store, await claim_one(store, rules=RULES), now=START + 1)

    result = await store.requeue([event_id], now=START + 2)

    assert result == {"requeued": 1, "refused": []}
    again = await claim_one(store, now=START + 2, rules=RULES, token="t2")
    assert again.ids == [event_id]
    assert again.events[0].attempts == 1
    assert await store.dead(limit=10) == []


async def test_requeue_refuses_ids_that_are_not_dead_and_changes_nothing(store: Store) -> None:
    dead_id, pending_id = await put(store, [make_event("a"), make_event("b", at=START + 50)])
    await kill(store, await claim_one(store, rules=RULES), now=START + 1)
    before = await snapshot(store, [dead_id, pending_id])

    result = await store.requeue([dead_id, pending_id, 999_999], now=START + 2)

    assert result == {
        "requeued": 0,
        "refused": [
            {"id": pending_id, "status": "pending"},
            {"id": 999_999, "status": "missing"},
        ],
    }
    assert await snapshot(store, [dead_id, pending_id]) == before


async def test_requeue_of_all_returns_every_dead_event(store: Store) -> None:
    ids = await put(store, [make_event(name) for name in ("a", "b", "c")])
    batches = await claim(store, rules=RULES, batches=2)
    for batch in batches:
        await kill(store, batch, now=START + 1)

    result = await store.requeue(None, now=START + 2)

    assert result == {"requeued": 2, "refused": []}
    assert [await status_of(store, i) for i in ids] == ["pending"] * 3


async def test_retry_plan_backs_off_then_dead_letters_on_the_last_attempt(store: Store) -> None:
    config = Config(max_attempts=3, backoff_base_s=10.0, backoff_max_s=1000.0)
    rules = dataclasses.replace(rules_from_config(config), window_s=0.0)
    (event_id,) = await put(store, [make_event()])
    now, delays = START, []
    for attempt in (1, 2, 3):
        batch = await claim_one(store, now=now, rules=rules, token=f"t{attempt}")
        plan = retry_plan(config, batch, batch.ids, now=now, retry_in=None)
        await store.nack(batch.token, plan.retry_at, plan.dead, error=f"e{attempt}", now=now)
        if plan.retry_at:
            delays.append(plan.retry_at[event_id] - now)
            now = plan.retry_at[event_id]

    assert 7.5 <= delays[0] <= 12.5 and 15 <= delays[1] <= 25  # doubling, with jitter
    assert [d["id"] for d in await store.dead(limit=10)] == [event_id]
    info = await store.show(event_id)
    assert info is not None
    assert (info["status"], info["attempts"], info["last_error"]) == ("dead", 3, "e3")


# --- dead-lettering at once: nack(..., dead=True) (issue 18.4) --------------------------------


def job(n: int) -> dict[str, object]:
    return {"event_type": "t", "event_name": "job", "aggregate_id": "a", "attributes": {"n": n}}


async def test_nack_dead_dead_letters_at_the_first_attempt(queue: EventQueue) -> None:
    (result,) = await queue.put_many([job(1)])
    batch = await queue.claim("c")
    assert batch is not None and batch.events[0].attempts == 1

    await queue.nack(batch, error="unknown customer", dead=True)

    info = await queue.store.show(result.id or 0)
    assert info is not None
    assert (info["status"], info["attempts"], info["last_error"]) == (
        "dead",
        1,
        "unknown customer",
    )
    assert await queue.claim("c") is None
    assert (await queue.stats()).count("dead") == 1


async def test_nack_dead_with_ids_dead_letters_only_those(queue: EventQueue) -> None:
    first, second = await queue.put_many([job(1), job(2)])
    batch = await queue.claim("c")
    assert batch is not None and batch.ids == [first.id, second.id]

    await queue.nack(batch, error="malformed", ids=[second.id or 0], dead=True)

    assert await status_of(queue.store, second.id or 0) == "dead"
    assert await status_of(queue.store, first.id or 0) == "claimed"
    await queue.ack(batch, ids=[first.id or 0])  # the rest of the batch is still ours
    assert await status_of(queue.store, first.id or 0) == "done"


async def test_nack_dead_with_a_retry_delay_is_refused_and_changes_nothing(
    queue: EventQueue,
) -> None:
    (result,) = await queue.put_many([job(1)])
    batch = await queue.claim("c")
    assert batch is not None
    before = await snapshot(queue.store, batch.ids)

    with pytest.raises(InvalidArgumentError, match="retry_in or dead"):
        await queue.nack(batch, error="x", retry_in=5, dead=True)

    assert await snapshot(queue.store, batch.ids) == before
    await queue.ack(batch)
    assert await status_of(queue.store, result.id or 0) == "done"
