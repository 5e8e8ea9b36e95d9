"""purge_done: only done events finished before the cutoff, at most `limit` per call."""

from __future__ import annotations

from contract.conftest import (
    START,
    claim,
    claim_one,
    claim_rules,
    make_event,
    many,
    put,
    status_of,
)
from eventqueue.store.base import Store

RULES = claim_rules(window_s=0.0, max_batch=10)


async def finish(store: Store, at: float, *, token: str) -> list[int]:
    """Claim the next batch and ack it at `at`; its ids."""
    batch = await claim_one(store, now=at, rules=RULES, token=token)
    await store.ack(batch.token, batch.ids, now=at)
    return batch.ids


async def test_purge_removes_only_done_events_finished_before_the_cutoff(store: Store) -> None:
    await put(store, [make_event("old")])
    old = await finish(store, START, token="t1")
    await put(store, [make_event("young", at=START + 50)], now=START + 50)
    young = await finish(store, START + 50, token="t2")
    (waiting,) = await put(store, [make_event("waiting", at=START + 50)], now=START + 50)

    removed = await store.purge_done(cutoff=START + 10, limit=100)

    assert removed == 1
    assert [await store.show(i) is None for i in [*old, *young, waiting]] == [True, False, False]


async def test_purge_keeps_an_event_finished_exactly_at_the_cutoff(store: Store) -> None:
    await put(store, [make_event()])
    (done,) = await finish(store, START, token="t1")

    assert await store.purge_done(cutoff=START, limit=100) == 0
    assert await store.show(done) is not None


async def test_purge_never_removes_pending_claimed_or_dead_events(store: Store) -> None:
    dead_id, claimed_id, pending_id = await put(
        store, [make_event("a"), make_event("b", at=START + 1), make_event("c", at=START + 2)]
    )
    dying = await claim_one(store, rules=RULES, now=START + 2, token="t1")
    await store.nack(dying.token, {}, dying.ids, error="boom", now=START + 2)
    await claim(store, now=START + 2, rules=RULES, token="t2")

    assert await store.purge_done(cutoff=START + 10_000, limit=100) == 0
    statuses = [await status_of(store, i) for i in (dead_id, claimed_id, pending_id)]
    assert statuses == ["dead", "claimed", "pending"]


async def test_purge_works_in_chunks_of_limit(store: Store) -> None:
    await put(store, many("job", 5))
    ids = await finish(store, START, token="t1")

    removed = [await store.purge_done(cutoff=START + 1, limit=2) for _ in range(4)]

    assert removed == [2, 2, 1, 0]
    assert [await store.show(i) for i in ids] == [None] * 5
