"""Key limits: at most `concurrency` batches of a key leased at once and a token bucket of
`rate_per_s` events per second, counted in the store (across stores on one database); a key at
its limit is simply not ready and blocks no other key; CRITICAL obeys unless exempt."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from contract.conftest import NOW_RULES, START, OpenStore, claim, make_event, many, put
from eventqueue.core.config import Config
from eventqueue.core.errors import ConfigError
from eventqueue.core.limits import KeyLimit, KeyLimits
from eventqueue.core.models import Batch, Priority
from eventqueue.core.rules import ClaimRules
from eventqueue.runtime.queue import EventQueue
from eventqueue.store.base import Store

KEY = "mail-handler"


def limited(**limits: KeyLimit) -> ClaimRules:
    """NOW_RULES with these limits ({"mail": KeyLimit(...)} names mail-handler; star is "*")."""
    named = {("*" if k == "star" else f"{k}-handler"): v for k, v in limits.items()}
    return dataclasses.replace(NOW_RULES, limits=KeyLimits.of(named))


def keys(batches: list[Batch]) -> list[str]:
    return sorted(b.key for b in batches)


async def test_concurrency_caps_the_batches_of_a_key_in_flight(store: Store) -> None:
    rules = limited(mail=KeyLimit(concurrency=2))
    await put(store, many("mail", 50) + many("other", 50))

    first = await claim(store, rules=rules, batches=10, token="t1")
    second = await claim(store, rules=rules, batches=10, token="t2")
    third = await claim(store, rules=rules, batches=10, token="t3")

    assert keys(first) == [KEY, "other-handler"]
    assert keys(second) == [KEY, "other-handler"]
    assert keys(third) == ["other-handler"]  # mail is at its limit; other keys flow
    mail = next(b for b in first if b.key == KEY)
    await store.ack(mail.token, mail.ids, now=START)
    assert keys(await claim(store, rules=rules, batches=10, token="t4")) == [
        KEY,
        "other-handler",
    ]


async def test_the_star_entry_is_every_other_keys_default(store: Store) -> None:
    rules = limited(star=KeyLimit(concurrency=1), mail=KeyLimit(concurrency=2))
    await put(store, many("mail", 30) + many("other", 30))

    await claim(store, rules=rules, batches=10, token="t1")
    second = await claim(store, rules=rules, batches=10, token="t2")

    assert keys(second) == [KEY]


async def test_the_rate_is_a_token_bucket_refilled_by_time(store: Store) -> None:
    rules = limited(mail=KeyLimit(rate_per_s=10.0, burst=1))
    await put(store, many("mail", 40))

    (first,) = await claim(store, rules=rules, token="t1")  # a full bucket: one batch of 10
    assert len(first) == 10
    assert await claim(store, rules=rules, now=START + 0.5, token="t2") == []
    hold = await store.limit_hold(now=START + 0.5, limits=rules.limits)
    assert hold.held and hold.refill_at == pytest.approx(START + 1.0)

    (second,) = await claim(store, rules=rules, now=START + 1.0, token="t3")
    assert len(second) == 10


async def test_limits_hold_for_critical_events_unless_exempt(store: Store) -> None:
    rules = limited(mail=KeyLimit(concurrency=1))
    exempt = limited(mail=KeyLimit(concurrency=1, exempt_critical=True))
    await put(store, many("mail", 5))
    await claim(store, rules=rules, token="t1")
    (critical,) = await put(store, [make_event("mail", priority=Priority.CRITICAL)])

    assert await claim(store, rules=rules, token="t2") == []
    assert await claim(store, rules=rules, token="t3", min_priority=Priority.CRITICAL) == []
    (batch,) = await claim(store, rules=exempt, token="t4")
    assert batch.ids == [critical]


async def test_the_limit_holds_across_two_stores(store: Store, open_another: OpenStore) -> None:
    other = await open_another()
    rules = limited(mail=KeyLimit(concurrency=1, rate_per_s=1000.0))
    await put(store, many("mail", 100))

    # Two claims at once, from two stores (two processes, or two PostgreSQL hosts).
    found = await asyncio.gather(
        *(
            claim(s, rules=rules, batches=3, token=f"t{i}", consumer=f"c{i}")
            for i, s in enumerate([store, other, store, other])
        )
    )

    assert sum(len(batches) for batches in found) == 1


async def test_stats_show_in_flight_and_claims_held_back(store: Store) -> None:
    rules = limited(mail=KeyLimit(concurrency=1, rate_per_s=100.0, burst=20))
    await put(store, many("mail", 30))
    await claim(store, rules=rules, token="t1")
    await claim(store, rules=rules, token="t2")
    await claim(store, rules=rules, token="t3")

    stats = await store.stats(now=START, rules=rules)

    use = stats.key_limits[KEY]
    assert use["in_flight"] == 1 and use["held_back"] == 2
    assert use["tokens"] == pytest.approx(10.0)
    assert stats.ready_batches == 0  # the only key with work is at its limit


async def test_no_limits_no_hold(store: Store) -> None:
    await put(store, many("mail", 3))
    await claim(store, token="t1")

    assert not (await store.limit_hold(now=START, limits=KeyLimits())).held


# --- the queue --------------------------------------------------------------------------------


async def test_a_queue_waits_for_the_refill_not_in_a_loop(backend_config: Config) -> None:
    config = backend_config.replace(batch_window_ms=0, poll_ms=60_000)
    limits = {"mail-handler": KeyLimit(rate_per_s=2.0, burst=1)}
    clock = [START]
    async with EventQueue.open(
        config=config, migrate=True, key_limits=limits, clock=lambda: clock[0]
    ) as q:
        await q.put_many([{"event_name": "mail", "attributes": {"i": i}} for i in range(20)])
        (batch,) = await q.claim_batches("c", 5)
        await q.ack(batch)
        delay = await q.idle_delay()

    # Ten events drew the bucket to -9: one token again after (1 - -9) / 2 = 5 s, not at once.
    assert delay == pytest.approx(1.0)  # MAX_IDLE_S caps it; never the 1 ms of a closed window


def test_key_limits_come_from_the_environment() -> None:
    config = Config.load(env={"EVENT_KEY_LIMITS": "mail-handler=concurrency:2,rate:50,burst:10"})
    assert KeyLimits.of(config.key_limits).for_key("mail-handler") == KeyLimit(2, 50.0, 10.0)
    with pytest.raises(ConfigError, match="EVENT_KEY_LIMITS"):
        Config.load(env={"EVENT_KEY_LIMITS": "mail-handler=speed:3"})
