"""claim_ack_*: claim + ack at a steady backlog, separate and fused, against UPDATE … RETURNING."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import math
import time
from dataclasses import dataclass
from typing import Any

from eventqueue.core.config import Config
from eventqueue.core.models import Batch
from eventqueue.runtime.queue import EventQueue
from eventqueue.store import Baseline, backend_of
from eventqueue.tools.bench import workload
from eventqueue.tools.bench.harness import backlog_overrides
from eventqueue.tools.bench.measure import rate, settle
from eventqueue.tools.bench.places import Places
from eventqueue.tools.bench.rows import Row, checked_settings, row
from eventqueue.tools.bench.sizes import Sizes

# Per variant: [events, seconds] summed over the rounds.
Totals = dict[str, list[float]]
Claimed = dict[str, tuple[int, float]]

_FILL = {
    "sqlite": (
        "put_many of 1,000, 8 in flight (queue_size, intake and group raised to fit);"
        " copied for the fused and baseline variants"
    ),
    "postgresql": (
        "put_many of 1,000, 8 in flight (queue_size, intake and group raised to fit);"
        " the same events loaded again for the fused variant and the baseline (own schemas)"
    ),
}
_BASELINE_HOW = {
    "sqlite": "UPDATE … RETURNING of one key's next batch (commit), then ack (commit)",
    "postgresql": (
        "asyncpg: UPDATE … FROM (SELECT … FOR UPDATE SKIP LOCKED) RETURNING of one key's next"
        " batch (commit), then ack (commit)"
    ),
}


def fused_claim_available() -> bool:
    """HOOK: True once `EventQueue.claim` takes `ack=` (the previous batch, acked in the claim's
    own transaction); the claim_ack rows then also report the fused rate."""
    return "ack" in inspect.signature(EventQueue.claim).parameters


@dataclass(frozen=True, slots=True)
class _Plan:
    """Claims in `rounds` rounds of at most `per_round` events or `round_s` seconds each."""

    per_round: int
    rounds: int
    round_s: float


@dataclass(frozen=True, slots=True)
class _Sides:
    """The variants at work, each on its own copy of one backlog."""

    queue: EventQueue
    fused: EventQueue | None
    raw: Baseline
    batch_size: int


async def claim_scenario(name: str, backlog: int, sz: Sizes, base: Config, places: Places) -> Row:
    """Claim + ack at a steady backlog: rounds of each variant in turn (queue, fused, raw), each
    round topped up again untimed, so the backlog stays near `backlog` and disk noise is shared."""
    config = await places.config(name, **backlog_overrides(backlog))
    fused = fused_claim_available()
    async with EventQueue.open(config=config) as q:
        fill_s = await workload.fill(q, backlog)
    fused_config, raw = await _copy_backlog(config, name, places, backlog, fused=fused)
    plan = _plan(sz, backlog, config.max_batch_size)
    try:
        totals, pragma_settings = await _measure(config, fused_config, raw, plan, backlog)
    finally:
        await raw.close()
    how = _how(backlog, config.max_batch_size, plan, backend_of(config.db_path))
    specific = {**pragma_settings, **how}
    return _claim_row(name, config, specific, totals, fill_s, fused=fused)


async def _copy_backlog(
    config: Config, name: str, places: Places, backlog: int, *, fused: bool
) -> tuple[Config | None, Baseline]:
    """The fused variant's config and the baseline, each on a copy of the backlog."""
    # The same backlog for every variant: copies of the closed (checkpointed) file. The
    # baseline's copy has the queue's schema, indexes and rows: the raw side claims the same data.
    if places.copies_files:
        fused_config = places.copy(config, f"{name}-fused") if fused else None
        return fused_config, await places.raw(f"{name}-baseline", copy_of=config)
    # No file to copy (PostgreSQL): the same events loaded again into fresh databases.
    fused_config = None
    if fused:
        fused_config = await places.config(f"{name}-fused", **backlog_overrides(backlog))
        async with EventQueue.open(config=fused_config) as qf:
            await workload.fill(qf, backlog)
    raw = await places.raw(f"{name}-baseline")
    await raw.fill(workload.events(backlog, duplicates=False))
    return fused_config, raw


def _plan(sz: Sizes, backlog: int, batch_size: int) -> _Plan:
    per_round = max(batch_size, min(500, backlog // 4))
    rounds = max(1, math.ceil(sz.claim_events / per_round))
    return _Plan(per_round, rounds, sz.claim_seconds / rounds)


async def _measure(
    config: Config, fused_config: Config | None, raw: Baseline, plan: _Plan, backlog: int
) -> tuple[Totals, dict[str, Any]]:
    """Every round of every variant, each refilled after its round; the totals and PRAGMAs."""
    totals: Totals = {v: [0, 0.0] for v in ("separate", "fused", "baseline")}
    # Every key's batch window has passed: what is pending is ready, as in a real backlog.
    await asyncio.sleep(config.batch_window_s + 0.05)
    async with contextlib.AsyncExitStack() as stack:
        q = await stack.enter_async_context(EventQueue.open(config=config))
        qf = None
        if fused_config is not None:
            qf = await stack.enter_async_context(EventQueue.open(config=fused_config))
        pragma_settings = await checked_settings(q, raw)
        sides = _Sides(q, qf, raw, config.max_batch_size)
        next_event = backlog
        for _ in range(plan.rounds):
            claimed = await _round(sides, plan)
            for variant, (n, seconds) in claimed.items():
                totals[variant][0] += n
                totals[variant][1] += seconds
            await _refill(sides, claimed, next_event)
            next_event += max(n for n, _ in claimed.values())
    return totals, pragma_settings


async def _round(sides: _Sides, plan: _Plan) -> Claimed:
    """One round of each variant, each after a sync of the page cache: (events, seconds)."""
    claimed: Claimed = {}
    await settle()
    claimed["separate"] = await _claim_ack(sides.queue, plan.per_round, plan.round_s)
    await settle()
    claimed["baseline"] = await sides.raw.claim_ack(
        batch_size=sides.batch_size,
        max_events=plan.per_round,
        max_seconds=plan.round_s,
    )
    if sides.fused is not None:
        await settle()
        claimed["fused"] = await _claim_fused(sides.fused, plan.per_round, plan.round_s)
    return claimed


async def _refill(sides: _Sides, claimed: Claimed, start: int) -> None:
    """Untimed: as many new events as each variant took, back into its backlog."""
    await workload.fill(sides.queue, claimed["separate"][0], start=start)
    if sides.fused is not None:
        await workload.fill(sides.fused, claimed["fused"][0], start=start)
    more = workload.events(claimed["baseline"][0], start=start, duplicates=False)
    await sides.raw.fill(more)


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


def _how(backlog: int, batch_size: int, plan: _Plan, backend: str) -> dict[str, Any]:
    """The row's settings: the backlog, the rounds and what each variant does."""
    return {
        "backlog": backlog,
        "batch_size": batch_size,
        "consumers": 1,
        "rounds": plan.rounds,
        "events_per_round": plan.per_round,
        "fill": _FILL[backend],
        "separate": "q.claim() then q.ack(batch): two transactions per batch",
        "fused": "q.claim(ack=previous): one transaction per batch",
        "baseline": _BASELINE_HOW[backend],
    }


def _claim_row(
    name: str,
    config: Config,
    specific: dict[str, Any],
    totals: Totals,
    fill_s: float,
    *,
    fused: bool,
) -> Row:
    events_per_s = _rate_of(totals, "separate")
    base_rate = _rate_of(totals, "baseline")
    best = events_per_s
    extra: dict[str, Any] = {}
    if fused:
        fused_rate = _rate_of(totals, "fused")
        best = max(events_per_s, fused_rate)
        extra["fused_events_per_s"] = round(fused_rate, 1)
        extra["fused_ratio"] = round(fused_rate / base_rate, 3) if base_rate else None
    return row(
        name,
        config,
        specific,
        events_per_s=events_per_s,
        baseline_events_per_s=base_rate,
        events_claimed=int(totals["separate"][0]),
        baseline_events_claimed=int(totals["baseline"][0]),
        seconds=round(totals["separate"][1], 3),
        fill_s=round(fill_s, 2),
        target=">= 1.0x baseline (best of separate and fused)",
        met=best >= base_rate,
        **extra,
    )


def _rate_of(totals: Totals, variant: str) -> float:
    events, seconds = totals[variant]
    return rate(int(events), seconds)
