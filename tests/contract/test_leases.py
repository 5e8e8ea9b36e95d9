"""Leases: expiry and re-claim, extend, release, ack, and the fence on every call that settles."""

from __future__ import annotations

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
from eventqueue.core.errors import LeaseLostError
from eventqueue.core.models import Batch
from eventqueue.store.base import Store

RULES = claim_rules(window_s=0.0, lease_s=30.0, max_attempts=5)
EXPIRED = START + 31


async def stale_and_fresh(store: Store) -> tuple[list[int], Batch, Batch]:
    """Three events claimed by worker-1, whose lease expired, then re-claimed by worker-2."""
    ids = await put(store, many("job", 3))
    stale = await claim_one(store, rules=RULES, consumer="worker-1", token="t1")
    fresh = await claim_one(store, now=EXPIRED, rules=RULES, consumer="worker-2", token="t2")
    return ids, stale, fresh


async def test_a_claim_records_the_lease(store: Store) -> None:
    ids = await put(store, many("job", 3))

    batch = await claim_one(store, rules=RULES, consumer="worker-1")

    assert batch.ids == ids
    assert batch.lease_expires_at == START + 30
    for info in await snapshot(store, ids):
        assert info is not None
        assert (info["status"], info["lease_owner"], info["attempts"]) == ("claimed", "worker-1", 1)


async def test_a_leased_batch_is_not_claimed_again_before_it_expires(store: Store) -> None:
    await put(store, many("job", 3))
    await claim_one(store, rules=RULES)

    assert await claim(store, now=START + 29, rules=RULES, token="t2") == []


async def test_an_expired_lease_is_claimed_again_with_one_more_attempt(store: Store) -> None:
    ids, stale, fresh = await stale_and_fresh(store)

    assert fresh.ids == ids
    assert fresh.token != stale.token
    assert fresh.consumer == "worker-2"
    assert [e.attempts for e in fresh.events] == [2, 2, 2]


async def test_an_expired_lease_returns_its_events_to_pending(store: Store) -> None:
    ids = await put(store, many("job", 2))
    await claim_one(store, rules=RULES)
    waiting = claim_rules(window_s=60.0, lease_s=30.0)  # pending again, they are not ready

    assert await claim(store, now=EXPIRED, rules=waiting, token="t2") == []

    assert [await status_of(store, i) for i in ids] == ["pending", "pending"]


async def test_without_expire_an_expired_lease_stays_claimed(store: Store) -> None:
    ids = await put(store, many("job", 2))
    await claim_one(store, rules=RULES)

    assert await claim(store, now=EXPIRED, rules=RULES, token="t2", expire=False) == []
    assert [await status_of(store, i) for i in ids] == ["claimed", "claimed"]


async def test_a_lease_expiring_on_the_last_attempt_makes_the_events_dead(store: Store) -> None:
    rules = claim_rules(window_s=0.0, lease_s=10.0, max_attempts=2)
    (event_id,) = await put(store, [make_event()])
    await claim_one(store, rules=rules, token="t1")
    await claim_one(store, now=START + 11, rules=rules, token="t2")

    assert await claim(store, now=START + 22, rules=rules, token="t3") == []

    info = await store.show(event_id)
    assert info is not None
    assert (info["status"], info["attempts"], info["last_error"]) == ("dead", 2, "lease expired")


@pytest.mark.parametrize("call", ["ack", "nack", "extend", "release"])
async def test_a_stale_token_is_refused_and_changes_nothing(store: Store, call: str) -> None:
    ids, stale, fresh = await stale_and_fresh(store)
    before = await snapshot(store, ids)

    with pytest.raises(LeaseLostError):
        if call == "ack":
            await store.ack(stale.token, stale.ids, now=EXPIRED)
        elif call == "nack":
            retry_at = dict.fromkeys(stale.ids, EXPIRED + 10)
            await store.nack(stale.token, retry_at, [], error="late failure", now=EXPIRED)
        elif call == "extend":
            await store.extend(stale.token, stale.ids, expires_at=EXPIRED + 30)
        else:
            await store.release(stale.token, stale.ids, now=START, max_attempts=5)

    assert await snapshot(store, ids) == before
    assert {info["lease_owner"] for info in before if info} == {"worker-2"}
    await store.ack(fresh.token, fresh.ids, now=EXPIRED)  # the holder still can


async def test_ack_marks_events_done_and_ends_the_lease(store: Store) -> None:
    ids = await put(store, many("job", 3))
    batch = await claim_one(store, rules=RULES)

    await store.ack(batch.token, batch.ids, now=START + 5)

    for info in await snapshot(store, ids):
        assert info is not None
        assert (info["status"], info["lease_owner"], info["lease_expires_at"]) == (
            "done",
            None,
            None,
        )
    assert await claim(store, now=START + 100, rules=RULES, token="t2") == []


async def test_a_second_ack_of_a_batch_is_refused(store: Store) -> None:
    ids = await put(store, many("job", 3))
    batch = await claim_one(store, rules=RULES)
    await store.ack(batch.token, batch.ids, now=START)

    with pytest.raises(LeaseLostError):
        await store.ack(batch.token, batch.ids, now=START + 1)

    assert [await status_of(store, i) for i in ids] == ["done"] * 3


async def test_ack_of_some_events_leaves_the_rest_claimed(store: Store) -> None:
    ids = await put(store, many("job", 3))
    batch = await claim_one(store, rules=RULES)

    await store.ack(batch.token, ids[:2], now=START)

    assert [await status_of(store, i) for i in ids] == ["done", "done", "claimed"]


async def test_ack_of_an_id_outside_the_batch_is_refused_and_changes_nothing(
    store: Store,
) -> None:
    ids = await put(store, many("job", 3))
    batch = await claim_one(store, rules=RULES)
    (other,) = await put(store, [make_event("other")])
    before = await snapshot(store, [*ids, other])

    with pytest.raises(LeaseLostError):
        await store.ack(batch.token, [ids[0], other], now=START)

    assert await snapshot(store, [*ids, other]) == before


async def test_extend_keeps_the_batch_past_its_original_lease(store: Store) -> None:
    await put(store, many("job", 3))
    batch = await claim_one(store, rules=RULES, consumer="worker-1")

    await store.extend(batch.token, batch.ids, expires_at=START + 50)

    assert await claim(store, now=START + 40, rules=RULES, token="t2") == []
    await store.ack(batch.token, batch.ids, now=START + 40)


async def test_an_extended_lease_still_expires_at_its_new_time(store: Store) -> None:
    ids = await put(store, many("job", 3))
    batch = await claim_one(store, rules=RULES)
    await store.extend(batch.token, batch.ids, expires_at=START + 50)

    again = await claim_one(store, now=START + 51, rules=RULES, token="t2")

    assert again.ids == ids


async def test_release_returns_the_events_to_pending_at_once(store: Store) -> None:
    ids = await put(store, many("job", 3))
    batch = await claim_one(store, rules=RULES, consumer="worker-1")

    await store.release(batch.token, batch.ids, now=START, max_attempts=5)

    for info in await snapshot(store, ids):
        assert info is not None
        assert (info["status"], info["lease_owner"], info["lease_token"]) == ("pending", None, None)
    again = await claim_one(store, rules=RULES, consumer="worker-2", token="t2")
    assert again.ids == ids


async def test_a_release_at_the_last_attempt_dead_letters_instead_of_a_claim_past_it(
    store: Store,
) -> None:
    # Issue 19.3: released at attempts == max, the event was claimed again as attempt max + 1.
    rules = claim_rules(window_s=0.0, max_attempts=2)
    (event_id,) = await put(store, [make_event("job")])
    first = await claim_one(store, rules=rules, token="t1")
    await store.release(first.token, first.ids, now=START + 1, max_attempts=2)
    assert await status_of(store, event_id) == "pending"  # attempt 1 of 2: back to pending

    last = await claim_one(store, now=START + 2, rules=rules, token="t2")
    await store.release(last.token, last.ids, now=START + 3, max_attempts=2)

    info = await store.show(event_id)
    assert info is not None
    assert (info["status"], info["attempts"]) == ("dead", 2)
    assert info["last_error"] == "released unhandled at its last attempt"
    assert info["lease_token"] is None and info["finished_at"] is not None
    assert await claim(store, now=START + 4, rules=rules, token="t3") == []


async def test_acks_folded_into_a_claim_are_done_in_the_same_call(store: Store) -> None:
    await put(store, [make_event(name) for name in ("a", "b", "c")])
    first = await claim(store, rules=RULES, batches=2, token="t1")

    second = await claim(
        store, rules=RULES, batches=2, token="t2", acks=[(b.token, b.ids) for b in first]
    )

    assert [await status_of(store, e) for b in first for e in b.ids] == ["done", "done"]
    assert [b.key for b in second] == ["c-handler"]


async def test_a_lost_lease_among_folded_acks_changes_nothing(store: Store) -> None:
    rules = claim_rules(window_s=0.0, lease_s=10.0)
    await put(store, [make_event("a"), make_event("b")])
    mine = await claim(store, rules=rules, batches=2, consumer="w1", token="t1")
    theirs = await claim(store, now=START + 11, rules=rules, batches=2, consumer="w2", token="t2")
    (waiting,) = await put(store, [make_event("c", at=START + 11)], now=START + 11)
    ids = [i for b in theirs for i in b.ids] + [waiting]
    before = await snapshot(store, ids)

    with pytest.raises(LeaseLostError):
        await claim(
            store,
            now=START + 12,
            rules=rules,
            batches=5,
            consumer="w1",
            token="t3",
            acks=[(theirs[0].token, theirs[0].ids), *((b.token, b.ids) for b in mine)],
        )

    assert await snapshot(store, ids) == before
    await claim(
        store, now=START + 12, rules=rules, token="t4", acks=[(b.token, b.ids) for b in theirs]
    )
    assert [await status_of(store, i) for i in ids] == ["done", "done", "claimed"]
