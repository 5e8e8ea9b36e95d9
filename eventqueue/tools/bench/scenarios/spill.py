"""spill_put / promote: puts past a small EVENT_QUEUE_SIZE, then promotion back into the table."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from eventqueue.core.config import Config
from eventqueue.runtime.queue import EventQueue
from eventqueue.tools.bench import workload
from eventqueue.tools.bench.measure import rate
from eventqueue.tools.bench.places import Places
from eventqueue.tools.bench.rows import Row, not_available, queue_pragmas, row
from eventqueue.tools.bench.scenarios.put import PRODUCERS, PUTS_IN_FLIGHT, producers
from eventqueue.tools.bench.sizes import Sizes


def spill_available(q: EventQueue) -> bool:
    """HOOK: whether this queue spills past EVENT_QUEUE_SIZE (`EventQueue.overflow`)."""
    return hasattr(q, "overflow")


@dataclass(frozen=True, slots=True)
class _Puts:
    """The puts into a full queue: outcomes, seconds, and the PRAGMAs in force."""

    counts: Counter[str]
    seconds: float
    pragmas: dict[str, Any]


@dataclass(frozen=True, slots=True)
class _Promotion:
    """Spilled events moved into the table (and left in the log) in `seconds`."""

    promoted: int
    left: int
    seconds: float


async def spill_scenarios(sz: Sizes, base: Config, places: Places) -> list[Row]:
    """Puts past a small EVENT_QUEUE_SIZE (they spill to disk); then, reopened with room for
    all of them, the promoter moving the spill log back into the table."""
    queue_size = min(1_000, sz.spill_events // 5)
    events = [workload.make_event(i, duplicates=False) for i in range(sz.spill_events)]
    config = await places.config("spill", queue_size=queue_size)
    puts = await _put_past_the_bound(config, events)
    if puts is None:
        return _unavailable("not available: this queue has no spill-to-disk overflow yet")
    if not puts.counts["spilled"]:
        why = f"not available: no put spilled (queue_size {queue_size}, {len(events)} puts)"
        return _unavailable(why)
    # Room for everything at once, so promotion runs in full chunks.
    roomy = config.replace(queue_size=2 * (len(events) + queue_size))
    promotion = await _promote(roomy, sz.limit_s)
    specific = {
        **puts.pragmas,
        "events": len(events),
        "producers": PRODUCERS,
        "puts_in_flight_each": PUTS_IN_FLIGHT,
    }
    return [
        _put_row(config, specific, puts, len(events), queue_size),
        _promote_row(roomy, specific, promotion),
    ]


def _unavailable(why: str) -> list[Row]:
    return [not_available("spill_put", why), not_available("promote", why)]


async def _put_past_the_bound(config: Config, events: list[dict[str, Any]]) -> _Puts | None:
    """Put every event into a queue bounded below their number; None if it cannot spill."""
    counts: Counter[str] = Counter()
    async with EventQueue.open(config=config) as q:
        if not spill_available(q):
            return None
        pragma_settings = await queue_pragmas(q)
        start = time.perf_counter()
        await producers(q, events, counts)
        put_s = time.perf_counter() - start
    return _Puts(counts, put_s, pragma_settings)


async def _promote(roomy: Config, limit_s: float) -> _Promotion:
    """Reopen with room and wait (at most `limit_s`) for the spill log to drain into the table."""
    async with EventQueue.open(config=roomy) as q:
        waiting = q.overflow.pending()
        start = time.perf_counter()
        while q.overflow.pending() and time.perf_counter() - start < limit_s:
            with contextlib.suppress(TimeoutError):  # each promotion sets the change event
                await asyncio.wait_for(q.changed_event().wait(), 0.05)
        promote_s = time.perf_counter() - start
        left = q.overflow.pending()
    return _Promotion(waiting - left, left, promote_s)


def _put_row(config: Config, specific: dict[str, Any], puts: _Puts, n: int, queue_size: int) -> Row:
    return row(
        "spill_put",
        config,
        {**specific, "measured": f"puts into a queue full at {queue_size}: the rest spill"},
        events_per_s=rate(n, puts.seconds),
        outcomes=dict(puts.counts),
    )


def _promote_row(roomy: Config, specific: dict[str, Any], promotion: _Promotion) -> Row:
    return row(
        "promote",
        roomy,
        {**specific, "measured": "spilled events promoted into the table after a reopen with room"},
        events_per_s=rate(promotion.promoted, promotion.seconds),
        promoted=promotion.promoted,
        left=promotion.left,
    )
