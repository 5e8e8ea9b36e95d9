"""stats (counts, counters, oldest pending, ready batches), peek (the next claim, claiming
nothing) and show (one event, or None)."""

from __future__ import annotations

from typing import Any

import pytest

from contract.conftest import (
    START,
    claim,
    claim_one,
    claim_rules,
    drain,
    make_event,
    many,
    put,
    snapshot,
)
from eventqueue.core.models import Batch, Priority
from eventqueue.core.rules import ClaimRules
from eventqueue.store.base import Store

WINDOWED = claim_rules(max_batch=3, window_s=0.1)


async def test_stats_of_an_empty_store(store: Store) -> None:
    stats = await store.stats(now=START, rules=WINDOWED)

    assert stats.counts == {}
    assert stats.counters.get("duplicates_suppressed", 0) == 0
    assert stats.oldest_pending_at is None
    assert stats.ready_batches == 0


async def test_stats_count_events_by_status_and_priority(store: Store) -> None:
    rules = claim_rules(window_s=0.0)
    await put(store, [make_event("payment_failed")])  # CRITICAL
    await put(store, many("heartbeat", 2))  # LOW
    await put(store, [make_event("order_created", at=START + 1)], now=START + 1)  # NORMAL
    done = await claim_one(store, now=START + 1, rules=rules, token="t1")
    await store.ack(done.token, done.ids, now=START + 1)
    await claim_one(store, now=START + 1, rules=rules, token="t2")  # NORMAL claimed

    stats = await store.stats(now=START + 1, rules=rules)

    assert stats.counts == {
        "done": {"CRITICAL": 1},
        "claimed": {"NORMAL": 1},
        "pending": {"LOW": 2},
    }
    assert stats.oldest_pending_at == START


async def test_oldest_pending_ignores_claimed_and_finished_events(store: Store) -> None:
    rules = claim_rules(window_s=0.0)
    await put(store, [make_event("payment_failed")])
    await put(store, [make_event("order_created", at=START + 3)], now=START + 3)
    await claim_one(store, now=START + 3, rules=rules)  # the CRITICAL one

    stats = await store.stats(now=START + 3, rules=rules)

    assert stats.oldest_pending_at == START + 3


async def test_ready_batches_count_the_keys_a_claim_could_take_now(store: Store) -> None:
    await put(store, many("full", 3))
    await put(store, [make_event("waiting")])
    await put(store, [make_event("disk_error")])  # CRITICAL: ready at once

    assert (await store.stats(now=START, rules=WINDOWED)).ready_batches == 2
    assert (await store.stats(now=START + 0.2, rules=WINDOWED)).ready_batches == 3


def claimed_view(batches: list[Batch]) -> list[tuple[str, str, list[int]]]:
    return [(b.key, b.priority.name, b.ids) for b in batches]


def peeked_view(peeked: list[Any]) -> list[tuple[str, str, list[int]]]:
    return [(p["key"], p["top_priority"], [e["id"] for e in p["events"]]) for p in peeked]


async def mixed_backlog(store: Store) -> None:
    """Keys of every kind: full, waiting, CRITICAL in a waiting key, LOW, in retry back-off."""
    await put(store, many("full", 4))
    await put(store, [make_event("waiting", at=START + 0.05)], now=START + 0.05)
    await put(store, [*many("mixed", 2), make_event("mixed", n="x", priority=Priority.CRITICAL)])
    await put(store, many("heartbeat", 3))
    await put(store, many("older", 2, at=START - 1), now=START)


@pytest.mark.parametrize(
    "rules",
    [WINDOWED, claim_rules(max_batch=2, window_s=0.0), claim_rules(batching=False)],
    ids=["windowed", "no-window", "batching-off"],
)
async def test_peek_shows_what_the_next_claim_leases_in_its_order(
    store: Store, rules: ClaimRules
) -> None:
    await mixed_backlog(store)

    peeked = await store.peek(now=START + 0.06, rules=rules, limit=4)
    claimed = await claim(store, now=START + 0.06, rules=rules, batches=4)

    assert claimed  # the backlog has ready batches under every rule set
    assert peeked_view(peeked) == claimed_view(claimed)


async def test_peek_of_an_aged_key_shows_the_claim_order(store: Store) -> None:
    rules = claim_rules(window_s=0.0, aging_s=60.0)
    await put(store, [make_event("heartbeat")])  # LOW, aged to NORMAL by the claim
    later = START + 61
    await put(store, [make_event("order_created", at=later)], now=later)

    peeked = await store.peek(now=later, rules=rules, limit=2)
    claimed = await claim(store, now=later, rules=rules, batches=2)

    assert [p["priority"] for p in peeked] == ["NORMAL", "NORMAL"]  # effective priorities
    assert peeked_view(peeked) == claimed_view(claimed)


async def test_peek_lists_batches_in_the_order_single_claims_take_them(store: Store) -> None:
    rules = claim_rules(window_s=0.0, aging_s=60.0)
    await put(store, [make_event("heartbeat")])  # LOW, aged to NORMAL and older
    later = START + 61
    await put(store, [make_event("order_created", at=later)], now=later)

    peeked = await store.peek(now=later, rules=rules, limit=2)

    served = await drain(store, now=later, rules=rules)
    assert [[e["id"] for e in p["events"]] for p in peeked] == served


async def test_peek_claims_nothing(store: Store) -> None:
    ids = await put(store, many("job", 3))
    before = await snapshot(store, ids)

    peeked = await store.peek(now=START, rules=claim_rules(window_s=0.0), limit=5)

    assert [e["id"] for e in peeked[0]["events"]] == ids
    assert await snapshot(store, ids) == before


async def test_peek_of_nothing_ready_is_empty(store: Store) -> None:
    await put(store, many("job", 2))

    assert await store.peek(now=START, rules=WINDOWED, limit=5) == []


async def test_peek_describes_each_batch(store: Store) -> None:
    ids = await put(store, many("heartbeat", 2))

    (peeked,) = await store.peek(now=START + 0.5, rules=WINDOWED, limit=1)

    assert peeked["key"] == "heartbeat-handler"
    assert (peeked["priority"], peeked["top_priority"]) == ("LOW", "LOW")
    assert peeked["oldest_age_s"] == pytest.approx(0.5)
    assert [(e["id"], e["event_name"], e["priority"], e["attempts"]) for e in peeked["events"]] == [
        (ids[0], "heartbeat", "LOW", 0),
        (ids[1], "heartbeat", "LOW", 0),
    ]


async def test_show_gives_every_field_of_one_event(store: Store) -> None:
    row = make_event("order_created", total=3)
    (event_id,) = await put(store, [row])

    info = await store.show(event_id)

    assert info is not None
    assert info["id"] == event_id
    assert info["payload"]["attributes"] == {"total": 3}
    assert (info["priority"], info["status"], info["content_hash"]) == (
        "NORMAL",
        "pending",
        row.content_hash,
    )
    assert info["received_at"].startswith("2023-11-14T22:13:20")  # START as ISO 8601, UTC


async def test_show_of_a_missing_id_is_none(store: Store) -> None:
    assert await store.show(999_999) is None
