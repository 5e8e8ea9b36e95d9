"""coalesce: 100 aggregates updated 100 times each (50 x 50 with --quick), with and without
coalescing (latest wins): handler calls and events/s with consumers running, and the cost of a
coalescing put against a plain one (put only, the same events and concurrency; target >= 0.8x).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

from eventqueue.core.config import Config
from eventqueue.runtime.queue import EventQueue
from eventqueue.tools.bench.harness import backlog_overrides
from eventqueue.tools.bench.measure import rate
from eventqueue.tools.bench.places import Places
from eventqueue.tools.bench.rows import Row, queue_pragmas, row
from eventqueue.tools.bench.sizes import Sizes

TARGET_RATIO = 0.8
PRODUCERS = 50  # concurrent put() callers: the writer's group commits gather them
CONSUMERS = 4
TURNS = 3  # put-only runs of each variant, alternating


def updates(aggregates: int, versions: int) -> list[dict[str, Any]]:
    """Each aggregate's versions, interleaved (a round of every aggregate, then the next)."""
    return [
        {
            "event_type": "entity_event",
            "event_name": "order_updated",
            "aggregate_id": f"order-{a}",
            "attributes": {"version": v, "total": v * 10 + a},
        }
        for v in range(versions)
        for a in range(aggregates)
    ]


async def coalesce_scenario(sz: Sizes, base: Config, places: Places) -> Row:
    """The `coalesce` row: both runs' handler calls and rates, and the put cost ratio."""
    side = {"tiny": 20, "quick": 50}.get(sz.mode, 100)  # the 100 x 100 in a full run
    events = updates(side, side)
    overrides = {**backlog_overrides(len(events)), "batch_window_ms": 0}
    runs: dict[str, dict[str, Any]] = {}
    variants = (("plain", "none"), ("coalescing", "aggregate_id"))
    # Put cost in turns (plain, coalescing, plain, ...), each on a fresh database, the median
    # of each: a busy machine slows both alike instead of whichever ran second.
    seconds: dict[str, list[float]] = {name: [] for name, _ in variants}
    for turn in range(1 if sz.mode == "tiny" else TURNS):
        for name, coalesce_by in variants:
            config = await places.config(f"coalesce_{name}_put{turn}", **overrides)
            async with EventQueue.open(config=config, coalesce_by=coalesce_by) as q:
                settings = await queue_pragmas(q)
                seconds[name].append(await _put_all(q, events))
    put_rates = {name: rate(len(events), statistics.median(s)) for name, s in seconds.items()}
    for name, coalesce_by in variants:
        config = await places.config(f"coalesce_{name}", **overrides)
        async with EventQueue.open(config=config, coalesce_by=coalesce_by) as q:
            runs[name] = await _under_load(q, events, sz.limit_s * 4)
    ratio = put_rates["coalescing"] / put_rates["plain"] if put_rates["plain"] else 0.0
    return row(
        "coalesce",
        config,
        {
            **settings,
            "aggregates": side,
            "versions": side,
            "producers": PRODUCERS,
            "put_turns": len(seconds["plain"]),
        },
        events_per_s=runs["coalescing"]["events_per_s"],
        baseline_events_per_s=runs["plain"]["events_per_s"],
        events=len(events),
        plain=runs["plain"] | {"put_events_per_s": round(put_rates["plain"], 1)},
        coalescing=runs["coalescing"] | {"put_events_per_s": round(put_rates["coalescing"], 1)},
        put_cost_ratio=round(ratio, 3),
        target=f"coalescing put >= {TARGET_RATIO}x a plain put",
        met=ratio >= TARGET_RATIO,
    )


async def _put_all(q: EventQueue, events: list[dict[str, Any]]) -> float:
    """Seconds to put `events` from PRODUCERS concurrent callers, one put() each."""
    started = time.perf_counter()
    await asyncio.gather(*(_produce(q, events[i::PRODUCERS]) for i in range(PRODUCERS)))
    return time.perf_counter() - started


async def _produce(q: EventQueue, events: list[dict[str, Any]]) -> None:
    for event in events:
        await q.put(event)


async def _under_load(q: EventQueue, events: list[dict[str, Any]], limit_s: float) -> Any:
    """Put everything while CONSUMERS claim and ack; handler calls and input events/s."""
    calls = batches = 0
    produced = asyncio.Event()

    async def consume() -> None:
        nonlocal calls, batches
        while True:
            batch = await q.next_batch("bench", timeout=0.05)
            if batch is not None:
                calls += len(batch)  # one handler call per event delivered
                batches += 1
                await q.ack(batch)
            elif produced.is_set() and await q.outstanding() == 0:
                return

    started = time.perf_counter()
    consumers = [asyncio.create_task(consume()) for _ in range(CONSUMERS)]
    await _put_all(q, events)
    produced.set()
    await asyncio.wait_for(asyncio.gather(*consumers), limit_s)
    seconds = time.perf_counter() - started
    return {
        "handler_calls": calls,
        "batches": batches,
        "superseded": (await q.stats()).superseded,
        "events_per_s": round(rate(len(events), seconds), 1),
        "seconds": round(seconds, 3),
    }
