"""end_to_end and memory: source → Dispatcher → no-op handlers, its rate and its resident set."""

from __future__ import annotations

import time
from typing import Any

from eventqueue.core.config import Config
from eventqueue.core.models import Event
from eventqueue.runtime.dispatch.dispatcher import Dispatcher
from eventqueue.runtime.metrics import Metrics
from eventqueue.runtime.queue import EventQueue
from eventqueue.tools.bench import telemetry, workload
from eventqueue.tools.bench.harness import CONCURRENCY, run_dispatcher
from eventqueue.tools.bench.measure import peak_rss_mb, rate, rss_mb
from eventqueue.tools.bench.places import Places
from eventqueue.tools.bench.rows import Row, queue_pragmas, row
from eventqueue.tools.bench.sizes import Sizes

E2E_TARGET_PER_S = 20_000


class _Progress:
    """Events processed (handled, or suppressed as duplicates) and the RSS at each checkpoint."""

    def __init__(self, marks: tuple[int, int], metrics: Metrics) -> None:
        self.marks = marks
        self.metrics = metrics
        self.handled = 0
        self.processed = 0
        self.samples: dict[int, float] = {}  # checkpoint -> RSS in MiB
        self.reached: dict[int, float] = {}  # checkpoint -> seconds from the start
        self.start = time.perf_counter()

    async def noop(self, events: list[Event]) -> None:
        """The handler: counts, and samples the RSS when a checkpoint is passed."""
        self.handled += len(events)
        self.checkpoint()

    def checkpoint(self) -> None:
        """Sample the RSS at each checkpoint just passed."""
        self.processed = self.handled + self.metrics.outcomes["duplicate"]
        for mark in self.marks:
            if self.processed >= mark and mark not in self.samples:
                self.samples[mark] = rss_mb()
                self.reached[mark] = time.perf_counter() - self.start

    def at_the_stop(self) -> None:
        """A checkpoint not reached in time gets the figure at the stop (the row is flagged)."""
        for mark in self.marks:
            self.samples.setdefault(mark, rss_mb())


async def end_to_end_scenarios(sz: Sizes, base: Config, places: Places) -> list[Row]:
    """One run of source → Dispatcher → no-op handlers, default settings, the standard event
    mix: its rate is `end_to_end`; RSS at its two checkpoints (events processed: handled or
    suppressed as duplicates) and its peak are `memory`."""
    config = await places.config("end_to_end")
    start_rss = rss_mb()
    async with EventQueue.open(config=config) as q:
        progress = _Progress(sz.memory_checkpoints, q.metrics)
        settings = await queue_pragmas(q)
        with telemetry.attached(q):  # a no-op unless --telemetry
            finished, seconds = await _measure(q, progress, sz)
        progress.at_the_stop()
    specific = {**settings, **_how(sz)}
    e2e = _e2e_row(config, specific, progress, seconds, finished=finished)
    e2e.update(round_figures(q, progress.processed))
    memory = _memory_row(config, specific, progress, start_rss, finished=finished)
    if not finished:
        memory["note"] = e2e["note"] = (
            f"stopped after {sz.e2e_limit_s:.0f} s at {progress.processed} events processed; "
            "a checkpoint not reached shows the figure at the stop"
        )
    return [e2e, memory]


async def _measure(q: EventQueue, progress: _Progress, sz: Sizes) -> tuple[bool, float]:
    """Run the whole source, or stop at the limit: (finished by itself, seconds)."""
    dispatcher = Dispatcher(q, concurrency=CONCURRENCY)
    dispatcher.add_handler("*", progress.noop)
    progress.start = time.perf_counter()
    source = workload.source(progress.marks[-1])
    finished = await run_dispatcher(dispatcher, source, sz.e2e_limit_s)
    seconds = time.perf_counter() - progress.start
    progress.checkpoint()
    return finished, seconds


def round_figures(q: EventQueue, processed: int) -> dict[str, Any]:
    """The SQLite round engine's profile over the run: commits per 1,000 events processed and
    p50/p99 per round of requests, sqlite3 steps and COMMIT time ({} on PostgreSQL)."""
    profile = getattr(q.store, "round_profile", None)
    if profile is None:
        return {}
    figures: dict[str, float] = profile()
    per_1000 = 1000.0 * figures["rounds"] / processed if processed else None
    return {
        "commits_per_1000_events": None if per_1000 is None else round(per_1000, 1),
        "rounds": int(figures["rounds"]),
        **{f"round_{k}": round(v, 3) for k, v in figures.items() if k != "rounds"},
    }


def _how(sz: Sizes) -> dict[str, Any]:
    return {
        "events": sz.memory_checkpoints[-1],
        "duplicate_share": workload.DUPLICATE_SHARE,
        "consumers": CONCURRENCY,
        "handlers": "one no-op batch handler for every name",
        "limit_s": sz.e2e_limit_s,
    }


def _e2e_row(
    config: Config, specific: dict[str, Any], progress: _Progress, seconds: float, *, finished: bool
) -> Row:
    first = progress.marks[0]
    metrics = progress.metrics
    events_per_s = rate(progress.processed, seconds)
    to_first = progress.reached.get(first)
    return row(
        "end_to_end",
        config,
        specific,
        events_per_s=events_per_s,
        events_per_s_to_first_checkpoint=(
            round(rate(first, to_first), 1) if to_first is not None else None
        ),
        processed=progress.processed,
        handled=progress.handled,
        duplicates=metrics.outcomes["duplicate"],
        spilled=metrics.outcomes["spilled"],
        avg_batch_size=metrics.as_dict()["avg_batch_size"],
        seconds=round(seconds, 2),
        finished=finished,
        target=f">= {E2E_TARGET_PER_S} events/s",
        met=events_per_s >= E2E_TARGET_PER_S,
    )


def _memory_row(
    config: Config,
    specific: dict[str, Any],
    progress: _Progress,
    start_rss: float,
    *,
    finished: bool,
) -> Row:
    first, last = progress.marks
    samples = progress.samples
    growth = samples[last] / samples[first] - 1.0
    return row(
        "memory",
        config,
        {
            **specific,
            "checkpoints": [first, last],
            "rss": "resident set when that many events had been processed end to end",
        },
        rss_mb_start=round(start_rss, 1),
        **{f"rss_mb_{_count_label(m)}": round(samples[m], 1) for m in (first, last)},
        rss_growth=round(growth, 4),
        peak_rss_mb=round(peak_rss_mb(), 1),
        processed=progress.processed,
        finished=finished,
        target=f"rss after {_count_label(last)} within 10% of after {_count_label(first)}",
        met=finished and growth <= 0.10,
    )


def _count_label(n: int) -> str:
    return f"{n // 1_000_000}m" if n % 1_000_000 == 0 else f"{n // 1_000}k"
