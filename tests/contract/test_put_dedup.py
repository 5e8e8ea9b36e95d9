"""put: outcomes and ids, dedup within and after the TTL (measured from each row's receipt
time), dedup off, across reopen, `waiting`."""

from __future__ import annotations

import dataclasses

import pytest

from contract.conftest import (
    NOW_RULES,
    START,
    OpenStore,
    claim_one,
    make_event,
    many,
    put,
    status_of,
)
from eventqueue.core.errors import StorageError
from eventqueue.core.models import PutStatus
from eventqueue.store.base import Store

TTL = 300.0


async def test_new_events_are_accepted_with_distinct_ids_in_put_order(store: Store) -> None:
    commit = await store.put(many("job", 3), now=START, dedup_ttl_s=TTL)

    statuses = [status for status, _ in commit.outcome]
    ids = [event_id for _, event_id in commit.outcome]
    assert statuses == [PutStatus.ACCEPTED] * 3
    assert ids == sorted(set(ids))
    assert [await status_of(store, i) for i in ids] == ["pending"] * 3


async def test_a_stored_event_keeps_what_was_put(store: Store) -> None:
    row = make_event("order_created", total=12)

    (event_id,) = await put(store, [row])

    info = await store.show(event_id)
    assert info is not None
    assert info["payload"] == {
        "event_type": "entity_event",
        "event_name": "order_created",
        "aggregate_id": "a1",
        "attributes": {"total": 12},
    }
    assert (info["priority"], info["batch_key"], info["content_hash"]) == (
        "NORMAL",
        "order_created-handler",
        row.content_hash,
    )
    assert (info["attempts"], info["duplicates"]) == (0, 0)


async def test_put_of_nothing_commits_nothing(store: Store) -> None:
    commit = await store.put([], now=START, dedup_ttl_s=TTL)

    assert commit.outcome == []
    assert commit.waiting == 0


async def test_a_repeat_within_the_ttl_is_a_duplicate_of_the_original(store: Store) -> None:
    (original,) = await put(store, [make_event()])

    commit = await store.put([make_event(at=START + 299)], now=START + 299, dedup_ttl_s=TTL)

    assert commit.outcome == [(PutStatus.DUPLICATE, original)]
    assert commit.waiting == 1


async def test_a_repeat_at_exactly_the_ttl_is_still_a_duplicate(store: Store) -> None:
    (original,) = await put(store, [make_event()])

    commit = await store.put([make_event(at=START + TTL)], now=START + TTL, dedup_ttl_s=TTL)

    assert commit.outcome == [(PutStatus.DUPLICATE, original)]


async def test_every_duplicate_counts_on_the_original_and_in_the_counters(store: Store) -> None:
    (original,) = await put(store, [make_event()])
    for n in range(1, 4):
        await put(store, [make_event(at=START + n)], now=START + n)

    info = await store.show(original)
    stats = await store.stats(now=START + 4, rules=NOW_RULES)
    assert info is not None
    assert info["duplicates"] == 3
    assert stats.counters["duplicates_suppressed"] == 3
    assert stats.counts == {"pending": {"NORMAL": 1}}


async def test_repeats_within_one_put_are_duplicates_of_its_first(store: Store) -> None:
    a, b = make_event(aggregate_id="a"), make_event(aggregate_id="b")

    commit = await store.put([a, b, a, a], now=START, dedup_ttl_s=TTL)

    (s0, first), (s1, second), (s2, third), (s3, fourth) = commit.outcome
    assert [s0, s1, s2, s3] == [PutStatus.ACCEPTED, PutStatus.ACCEPTED] + [PutStatus.DUPLICATE] * 2
    assert third == fourth == first != second
    info = await store.show(first)
    assert info is not None and info["duplicates"] == 2
    assert commit.waiting == 2


async def test_a_put_dedups_against_stored_events(store: Store) -> None:
    (stored,) = await put(store, [make_event(aggregate_id="a")])

    commit = await store.put(
        [make_event(aggregate_id="b"), make_event(aggregate_id="a")], now=START, dedup_ttl_s=TTL
    )

    (new_status, new_id), (dup_status, dup_id) = commit.outcome
    assert (new_status, dup_status) == (PutStatus.ACCEPTED, PutStatus.DUPLICATE)
    assert dup_id == stored != new_id


async def test_different_content_is_not_a_duplicate(store: Store) -> None:
    commit = await store.put([make_event(n=1), make_event(n=2)], now=START, dedup_ttl_s=TTL)

    assert [status for status, _ in commit.outcome] == [PutStatus.ACCEPTED] * 2


async def test_a_repeat_after_the_ttl_is_accepted_as_a_new_event(store: Store) -> None:
    (original,) = await put(store, [make_event()])
    later = START + TTL + 1

    commit = await store.put([make_event(at=later)], now=later, dedup_ttl_s=TTL)

    ((status, again),) = commit.outcome
    assert status is PutStatus.ACCEPTED
    assert again != original
    assert commit.waiting == 2
    info = await store.show(original)
    assert info is not None and info["duplicates"] == 0


async def test_after_the_ttl_the_new_event_starts_a_new_window(store: Store) -> None:
    await put(store, [make_event()])
    (second,) = await put(store, [make_event(at=START + 301)], now=START + 301)

    commit = await store.put([make_event(at=START + 401)], now=START + 401, dedup_ttl_s=TTL)

    assert commit.outcome == [(PutStatus.DUPLICATE, second)]


async def test_a_repeat_of_an_acked_event_within_the_ttl_is_a_duplicate(store: Store) -> None:
    (original,) = await put(store, [make_event()])
    batch = await claim_one(store)
    await store.ack(batch.token, batch.ids, now=START + 1)

    commit = await store.put([make_event(at=START + 2)], now=START + 2, dedup_ttl_s=TTL)

    assert commit.outcome == [(PutStatus.DUPLICATE, original)]
    assert commit.waiting == 0


async def test_a_repeat_received_inside_the_ttl_is_a_duplicate_however_late_it_is_put(
    store: Store,
) -> None:
    # A repeat spilled inside the window and promoted after it closed (issue 18): the window
    # is measured from the repeat's own receipt time, not from the time of the put.
    (original,) = await put(store, [make_event()])
    late = START + TTL + 3600

    commit = await store.put([make_event(at=START + 299)], now=late, dedup_ttl_s=TTL)

    assert commit.outcome == [(PutStatus.DUPLICATE, original)]


async def test_a_repeat_received_after_the_ttl_is_new_however_soon_it_is_put(
    store: Store,
) -> None:
    (original,) = await put(store, [make_event()])

    commit = await store.put([make_event(at=START + TTL + 1)], now=START, dedup_ttl_s=TTL)

    ((status, again),) = commit.outcome
    assert status is PutStatus.ACCEPTED and again != original


async def test_a_repeat_received_before_the_clock_stepped_back_is_still_a_duplicate(
    store: Store,
) -> None:
    (original,) = await put(store, [make_event(at=START + 100)], now=START + 100)

    # Received just after the original, put after the wall clock stepped back an hour.
    commit = await store.put([make_event(at=START + 101)], now=START - 3500, dedup_ttl_s=TTL)

    assert commit.outcome == [(PutStatus.DUPLICATE, original)]


async def test_a_repeat_received_just_before_its_original_committed_is_a_duplicate(
    store: Store,
) -> None:
    # Two processes receive the same content 5 ms apart; the later one commits first, and the
    # earlier one's put (or promotion) took its `now` before that commit.
    (original,) = await put(store, [make_event(at=START + 0.005)], now=START + 0.005)

    commit = await store.put([make_event(at=START)], now=START, dedup_ttl_s=TTL)

    assert commit.outcome == [(PutStatus.DUPLICATE, original)]


async def test_a_fresh_repeat_after_the_clock_stepped_back_ends_the_window(store: Store) -> None:
    (original,) = await put(store, [make_event(at=START + 100)], now=START + 100)

    # Received after the step back: the original lies "in the future", its window ends.
    commit = await store.put([make_event(at=START - 3500)], now=START - 3500, dedup_ttl_s=TTL)

    ((status, again),) = commit.outcome
    assert status is PutStatus.ACCEPTED and again != original


async def test_dedup_off_accepts_every_repeat(store: Store) -> None:
    commit = await store.put([make_event()] * 3, now=START, dedup_ttl_s=None)

    ids = [event_id for _, event_id in commit.outcome]
    assert [status for status, _ in commit.outcome] == [PutStatus.ACCEPTED] * 3
    assert len(set(ids)) == 3
    stats = await store.stats(now=START, rules=NOW_RULES)
    assert stats.counters.get("duplicates_suppressed", 0) == 0


async def test_events_put_with_dedup_off_do_not_hold_their_content(store: Store) -> None:
    await put(store, [make_event()], dedup_ttl_s=None)

    commit = await store.put([make_event(at=START + 1)], now=START + 1, dedup_ttl_s=TTL)

    assert [status for status, _ in commit.outcome] == [PutStatus.ACCEPTED]


async def test_dedup_survives_close_and_reopen(store: Store, open_another: OpenStore) -> None:
    (original,) = await put(store, [make_event()])
    await store.close()
    reopened = await open_another()

    commit = await reopened.put([make_event(at=START + 10)], now=START + 10, dedup_ttl_s=TTL)

    assert commit.outcome == [(PutStatus.DUPLICATE, original)]
    info = await reopened.show(original)
    assert info is not None and info["duplicates"] == 1


async def test_waiting_counts_pending_and_back_off_but_not_claimed_or_done(store: Store) -> None:
    await put(store, many("a", 2) + many("b", 3))
    first = await claim_one(store)  # "a", the oldest key, claimed: it no longer waits
    assert (await store.waiting_count(), await store.unfinished_count()) == (3, 5)
    retried, acked = first.ids
    await store.nack(first.token, {retried: START + 60}, [], error="x", now=START)
    await store.ack(first.token, [acked], now=START)
    assert await store.waiting_count() == 4  # in back-off: it waits again
    second = await claim_one(store, token="t2")  # "b"
    await store.ack(second.token, second.ids, now=START)

    commit = await store.put([make_event("c")], now=START, dedup_ttl_s=TTL)

    assert commit.waiting == 2  # the retry and "c"
    assert (await store.waiting_count(), await store.unfinished_count()) == (2, 2)


async def test_a_refused_row_fails_the_whole_put_and_stores_nothing(store: Store) -> None:
    good = make_event(aggregate_id="good")
    bad = dataclasses.replace(make_event(aggregate_id="bad"), priority=7)  # no such priority

    with pytest.raises(StorageError):
        await store.put([good, bad], now=START, dedup_ttl_s=TTL, source_positions={"sse": "9"})

    assert await store.waiting_count() == 0
    assert await store.source_position("sse") is None


async def test_a_put_without_counting_reports_no_waiting_count(store: Store) -> None:
    commit = await store.put(many("a", 3), now=START, dedup_ttl_s=TTL, count_waiting=False)

    assert commit.waiting is None
    assert [status for status, _ in commit.outcome] == [PutStatus.ACCEPTED] * 3
    assert await store.waiting_count() == 3


@pytest.mark.parametrize("size", [1, 63, 64, 65, 100, 200, 257])
async def test_a_large_put_keeps_order_ids_and_dedup_across_its_whole_length(
    store: Store, size: int
) -> None:
    # Larger puts are stored in several statements (SQLite: up to 64 rows each): ids ascend in
    # put order across them, and a repeat far from its original is still its duplicate.
    rows = many("bulk", size)
    repeats = [rows[0], rows[size // 2]]

    commit = await store.put(rows + repeats, now=START, dedup_ttl_s=TTL)

    accepted = commit.outcome[:size]
    assert [status for status, _ in accepted] == [PutStatus.ACCEPTED] * size
    ids = [event_id for _, event_id in accepted]
    assert ids == sorted(set(ids))
    assert commit.outcome[size:] == [
        (PutStatus.DUPLICATE, ids[0]),
        (PutStatus.DUPLICATE, ids[size // 2]),
    ]
    assert commit.waiting == size
