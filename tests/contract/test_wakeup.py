"""next_wakeup: when work not ready now may become ready."""

from __future__ import annotations

from contract.conftest import START, claim_one, claim_rules, make_event, many, put
from eventqueue.core.records import Wakeup
from eventqueue.store.base import Store

RULES = claim_rules(window_s=0.0, lease_s=30.0)


async def test_an_empty_store_has_nothing_to_wake_for(store: Store) -> None:
    assert await store.next_wakeup(START) == Wakeup(None, None, None)


async def test_the_oldest_pending_event_is_reported(store: Store) -> None:
    await put(store, [make_event("b", at=START + 5)], now=START + 5)
    await put(store, [make_event("a", at=START + 2)], now=START + 5)

    wakeup = await store.next_wakeup(START + 5)

    assert wakeup == Wakeup(START + 2, None, None)


async def test_the_earliest_lease_expiry_is_reported(store: Store) -> None:
    await put(store, [make_event("a"), make_event("b")])
    await claim_one(store, rules=RULES, token="t1")
    await claim_one(store, now=START + 4, rules=RULES, token="t2")

    wakeup = await store.next_wakeup(START + 4)

    assert wakeup == Wakeup(None, None, START + 30)


async def test_the_next_retry_is_reported_and_not_as_pending_work(store: Store) -> None:
    first, second = await put(store, many("job", 2))
    batch = await claim_one(store, rules=RULES)
    await store.nack(batch.token, {first: START + 20, second: START + 10}, [], error="x", now=START)

    wakeup = await store.next_wakeup(START + 1)

    assert wakeup == Wakeup(None, START + 10, None)


async def test_a_retry_whose_time_came_is_pending_work_again(store: Store) -> None:
    (event_id,) = await put(store, [make_event()])
    batch = await claim_one(store, rules=RULES)
    await store.nack(batch.token, {event_id: START + 10}, [], error="x", now=START)

    wakeup = await store.next_wakeup(START + 10)

    assert wakeup == Wakeup(START, None, None)


async def test_the_oldest_pending_high_event_is_reported_for_its_shorter_window(
    store: Store,
) -> None:
    await put(store, [make_event("job", at=START + 1)], now=START + 1)
    await put(store, [make_event("sync", at=START + 3, priority="HIGH")], now=START + 3)

    wakeup = await store.next_wakeup(START + 3)

    assert wakeup == Wakeup(START + 1, None, None, oldest_high_pending_at=START + 3)
