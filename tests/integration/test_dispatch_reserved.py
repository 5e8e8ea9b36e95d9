"""Reserved capacity and the CRITICAL hand-off: a CRITICAL event never waits for a slow NORMAL
handler, and reaches a waiting reserved consumer straight from the put that stored it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from eventqueue import ConfigError, Dispatcher, Event, EventQueue, Priority
from eventqueue.runtime.dispatch.claim_pool import ClaimPool

WAIT_S = 10.0  # a bound on waits for handshakes, never a sleep


def event(name: str, n: int) -> dict[str, Any]:
    return {"event_type": "t", "event_name": name, "aggregate_id": n, "attributes": {"n": n}}


async def test_a_critical_event_is_handled_while_every_other_consumer_is_busy(
    tmp_path: Path,
) -> None:
    async with EventQueue.open(str(tmp_path / "e.db"), batch_window_ms=0) as q:
        busy = 0
        all_busy, release, critical_done = asyncio.Event(), asyncio.Event(), asyncio.Event()
        handled_critical: list[Event] = []

        async def slow(events: list[Event]) -> None:
            nonlocal busy
            busy += 1
            if busy == 2:
                all_busy.set()
            await release.wait()

        async def critical(events: list[Event]) -> None:
            handled_critical.extend(events)
            critical_done.set()

        async def source() -> AsyncIterator[dict[str, Any]]:
            yield event("order_created", 1)
            yield event("invoice_sent", 2)
            await asyncio.wait_for(all_busy.wait(), WAIT_S)  # both consumers are in `slow`
            yield event("payment_failed", 3)
            await asyncio.wait_for(critical_done.wait(), WAIT_S)
            release.set()

        dispatcher = Dispatcher(q, concurrency=2)
        dispatcher.add_handler("order_created", slow)
        dispatcher.add_handler("invoice_sent", slow)
        dispatcher.add_handler("payment_failed", critical)
        await asyncio.wait_for(dispatcher.run(source()), WAIT_S * 3)

        assert [e.priority for e in handled_critical] == [Priority.CRITICAL]
        assert handled_critical[0].attempts == 1
        assert (await q.stats()).count("done") == 3


async def test_a_critical_put_reaches_a_waiting_reserved_consumer_as_a_hand_off(
    tmp_path: Path,
) -> None:
    async with EventQueue.open(str(tmp_path / "e.db")) as q:
        stop = asyncio.Event()
        waiting = asyncio.create_task(q.next_critical("reserved", stop=stop))
        # Yield until the consumer has registered for a hand-off (its claim found nothing).
        while not q._handoff.waiting():  # noqa: ASYNC110 - the condition is the handshake
            await asyncio.sleep(0)
        result = await q.put(event("payment_failed", 1))
        batch = await asyncio.wait_for(waiting, WAIT_S)

        assert batch is not None and batch.ids == [result.id]
        assert batch.events[0].attempts == 1 and batch.consumer == "reserved"
        assert q.metrics.outcomes["handed_over"] == 1
        await q.ack(batch)
        assert (await q.stats()).count("done") == 1


async def test_a_reserved_consumer_claims_critical_work_it_was_not_handed(
    tmp_path: Path,
) -> None:
    async with EventQueue.open(str(tmp_path / "e.db")) as q:
        normal = await q.put(event("order_created", 1))
        failed = await q.put(event("payment_failed", 2))  # nobody waits: stored pending
        batch = await asyncio.wait_for(q.next_critical("reserved"), WAIT_S)
        assert batch is not None and batch.ids == [failed.id]
        assert q.metrics.outcomes["handed_over"] == 0
        assert (await q.stats()).count("pending") == 1 and normal.id is not None


@pytest.mark.parametrize(
    "reserved",
    [{Priority.NORMAL: 1}, {Priority.CRITICAL: -1}, {"URGENT": 1}, {Priority.CRITICAL: 65}],
)
async def test_bad_reservations_are_refused_with_a_clear_error(
    tmp_path: Path, reserved: dict[Any, int]
) -> None:
    async with EventQueue.open(str(tmp_path / "e.db")) as q:
        with pytest.raises(ConfigError, match="reserved"):
            Dispatcher(q, reserved=reserved)


async def test_no_reserved_consumer_when_asked_for_none(tmp_path: Path) -> None:
    async with EventQueue.open(str(tmp_path / "e.db")) as q:
        assert Dispatcher(q, reserved={}).reserved == 0
        assert Dispatcher(q).reserved == 1


async def test_a_hand_off_nobody_took_is_given_back_with_its_attempt_uncounted(
    tmp_path: Path,
) -> None:
    # Issue 19.3: a give-back kept the attempt its lease counted, so an event given back at its
    # last attempt was claimed once more and dead-lettered with attempts > EVENT_MAX_ATTEMPTS.
    async with EventQueue.open(str(tmp_path / "e.db"), batch_window_ms=0) as q:
        waiter = q._handoff.wait()
        leased = q._handoff.lease

        def lease_then_stop_waiting(now: float) -> Any:
            lease = leased(now)
            waiter.cancel()  # the reserved consumer stops waiting between lease and hand-off
            return lease

        q._handoff.lease = lease_then_stop_waiting  # type: ignore[method-assign]
        result = await q.put(event("sync_error", 1))
        batch = await q.next_batch("worker", timeout=WAIT_S)  # woken by the give-back

        assert batch is not None and batch.ids == [result.id]
        assert batch.events[0].attempts == 1
        assert q.metrics.outcomes["handed_over"] == 0


async def test_a_claim_set_aside_for_a_hand_off_is_given_back_with_its_attempt_uncounted(
    tmp_path: Path,
) -> None:
    # next_critical claimed a batch while a hand-off arrived: it takes the hand-off and gives
    # the claimed batch back, unhandled; its next claim is still its first attempt.
    async with EventQueue.open(str(tmp_path / "e.db"), batch_window_ms=0) as q:
        await q.put(event("sync_error", 1))
        await q.put(event("payment_failed", 2))
        claimed = await q.claim_batches("reserved", 1, min_priority=Priority.CRITICAL)
        handed = await q.claim_batches("reserved", 1, min_priority=Priority.CRITICAL)
        waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        waiter.set_result(handed[0])

        assert q._either(claimed[0], waiter) is handed[0]

        again = await q.next_batch("worker", timeout=WAIT_S)  # woken by the give-back
        assert again is not None and again.ids == claimed[0].ids
        assert again.events[0].attempts == 1


async def test_a_pooled_claim_nobody_waits_for_is_given_back_with_its_attempt_uncounted(
    tmp_path: Path,
) -> None:
    async with EventQueue.open(str(tmp_path / "e.db"), batch_window_ms=0) as q:
        pool = ClaimPool(q, "pool", stopping=asyncio.Event(), metrics=q.metrics, ack_alone=q.ack)
        await q.put(event("order_created", 1))
        (claimed,) = await q.claim_batches("pool", 1)

        pool._hand_out(claimed)  # the consumer that asked was cancelled meanwhile

        again = await q.next_batch("worker", timeout=WAIT_S)  # woken by the give-back
        assert again is not None and again.ids == claimed.ids
        assert again.events[0].attempts == 1
