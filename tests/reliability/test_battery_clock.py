"""Clock jumps: the queue's wall clock moved ± hours while a dispatcher runs.

The clock is injected: real time plus an offset the test moves. Monotonic time (the event
loop's) runs on. Pass: nothing lost, nothing stuck (the run ends within seconds, not hours),
a redelivery only with attempts > 1.

What a jump does, as documented by these tests:
- forward: leases held at the jump expire at once, so an in-flight batch may be redelivered
  (attempts 2) and its first ack is refused; batch windows close at once; the dedup TTL is
  measured in wall time, so content re-sent after a jump past the TTL is accepted as new.
- backward: events received "in the future" count as due (their batch window is not held
  open); a live consumer's lease is renewed from the new time; an abandoned lease, a retry
  back-off and the dedup TTL keep their length instead of stretching by the size of the jump.
"""

from __future__ import annotations

import asyncio
import collections
import time
from typing import Any

from eventqueue import EventQueue, PutStatus
from eventqueue.core.models import Event
from eventqueue.runtime.dispatch.dispatcher import Dispatcher

HOUR = 3600.0
EVENTS = 150
LEASE_S = 3.0  # renewals every second: the redelivery after a forward jump comes first
POLL_MS = 20


class JumpClock:
    """Wall time plus an offset: `jump(seconds)` steps it as an NTP correction would."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def jump(self, seconds: float) -> None:
        self.offset += seconds


async def test_jumps_of_hours_while_a_dispatcher_runs_lose_nothing(db_path: str) -> None:
    clock = JumpClock()
    handled: list[tuple[int, int]] = []
    slow_started = {"forward": asyncio.Event(), "backward": asyncio.Event()}
    jumped = {"forward": asyncio.Event(), "backward": asyncio.Event()}
    redelivered = asyncio.Event()

    async def handle(events: list[Event]) -> None:
        handled.extend((e.id, e.attempts) for e in events)

    async def slow(events: list[Event]) -> None:
        # One event per batch (its own name). Holds its lease across a jump. Forward: finishes only once another consumer has
        # been handed the same batch (its lease expired with the jump). Backward: finishes
        # after the jump, within its (now longer) lease.
        direction = events[0].name.removeprefix("slow_")
        handled.extend((e.id, e.attempts) for e in events)
        if events[0].attempts == 1:
            slow_started[direction].set()
            await (redelivered if direction == "forward" else jumped[direction]).wait()
        else:
            redelivered.set()

    async def source() -> Any:
        for i in range(EVENTS):
            if i in (EVENTS // 3, 2 * EVENTS // 3):
                direction = "forward" if i == EVENTS // 3 else "backward"
                yield {"event_name": f"slow_{direction}", "aggregate_id": i}
                await slow_started[direction].wait()
                clock.jump(2 * HOUR if direction == "forward" else -4 * HOUR)
                jumped[direction].set()
            yield {"event_name": f"job{i % 4}", "aggregate_id": i, "attributes": {"n": i}}

    async with EventQueue.open(
        db_path, clock=clock, batch_window_ms=20, lease_s=LEASE_S, poll_ms=POLL_MS
    ) as q:
        dispatcher = Dispatcher(q, concurrency=3, shutdown_grace_s=5)
        dispatcher.add_handler("slow_forward", slow)
        dispatcher.add_handler("slow_backward", slow)
        dispatcher.add_handler("*", handle)
        async with asyncio.timeout(30):  # stuck for hours would show up here
            await dispatcher.run(source())
        counts = (await q.stats()).counts

    assert set(counts) == {"done"}
    assert sum(counts["done"].values()) == EVENTS + 2
    assert redelivered.is_set()
    delivered = collections.defaultdict(list)
    for event_id, attempts in handled:
        delivered[event_id].append(attempts)
    assert len(delivered) == EVENTS + 2, "an event was never handled"
    for event_id, attempts in delivered.items():
        assert sorted(attempts) == list(range(1, len(attempts) + 1)), (event_id, attempts)


# --- with an injected clock that moves only when told ---------------------------------------


async def test_a_forward_jump_expires_leases_at_once_and_redelivers(open_queue, clock) -> None:
    q = await open_queue(batch_window_ms=0, lease_s=30)
    put = await q.put({"event_name": "job"})
    first = await q.claim()
    assert first is not None
    clock.advance(2 * HOUR)
    again = await q.claim()
    assert again is not None and again.ids == [put.id]
    assert again.events[0].attempts == 2


async def test_a_forward_jump_past_the_ttl_makes_content_new_again(open_queue, clock) -> None:
    # The TTL is wall time: the database is shared by processes and restarts, and wall time is
    # the only clock they share. A forward jump cannot be told from real time passing.
    q = await open_queue(dedup_ttl_s=300)
    first = await q.put({"event_name": "job"})
    clock.advance(2 * HOUR)
    assert (await q.put({"event_name": "job"})).status is PutStatus.ACCEPTED
    assert first.accepted


async def test_a_backward_jump_keeps_a_batch_window_short(open_queue, clock) -> None:
    q = await open_queue(batch_window_ms=100, max_batch_size=10)
    put = await q.put({"event_name": "job"})
    clock.advance(-2 * HOUR)
    batch = await q.claim()
    assert batch is not None and batch.ids == [put.id]


async def test_a_backward_jump_does_not_stretch_a_live_lease_renewal(open_queue, clock) -> None:
    q = await open_queue(batch_window_ms=0, lease_s=30)
    await q.put({"event_name": "job"})
    batch = await q.claim()
    assert batch is not None
    clock.advance(-2 * HOUR)
    await q.extend(batch)  # the holder renews: the lease runs lease_s from the new time
    clock.advance(31)
    again = await q.claim()
    assert again is not None and again.ids == batch.ids


async def test_a_backward_jump_does_not_hold_an_abandoned_lease_for_hours(
    open_queue, clock
) -> None:
    q = await open_queue(batch_window_ms=0, lease_s=30)
    put = await q.put({"event_name": "job"})
    assert await q.claim() is not None  # its consumer dies holding the lease
    clock.advance(-2 * HOUR)
    clock.advance(31)  # lease_s has passed since the claim
    again = await q.claim()
    assert again is not None and again.ids == [put.id]


async def test_a_backward_jump_does_not_hold_a_retry_for_hours(open_queue, clock) -> None:
    q = await open_queue(batch_window_ms=0, backoff_max_s=60)
    put = await q.put({"event_name": "job"})
    batch = await q.claim()
    assert batch is not None
    await q.nack(batch, "failed", retry_in=5)
    clock.advance(-2 * HOUR)
    clock.advance(6)  # the back-off has passed since the nack
    again = await q.claim()
    assert again is not None and again.ids == [put.id]


async def test_a_backward_jump_does_not_stretch_the_dedup_ttl(open_queue, clock) -> None:
    q = await open_queue(dedup_ttl_s=300)
    await q.put({"event_name": "job"})
    clock.advance(-2 * HOUR)
    clock.advance(301)  # the TTL has passed since the original
    assert (await q.put({"event_name": "job"})).status is PutStatus.ACCEPTED
