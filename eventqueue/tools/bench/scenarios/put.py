"""put / put_many: producers writing into the queue, against json + sha256 + INSERT OR IGNORE."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from eventqueue.core.config import Config
from eventqueue.runtime.queue import EventQueue
from eventqueue.store import Baseline, backend_of
from eventqueue.tools.bench import telemetry, workload
from eventqueue.tools.bench.measure import rate, settle
from eventqueue.tools.bench.places import Places
from eventqueue.tools.bench.rows import Row, checked_settings, row
from eventqueue.tools.bench.sizes import Sizes
from eventqueue.tools.bench.workload import DUPLICATE_SHARE

PRODUCERS = 16
PUTS_IN_FLIGHT = 64
PUT_MANY_SIZE = 100
BASELINE_GROUP = 100
_BASELINE_HOW = {
    "sqlite": f"json + sha256 + INSERT OR IGNORE, commits of {BASELINE_GROUP}",
    "postgresql": (
        f"asyncpg: json + sha256 + INSERT ... ON CONFLICT DO NOTHING, {BASELINE_GROUP} rows per"
        " statement and commit (unnest); baseline_single_row: one row per transaction"
    ),
}

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
        default_factory=lambda: dict.fromkeys([*VARIANTS, "baseline", "single_row"], 0.0)
    )
    counts: dict[str, Counter[str]] = field(
        default_factory=lambda: {n: Counter() for n in VARIANTS}
    )
    pragmas: dict[str, Any] = field(default_factory=dict)


async def put_scenario(sz: Sizes, base: Config, places: Places) -> list[Row]:
    """put, put_many and the baseline in turn on their own databases, in rounds, each round
    after a sync of the page cache, so the disk's moods fall on all three alike. Where the
    baseline measures one-row transactions too (PostgreSQL), those run on a database of their
    own."""
    puts = list(workload.events(sz.put_events))
    rounds = max(2, len(puts) // 10_000)
    # Every event goes into the table, as in the baseline: room for all of them below
    # EVENT_QUEUE_SIZE (beyond it they would spill; spill_put measures that).
    queue_size = max(base.queue_size, len(puts) + 1_000)
    configs = {n: await places.config(n, queue_size=queue_size) for n in VARIANTS}
    raws = [await places.raw("put-baseline")]
    try:
        if raws[0].single_row:
            raws.append(await places.raw("put-baseline-single"))
        timing = await _measure(configs, raws, puts, rounds)
    finally:
        for raw in raws:
            await raw.close()
    base_rate = rate(len(puts), timing.seconds["baseline"])
    single = rate(len(puts), timing.seconds["single_row"]) if len(raws) > 1 else None
    return [
        _put_row(n, configs[n], timing, (base_rate, single), len(puts), rounds) for n in VARIANTS
    ]


async def _measure(
    configs: dict[str, Config], raws: list[Baseline], puts: Events, rounds: int
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
        timing.pragmas = await checked_settings(queues["put"], raws[0])
        for offset in range(0, len(puts), size):
            await _round(queues, raws, puts[offset : offset + size], timing)
    return timing


async def _round(
    queues: dict[str, EventQueue], raws: list[Baseline], chunk: Events, timing: _Timing
) -> None:
    """The baseline(s), then each variant, on `chunk`; each after a sync of the page cache."""
    await settle()
    timing.seconds["baseline"] += await raws[0].put(chunk, group=BASELINE_GROUP)
    for single in raws[1:]:
        await settle()
        timing.seconds["single_row"] += await single.put_single(chunk) or 0.0
    for name, produce in VARIANTS.items():
        await settle()
        start = time.perf_counter()
        await produce(queues[name], chunk, timing.counts[name])
        timing.seconds[name] += time.perf_counter() - start


def _put_row(
    name: str,
    config: Config,
    timing: _Timing,
    base_rates: tuple[float, float | None],
    n: int,
    rounds: int,
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
        "baseline": _BASELINE_HOW[backend_of(config.db_path)],
    }
    base_rate, single = base_rates
    extra = {} if single is None else {"baseline_single_row_events_per_s": round(single, 1)}
    events_per_s = rate(n, timing.seconds[name])
    return row(
        name,
        config,
        specific,
        events_per_s=events_per_s,
        baseline_events_per_s=base_rate,
        outcomes=dict(timing.counts[name]),
        **extra,
        target=">= 1.0x baseline",
        met=events_per_s >= base_rate,
    )
