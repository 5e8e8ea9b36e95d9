"""claim_loop: the simplest consumer a user writes — `claim`, handle, `ack`, in a loop over
the public API — at a 20k backlog."""

from __future__ import annotations

import time

from eventqueue.core.config import Config
from eventqueue.runtime.queue import EventQueue
from eventqueue.tools.bench import workload
from eventqueue.tools.bench.harness import backlog_overrides
from eventqueue.tools.bench.measure import rate
from eventqueue.tools.bench.places import Places
from eventqueue.tools.bench.rows import Row, queue_pragmas, row
from eventqueue.tools.bench.sizes import Sizes

BACKLOG = 20_000
TARGET_PER_S = 10_000


async def claim_loop_scenario(sz: Sizes, base: Config, places: Places) -> Row:
    """Events per second through `claim()` + `ack()` one batch at a time, one consumer."""
    backlog = min(BACKLOG, sz.backlogs[-1][1])
    config = await places.config("claim_loop", **backlog_overrides(backlog))
    async with EventQueue.open(config=config, batch_window_ms=0) as q:
        pragma_settings = await queue_pragmas(q)
        await workload.fill(q, backlog)
        handled, seconds = await _loop(q, sz.claim_events * 2, sz.claim_seconds * 2)
    return row(
        "claim_loop",
        config,
        {**pragma_settings, "backlog": backlog, "consumers": 1, "api": "claim(); ack(batch)"},
        events_per_s=rate(handled, seconds),
        events=handled,
        target=f">= {TARGET_PER_S:,} events/s",
        met=rate(handled, seconds) >= TARGET_PER_S,
    )


async def _loop(q: EventQueue, events: int, limit_s: float) -> tuple[int, float]:
    handled = 0
    start = time.perf_counter()
    while handled < events and time.perf_counter() - start < limit_s:
        batch = await q.claim("loop")
        if batch is None:
            break
        handled += len(batch)
        await q.ack(batch)
    return handled, time.perf_counter() - start
