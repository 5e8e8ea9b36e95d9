"""`eventqueue bench`: throughput and latency of the queue against raw sqlite3, as figures.

Every scenario runs in this one process on fresh database files in a temporary directory, and
(where one exists) against a raw `sqlite3` baseline doing the same work on the same schema with
the same PRAGMAs (bench_baseline.py). Sizes are fixed per mode and every wait is bounded, so a
run always stops by itself. Speed is reported here and never asserted by tests.

Scenarios (the JSON `scenario` names, in the order printed):
- put / put_many: 16 producers keeping 64 `put`s in flight each (or one `put_many` of 100
  each), events of ~300 bytes, 4 priorities, 20 % duplicates, room for all of them below
  EVENT_QUEUE_SIZE. Baseline: json + sha256 + INSERT OR IGNORE in group commits of 100.
- claim_ack_2k / _20k / _1m: claim + ack batches of MAX_BATCH_SIZE at a backlog of that many
  pending events (1m: full run only), as `q.claim()` + `q.ack()` and fused as
  `q.claim(ack=previous)`. Baseline: UPDATE … RETURNING (commit), then ack (commit).
- end_to_end: source → Dispatcher → no-op handlers, default settings.
- critical_latency: CRITICAL put-to-handler-start p50/p99 with NORMAL events arriving at
  5,000/s on top of a backlog.
- spill_put / promote: puts past a small EVENT_QUEUE_SIZE (spilled to disk), then promotion
  back into the table; "not available" for a queue without spill.
- memory: RSS at two checkpoints of the end_to_end run (events processed), and peak RSS.
Variants are measured in alternating rounds, each after an (untimed) sync of the page cache,
so a slow moment of the disk or a busy neighbour falls on the queue and the baseline alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import math
import os
import resource
import shutil
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from eventqueue.core.config import SETTINGS, Config
from eventqueue.core.models import Batch, Event, Priority
from eventqueue.runtime.dispatch.dispatcher import Dispatcher
from eventqueue.runtime.queue import EventQueue
from eventqueue.store.sqlite.pragmas import pragmas
from eventqueue.store.sqlite.store import SQLiteStore
from eventqueue.tools import bench_baseline as baseline

Row = dict[str, Any]
PRODUCERS = 16
PUTS_IN_FLIGHT = 64
PUT_MANY_SIZE = 100
BASELINE_GROUP = 100
DUPLICATE_SHARE = 0.2
BACKGROUND_RATE = 5_000  # NORMAL events per second during critical_latency
CRITICAL_EVERY = 100  # one CRITICAL event per this many background events (50/s)
CONCURRENCY = 4  # Dispatcher consumers


@dataclass(frozen=True, slots=True)
class Sizes:
    """How much work each scenario does in one mode; every wait is bounded."""

    mode: str
    put_events: int
    backlogs: tuple[tuple[str, int], ...]
    claim_events: int  # events claimed + acked per variant and backlog ...
    claim_seconds: float  # ... or at most this long
    memory_checkpoints: tuple[int, int]  # end_to_end runs this many events (the last)
    e2e_limit_s: float  # ... or stops after this long
    latency_backlog: int
    latency_seconds: float
    spill_events: int
    limit_s: float  # any other wait still going after this is given up


FULL = Sizes(
    mode="full",
    put_events=50_000,
    backlogs=(("claim_ack_2k", 2_000), ("claim_ack_20k", 20_000), ("claim_ack_1m", 1_000_000)),
    claim_events=2_000,
    claim_seconds=6.0,
    memory_checkpoints=(100_000, 1_000_000),
    e2e_limit_s=330.0,
    latency_backlog=20_000,
    latency_seconds=15.0,
    spill_events=50_000,
    limit_s=60.0,
)
QUICK = Sizes(
    mode="quick",
    put_events=5_000,
    backlogs=(("claim_ack_2k", 2_000), ("claim_ack_20k", 20_000)),
    claim_events=1_000,
    claim_seconds=2.0,
    memory_checkpoints=(20_000, 100_000),
    e2e_limit_s=40.0,
    latency_backlog=5_000,
    latency_seconds=3.0,
    spill_events=5_000,
    limit_s=15.0,
)
TINY = Sizes(  # hidden `--tiny`: every code path in a few seconds
    mode="tiny",
    put_events=1_000,
    backlogs=(("claim_ack_2k", 2_000), ("claim_ack_20k", 5_000)),
    claim_events=300,
    claim_seconds=1.0,
    memory_checkpoints=(1_000, 3_000),
    e2e_limit_s=15.0,
    latency_backlog=1_000,
    latency_seconds=1.0,
    spill_events=1_000,
    limit_s=10.0,
)


def sizes(*, quick: bool = False, tiny: bool = False) -> Sizes:
    """The sizes of a mode: full (default), --quick, or the hidden --tiny."""
    return TINY if tiny else QUICK if quick else FULL


# --- events -------------------------------------------------------------------------------------

_NORMAL_NAMES = ("order_created", "order_updated", "invoice_sent", "stock_changed")
_REGIONS = ("eu-west", "eu-central", "us-east", "us-west", "ap-south")
_PAD = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiu"  # ~300 bytes in all


def make_event(i: int, *, duplicates: bool = True, only: Priority | None = None) -> dict[str, Any]:
    """Event number `i`: ~300 bytes of canonical JSON; the default classifier gives it one of 4
    priorities (5 % CRITICAL, 20 % HIGH, 50 % NORMAL, 25 % LOW, or `only`). With `duplicates`,
    every fifth event repeats the content of the event three before it (20 % duplicates)."""
    content = i - 3 if duplicates and i % 5 == 4 else i
    slot = content % 20
    if only is not None:
        slot = {Priority.CRITICAL: 0, Priority.HIGH: 1, Priority.NORMAL: 5, Priority.LOW: 15}[only]
    event_type = "entity_event"
    if slot == 0:
        name = "payment_failed"  # CRITICAL
    elif slot < 5:
        event_type, name = "workflow_event", ("workflow_started", "workflow_step")[content % 2]
    elif slot < 15:
        name = _NORMAL_NAMES[content % 4]
    else:
        name = ("heartbeat", "metrics")[content % 2]  # LOW
    return {
        "event_type": event_type,
        "event_name": name,
        "aggregate_id": f"agg-{content:09d}",
        "event_id": f"evt-{i:012d}",
        "timestamp": 1_700_000_000.0 + i / 1000.0,
        "attributes": {
            "amount": content % 10_000,
            "currency": "EUR",
            "region": _REGIONS[content % 5],
            "status": "confirmed",
            "note": _PAD,
        },
    }


def _events(n: int, *, start: int = 0, **kwargs: Any) -> Iterator[dict[str, Any]]:
    return (make_event(i, **kwargs) for i in range(start, start + n))


async def _source(
    n: int, *, start: int = 0, duplicates: bool = True
) -> AsyncIterator[dict[str, Any]]:
    for event in _events(n, start=start, duplicates=duplicates):
        yield event


# --- measuring helpers --------------------------------------------------------------------------


def rss_mb() -> float:
    """Resident set size now, in MiB (Linux /proc; elsewhere the peak)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return peak_rss_mb()


def peak_rss_mb() -> float:
    """Peak resident set size of this process, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def _rate(events: int, seconds: float) -> float:
    return events / seconds if seconds > 0 else 0.0


def _percentile(samples: Sequence[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


_SYNCHRONOUS = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}


def _common_settings(config: Config) -> dict[str, Any]:
    return {
        "durability": config.durability,
        "pragmas": pragmas(config.durability, config.busy_timeout_ms),
        "max_batch_size": config.max_batch_size,
        "batch_window_ms": config.batch_window_ms,
        "commit_max_events": config.commit_max_events,
        "intake_size": config.intake_size,
        "queue_size": config.queue_size,
        "enable_dedup": config.enable_dedup,
        "enable_batching": config.enable_batching,
    }


async def _queue_pragmas(q: EventQueue) -> dict[str, Any]:
    """The journal mode and synchronous setting in force on the queue's connection."""
    store = q.store
    if not isinstance(store, SQLiteStore):
        return {}  # PRAGMAs are SQLite's
    synchronous = await store.pragma("synchronous")
    return {
        "journal_mode": await store.pragma("journal_mode"),
        "synchronous": _SYNCHRONOUS.get(int(synchronous), synchronous),
    }


async def _checked_settings(q: EventQueue, db: sqlite3.Connection) -> dict[str, Any]:
    """The PRAGMAs in force on the queue's connection; the baseline's must be the same."""
    ours = await _queue_pragmas(q)
    theirs = baseline.read_pragmas(db)
    theirs["synchronous"] = _SYNCHRONOUS.get(int(theirs["synchronous"]), theirs["synchronous"])
    if ours != {k: theirs[k] for k in ours}:
        raise RuntimeError(f"baseline PRAGMAs differ from the queue's: {theirs} vs {ours}")
    return ours


def _row(
    scenario: str,
    config: Config,
    specific: dict[str, Any],
    *,
    events_per_s: float | None = None,
    baseline_events_per_s: float | None = None,
    target: str = "",
    met: bool | None = None,
    **extra: Any,
) -> Row:
    row: Row = {"scenario": scenario, "available": True}
    if events_per_s is not None:
        row["events_per_s"] = round(events_per_s, 1)
    if baseline_events_per_s is not None:
        row["baseline_events_per_s"] = round(baseline_events_per_s, 1)
        if events_per_s is not None and baseline_events_per_s > 0:
            row["ratio"] = round(events_per_s / baseline_events_per_s, 3)
    row.update(extra)
    row["target"] = target
    row["met"] = met
    row["settings"] = {**_common_settings(config), **specific}
    return row


def _config(base: Config, path: Path, **overrides: Any) -> Config:
    known = {s.name for s in SETTINGS}
    return base.replace(db_path=str(path), **{k: v for k, v in overrides.items() if k in known})


def _backlog_overrides(backlog: int) -> dict[str, Any]:
    # Room for the whole backlog in the database (EVENT_QUEUE_SIZE bounds pending + claimed;
    # beyond it events would spill), big groups to load it fast, and no spilling on a busy lock.
    return {
        "queue_size": min(10_000_000, backlog + 10_000),
        "intake_size": 100_000,
        "commit_max_events": 10_000,
        "spill_after_ms": 60_000,
    }


async def _fill(q: EventQueue, n: int, *, start: int = 0, only: Priority | None = None) -> float:
    """Load `n` unique events (numbered from `start`) through put_many in lists of 1,000,
    8 lists in flight; seconds taken."""
    t0 = time.perf_counter()
    slots = asyncio.Semaphore(8)
    tasks: set[asyncio.Task[Any]] = set()

    async def put_many(events: list[dict[str, Any]]) -> None:
        try:
            await q.put_many(events)
        finally:
            slots.release()

    for offset in range(0, n, 1_000):
        count = min(1_000, n - offset)
        chunk = list(_events(count, start=start + offset, duplicates=False, only=only))
        await slots.acquire()
        task = asyncio.create_task(put_many(chunk))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks)
    return time.perf_counter() - t0


async def _run_dispatcher(
    dispatcher: Dispatcher, source: AsyncIterator[dict[str, Any]] | None, limit_s: float
) -> bool:
    """Run until done, or stop it gracefully after `limit_s`; True if it finished by itself."""
    task = asyncio.create_task(dispatcher.run(source))
    done, _ = await asyncio.wait({task}, timeout=limit_s)
    finished = bool(done)
    if not finished:
        dispatcher.stop()
        done, _ = await asyncio.wait({task}, timeout=10.0)
        if not done:
            dispatcher.force_stop()
    await task
    return finished


def _say(text: str) -> None:
    click.echo(text, err=True)


# --- put ----------------------------------------------------------------------------------------


async def _producers(q: EventQueue, events: Sequence[dict[str, Any]], counts: Counter[str]) -> None:
    async def producer(mine: Sequence[dict[str, Any]]) -> None:
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


async def _many_producers(
    q: EventQueue, events: Sequence[dict[str, Any]], counts: Counter[str]
) -> None:
    lists = [events[i : i + PUT_MANY_SIZE] for i in range(0, len(events), PUT_MANY_SIZE)]

    async def producer(mine: Sequence[Sequence[dict[str, Any]]]) -> None:
        for chunk in mine:
            for result in await q.put_many(chunk):
                counts[result.status.value] += 1

    await asyncio.gather(*(producer(lists[k::PRODUCERS]) for k in range(PRODUCERS)))


async def put_scenario(sz: Sizes, base: Config, tmp: Path) -> list[Row]:
    """put, put_many and the baseline in turn on their own files, in rounds, each round after
    a sync of the page cache, so the disk's moods fall on all three alike."""
    events = list(_events(sz.put_events))
    rounds = max(2, len(events) // 10_000)
    size = math.ceil(len(events) / rounds)
    variants: dict[str, Callable[[EventQueue, Sequence[dict[str, Any]], Counter[str]], Any]] = {
        "put": _producers,
        "put_many": _many_producers,
    }
    # Every event goes into the table, as in the baseline: room for all of them below
    # EVENT_QUEUE_SIZE (beyond it they would spill; spill_put measures that).
    configs = {
        name: _config(
            base, tmp / f"{name}.db", queue_size=max(base.queue_size, len(events) + 1_000)
        )
        for name in variants
    }
    seconds = dict.fromkeys([*variants, "baseline"], 0.0)
    counts: dict[str, Counter[str]] = {name: Counter() for name in variants}
    db = baseline.connect(
        str(tmp / "put-baseline.db"),
        durability=base.durability,
        busy_timeout_ms=base.busy_timeout_ms,
    )
    try:
        async with contextlib.AsyncExitStack() as stack:
            queues = {
                name: await stack.enter_async_context(EventQueue.open(config=config))
                for name, config in configs.items()
            }
            pragma_settings = await _checked_settings(queues["put"], db)
            for offset in range(0, len(events), size):
                chunk = events[offset : offset + size]
                await _settle()
                seconds["baseline"] += baseline.put(db, chunk, group=BASELINE_GROUP)
                for name, run in variants.items():
                    await _settle()
                    start = time.perf_counter()
                    await run(queues[name], chunk, counts[name])
                    seconds[name] += time.perf_counter() - start
    finally:
        db.close()
    base_rate = _rate(len(events), seconds["baseline"])
    rows: list[Row] = []
    for name in variants:
        rate = _rate(len(events), seconds[name])
        how = (
            {"producers": PRODUCERS, "puts_in_flight_each": PUTS_IN_FLIGHT}
            if name == "put"
            else {"producers": PRODUCERS, "put_many_size": PUT_MANY_SIZE, "in_flight_each": 1}
        )
        specific = {
            **pragma_settings,
            **how,
            "events": len(events),
            "rounds": rounds,
            "event_bytes": "~300",
            "duplicate_share": DUPLICATE_SHARE,
            "baseline": f"json + sha256 + INSERT OR IGNORE, commits of {BASELINE_GROUP}",
        }
        rows.append(
            _row(
                name,
                configs[name],
                specific,
                events_per_s=rate,
                baseline_events_per_s=base_rate,
                outcomes=dict(counts[name]),
                target=">= 1.0x baseline",
                met=rate >= base_rate,
            )
        )
    return rows


async def _settle() -> None:
    """Write back dirty pages (untimed) so the next measurement does not pay for the last."""
    await asyncio.to_thread(os.sync)


# --- claim + ack --------------------------------------------------------------------------------


def fused_claim_available() -> bool:
    """HOOK: True once `EventQueue.claim` takes `ack=` (the previous batch, acked in the claim's
    own transaction); the claim_ack rows then also report the fused rate."""
    return "ack" in inspect.signature(EventQueue.claim).parameters


async def _claim_ack(q: EventQueue, max_events: int, max_seconds: float) -> tuple[int, float]:
    done = 0
    start = time.perf_counter()
    while done < max_events and time.perf_counter() - start < max_seconds:
        batch = await q.claim("bench")
        if batch is None:
            break
        await q.ack(batch)
        done += len(batch)
    return done, time.perf_counter() - start


async def _claim_fused(q: EventQueue, max_events: int, max_seconds: float) -> tuple[int, float]:
    done = 0
    previous: Batch | None = None
    start = time.perf_counter()
    while done < max_events and time.perf_counter() - start < max_seconds:
        batch = await q.claim("bench", ack=previous)
        previous = batch
        if batch is None:
            break
        done += len(batch)
    if previous is not None:
        await q.ack(previous)
    return done, time.perf_counter() - start


async def claim_scenario(name: str, backlog: int, sz: Sizes, base: Config, tmp: Path) -> Row:
    """Claim + ack at a steady backlog: rounds of each variant in turn (queue, fused, raw), each
    round topped up again untimed, so the backlog stays near `backlog` and disk noise is shared."""
    config = _config(base, tmp / f"{name}.db", **_backlog_overrides(backlog))
    fused = fused_claim_available()
    async with EventQueue.open(config=config) as q:
        fill_s = await _fill(q, backlog)
    # The same backlog for every variant: copies of the closed (checkpointed) file. The
    # baseline's copy has the queue's schema, indexes and rows: the raw side claims the same data.
    fused_config = config.replace(db_path=str(tmp / f"{name}-fused.db"))
    if fused:
        shutil.copyfile(config.db_path, fused_config.db_path)
    base_path = tmp / f"{name}-baseline.db"
    shutil.copyfile(config.db_path, base_path)
    db = baseline.connect(
        str(base_path), durability=config.durability, busy_timeout_ms=config.busy_timeout_ms
    )
    totals: dict[str, list[float]] = {v: [0, 0.0] for v in ("separate", "fused", "baseline")}
    per_round = max(config.max_batch_size, min(500, backlog // 4))
    rounds = max(1, math.ceil(sz.claim_events / per_round))
    round_s = sz.claim_seconds / rounds
    next_event = backlog
    try:
        keys = baseline.pending_keys(db)
        # Every key's batch window has passed: what is pending is ready, as in a real backlog.
        await asyncio.sleep(config.batch_window_s + 0.05)
        async with contextlib.AsyncExitStack() as stack:
            q = await stack.enter_async_context(EventQueue.open(config=config))
            qf = (
                await stack.enter_async_context(EventQueue.open(config=fused_config))
                if fused
                else None
            )
            pragma_settings = await _checked_settings(q, db)
            for _ in range(rounds):
                claimed: dict[str, tuple[int, float]] = {}
                await _settle()
                claimed["separate"] = await _claim_ack(q, per_round, round_s)
                await _settle()
                claimed["baseline"] = baseline.claim_ack(
                    db,
                    keys,
                    batch_size=config.max_batch_size,
                    max_events=per_round,
                    max_seconds=round_s,
                )
                if qf is not None:
                    await _settle()
                    claimed["fused"] = await _claim_fused(qf, per_round, round_s)
                for variant, (n, seconds) in claimed.items():
                    totals[variant][0] += n
                    totals[variant][1] += seconds
                # Untimed: as many new events as each variant took, back into its backlog.
                await _fill(q, claimed["separate"][0], start=next_event)
                if qf is not None:
                    await _fill(qf, claimed["fused"][0], start=next_event)
                baseline.fill(
                    db, _events(claimed["baseline"][0], start=next_event, duplicates=False)
                )
                next_event += max(n for n, _ in claimed.values())
    finally:
        db.close()
    rate = _rate(int(totals["separate"][0]), totals["separate"][1])
    base_rate = _rate(int(totals["baseline"][0]), totals["baseline"][1])
    best = rate
    extra: dict[str, Any] = {}
    if fused:
        fused_rate = _rate(int(totals["fused"][0]), totals["fused"][1])
        best = max(rate, fused_rate)
        extra["fused_events_per_s"] = round(fused_rate, 1)
        extra["fused_ratio"] = round(fused_rate / base_rate, 3) if base_rate else None
    return _row(
        name,
        config,
        {
            **pragma_settings,
            "backlog": backlog,
            "batch_size": config.max_batch_size,
            "consumers": 1,
            "rounds": rounds,
            "events_per_round": per_round,
            "fill": (
                "put_many of 1,000, 8 in flight (queue_size, intake and group raised to fit);"
                " copied for the fused and baseline variants"
            ),
            "separate": "q.claim() then q.ack(batch): two transactions per batch",
            "fused": "q.claim(ack=previous): one transaction per batch",
            "baseline": "UPDATE … RETURNING of one key's next batch (commit), then ack (commit)",
        },
        events_per_s=rate,
        baseline_events_per_s=base_rate,
        events_claimed=int(totals["separate"][0]),
        baseline_events_claimed=int(totals["baseline"][0]),
        seconds=round(totals["separate"][1], 3),
        fill_s=round(fill_s, 2),
        target=">= 1.0x baseline (best of separate and fused)",
        met=best >= base_rate,
        **extra,
    )


# --- CRITICAL latency ---------------------------------------------------------------------------


async def critical_latency_scenario(sz: Sizes, base: Config, tmp: Path) -> Row:
    config = _config(base, tmp / "critical_latency.db")
    latencies: list[float] = []
    criticals_put = 0
    background_put = 0
    source_done = asyncio.Event()
    caught_up = asyncio.Event()

    async def handler(events: list[Event]) -> None:
        now = time.time()
        latencies.extend(now - e.received_at for e in events if e.priority == Priority.CRITICAL)
        if source_done.is_set() and len(latencies) >= criticals_put:
            caught_up.set()

    async def paced() -> AsyncIterator[dict[str, Any]]:
        # NORMAL events at BACKGROUND_RATE, one CRITICAL per CRITICAL_EVERY, in 5 ms ticks.
        nonlocal criticals_put, background_put
        loop = asyncio.get_running_loop()
        start = loop.time()
        n = sz.latency_backlog
        try:
            while (elapsed := loop.time() - start) < sz.latency_seconds:
                while background_put < elapsed * BACKGROUND_RATE:
                    yield make_event(n + background_put, duplicates=False, only=Priority.NORMAL)
                    background_put += 1
                    if background_put % CRITICAL_EVERY == 0:
                        criticals_put += 1
                        yield make_event(
                            10**9 + criticals_put, duplicates=False, only=Priority.CRITICAL
                        )
                await asyncio.sleep(0.005)
        finally:
            source_done.set()

    async with EventQueue.open(config=config) as q:
        pragma_settings = await _queue_pragmas(q)
        await _fill(q, sz.latency_backlog, only=Priority.NORMAL)
        dispatcher = Dispatcher(q, concurrency=CONCURRENCY)
        dispatcher.add_handler("*", handler)
        run = asyncio.create_task(
            _run_dispatcher(dispatcher, paced(), sz.latency_seconds + sz.limit_s)
        )
        start = time.perf_counter()
        await asyncio.wait_for(source_done.wait(), sz.latency_seconds + sz.limit_s)
        seconds = time.perf_counter() - start
        # Give the last CRITICAL events a moment, then stop without draining the backlog.
        if len(latencies) < criticals_put:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(caught_up.wait(), 2.0)
        dispatcher.stop()
        await run
        from_metrics = q.metrics.latency_ms(Priority.CRITICAL)
        left = await q.outstanding()
    p50 = round(_percentile(latencies, 0.50) * 1000, 3) if latencies else None
    p99 = round(_percentile(latencies, 0.99) * 1000, 3) if latencies else None
    return _row(
        "critical_latency",
        config,
        {
            **pragma_settings,
            "backlog": sz.latency_backlog,
            "backlog_note": "NORMAL events put first; past queue_size they wait in the spill",
            "background_rate_per_s": BACKGROUND_RATE,
            "critical_every": CRITICAL_EVERY,
            "seconds": sz.latency_seconds,
            "consumers": CONCURRENCY,
            "measured": "handler start minus received_at (put start)",
        },
        p50_ms=p50,
        p99_ms=p99,
        max_ms=round(max(latencies) * 1000, 3) if latencies else None,
        criticals=criticals_put,
        criticals_handled=len(latencies),
        background_rate_achieved=round(_rate(background_put, seconds), 1),
        pending_at_end=left,
        metrics_p99_ms=from_metrics["p99_ms"],
        target="p99 <= 5 ms",
        met=p99 is not None and p99 <= 5.0 and len(latencies) == criticals_put,
    )


# --- spill --------------------------------------------------------------------------------------


def spill_available(q: EventQueue) -> bool:
    """HOOK: whether this queue spills past EVENT_QUEUE_SIZE (`EventQueue.overflow`)."""
    return hasattr(q, "overflow")


def _not_available(scenario: str, why: str) -> Row:
    return {"scenario": scenario, "available": False, "note": why}


async def spill_scenarios(sz: Sizes, base: Config, tmp: Path) -> list[Row]:
    """Puts past a small EVENT_QUEUE_SIZE (they spill to disk); then, reopened with room for
    all of them, the promoter moving the spill log back into the table."""
    queue_size = min(1_000, sz.spill_events // 5)
    events = [make_event(i, duplicates=False) for i in range(sz.spill_events)]
    config = _config(base, tmp / "spill.db", queue_size=queue_size)
    counts: Counter[str] = Counter()
    async with EventQueue.open(config=config) as q:
        if not spill_available(q):
            why = "not available: this queue has no spill-to-disk overflow yet"
            return [_not_available("spill_put", why), _not_available("promote", why)]
        pragma_settings = await _queue_pragmas(q)
        start = time.perf_counter()
        await _producers(q, events, counts)
        put_s = time.perf_counter() - start
    spilled = counts["spilled"]
    if not spilled:
        why = f"not available: no put spilled (queue_size {queue_size}, {len(events)} puts)"
        return [_not_available("spill_put", why), _not_available("promote", why)]
    # Room for everything even below the promoter's low-water mark (half of queue_size).
    roomy = config.replace(queue_size=2 * (len(events) + queue_size))
    async with EventQueue.open(config=roomy) as q:
        waiting = q.overflow.pending()
        start = time.perf_counter()
        while q.overflow.pending() and time.perf_counter() - start < sz.limit_s:
            with contextlib.suppress(TimeoutError):  # each promotion sets the change event
                await asyncio.wait_for(q.changed_event().wait(), 0.05)
        promote_s = time.perf_counter() - start
        left = q.overflow.pending()
    specific = {
        **pragma_settings,
        "events": len(events),
        "producers": PRODUCERS,
        "puts_in_flight_each": PUTS_IN_FLIGHT,
    }
    return [
        _row(
            "spill_put",
            config,
            {**specific, "measured": f"puts into a queue full at {queue_size}: the rest spill"},
            events_per_s=_rate(len(events), put_s),
            outcomes=dict(counts),
        ),
        _row(
            "promote",
            roomy,
            {
                **specific,
                "measured": "spilled events promoted into the table after a reopen with room",
            },
            events_per_s=_rate(waiting - left, promote_s),
            promoted=waiting - left,
            left=left,
        ),
    ]


# --- end to end and memory ---------------------------------------------------------------------


def _count_label(n: int) -> str:
    return f"{n // 1_000_000}m" if n % 1_000_000 == 0 else f"{n // 1_000}k"


async def end_to_end_scenarios(sz: Sizes, base: Config, tmp: Path) -> list[Row]:
    """One run of source → Dispatcher → no-op handlers, default settings, the standard event
    mix: its rate is `end_to_end`; RSS at its two checkpoints (events processed: handled or
    suppressed as duplicates) and its peak are `memory`."""
    first, last = sz.memory_checkpoints
    config = _config(base, tmp / "end_to_end.db")
    handled = 0
    processed = 0
    samples: dict[int, float] = {}
    reached: dict[int, float] = {}
    duplicates: Callable[[], int] = lambda: 0  # noqa: E731
    start = time.perf_counter()

    def checkpoint() -> None:
        nonlocal processed
        processed = handled + duplicates()
        for mark in (first, last):
            if processed >= mark and mark not in samples:
                samples[mark] = rss_mb()
                reached[mark] = time.perf_counter() - start

    async def noop(events: list[Event]) -> None:
        nonlocal handled
        handled += len(events)
        checkpoint()

    start_rss = rss_mb()
    async with EventQueue.open(config=config) as q:
        metrics = q.metrics
        duplicates = lambda: metrics.outcomes["duplicate"]  # noqa: E731
        settings = await _queue_pragmas(q)
        dispatcher = Dispatcher(q, concurrency=CONCURRENCY)
        dispatcher.add_handler("*", noop)
        start = time.perf_counter()
        finished = await _run_dispatcher(dispatcher, _source(last), sz.e2e_limit_s)
        seconds = time.perf_counter() - start
        checkpoint()
        for mark in (first, last):  # not reached in time: the figure at the stop (flagged)
            samples.setdefault(mark, rss_mb())
    specific = {
        **settings,
        "events": last,
        "duplicate_share": DUPLICATE_SHARE,
        "consumers": CONCURRENCY,
        "handlers": "one no-op batch handler for every name",
        "limit_s": sz.e2e_limit_s,
    }
    rate = _rate(processed, seconds)
    e2e = _row(
        "end_to_end",
        config,
        specific,
        events_per_s=rate,
        events_per_s_to_first_checkpoint=(
            round(_rate(first, reached[first]), 1) if first in reached else None
        ),
        processed=processed,
        handled=handled,
        duplicates=metrics.outcomes["duplicate"],
        spilled=metrics.outcomes["spilled"],
        avg_batch_size=metrics.as_dict()["avg_batch_size"],
        seconds=round(seconds, 2),
        finished=finished,
        target=">= 20000 events/s",
        met=rate >= 20_000,
    )
    growth = samples[last] / samples[first] - 1.0
    memory = _row(
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
        processed=processed,
        finished=finished,
        target=f"rss after {_count_label(last)} within 10% of after {_count_label(first)}",
        met=finished and growth <= 0.10,
    )
    if not finished:
        memory["note"] = e2e["note"] = (
            f"stopped after {sz.e2e_limit_s:.0f} s at {processed} events processed; "
            "a checkpoint not reached shows the figure at the stop"
        )
    return [e2e, memory]


# --- the run ------------------------------------------------------------------------------------


STEPS = ("end_to_end", "put", "claim_ack", "critical_latency", "spill")
ROW_ORDER = (
    "put",
    "put_many",
    "claim_ack_2k",
    "claim_ack_20k",
    "claim_ack_1m",
    "end_to_end",
    "critical_latency",
    "spill_put",
    "promote",
    "memory",
)


async def run(sz: Sizes, *, base: Config | None = None, only: Collection[str] = ()) -> list[Row]:
    """Every scenario (or those of `only`, from STEPS), rows in the order of the issue."""
    base = base if base is not None else Config.load()
    unknown = set(only) - set(STEPS)
    if unknown:
        raise click.UsageError(f"unknown scenario(s) {sorted(unknown)}; known: {STEPS}")
    wanted = set(only or STEPS)
    started = time.perf_counter()
    timed: dict[str, float] = {}
    rows: list[Row] = []
    last: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="eventqueue-bench-") as folder:
        tmp = Path(folder)

        async def step(label: str, work: Callable[[], Awaitable[Any]]) -> Any:
            _say(f"bench: {label} …")
            t0 = time.perf_counter()
            result = await work()
            timed[label] = round(time.perf_counter() - t0, 1)
            return result

        if "end_to_end" in wanted:  # first: memory is measured on a fresh process heap
            last.extend(await step("end_to_end", lambda: end_to_end_scenarios(sz, base, tmp)))
        if "put" in wanted:
            rows.extend(await step("put", lambda: put_scenario(sz, base, tmp)))
        for name, backlog in sz.backlogs if "claim_ack" in wanted else ():
            rows.append(
                await step(name, lambda: claim_scenario(name, backlog, sz, base, tmp))  # noqa: B023
            )
            _remove(tmp, name)  # free the disk before the next backlog
        if "critical_latency" in wanted:
            rows.append(
                await step("critical_latency", lambda: critical_latency_scenario(sz, base, tmp))
            )
        if "spill" in wanted:
            rows.extend(await step("spill", lambda: spill_scenarios(sz, base, tmp)))
    rows.extend(last)
    rows.sort(key=lambda row: ROW_ORDER.index(row["scenario"]))
    _flat_target(rows)
    for row in rows:
        if row["scenario"] == "memory":
            row["peak_rss_mb_whole_run"] = round(peak_rss_mb(), 1)
    for row in rows:
        row["mode"] = sz.mode
    _say(f"bench: done in {time.perf_counter() - started:.1f} s ({timed})")
    return rows


def _remove(folder: Path, prefix: str) -> None:
    for path in folder.glob(f"{prefix}*"):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _best(row: Row) -> float:
    return max(float(row["events_per_s"]), float(row.get("fused_events_per_s") or 0.0))


def _flat_target(rows: list[Row]) -> None:
    """Claims must stay flat with backlog: the largest backlog's rate ≥ 0.9× the 2k rate
    (each the best of separate and fused claim + ack)."""
    claims = [r for r in rows if r["scenario"].startswith("claim_ack_")]
    if len(claims) < 2:
        return
    small, large = claims[0], claims[-1]
    flat = _best(large) / _best(small) if _best(small) else 0.0
    large["vs_2k"] = round(flat, 3)
    large["target"] = f"{large['target']}; >= 0.9x the 2k rate"
    large["met"] = bool(large["met"]) and flat >= 0.9


# --- report -------------------------------------------------------------------------------------


def report(rows: list[Row], json_path: str | None, *, console: Console | None = None) -> None:
    """The table for people (and settings); `json_path` gets the rows as a JSON list."""
    if console is None:
        console = Console(highlight=False)
        if not console.is_terminal:
            console = Console(highlight=False, width=160)  # not 80 columns in a log or a pipe
    table = Table("scenario", "events/s", "baseline/s", "ratio", "figures", "target", "met")
    for row in rows:
        if not row.get("available", True):
            table.add_row(row["scenario"], "", "", "", row["note"], "", "")
            continue
        table.add_row(
            row["scenario"],
            _num(row.get("events_per_s")),
            _num(row.get("baseline_events_per_s")),
            f"{row['ratio']:.2f}x" if "ratio" in row else "",
            _figures(row),
            row.get("target", ""),
            {True: "yes", False: "NO", None: ""}[row.get("met")],
        )
    console.print(table)
    common: dict[str, Any] = next((r["settings"] for r in rows if "settings" in r), {})
    shared = ("durability", "journal_mode", "synchronous", "max_batch_size", "batch_window_ms")
    console.print(
        "settings: "
        + ", ".join(f"{k}={common[k]}" for k in shared if k in common)
        + f"; PRAGMAs on both sides: {'; '.join(common.get('pragmas', []))}",
        soft_wrap=True,
    )
    if json_path is not None:
        Path(json_path).write_text(json.dumps(rows, indent=2, allow_nan=False) + "\n")


def _num(value: Any) -> str:
    return "" if value is None else f"{value:,.0f}"


def _figures(row: Row) -> str:
    parts: list[str] = []
    if row.get("p99_ms") is not None:
        parts.append(f"p50 {row['p50_ms']:.2f} ms, p99 {row['p99_ms']:.2f} ms")
    if "fused_events_per_s" in row:
        parts.append(f"fused {row['fused_events_per_s']:,.0f}/s")
    if "vs_2k" in row:
        parts.append(f"{row['vs_2k']:.2f}x the 2k rate")
    rss = [(k, v) for k, v in row.items() if k.startswith("rss_mb_") and k != "rss_mb_start"]
    if rss:
        parts.append(", ".join(f"{k[len('rss_mb_') :]} {v:.0f} MB" for k, v in rss))
        parts.append(f"peak {row['peak_rss_mb']:.0f} MB")
    if "avg_batch_size" in row:
        parts.append(f"avg batch {row['avg_batch_size']}")
    if "events_claimed" in row:
        parts.append(f"{row['events_claimed']} events in {row['seconds']} s")
    return "; ".join(parts)
