"""The CRITICAL hand-off and claims reserved for CRITICAL work.

A put given a `Lease` leases the CRITICAL events it accepts in its own transaction (one commit
from receipt to a consumer); `claim(min_priority=CRITICAL)` serves a consumer that only takes
CRITICAL work, so it never picks up a slow NORMAL batch.
"""

from __future__ import annotations

import pytest

from contract.conftest import START, claim, claim_rules, make_event, many, put, status_of
from eventqueue.core.errors import LeaseLostError
from eventqueue.core.models import Priority, PutStatus
from eventqueue.core.records import Lease
from eventqueue.store.base import Store

LEASE = Lease(consumer="reserved", token="h1", batch_id="hb", expires_at=START + 30)


async def test_a_put_with_a_lease_hands_its_critical_events_over_already_claimed(
    store: Store,
) -> None:
    rows = [
        make_event("payment_failed", reason="card"),
        make_event("order_created", n=1),
        make_event("sync_error", code=7),
        make_event("payment_failed", reason="limit"),
    ]
    commit = await store.put(rows, now=START, dedup_ttl_s=300.0, lease=LEASE)

    by_key = {b.key: b for b in commit.claimed}
    assert set(by_key) == {"payment_failed-handler", "sync_error-handler"}
    payment = by_key["payment_failed-handler"]
    assert [e.id for e in payment.events] == [commit.outcome[0][1], commit.outcome[3][1]]
    assert payment.token == "h1:payment_failed-handler" and payment.consumer == "reserved"
    assert payment.id == "hb:payment_failed-handler" and payment.lease_expires_at == START + 30
    assert all(e.attempts == 1 and e.priority == Priority.CRITICAL for e in payment.events)
    assert await status_of(store, commit.outcome[1][1]) == "pending"  # NORMAL is not handed over
    assert await status_of(store, commit.outcome[0][1]) == "claimed"


async def test_a_handed_over_batch_is_fenced_like_a_claimed_one(store: Store) -> None:
    commit = await store.put(
        [make_event("payment_failed")], now=START, dedup_ttl_s=300.0, lease=LEASE
    )
    (batch,) = commit.claimed
    with pytest.raises(LeaseLostError):
        await store.ack("someone-else:payment_failed-handler", batch.ids, now=START + 1)
    await store.ack(batch.token, batch.ids, now=START + 1)
    assert await status_of(store, batch.ids[0]) == "done"


async def test_a_duplicate_is_not_handed_over(store: Store) -> None:
    first = await put(store, [make_event("payment_failed", reason="card")])
    commit = await store.put(
        [make_event("payment_failed", reason="card")], now=START + 1, dedup_ttl_s=300.0, lease=LEASE
    )
    assert commit.outcome == [(PutStatus.DUPLICATE, first[0])] and commit.claimed == []
    assert await status_of(store, first[0]) == "pending"


async def test_without_a_lease_nothing_is_claimed(store: Store) -> None:
    commit = await store.put([make_event("payment_failed")], now=START, dedup_ttl_s=300.0)
    assert commit.claimed == []
    assert await status_of(store, commit.outcome[0][1]) == "pending"


async def test_a_claim_for_critical_work_takes_only_critical_events(store: Store) -> None:
    normal = await put(store, many("order_created", 12))  # a full batch, ready now
    critical = await put(store, [make_event("order_created", priority=Priority.CRITICAL, x=1)])
    failed = await put(store, [make_event("payment_failed")])

    batches = await claim(store, batches=5, min_priority=int(Priority.CRITICAL))

    claimed = sorted(e.id for b in batches for e in b.events)
    assert claimed == sorted(critical + failed)
    assert [await status_of(store, i) for i in normal] == ["pending"] * len(normal)
    assert await claim(store, token="t2", batches=5, min_priority=int(Priority.CRITICAL)) == []
    assert len(await claim(store, token="t3", batches=5)) >= 1  # the NORMAL work is still there


async def test_a_hand_off_given_back_is_pending_with_its_attempt_uncounted(store: Store) -> None:
    # Nobody took the hand-off: no handler saw the event, so its first claim is attempt 1.
    commit = await store.put([make_event("sync_error")], now=START, dedup_ttl_s=300.0, lease=LEASE)
    (batch,) = commit.claimed

    await store.give_back(batch.token, batch.ids)

    (again,) = await claim(store, now=START + 1, token="t2")
    assert again.ids == batch.ids and again.events[0].attempts == 1


async def test_a_claim_given_back_at_its_last_attempt_is_not_claimed_past_it(store: Store) -> None:
    # The demo's dead letters with attempts 4 of 3: a retry at its last attempt, claimed and
    # given back (a hand-off won the reserved consumer), was claimed again as attempt 4.
    rules = claim_rules(window_s=0.0, max_attempts=3)
    (event_id,) = await put(store, [make_event("sync_error")])
    for attempt in (1, 2):
        failed = (await claim(store, now=START + attempt, rules=rules, token=f"t{attempt}"))[0]
        await store.nack(failed.token, {event_id: START + attempt}, [], error="x", now=START)
    last = (await claim(store, now=START + 3, rules=rules, token="t3"))[0]
    assert last.events[0].attempts == 3

    await store.give_back(last.token, last.ids)

    (again,) = await claim(store, now=START + 4, rules=rules, token="t4")
    assert again.events[0].attempts == 3


async def test_a_stale_give_back_is_fenced_and_changes_nothing(store: Store) -> None:
    commit = await store.put([make_event("sync_error")], now=START, dedup_ttl_s=300.0, lease=LEASE)
    (batch,) = commit.claimed
    await store.ack(batch.token, batch.ids, now=START + 1)

    with pytest.raises(LeaseLostError):
        await store.give_back(batch.token, batch.ids)
    assert await status_of(store, batch.ids[0]) == "done"
