"""The run: the scenarios asked for, in order, on fresh files in one temporary directory, or
(`--db postgresql://...`) on scratch schemas of that server, dropped after each scenario."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable, Collection
from functools import partial
from pathlib import Path
from typing import TypeVar

import click

from eventqueue.core.config import Config
from eventqueue.store import backend_of
from eventqueue.tools.bench import telemetry as bench_telemetry
from eventqueue.tools.bench.measure import peak_rss_mb
from eventqueue.tools.bench.places import Places
from eventqueue.tools.bench.rows import Row
from eventqueue.tools.bench.scenarios.claim import claim_scenario
from eventqueue.tools.bench.scenarios.coalesce import coalesce_scenario
from eventqueue.tools.bench.scenarios.e2e import end_to_end_scenarios
from eventqueue.tools.bench.scenarios.groups import limited_scenario, ordered_scenario
from eventqueue.tools.bench.scenarios.hosts import hosts_scenarios
from eventqueue.tools.bench.scenarios.latency import (
    critical_latency_saturated_scenario,
    critical_latency_scenario,
)
from eventqueue.tools.bench.scenarios.loop import claim_loop_scenario
from eventqueue.tools.bench.scenarios.put import put_scenario
from eventqueue.tools.bench.scenarios.spill import spill_scenarios
from eventqueue.tools.bench.sizes import Sizes

T = TypeVar("T")

STEPS = (
    "end_to_end",
    "put",
    "claim_ack",
    "claim_loop",
    "critical_latency",
    "spill",
    "ordered",
    "limited",
    "coalesce",
    "hosts",
)
ROW_ORDER = (
    "put",
    "put_many",
    "claim_ack_2k",
    "claim_ack_20k",
    "claim_ack_1m",
    "claim_loop",
    "end_to_end",
    "critical_latency",
    "critical_latency_busy",
    "critical_latency_saturated",
    "hosts",
    "spill_put",
    "promote",
    "coalesce",
    "memory",
    "ordered",
    *(f"ordered_claims_{n}" for n in (1_000, 2_000, 5_000, 20_000, 1_000_000)),
    "limited",
)


async def run(
    sz: Sizes,
    *,
    base: Config | None = None,
    only: Collection[str] = (),
    db: str | None = None,
    telemetry: str | None = None,
) -> list[Row]:
    """Every scenario (or those of `only`, from STEPS), rows in the order of the issue.

    `db`: a PostgreSQL server's URL; each scenario then runs on scratch schemas there. Without
    it, SQLite files in a temporary folder. `telemetry`: "metrics", "tracing" or "all" on
    (bench/telemetry.py); rows then named "<scenario> +<telemetry>".
    """
    base = base if base is not None else Config.load()
    unknown = set(only) - set(STEPS)
    if unknown:
        raise click.UsageError(f"unknown scenario(s) {sorted(unknown)}; known: {STEPS}")
    if db is not None and backend_of(db) != "postgresql":
        raise click.UsageError(
            f"--db takes a postgresql:// URL, not {db!r}: the SQLite bench always runs on fresh "
            "files in a temporary folder (leave --db out)"
        )
    started = time.perf_counter()
    timed: dict[str, float] = {}
    on = bench_telemetry.session(telemetry) if telemetry else contextlib.nullcontext()
    with tempfile.TemporaryDirectory(prefix="eventqueue-bench-") as folder, on:
        where = Places(base, Path(folder), db)
        rows = await _scenarios(sz, base, where, set(only or STEPS), timed)
    _finish(rows, sz, where.backend)
    if telemetry:
        bench_telemetry.mark(rows, telemetry)
    _say(f"bench: done in {time.perf_counter() - started:.1f} s ({timed})")
    return rows


async def _scenarios(
    sz: Sizes, base: Config, where: Places, wanted: set[str], timed: dict[str, float]
) -> list[Row]:
    """The scenarios in `wanted`, each timed into `timed`; their rows in the order run."""
    tmp = where.tmp

    def step(label: str, scenario: Callable[[Places], Awaitable[T]]) -> Awaitable[T]:
        return _step(timed, label, Places(base, tmp, where.server), scenario)

    rows: list[Row] = []
    if "end_to_end" in wanted:  # first: memory is measured on a fresh process heap
        rows += await step("end_to_end", partial(end_to_end_scenarios, sz, base))
    if "put" in wanted:
        rows += await step("put", partial(put_scenario, sz, base))
    for name, backlog in sz.backlogs if "claim_ack" in wanted else ():
        rows.append(await step(name, partial(claim_scenario, name, backlog, sz, base)))
        _remove(tmp, name)  # free the disk before the next backlog
    if "critical_latency" in wanted:
        rows.append(await step("critical_latency", partial(critical_latency_scenario, sz, base)))
        busy = partial(critical_latency_scenario, sz, base, busy=True)
        rows.append(await step("critical_latency_busy", busy))
        sustained = next(
            (r.get("events_per_s") for r in rows if r["scenario"] == "end_to_end"), None
        )
        saturated = partial(
            critical_latency_saturated_scenario, sz, base, end_to_end_per_s=sustained
        )
        rows.append(await step("critical_latency_saturated", saturated))
    if "claim_loop" in wanted:
        rows.append(await step("claim_loop", partial(claim_loop_scenario, sz, base)))
    if "spill" in wanted:
        rows += await step("spill", partial(spill_scenarios, sz, base))
    if "ordered" in wanted:
        rows += await step("ordered", partial(ordered_scenario, sz, base))
    if "limited" in wanted:
        rows += await step("limited", partial(limited_scenario, sz, base))
    if "coalesce" in wanted:
        rows.append(await step("coalesce", partial(coalesce_scenario, sz, base)))
    if "hosts" in wanted and where.server is not None:  # several hosts: PostgreSQL only
        rows += await step("hosts", partial(hosts_scenarios, sz, base))
    return rows


async def _step(
    timed: dict[str, float], label: str, places: Places, scenario: Callable[[Places], Awaitable[T]]
) -> T:
    """Run `scenario` on `places`, announced on stderr; its seconds go into `timed[label]`.
    Its scratch schemas (PostgreSQL) are dropped afterwards, whatever happened."""
    _say(f"bench: {label} …")
    t0 = time.perf_counter()
    try:
        result = await scenario(places)
    finally:
        await places.close()
    timed[label] = round(time.perf_counter() - t0, 1)
    return result


def _finish(rows: list[Row], sz: Sizes, backend: str) -> None:
    """Sort the rows, add the flat-claim target, the whole run's peak RSS, mode and backend."""
    rows.sort(key=lambda row: ROW_ORDER.index(row["scenario"]))
    _flat_target(rows)
    for row in rows:
        if row["scenario"] == "memory":
            row["peak_rss_mb_whole_run"] = round(peak_rss_mb(), 1)
    for row in rows:
        row["mode"] = sz.mode
        row["backend"] = backend


def _say(text: str) -> None:
    click.echo(text, err=True)


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
