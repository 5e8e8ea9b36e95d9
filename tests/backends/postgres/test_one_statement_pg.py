"""The transactions PostgreSQL runs as one statement, without BEGIN and COMMIT round trips: an
ack, an extend, a claim without expiry, and a claim with folded acks. Each stays all or
nothing, as the contract suite checks for the transaction forms (which run with `expire`)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from contract.conftest import (
    START,
    claim,
    claim_rules,
    make_event,
    many,
    put,
    snapshot,
    status_of,
)

from eventqueue.core.config import Config
from eventqueue.core.errors import LeaseLostError
from eventqueue.store import open_store
from eventqueue.store.postgres.store import PostgresStore

RULES = claim_rules(window_s=0.0, lease_s=10.0)


@pytest.fixture
async def store(pg_db: str) -> AsyncIterator[PostgresStore]:
    opened = await open_store(Config(db_path=pg_db, queue_size=5))
    assert isinstance(opened, PostgresStore)
    try:
        yield opened
    finally:
        await opened.close()


async def test_a_lost_lease_among_folded_acks_leases_nothing_and_acks_nothing(
    store: PostgresStore,
) -> None:
    await put(store, [make_event("a"), make_event("b")])
    mine = await claim(store, rules=RULES, batches=2, consumer="w1", token="t1", expire=False)
    # Expired, then claimed by another (with expiry: the transaction form).
    theirs = await claim(store, now=START + 11, rules=RULES, batches=2, token="t2")
    (waiting,) = await put(store, [make_event("c", at=START + 11)], now=START + 11)
    ids = [i for b in theirs for i in b.ids] + [waiting]
    before = await snapshot(store, ids)

    with pytest.raises(LeaseLostError, match="2 of 3 events"):
        await claim(
            store,
            now=START + 12,
            rules=RULES,
            batches=5,
            token="t3",
            expire=False,
            acks=[(theirs[0].token, theirs[0].ids), *((b.token, b.ids) for b in mine)],
        )

    assert await snapshot(store, ids) == before
    found = await claim(
        store,
        now=START + 12,
        rules=RULES,
        token="t4",
        expire=False,
        acks=[(b.token, b.ids) for b in theirs],
    )
    assert [await status_of(store, i) for i in ids] == ["done", "done", "claimed"]
    assert [b.ids for b in found] == [[waiting]]


async def test_folded_acks_with_nothing_ready_still_ack(store: PostgresStore) -> None:
    (event_id,) = await put(store, [make_event("a")])
    [batch] = await claim(store, rules=RULES, expire=False)

    found = await claim(
        store, rules=RULES, token="t2", expire=False, acks=[(batch.token, batch.ids)]
    )

    assert found == []
    assert await status_of(store, event_id) == "done"


async def test_a_stale_ack_or_extend_changes_none_of_the_batch(store: PostgresStore) -> None:
    await put(store, [make_event("a", i=1), make_event("a", i=2)])
    [batch] = await claim(store, rules=RULES, expire=False)
    await store.ack(batch.token, batch.ids[:1], now=START + 1)  # one of two settled
    before = await snapshot(store, batch.ids)

    with pytest.raises(LeaseLostError, match="1 of 2 events"):
        await store.ack(batch.token, batch.ids, now=START + 2)
    with pytest.raises(LeaseLostError, match="1 of 2 events"):
        await store.extend(batch.token, batch.ids, expires_at=START + 60)

    assert await snapshot(store, batch.ids) == before
    await store.extend(batch.token, batch.ids[1:], expires_at=START + 60)
    await store.ack(batch.token, batch.ids[1:], now=START + 3)
    assert [await status_of(store, i) for i in batch.ids] == ["done", "done"]


async def test_the_waiting_count_stops_past_the_queue_size(store: PostgresStore) -> None:
    # EVENT_QUEUE_SIZE is 5 here: beyond 6 ("full") the exact number changes nothing.
    await put(store, many("k", 9))

    assert await store.waiting_count() == 6
    commit = await store.put(
        [make_event("k", i=99)], now=START, dedup_ttl_s=None, count_waiting=True
    )
    assert commit.waiting == 6
    assert await store.unfinished_count() == 10
