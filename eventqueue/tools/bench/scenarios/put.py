"""put / put_many: producers writing into the queue, against json + sha256 + INSERT OR IGNORE."""

from __future__ import annotations

import asyncio
import contextlib
import math
import sqlite3
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eventqueue.core.config import Config
from eventqueue.runtime.queue import EventQueue
from eventqueue.tools.bench import sqlite_baseline, telemetry, workload
from eventqueue.tools.bench.harness import bench_config
from eventqueue.tools.bench.measure import rate, settle
from eventqueue.tools.bench.rows import Row, checked_settings, row
from eventqueue.tools.bench.sizes import Sizes
from eventqueue.tools.bench.workload import DUPLICATE_SHARE

PRODUCERS = 16
PUTS_IN_FLIGHT = 64
PUT_MANY_SIZE = 100
BASELINE_GROUP = 100

Events = Sequence[dict[str, Any]]
Produce = Callable[[EventQueue, Events, Counter[str]], Awaitable[None]]


async def producers(q: EventQueue, events: Events, counts: Counter[str]) -> None:
    """PRODUCERS producers, each keeping PUTS_IN_FLIGHT `put`s going; outcomes into `counts`."""

    async def producer(mine: Events) -> None:
        # As a stream reader does: keep PUTS_IN_FLIGHT puts going, start one as one finishes.
        slots = asyncio.Semaphore(PUTS_IN_FLIGHT)
        tasks: set[asyncio.Task[None]] = set()

        async def put(event: dict[str, Any]) -> None:
            try:
                result = await q.put(event)
                counts[result.status.value] += 1
            finally:
                slots.release()

        for event in mine:
            await slots.acquire()
            task = asyncio.create_task(put(event))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.gather(*tasks)

    await asyncio.gather(*(producer(events[k::PRODUCERS]) for k in range(PRODUCERS)))


async def many_producers(q: EventQueue, events: Events, counts: Counter[str]) -> None:
    """PRODUCERS producers, each with one `put_many` of PUT_MANY_SIZE at a time."""
    lists = [events[i : i + PUT_MANY_SIZE] for i in range(0, len(events), PUT_MANY_SIZE)]

    async def producer(mine: Sequence[Events]) -> None:
        for chunk in mine:
            for result in await q.put_many(chunk):
                counts[result.status.value] += 1

    await asyncio.gather(*(producer(lists[k::PRODUCERS]) for k in range(PRODUCERS)))


VARIANTS: dict[str, Produce] = {"put": producers, "put_many": many_producers}


@dataclass(slots=True)
class _Timing:
    """Seconds per variant (and the baseline), outcomes per variant, the PRAGMAs in force."""

    seconds: dict[str, float] = field(
        default_factory=lambda: dict.fromkeys([*VARIANTS, "baseline"], 0.0)
    )
    counts: dict[str, Counter[str]] = field(
        default_factory=lambda: {n: Counter() for n in VARIANTS}
    )
    pragmas: dict[str, Any] = field(default_factory=dict)


async def put_scenario(sz: Sizes, base: Config, tmp: Path) -> list[Row]:
    """put, put_many and the baseline in turn on their own files, in rounds, each round after
    a sync of the page cache, so the disk's moods fall on all three alike."""
    puts = list(workload.events(sz.put_events))
    rounds = max(2, len(puts) // 10_000)
    # Every event goes into the table, as in the baseline: room for all of them below
    # EVENT_QUEUE_SIZE (beyond it they would spill; spill_put measures that).
    queue_size = max(base.queue_size, len(puts) + 1_000)
    configs = {n: bench_config(base, tmp / f"{n}.db", queue_size=queue_size) for n in VARIANTS}
    db = sqlite_baseline.connect(
        str(tmp / "put-baseline.db"),
        durability=base.durability,
        busy_timeout_ms=base.busy_timeout_ms,
    )
    try:
        timing = await _measure(configs, db, puts, rounds)
    finally:
        db.close()
    base_rate = rate(len(puts), timing.seconds["baseline"])
    return [_put_row(n, configs[n], timing, base_rate, len(puts), rounds) for n in VARIANTS]


async def _measure(
    configs: dict[str, Config], db: sqlite3.Connection, puts: Events, rounds: int
) -> _Timing:
    """`rounds` rounds of the baseline then each variant, on its own open queue."""
    timing = _Timing()
    size = math.ceil(len(puts) / rounds)
    async with contextlib.AsyncExitStack() as stack:
        queues = {
            name: await stack.enter_async_context(EventQueue.open(config=config))
            for name, config in configs.items()
        }
        for q in queues.values():
            stack.enter_context(telemetry.attached(q))  # --telemetry only
        timing.pragmas = await checked_settings(queues["put"], db)
        for offset in range(0, len(puts), size):
            await _round(queues, db, puts[offset : offset + size], timing)
    return timing


async def _round(
    queues: dict[str, EventQueue], db: sqlite3.Connection, chunk: Events, timing: _Timing
) -> None:
    """The baseline, then each variant, on `chunk`; each after a sync of the page cache."""
    await settle()
    timing.seconds["baseline"] += sqlite_baseline.put(db, chunk, group=BASELINE_GROUP)
    for name, produce in VARIANTS.items():
        await settle()
        start = time.perf_counter()
        await produce(queues[name], chunk, timing.counts[name])
        timing.seconds[name] += time.perf_counter() - start


def _put_row(
    name: str, config: Config, timing: _Timing, base_rate: float, n: int, rounds: int
) -> Row:
    how = (
        {"producers": PRODUCERS, "puts_in_flight_each": PUTS_IN_FLIGHT}
        if name == "put"
        else {"producers": PRODUCERS, "put_many_size": PUT_MANY_SIZE, "in_flight_each": 1}
    )
    specific = {
        **timing.pragmas,
        **how,
        "events": n,
        "rounds": rounds,
        "event_bytes": "~300",
        "duplicate_share": DUPLICATE_SHARE,
        "baseline": f"json + sha256 + INSERT OR IGNORE, commits of {BASELINE_GROUP}",
    }
    events_per_s = rate(n, timing.seconds[name])
    return row(
        name,
        config,
        specific,
        events_per_s=events_per_s,
        baseline_events_per_s=base_rate,
        outcomes=dict(timing.counts[name]),
        target=">= 1.0x baseline",
        met=events_per_s >= base_rate,
    )
