"""critical_latency: CRITICAL put-to-handler-start latency with NORMAL traffic on a backlog;
critical_latency_busy: the same while every non-reserved consumer is busy in a slow handler.
Both report the bare fsync of the same disk, measured in the same run, beside them."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

from eventqueue.core.config import Config
from eventqueue.core.models import Event, Priority
from eventqueue.runtime.dispatch.dispatcher import Dispatcher
from eventqueue.runtime.queue import EventQueue
from eventqueue.tools.bench import workload
from eventqueue.tools.bench.harness import CONCURRENCY, run_dispatcher
from eventqueue.tools.bench.measure import bare_fsync_s, percentile_ms, rate
from eventqueue.tools.bench.places import Places
from eventqueue.tools.bench.rows import Row, queue_pragmas, row
from eventqueue.tools.bench.sizes import Sizes

BACKGROUND_RATE = 5_000  # NORMAL events per second during critical_latency
CRITICAL_EVERY = 100  # one CRITICAL event per this many background events (50/s)
SLOW_HANDLER_S = 0.2  # critical_latency_busy: each NORMAL batch holds its consumer this long
TARGET_P99_MS, TARGET_P50_MS = 10.0, 3.0


class _Probe:
    """The paced source and the handler that times CRITICAL events, sharing their counts."""

    def __init__(self, sz: Sizes, *, busy: bool = False) -> None:
        self.sz = sz
        self.busy = busy
        self.latencies: list[float] = []
        self.criticals_put = 0
        self.background_put = 0
        self.source_done = asyncio.Event()
        self.caught_up = asyncio.Event()

    async def handler(self, events: list[Event]) -> None:
        """Record how long each CRITICAL event waited since its put started."""
        now = time.time()
        self.latencies.extend(
            now - e.received_at for e in events if e.priority == Priority.CRITICAL
        )
        if self.source_done.is_set() and len(self.latencies) >= self.criticals_put:
            self.caught_up.set()
        if self.busy and not any(e.priority == Priority.CRITICAL for e in events):
            await asyncio.sleep(SLOW_HANDLER_S)  # a slow NORMAL handler holds its consumer

    async def paced(self) -> AsyncIterator[dict[str, Any]]:
        """NORMAL events at BACKGROUND_RATE, one CRITICAL per CRITICAL_EVERY, in 5 ms ticks."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        try:
            while (elapsed := loop.time() - start) < self.sz.latency_seconds:
                for event in self._due(elapsed):
                    yield event
                await asyncio.sleep(0.005)
        finally:
            self.source_done.set()

    def _due(self, elapsed: float) -> Iterator[dict[str, Any]]:
        """The events due by `elapsed` seconds that were not yet sent."""
        while self.background_put < elapsed * BACKGROUND_RATE:
            n = self.sz.latency_backlog + self.background_put
            yield workload.make_event(n, duplicates=False, only=Priority.NORMAL)
            self.background_put += 1
            if self.background_put % CRITICAL_EVERY == 0:
                self.criticals_put += 1
                n = 10**9 + self.criticals_put
                yield workload.make_event(n, duplicates=False, only=Priority.CRITICAL)

    async def last_criticals(self) -> None:
        """Give the last CRITICAL events a moment (2 s at most) to reach the handler."""
        if len(self.latencies) < self.criticals_put:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.caught_up.wait(), 2.0)


async def critical_latency_scenario(
    sz: Sizes, base: Config, places: Places, *, busy: bool = False
) -> Row:
    """CRITICAL p50/p99 from put to handler start while NORMAL events arrive on a backlog
    (`busy`: and every non-reserved consumer sits in a slow NORMAL handler)."""
    name = "critical_latency_busy" if busy else "critical_latency"
    config = await places.config(name)
    probe = _Probe(sz, busy=busy)
    fsync_s = await asyncio.to_thread(bare_fsync_s, places.tmp)
    async with EventQueue.open(config=config) as q:
        pragma_settings = await queue_pragmas(q)
        await workload.fill(q, sz.latency_backlog, only=Priority.NORMAL)
        seconds = await _measure(q, probe)
        from_metrics = q.metrics.latency_ms(Priority.CRITICAL)
        handed_over = q.metrics.outcomes["handed_over"]
        left = await q.outstanding()
    specific = {**pragma_settings, **_how(sz, busy)}
    figures = {"handed_over": handed_over, "metrics_p99_ms": from_metrics["p99_ms"]}
    return _latency_row(name, config, specific, probe, seconds, left, fsync_s, figures)


async def _measure(q: EventQueue, probe: _Probe) -> float:
    """Run the paced source through a Dispatcher; stop without draining the backlog. Seconds
    the source ran."""
    dispatcher = Dispatcher(q, concurrency=CONCURRENCY)
    dispatcher.add_handler("*", probe.handler)
    limit_s = probe.sz.latency_seconds + probe.sz.limit_s
    run = asyncio.create_task(run_dispatcher(dispatcher, probe.paced(), limit_s))
    start = time.perf_counter()
    await asyncio.wait_for(probe.source_done.wait(), limit_s)
    seconds = time.perf_counter() - start
    await probe.last_criticals()
    dispatcher.stop()
    await run
    return seconds


def _how(sz: Sizes, busy: bool) -> dict[str, Any]:
    return {
        "slow_normal_handler_s": SLOW_HANDLER_S if busy else None,
        "reserved_critical_consumers": 1,
        "backlog": sz.latency_backlog,
        "backlog_note": "NORMAL events put first; past queue_size they wait in the spill",
        "background_rate_per_s": BACKGROUND_RATE,
        "critical_every": CRITICAL_EVERY,
        "seconds": sz.latency_seconds,
        "consumers": CONCURRENCY,
        "measured": "handler start minus received_at (put start)",
    }


def _latency_row(
    name: str,
    config: Config,
    specific: dict[str, Any],
    probe: _Probe,
    seconds: float,
    left: int,
    fsync_s: list[float],
    figures: dict[str, Any],
) -> Row:
    latencies = probe.latencies
    p50, p99 = percentile_ms(latencies, 0.50), percentile_ms(latencies, 0.99)
    fsync_p99 = percentile_ms(fsync_s, 0.99)
    return row(
        name,
        config,
        specific,
        p50_ms=p50,
        p99_ms=p99,
        max_ms=round(max(latencies) * 1000, 3) if latencies else None,
        fsync_p50_ms=percentile_ms(fsync_s, 0.50),
        fsync_p99_ms=fsync_p99,
        p99_vs_fsync_p99=round(p99 / fsync_p99, 1) if p99 and fsync_p99 else None,
        criticals=probe.criticals_put,
        criticals_handled=len(latencies),
        background_rate_achieved=round(rate(probe.background_put, seconds), 1),
        pending_at_end=left,
        **figures,
        target=f"p99 <= {TARGET_P99_MS:g} ms, p50 <= {TARGET_P50_MS:g} ms",
        met=p99 is not None
        and p50 is not None
        and p99 <= TARGET_P99_MS
        and p50 <= TARGET_P50_MS
        and len(latencies) == probe.criticals_put,
    )
