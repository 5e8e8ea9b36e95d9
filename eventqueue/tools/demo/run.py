"""`run_demo` and its steps: the database, the server and queue, the dispatch, the runtime report.

The database: a new SQLite file (in a fresh temporary folder, or at `--db PATH`), or for
`--db postgresql://...` a new schema `eqdemo_<random>` in that database, selected by libpq's
`options=-csearch_path=...` in the URL, its spill folder in a fresh temporary folder. The demo
never writes to anything that existed before it; the schema is kept afterwards for looking
inside, and the report says how to drop it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shlex
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import click
from rich.console import Console

from eventqueue.core.config import Config
from eventqueue.core.errors import ConfigError
from eventqueue.core.models import Priority
from eventqueue.runtime.dispatch.dispatcher import Dispatcher
from eventqueue.runtime.queue import EventQueue
from eventqueue.store import backend_of, raw_tools
from eventqueue.tools.demo.handlers import add_sample_handlers
from eventqueue.tools.demo.live import ProgressView, snapshot, watch
from eventqueue.tools.demo.report import CRITICAL_TARGET_P99_MS, print_report
from eventqueue.tools.demo.stream import (
    CountedSource,
    Stream,
    coalesce_updates,
    paced,
    synthetic_stream,
)
from eventqueue.tools.demo.verify import example_queries, verify
from eventqueue.tools.sse_server import SSEServer

DEFAULT_EVENTS = 2000
DEFAULT_RATE = 2000.0
DEFAULT_SECONDS = 60.0
SCRATCH_PREFIX = "eqdemo_"
# Small retry settings so dead letters appear within a second; a queue bound that bursts exceed,
# so the spill to disk shows. The environment is ignored: the demo's checks assume these.
_SETTINGS: dict[str, Any] = {
    "max_attempts": 3,
    "backoff_base_s": 0.05,
    "backoff_max_s": 0.5,
}


@dataclass(frozen=True, slots=True)
class DemoOptions:
    """What `eventqueue demo` was asked for."""

    events: int = DEFAULT_EVENTS
    rate_per_s: float = DEFAULT_RATE
    seconds: float = DEFAULT_SECONDS
    db_path: str | None = None
    as_json: bool = False


async def run_demo(options: DemoOptions) -> int:
    """Run the demo; print the live view and the report; return 0, or 1 if a check failed."""
    path, spill_dir = await _database(options.db_path)
    stream = synthetic_stream(options.events, options.rate_per_s)
    if not options.as_json:
        click.echo(f"database: {_database_url(path)}")
    with _quiet_logs():
        report = await _run(options, path, spill_dir, stream)
    # The checks read through the backend's SQL console, which runs its own event loop.
    report["checks"] = await asyncio.to_thread(verify, path, stream, report)
    report["ok"] = all(check["ok"] for check in report["checks"])
    report["queries"] = example_queries(_shown(path))
    if spill_dir is not None:
        report["cleanup"] = drop_command(_shown(path))
    if options.as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        print_report(report)
    return 0 if report["ok"] else 1


async def _database(db_path: str | None) -> tuple[str, str | None]:
    """Where the demo runs: a new SQLite file (no spill folder of its own), or a new schema
    in the database of a PostgreSQL URL and a spill folder in a fresh temporary folder."""
    if db_path is None or backend_of(db_path) == "sqlite":
        return _database_path(db_path), None
    config = Config.load(env={}, db_path=db_path)
    url = await raw_tools(config).create_scratch(db_path, SCRATCH_PREFIX)
    return url, os.path.join(tempfile.mkdtemp(prefix="eventqueue-demo-"), "demo.spill")


def drop_command(url: str) -> str:
    """The psql line that drops the demo's schema (the URL's options select it)."""
    schema = url.rsplit("search_path%3D", 1)[-1]
    return f"psql {shlex.quote(url)} -c {shlex.quote(f'DROP SCHEMA {schema} CASCADE')}"


def _database_url(location: str) -> str:
    """Where the demo's data is, as `--db` takes it: for PostgreSQL the URL that reaches the
    demo's schema (`?schema=eqdemo_...`; psql lines keep libpq's options form, see `_shown`)."""
    if backend_of(location) == "sqlite":
        return location
    from eventqueue.store.postgres.urls import with_schema_parameter

    return with_schema_parameter(_shown(location))


def _shown(location: str) -> str:
    """`location` as printed: a URL's password is never shown (libpq reads PGPASSWORD)."""
    parts = urlsplit(location)
    if backend_of(location) == "sqlite" or parts.password is None:
        return location
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", "@")))


def _database_path(db_path: str | None) -> str:
    if db_path is None:
        return os.path.join(tempfile.mkdtemp(prefix="eventqueue-demo-"), "demo.db")
    path = os.path.abspath(db_path)
    if os.path.exists(path) or os.path.exists(f"{path}.spill"):
        raise ConfigError(
            f"{db_path} already exists: the demo needs a new file; remove it or choose another --db"
        )
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return path


@contextlib.contextmanager
def _quiet_logs() -> Iterator[None]:
    """The failing handlers are the point: their warnings belong in the report, not on stderr."""
    logger = logging.getLogger("eventqueue")
    handler, propagate = logging.NullHandler(), logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


async def _run(
    options: DemoOptions, path: str, spill_dir: str | None, stream: Stream
) -> dict[str, Any]:
    sent = len(stream.events)
    config = Config.load(
        env={}, db_path=path, spill_dir=spill_dir, queue_size=max(50, sent // 2), **_SETTINGS
    )
    disconnect = max(1, sent // 3)
    feed = paced(stream.events, options.rate_per_s)
    server = SSEServer(feed, disconnect_after=disconnect)
    async with server, EventQueue.open(config=config, coalesce_by=coalesce_updates) as queue:
        source = CountedSource(server.url, last_id=sent)
        t0 = time.monotonic()
        view = None if options.as_json else ProgressView(Console())
        in_time = await _dispatch(queue, source, options, view, t0)
        report = await _runtime_report(queue, source, sent, t0, in_time)
        report["stream"] = {
            "url": server.url,
            "connections": server.connections,
            "last_event_ids": server.last_event_ids_seen,
            "dropped_after": disconnect,
        }
    report["database"] = _database_url(path)
    return report


async def _dispatch(
    queue: EventQueue,
    source: CountedSource,
    options: DemoOptions,
    view: ProgressView | None,
    t0: float,
) -> bool:
    """Run until every event is finished or a signal stops it (True), or the deadline (False)."""
    # CRITICAL events come in bursts here (deploys failing together) and every consumer's
    # handler does simulated I/O: three reserved consumers take a burst as hand-offs.
    reserved = {Priority.CRITICAL: 3}
    dispatcher = Dispatcher(queue, concurrency=4, shutdown_grace_s=2.0, reserved=reserved)
    add_sample_handlers(dispatcher)
    running = asyncio.create_task(dispatcher.run(source, handle_signals=True))
    watcher = asyncio.create_task(watch(queue, source, options.events, t0, view)) if view else None
    try:
        done, _ = await asyncio.wait({running}, timeout=options.seconds)
        if not done:
            dispatcher.stop()  # graceful: in-flight batches finish, the rest stays pending
        await running
    finally:
        if watcher is not None and view is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            view.show(await snapshot(queue, source, options.events, t0))
            view.close()
    return bool(done)


async def _runtime_report(
    queue: EventQueue, source: CountedSource, sent: int, t0: float, in_time: bool
) -> dict[str, Any]:
    """The counts as the running queue saw them (checked against the database afterwards)."""
    metrics, outcomes = queue.metrics.as_dict(), queue.metrics.outcomes
    received, duplicates = source.total(), outcomes["duplicate"]
    finished = source.position == str(sent) and await queue.outstanding() == 0
    superseded = (await queue.stats()).superseded
    return {
        "finished": finished,
        "stopped_by": None if finished else "signal" if in_time else "deadline",
        "seconds": round(time.monotonic() - t0, 3),
        "events": {
            "sent": sent,
            "received": received,
            "accepted": received - duplicates,
            "duplicates_suppressed": duplicates,
            "spilled": outcomes["promoted"] + queue.overflow.pending(),
            "still_spilled": queue.overflow.pending(),  # only after a deadline stop
            "handled": outcomes["handled"],
            "retried": outcomes["retried"],
            "dead": outcomes["dead"],
            "handed_over": outcomes["handed_over"],  # CRITICAL, straight to a reserved consumer
            # order_updated versions folded into a pending event: handler calls saved
            "superseded": superseded,
        },
        "received_out_of_order": source.out_of_order,
        "reconnects": source.reconnects,
        "batches": {k: metrics[k] for k in ("batches", "avg_batch_size", "batches_by_key")},
        "latency_ms": metrics["latency"],
        "critical_target": critical_target(metrics["latency"]["CRITICAL"]),
    }


def critical_target(critical: dict[str, Any]) -> dict[str, Any]:
    """The plan's CRITICAL target beside the measured figures: met is None with no sample."""
    p99 = critical["p99_ms"]
    return {
        "p99_ms": CRITICAL_TARGET_P99_MS,
        "measured_p99_ms": p99,
        "n": critical["n"],
        "met": None if p99 is None else p99 <= CRITICAL_TARGET_P99_MS,
    }
