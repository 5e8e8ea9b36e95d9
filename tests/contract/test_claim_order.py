"""claim: priority order, FIFO within a key, aging, size and window readiness, CRITICAL at once,
batching off, several batches per claim, what a claimed batch carries."""

from __future__ import annotations

from contract.conftest import (
    NOW_RULES,
    START,
    claim,
    claim_one,
    claim_rules,
    drain,
    make_event,
    many,
    put,
)
from eventqueue.core.models import Priority
from eventqueue.store.base import Store

WINDOWED = claim_rules(max_batch=10, window_s=0.1)


async def test_nothing_pending_claims_nothing(store: Store) -> None:
    assert await claim(store, batches=5) == []


async def test_claims_follow_the_four_priority_levels(store: Store) -> None:
    low, normal, high, critical = await put(
        store,
        [
            make_event("heartbeat"),
            make_event("order_created"),
            make_event("step_done", event_type="workflow_event"),
            make_event("payment_failed"),
        ],
    )

    assert await drain(store) == [[critical], [high], [normal], [low]]


async def test_keys_of_one_priority_are_served_oldest_first(store: Store) -> None:
    (first,) = await put(store, [make_event("b_thing")])
    (second,) = await put(store, [make_event("a_thing", at=START + 1)], now=START + 1)

    assert await drain(store, now=START + 1) == [[first], [second]]


async def test_within_a_key_priority_then_fifo(store: Store) -> None:
    rows = [
        make_event("job", at=START, n=1),
        make_event("job", at=START + 1, n=2, priority=Priority.HIGH),
        make_event("job", at=START + 2, n=3),
        make_event("job", at=START + 3, n=4, priority=Priority.HIGH),
        make_event("job", at=START + 3, n=5, priority=Priority.LOW),
    ]
    n1, h1, n2, h2, low = await put(store, rows, now=START + 3)

    batch = await claim_one(store, now=START + 3)

    assert batch.ids == [h1, h2, n1, n2, low]
    assert batch.priority is Priority.HIGH
    assert batch.key == "job-handler"


async def test_events_put_together_at_one_time_are_claimed_in_put_order(store: Store) -> None:
    ids = await put(store, many("job", 5))

    batch = await claim_one(store)

    assert batch.ids == ids


async def test_a_claimed_batch_carries_the_events_as_put(store: Store) -> None:
    row = make_event("order_created", total=12, note="nul\x00ok")
    (event_id,) = await put(store, [row])

    batch = await claim_one(store, now=START + 5, consumer="worker-7")

    (event,) = batch.events
    assert event.id == event_id
    assert event.payload["attributes"] == {"total": 12, "note": "nul\x00ok"}
    assert (event.content_hash, event.batch_key) == (row.content_hash, "order_created-handler")
    assert (event.priority, event.attempts, event.received_at) == (Priority.NORMAL, 1, START)
    assert batch.consumer == "worker-7"
    assert batch.lease_expires_at == START + 5 + NOW_RULES.lease_s


async def test_aging_lifts_an_old_low_event_past_newer_normal_ones(store: Store) -> None:
    rules = claim_rules(window_s=0.0, aging_s=60.0)
    (low,) = await put(store, [make_event("heartbeat")])
    later = START + 61
    normals = await put(store, [make_event(f"normal_{i}", at=later) for i in range(3)], now=later)

    order = await drain(store, now=later, rules=rules)

    assert order[0] == [low]
    assert sorted(i for batch in order[1:] for i in batch) == sorted(normals)


async def test_before_the_aging_time_a_low_event_waits_behind_normal_ones(store: Store) -> None:
    rules = claim_rules(window_s=0.0, aging_s=60.0)
    (low,) = await put(store, [make_event("heartbeat")])
    (normal,) = await put(store, [make_event("order_created", at=START + 30)], now=START + 30)

    assert await drain(store, now=START + 30, rules=rules) == [[normal], [low]]


async def test_aging_never_lifts_an_event_to_critical(store: Store) -> None:
    rules = claim_rules(window_s=0.0, aging_s=1.0)
    (low,) = await put(store, [make_event("heartbeat")])
    later = START + 3600  # thousands of aging periods
    (critical,) = await put(store, [make_event("disk_error", at=later)], now=later)

    assert await drain(store, now=later, rules=rules) == [[critical], [low]]


async def test_a_full_batch_is_ready_at_once(store: Store) -> None:
    ids = await put(store, many("job", 10))

    batch = await claim_one(store, rules=WINDOWED)

    assert batch.ids == ids


async def test_a_partial_batch_waits_for_the_window(store: Store) -> None:
    await put(store, many("job", 9))

    assert await claim(store, rules=WINDOWED) == []
    assert await claim(store, now=START + 0.05, rules=WINDOWED) == []


async def test_a_partial_batch_is_ready_once_its_oldest_event_waited_the_window(
    store: Store,
) -> None:
    (early,) = await put(store, [make_event("job", n="early")])
    (late,) = await put(store, [make_event("job", at=START + 0.06, n="late")], now=START + 0.06)
    assert await claim(store, now=START + 0.06, rules=WINDOWED) == []

    batch = await claim_one(store, now=START + 0.11, rules=WINDOWED)

    assert batch.ids == [early, late]


async def test_a_backlog_is_claimed_in_batches_of_max_size(store: Store) -> None:
    rules = claim_rules(max_batch=4, window_s=0.1)
    ids = await put(store, many("job", 9))

    first = await claim_one(store, rules=rules, token="t1")
    second = await claim_one(store, rules=rules, token="t2")

    assert first.ids == ids[:4]
    assert second.ids == ids[4:8]
    assert await claim(store, rules=rules, token="t3") == []  # one left, window not passed


async def test_keys_become_ready_independently(store: Store) -> None:
    rules = claim_rules(max_batch=3, window_s=0.1)
    await put(store, [make_event("slow")])
    full = await put(store, many("busy", 3))

    batch = await claim_one(store, rules=rules)

    assert batch.ids == full
    assert await claim(store, rules=rules, token="t2") == []


async def test_a_critical_event_does_not_wait_for_the_window(store: Store) -> None:
    (critical,) = await put(store, [make_event("disk_error")])

    batch = await claim_one(store, rules=claim_rules(window_s=60.0))

    assert batch.ids == [critical]
    assert batch.priority is Priority.CRITICAL


async def test_a_critical_event_takes_only_the_critical_events_of_a_waiting_key(
    store: Store,
) -> None:
    normal = await put(store, many("job", 3))
    (critical,) = await put(store, [make_event("job", n="urgent", priority=Priority.CRITICAL)])

    batch = await claim_one(store, rules=WINDOWED)

    assert batch.ids == [critical]
    assert await claim(store, rules=WINDOWED, token="t2") == []  # NORMAL still waits
    rest = await claim_one(store, now=START + 0.2, rules=WINDOWED, token="t3")
    assert rest.ids == normal


async def test_a_critical_event_in_a_due_key_goes_with_the_rest(store: Store) -> None:
    normal = await put(store, many("job", 2))
    later = START + 0.2
    (critical,) = await put(
        store, [make_event("job", at=later, n="urgent", priority=Priority.CRITICAL)], now=later
    )

    batch = await claim_one(store, now=later, rules=WINDOWED)

    assert batch.ids == [critical, *normal]


async def test_batching_off_makes_every_event_its_own_batch(store: Store) -> None:
    rules = claim_rules(batching=False, max_batch=10, window_s=60.0)
    ids = await put(store, many("job", 3))

    assert await drain(store, rules=rules) == [[i] for i in ids]


async def test_a_window_of_zero_makes_any_pending_event_ready(store: Store) -> None:
    ids = await put(store, many("job", 3))

    batch = await claim_one(store, rules=claim_rules(max_batch=10, window_s=0.0))

    assert batch.ids == ids


async def test_one_claim_leases_one_batch_per_ready_key_best_first(store: Store) -> None:
    rules = claim_rules(max_batch=3, window_s=0.0)
    await put(store, many("low_thing", 3, priority=Priority.LOW))
    await put(store, many("high_thing", 5, priority=Priority.HIGH))
    await put(store, many("normal_thing", 2))

    batches = await claim(store, rules=rules, batches=5)

    assert [b.key for b in batches] == [
        "high_thing-handler",
        "normal_thing-handler",
        "low_thing-handler",
    ]
    assert [len(b) for b in batches] == [3, 2, 3]
    assert len({b.token for b in batches}) == 3  # every batch is fenced on its own
    assert len({b.id for b in batches}) == 3
    stats = await store.stats(now=START, rules=rules)
    assert sum(stats.counts["claimed"].values()) == 8


async def test_a_claim_takes_no_more_batches_than_asked(store: Store) -> None:
    await put(store, [make_event(name) for name in ("a", "b", "c")])

    assert len(await claim(store, batches=2, token="t1")) == 2
    assert len(await claim(store, batches=2, token="t2")) == 1
    assert await claim(store, batches=2, token="t3") == []


async def test_single_claims_serve_a_key_with_an_older_lower_event_first(store: Store) -> None:
    (old_normal,) = await put(store, [make_event("a", n=1)])
    (new_high,) = await put(store, [make_event("a", at=START + 5, n=2, priority=Priority.HIGH)])
    (high,) = await put(store, [make_event("b", at=START + 2, priority=Priority.HIGH)])

    assert await drain(store, now=START + 5) == [[new_high, old_normal], [high]]


async def test_one_claim_of_several_batches_lists_them_in_claim_order_with_aging(
    store: Store,
) -> None:
    rules = claim_rules(window_s=0.0, aging_s=60.0)
    await put(store, [make_event("heartbeat")])  # LOW, aged to NORMAL and older
    later = START + 61
    await put(store, [make_event("order_created", at=later)], now=later)

    batches = await claim(store, now=later, rules=rules, batches=2)

    assert [b.key for b in batches] == ["heartbeat-handler", "order_created-handler"]


async def test_one_claim_of_several_batches_lists_them_in_claim_order_by_oldest_event(
    store: Store,
) -> None:
    await put(store, [make_event("a", n=1)])
    await put(store, [make_event("a", at=START + 5, n=2, priority=Priority.HIGH)])
    await put(store, [make_event("b", at=START + 2, priority=Priority.HIGH)])

    batches = await claim(store, now=START + 5, batches=2)

    assert [b.key for b in batches] == ["a-handler", "b-handler"]  # as single claims serve them


# BATCH_WINDOW_MS 100, EVENT_HIGH_BATCH_WINDOW_MS 25 (issue 19, point 11).
HIGH_WINDOWED = claim_rules(max_batch=10, window_s=0.1, high_window_s=0.025)


async def test_a_lone_high_event_is_ready_after_the_shorter_high_window(store: Store) -> None:
    (high,) = await put(store, [make_event("sync", priority=Priority.HIGH)])
    (normal,) = await put(store, [make_event("job")])  # NORMAL, same moment, another key
    assert await claim(store, now=START + 0.02, rules=HIGH_WINDOWED) == []

    batch = await claim_one(store, now=START + 0.03, rules=HIGH_WINDOWED)

    assert batch.ids == [high]
    assert await claim(store, now=START + 0.09, rules=HIGH_WINDOWED, token="t2") == []
    later = await claim_one(store, now=START + 0.1, rules=HIGH_WINDOWED, token="t3")
    assert later.ids == [normal]


async def test_the_high_window_is_never_longer_than_the_batch_window(store: Store) -> None:
    (high,) = await put(store, [make_event("sync", priority=Priority.HIGH)])
    rules = claim_rules(max_batch=10, window_s=0.01, high_window_s=0.025)

    batch = await claim_one(store, now=START + 0.011, rules=rules)

    assert batch.ids == [high]
