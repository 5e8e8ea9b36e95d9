"""purge_done: only done events finished before the cutoff, at most `limit` per call, and
never one whose dedup window is still open (the clock is the `now` each call is given)."""

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
from eventqueue.core.models import PutStatus
from eventqueue.core.rules import dedup_since
from eventqueue.store.base import Store

RULES = claim_rules(window_s=0.0, max_batch=10)
TTL_S = 300.0


async def purge(
    store: Store, *, cutoff: float, now: float, ttl_s: float | None = None, limit: int = 100
) -> int:
    """One purge_done call at `now`, keeping what a dedup window of `ttl_s` needs (None: off)."""
    since = dedup_since(now, ttl_s)
    return await store.purge_done(cutoff=cutoff, dedup_since=since, now=now, limit=limit)


async def kept(store: Store, *, cutoff: float, now: float, ttl_s: float = TTL_S) -> int:
    since = dedup_since(now, ttl_s)
    return await store.count_kept_for_dedup(cutoff=cutoff, dedup_since=since, now=now)


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

    removed = await purge(store, cutoff=START + 10, now=START + 50)

    assert removed == 1
    assert [await store.show(i) is None for i in [*old, *young, waiting]] == [True, False, False]


async def test_purge_keeps_an_event_finished_exactly_at_the_cutoff(store: Store) -> None:
    await put(store, [make_event()])
    (done,) = await finish(store, START, token="t1")

    assert await purge(store, cutoff=START, now=START) == 0
    assert await store.show(done) is not None


async def test_purge_never_removes_pending_claimed_or_dead_events(store: Store) -> None:
    dead_id, claimed_id, pending_id = await put(
        store, [make_event("a"), make_event("b", at=START + 1), make_event("c", at=START + 2)]
    )
    dying = await claim_one(store, rules=RULES, now=START + 2, token="t1")
    await store.nack(dying.token, {}, dying.ids, error="boom", now=START + 2)
    await claim(store, now=START + 2, rules=RULES, token="t2")

    assert await purge(store, cutoff=START + 10_000, now=START + 10_000) == 0
    statuses = [await status_of(store, i) for i in (dead_id, claimed_id, pending_id)]
    assert statuses == ["dead", "claimed", "pending"]


async def test_purge_works_in_chunks_of_limit(store: Store) -> None:
    await put(store, many("job", 5))
    ids = await finish(store, START, token="t1")

    removed = [await purge(store, cutoff=START + 1, now=START + 1, limit=2) for _ in range(4)]

    assert removed == [2, 2, 1, 0]
    assert [await store.show(i) for i in ids] == [None] * 5


# --- dedup memory -------------------------------------------------------------------------------


async def test_purge_keeps_done_events_whose_dedup_window_is_open(store: Store) -> None:
    await put(store, [make_event("old")])
    (old,) = await finish(store, START, token="t1")
    await put(store, [make_event("recent", at=START + 200)], now=START + 200)
    (recent,) = await finish(store, START + 200, token="t2")
    now = START + 400  # "old" was received 400 s ago, "recent" 200 s ago; the window is 300 s

    assert await purge(store, cutoff=now, now=now, ttl_s=TTL_S) == 1
    assert await kept(store, cutoff=now, now=now) == 1

    assert await store.show(old) is None
    assert await status_of(store, recent) == "done"
    again = await store.put([make_event("recent", at=now)], now=now, dedup_ttl_s=TTL_S)
    assert [status for status, _ in again.outcome] == [PutStatus.DUPLICATE]
    fresh = await store.put([make_event("old", at=now)], now=now, dedup_ttl_s=TTL_S)
    assert [status for status, _ in fresh.outcome] == [PutStatus.ACCEPTED]


async def test_purge_removes_a_kept_event_once_its_window_has_closed(store: Store) -> None:
    await put(store, [make_event("recent")])
    (recent,) = await finish(store, START, token="t1")

    assert await purge(store, cutoff=START + 10, now=START + 10, ttl_s=TTL_S) == 0
    later = START + TTL_S + 1
    assert await purge(store, cutoff=later, now=later, ttl_s=TTL_S) == 1
    assert await kept(store, cutoff=later, now=later) == 0
    assert await store.show(recent) is None


async def test_purge_keeps_nothing_for_events_put_without_dedup(store: Store) -> None:
    await put(store, [make_event("plain")], dedup_ttl_s=None)
    await finish(store, START, token="t1")

    assert await purge(store, cutoff=START + 10, now=START + 10, ttl_s=TTL_S) == 1
    assert await kept(store, cutoff=START + 10, now=START + 10) == 0


async def test_purge_ends_the_window_of_an_event_received_in_the_future(store: Store) -> None:
    # The wall clock stepped back 1000 s after the event was received: as for a re-put, its
    # window cannot be measured any more and ends rather than lasting 1000 s longer.
    await put(store, [make_event("ahead", at=START + 1000)], now=START + 1000)
    (ahead,) = await finish(store, START + 1000, token="t1")

    assert await purge(store, cutoff=START + 2000, now=START, ttl_s=TTL_S) == 1
    assert await store.show(ahead) is None


async def test_purge_in_chunks_skips_kept_events_without_stopping_early(store: Store) -> None:
    # Five recent events of one batch key between old ones: every chunk is full of purgeable
    # rows until none is left, whatever the kept rows' place in the table.
    await put(store, many("old", 4))
    old = await finish(store, START, token="t1")
    await put(store, many("recent", 5, at=START + 200), now=START + 200)
    await finish(store, START + 200, token="t2")
    now = START + 400

    removed = [await purge(store, cutoff=now, now=now, ttl_s=TTL_S, limit=2) for _ in range(3)]

    assert removed == [2, 2, 0]
    assert [await store.show(i) for i in old] == [None] * 4
    assert await kept(store, cutoff=now, now=now) == 5
