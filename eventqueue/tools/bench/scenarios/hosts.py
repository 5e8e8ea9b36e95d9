"""hosts (PostgreSQL only): N listener processes (1, 2 and 4) sharing one schema, each with
its own spill folder, the same total load split between them: source → Dispatcher → no-op
handlers in every process (host_worker.py). Reported per N: total events/s (events processed,
handled or suppressed as duplicates, from the common start to the last host's end), CRITICAL
receipt-to-handler p50/p99 over all hosts, each host's share of the handled events, and the
checks: nothing lost (every distinct event put was handled), nothing handled twice outside a
lease expiry (a second delivery always carries attempts > 1)."""

from __future__ import annotations

import asyncio
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from eventqueue.core.config import Config
from eventqueue.tools.bench import workload
from eventqueue.tools.bench.harness import CONCURRENCY
from eventqueue.tools.bench.measure import percentile_ms, rate
from eventqueue.tools.bench.places import Places
from eventqueue.tools.bench.rows import NOT_APPLICABLE, Row, row
from eventqueue.tools.bench.sizes import Sizes

HOSTS = (1, 2, 4)
TARGET_SCALE = 1.3  # 2 hosts >= 1.3x one host


async def hosts_scenarios(sz: Sizes, base: Config, places: Places) -> list[Row]:
    """One row per number of hosts; the 2-host row carries the scaling target."""
    total = 2 * sz.put_events
    rows: list[Row] = []
    for n in HOSTS:
        config = await places.config(f"hosts_{n}")
        reports = await _run_hosts(config, places.tmp / f"hosts_{n}", n, total, sz.limit_s * 10)
        rows.append(_row(config, n, total, reports))
    one = float(rows[0]["events_per_s"])
    for found in rows[1:]:
        found["vs_one_host"] = round(float(found["events_per_s"]) / one, 3) if one else None
    two = rows[1]
    two["target"] = f">= {TARGET_SCALE}x one host; nothing lost or handled twice"
    two["met"] = bool(two["met"]) and (two["vs_one_host"] or 0.0) >= TARGET_SCALE
    return rows


async def _run_hosts(
    config: Config, folder: Path, n: int, total: int, limit_s: float
) -> list[dict[str, Any]]:
    """Start `n` workers, wait until each is ready, say go to all, collect their reports."""
    await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
    share = total // n
    workers = []
    for host in range(n):
        command = [
            sys.executable,
            "-m",
            "eventqueue.tools.bench.scenarios.host_worker",
            config.db_path,
            str(folder / f"host{host}.spill"),
            str(host * share),
            str(share),
            str(folder / f"host{host}.json"),
        ]
        workers.append(
            await asyncio.create_subprocess_exec(
                *command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
            )
        )
    try:
        for worker in workers:
            assert worker.stdout is not None
            line = await asyncio.wait_for(worker.stdout.readline(), limit_s)
            if line.strip() != b"ready":
                raise RuntimeError(f"a hosts worker did not start: {line!r}")
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.write(b"go\n")
            await worker.stdin.drain()
        codes = await asyncio.wait_for(asyncio.gather(*(w.wait() for w in workers)), limit_s)
    finally:
        for worker in workers:
            if worker.returncode is None:
                worker.kill()
                await worker.wait()
    if any(codes):
        raise RuntimeError(f"hosts workers exited with {codes}")
    texts = [await asyncio.to_thread((folder / f"host{h}.json").read_text) for h in range(n)]
    return [json.loads(text) for text in texts]


def _content(event_id: str) -> int:
    """The content number of an event as handled: a repeat (every fifth event) carries the
    content of the event three before it, and whichever copy was stored first is the one
    delivered (a copy spilled while a later one was admitted is the duplicate)."""
    i = int(event_id.removeprefix("evt-"))
    return i - 3 if i % 5 == 4 else i


def _expected(n: int, total: int) -> set[int]:
    """The distinct contents the hosts put."""
    share = total // n
    return {
        _content(workload.make_event(i)["event_id"])
        for host in range(n)
        for i in range(host * share, host * share + share)
    }


def _row(config: Config, n: int, total: int, reports: list[dict[str, Any]]) -> Row:
    began = min(r["began"] for r in reports)
    ended = max(r["ended"] for r in reports)
    deliveries = [(_content(e), attempts) for r in reports for e, attempts in r["handled"]]
    counts = Counter(event for event, _ in deliveries)
    # A second delivery is allowed only as a redelivery: attempts > 1 (a lease expired).
    first_attempts = Counter(event for event, attempts in deliveries if attempts == 1)
    twice = sum(1 for c in first_attempts.values() if c > 1)
    lost = len(_expected(n, total) - set(counts))
    processed = len(deliveries) + sum(r["duplicates"] for r in reports)
    critical = [s for r in reports for s in r["critical_s"]]
    handled = [len(r["handled"]) for r in reports]
    events_per_s = rate(processed, ended - began)
    return row(
        "hosts",
        config,
        {
            **dict.fromkeys(("journal_mode", "synchronous"), NOT_APPLICABLE),  # SQLite's PRAGMAs
            "hosts": n,
            "events": total,
            "spill": "one folder per host",
            "consumers_per_host": CONCURRENCY,
        },
        events_per_s=events_per_s,
        hosts=n,
        processed=processed,
        handled=sum(handled),
        share=[round(h / sum(handled), 3) if sum(handled) else 0.0 for h in handled],
        critical_p50_ms=percentile_ms(critical, 0.50),
        critical_p99_ms=percentile_ms(critical, 0.99),
        redelivered=sum(c - 1 for c in counts.values() if c > 1),
        handled_twice_at_attempt_1=twice,
        lost=lost,
        seconds=round(ended - began, 2),
        target="nothing lost or handled twice",
        met=lost == 0 and twice == 0,
    )
