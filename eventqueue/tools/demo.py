"""`eventqueue demo`: a local SSE stream into a dispatcher, shown live, then checked with SQL.

A synthetic stream (bursts of similar events, exact re-sends, CRITICAL failures, LOW heartbeats,
HIGH workflow steps) is served on 127.0.0.1 and its first connection is dropped part-way, so the
source resumes with Last-Event-ID. Sample handlers include one that fails some first attempts
(retried, then done) and one that always fails (dead-lettered). Afterwards the report's counts
are verified against the database with plain SQL; a lost event makes the demo exit 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import shlex
import sqlite3
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import click
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table

from eventqueue.core.config import Config
from eventqueue.core.errors import ConfigError, PartialFailure
from eventqueue.core.models import Event, Priority
from eventqueue.core.priority import classify
from eventqueue.runtime.dispatch.dispatcher import Dispatcher
from eventqueue.runtime.queue import EventQueue
from eventqueue.runtime.sources import SSESource
from eventqueue.tools.sse_server import SSEServer

DEFAULT_EVENTS = 2000
DEFAULT_RATE = 2000.0
DEFAULT_SECONDS = 60.0
FLAKY = "invoice_generated"  # its handler fails a third of first attempts: retried, then done
BROKEN = "sync_error"  # its handler always fails: dead-lettered after max_attempts
# Small retry settings so dead letters appear within a second; a queue bound that bursts exceed,
# so the spill to disk shows. The environment is ignored: the demo's checks assume these.
_SETTINGS: dict[str, Any] = {
    "max_attempts": 3,
    "backoff_base_s": 0.05,
    "backoff_max_s": 0.5,
}
_WORK_S = 0.002  # simulated I/O per handler call and per event in it
_PRIORITIES = sorted(Priority, reverse=True)


@dataclass(frozen=True, slots=True)
class DemoOptions:
    """What `eventqueue demo` was asked for."""

    events: int = DEFAULT_EVENTS
    rate_per_s: float = DEFAULT_RATE
    seconds: float = DEFAULT_SECONDS
    db_path: str | None = None
    as_json: bool = False


# --- the synthetic stream -------------------------------------------------------------------


@dataclass(slots=True)
class Stream:
    """The events the server sends; `unique` maps each distinct event's seq to its name."""

    events: list[dict[str, Any]] = field(default_factory=list)
    unique: dict[int, str] = field(default_factory=dict)
    duplicates: int = 0


# event_type, event_name, aggregate_id, attributes
Content = tuple[str, str, str, dict[str, Any]]


def synthetic_stream(count: int, rate_per_s: float, seed: int = 7) -> Stream:
    """`count` events: episodes of realistic traffic, with ~6 % exact re-sends mixed in."""
    rng, stream, start = random.Random(seed), Stream(), time.time()
    while len(stream.events) < count:
        if stream.events and rng.random() < 0.06:
            # A re-send: the same content (what the hash covers), a new event_id and timestamp.
            stream.duplicates += 1
            original = rng.choice(stream.events[-50:])
            contents = [{k: v for k, v in original.items() if k not in ("event_id", "timestamp")}]
        else:
            contents = [_unique(stream, c) for c in _episode(rng)[: count - len(stream.events)]]
        for content in contents:
            n = len(stream.events) + 1
            when = datetime.fromtimestamp(start + n / rate_per_s, UTC)
            stamp = when.isoformat(timespec="milliseconds")
            stream.events.append({"event_id": f"evt-{n:06d}", "timestamp": stamp, **content})
    return stream


def _episode(rng: random.Random) -> list[Content]:
    roll, order = rng.random(), f"order-{rng.randint(1001, 1005)}"
    if roll < 0.40:  # a burst of similar events for one of a few aggregates
        name = rng.choice(("order_created", "order_updated", "inventory_reserved"))
        return [("entity_event", name, order, {"amount": rng.randint(5, 500)})] * rng.randint(4, 12)
    if roll < 0.62:
        name = rng.choice(("heartbeat", "metrics"))
        return [("system_event", name, "listener-1", {"lag_ms": rng.randint(0, 40)})]
    if roll < 0.78:
        step = rng.choice(("submitted", "approved", "shipped"))
        return [("workflow_event", "approval_step", f"wf-{rng.randint(1, 20)}", {"step": step})]
    if roll < 0.92:
        return [("entity_event", FLAKY, order, {"total": rng.randint(10, 900)})]
    if roll < 0.97:
        return [("entity_event", "payment_failed", order, {"reason": "card_declined"})]
    return [("system_event", BROKEN, "ledger", {"code": 409})]


def _unique(stream: Stream, content: Content) -> dict[str, Any]:
    """The event's fields with a `seq` attribute that makes its content distinct."""
    event_type, name, aggregate_id, attributes = content
    seq = len(stream.unique) + 1
    stream.unique[seq] = name
    body = {"event_type": event_type, "event_name": name, "aggregate_id": aggregate_id}
    return {**body, "attributes": {**attributes, "seq": seq}}


async def paced(events: list[dict[str, Any]], rate_per_s: float) -> AsyncIterator[dict[str, Any]]:
    """The events on a schedule at `rate_per_s`, the middle fifth as a spike at 5x the rate.

    Paced against the schedule, not by a sleep per event, so a busy loop does not slow it down.
    """
    loop = asyncio.get_running_loop()
    start, count = loop.time(), len(events)
    for i, event in enumerate(events):
        delay = start + _schedule_s(i, count, rate_per_s) - loop.time()
        await asyncio.sleep(delay if delay > 0 else 0)
        yield event


def _schedule_s(i: int, count: int, rate_per_s: float) -> float:
    """When event `i` is due, in seconds from the start."""
    spike_start, spike_end = int(count * 0.4), int(count * 0.6)
    before = min(i, spike_start) + max(0, i - spike_end)
    during = max(0, min(i, spike_end) - spike_start)
    return (before + during / 5) / rate_per_s


# --- the source and the handlers ------------------------------------------------------------


class CountedSource(SSESource):
    """The SSE source, counted by priority, ending after the server's last id (SSE never ends)."""

    def __init__(self, url: str, last_id: int) -> None:
        super().__init__(url, max_reconnects=20)
        self.last_id = last_id
        self.received: Counter[Priority] = Counter()
        self.out_of_order = 0  # ids that were not the previous id + 1: a gap or a repeat

    def total(self) -> int:
        """Events received so far."""
        return sum(self.received.values())

    async def __anext__(self) -> dict[str, Any]:
        if self.position == str(self.last_id):
            raise StopAsyncIteration
        event = await super().__anext__()
        if self.position != str(self.total() + 1):
            self.out_of_order += 1
        self.received[classify(event)] += 1
        return event


def add_sample_handlers(dispatcher: Dispatcher) -> None:
    """A catch-all that simulates I/O, a flaky invoice handler and a broken ledger sync."""
    dispatcher.add_handler("*", _record)
    dispatcher.add_handler(FLAKY, _send_invoices)
    dispatcher.add_handler(BROKEN, _sync_ledger)


async def _record(events: list[Event]) -> None:
    await asyncio.sleep(_WORK_S * (1 + len(events)))


async def _send_invoices(events: list[Event]) -> None:
    await _record(events)
    timed_out = {
        e.id: "invoice service timed out" for e in events if e.attempts == 1 and e.id % 3 == 0
    }
    if timed_out:
        raise PartialFailure(timed_out)  # the rest of the batch is done; these are retried


async def _sync_ledger(events: list[Event]) -> None:
    raise RuntimeError("ledger rejected the sync: 409 conflict")


# --- live progress --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Progress at one moment: received by priority, rows by status x priority, spill, dedup."""

    elapsed_s: float
    sent: int
    received: dict[str, int]
    counts: dict[str, dict[str, int]]
    spilled: int
    duplicates: int

    def count(self, status: str, priority: str | None = None) -> int:
        by_priority = self.counts.get(status, {})
        return by_priority.get(priority, 0) if priority else sum(by_priority.values())


class ProgressView:
    """A bar and a table by priority redrawn in place on a terminal, else a plain line a second."""

    def __init__(self, console: Console) -> None:
        self._live = Live(console=console, refresh_per_second=8) if console.is_terminal else None
        self._next_s = 0.0
        self._unshown: Snapshot | None = None
        if self._live is not None:
            self._live.start()

    def show(self, snapshot: Snapshot) -> None:
        """Draw `snapshot` (lines: at most one a second)."""
        if self._live is not None:
            self._live.update(_progress_table(snapshot))
            return
        self._unshown = snapshot
        if snapshot.elapsed_s >= self._next_s:
            self._next_s = snapshot.elapsed_s + 1.0
            self.close()

    def close(self) -> None:
        """Leave the last state on screen."""
        if self._live is not None:
            self._live.stop()
        elif self._unshown is not None:
            click.echo(_progress_line(self._unshown))
            self._unshown = None


def _progress_line(s: Snapshot) -> str:
    by_priority = "  ".join(
        f"{p.name} {s.count('done', p.name)}/{s.received.get(p.name, 0)}" for p in _PRIORITIES
    )
    return (
        f"[{s.elapsed_s:5.1f}s] received {sum(s.received.values())}/{s.sent}  "
        f"duplicates {s.duplicates}  spilled {s.spilled}  handled {s.count('done')}  "
        f"dead {s.count('dead')}  | handled/received: {by_priority}"
    )


def _progress_table(s: Snapshot) -> RenderableType:
    finished = s.duplicates + s.count("done") + s.count("dead")
    table = Table("priority", "received", "waiting", "handled", "dead")
    for p in _PRIORITIES:
        waiting = s.count("pending", p.name) + s.count("claimed", p.name)
        cells = (
            s.received.get(p.name, 0),
            waiting,
            s.count("done", p.name),
            s.count("dead", p.name),
        )
        table.add_row(p.name, *map(str, cells))
    head = (
        f"{s.elapsed_s:5.1f}s  received {sum(s.received.values())}/{s.sent}  "
        f"duplicates {s.duplicates}  spilled {s.spilled}  finished {finished}/{s.sent}"
    )
    return Group(head, ProgressBar(total=s.sent, completed=finished, width=60), table)


async def _snapshot(queue: EventQueue, source: CountedSource, sent: int, t0: float) -> Snapshot:
    stats = await queue.stats()
    return Snapshot(
        elapsed_s=time.monotonic() - t0,
        sent=sent,
        received={p.name: n for p, n in source.received.items()},
        counts=stats.counts,
        # Ever spilled = promoted since + still waiting (read from the spill log itself).
        spilled=queue.metrics.outcomes["promoted"] + queue.overflow.pending(),
        duplicates=stats.duplicates_suppressed,
    )


async def _watch(
    queue: EventQueue, source: CountedSource, sent: int, t0: float, view: ProgressView
) -> None:
    while True:
        view.show(await _snapshot(queue, source, sent, t0))
        await asyncio.sleep(0.1)


# --- the run --------------------------------------------------------------------------------


async def run_demo(options: DemoOptions) -> int:
    """Run the demo; print the live view and the report; return 0, or 1 if a check failed."""
    path = _database_path(options.db_path)
    stream = synthetic_stream(options.events, options.rate_per_s)
    if not options.as_json:
        click.echo(f"database: {path}")
    with _quiet_logs():
        report = await _run(options, path, stream)
    report["checks"] = verify(path, stream, report)
    report["ok"] = all(check["ok"] for check in report["checks"])
    report["queries"] = example_queries(path)
    if options.as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        print_report(report)
    return 0 if report["ok"] else 1


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


async def _run(options: DemoOptions, path: str, stream: Stream) -> dict[str, Any]:
    sent = len(stream.events)
    config = Config.load(env={}, db_path=path, queue_size=max(50, sent // 2), **_SETTINGS)
    disconnect = max(1, sent // 3)
    feed = paced(stream.events, options.rate_per_s)
    server = SSEServer(feed, disconnect_after=disconnect)
    async with server, EventQueue.open(config=config) as queue:
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
    report["database"] = path
    return report


async def _dispatch(
    queue: EventQueue,
    source: CountedSource,
    options: DemoOptions,
    view: ProgressView | None,
    t0: float,
) -> bool:
    """Run until every event is finished or a signal stops it (True), or the deadline (False)."""
    dispatcher = Dispatcher(queue, concurrency=4, shutdown_grace_s=2.0)
    add_sample_handlers(dispatcher)
    running = asyncio.create_task(dispatcher.run(source, handle_signals=True))
    watcher = asyncio.create_task(_watch(queue, source, options.events, t0, view)) if view else None
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
            view.show(await _snapshot(queue, source, options.events, t0))
            view.close()
    return bool(done)


async def _runtime_report(
    queue: EventQueue, source: CountedSource, sent: int, t0: float, in_time: bool
) -> dict[str, Any]:
    """The counts as the running queue saw them (checked against the database afterwards)."""
    metrics, outcomes = queue.metrics.as_dict(), queue.metrics.outcomes
    received, duplicates = source.total(), outcomes["duplicate"]
    finished = source.position == str(sent) and await queue.outstanding() == 0
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
        },
        "received_out_of_order": source.out_of_order,
        "reconnects": source.reconnects,
        "batches": {k: metrics[k] for k in ("batches", "avg_batch_size", "batches_by_key")},
        "latency_ms": metrics["latency"],
    }


# --- verification against the database ------------------------------------------------------


def _rows(path: str, query: str) -> list[Any]:
    """Plain sqlite3, read-only: the same view anyone has with the `sqlite3` shell."""
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as connection:
        return connection.execute(query).fetchall()


def verify(path: str, stream: Stream, report: dict[str, Any]) -> list[dict[str, Any]]:
    """Every sent event stored once and finished; the report's counts equal the database's."""
    stored = _rows(
        path,
        "SELECT json_extract(payload, '$.attributes.seq'), status, duplicates FROM events",
    )
    (counter,) = _rows(
        path, "SELECT coalesce(sum(value), 0) FROM counters WHERE name = 'duplicates_suppressed'"
    )[0]
    seqs = [seq for seq, _, _ in stored]
    status = Counter(s for _, s, _ in stored)
    dead = {seq for seq, s, _ in stored if s == "dead"}
    events = report["events"]
    # The stream check proves the events received are the first `received` of the stream.
    expected = {e["attributes"]["seq"] for e in stream.events[: events["received"]]}
    lost = expected - set(seqs)
    dups = (stream.duplicates, events["duplicates_suppressed"], counter, sum(d for *_, d in stored))
    doomed = {seq for seq in expected if stream.unique[seq] == BROKEN}
    stream_ok = events["received"] == events["sent"] and not report["received_out_of_order"]
    return [
        _check("every event received once, in order, across the reconnect", stream_ok,
               f"received {events['received']} of {events['sent']} over "
               f"{report['stream']['connections']} connections"),
        _check("no event lost", len(lost) <= events["still_spilled"],
               f"{len(expected) - len(lost)} of {len(expected)} distinct events received are "
               f"stored, {events['still_spilled']} wait in the spill log"),
        _check("no event stored twice", len(seqs) == len(set(seqs)), f"{len(seqs)} rows"),
        _check("every event finished (done or dead)", status["done"] + status["dead"] == len(seqs),
               f"{len(seqs) - status['done'] - status['dead']} unfinished"),
        _check("duplicates: sent = suppressed = counter = events.duplicates", len(set(dups)) == 1,
               " = ".join(map(str, dups))),
        _check("report counts = database (accepted, handled, dead)",
               (events["accepted"] - events["still_spilled"], events["handled"], events["dead"])
               == (len(seqs), status["done"], status["dead"]),
               f"rows {len(seqs)}, done {status['done']}, dead {status['dead']}"),
        _check(f"dead letters = the {BROKEN} events",
               dead == doomed if report["finished"] else dead <= doomed,
               f"{len(dead)} dead of {len(doomed)}"),
    ]  # fmt: skip


def _check(name: str, ok: bool, detail: str) -> dict[str, Any]:
    return {"name": name, "ok": bool(ok), "detail": detail}


def example_queries(path: str) -> list[dict[str, str]]:
    """Three ways to look inside: the overview, the dead letters, the retried events."""
    queries = [
        ("sqlite3", "select * from eq_overview"),
        ("sqlite3", "select id, event_name, attempts, last_error from eq_dead_letters"),
        (
            "eventqueue sql --db",
            "select id, json_extract(payload, '$.event_name') as event_name, status, attempts "
            "from events where attempts > 1 order by id limit 20",
        ),
    ]
    # Double quotes keep the SQL readable; "$." is not an expansion in a POSIX shell.
    return [
        {"tool": tool.split()[0], "sql": q, "command": f'{tool} {shlex.quote(path)} "{q}"'}
        for tool, q in queries
    ]


# --- the final report -----------------------------------------------------------------------


def print_report(report: dict[str, Any]) -> None:
    """The report for people: counts, batches, latency, checks, and where to look next."""
    console = Console(highlight=False, soft_wrap=True)
    state = (
        "finished"
        if report["finished"]
        else "stopped at the deadline (raise --seconds)"
        if report["stopped_by"] == "deadline"
        else "interrupted"
    )
    console.print(f"\n[bold]eventqueue demo[/bold] {state} in {report['seconds']:.1f}s")
    stream = report["stream"]
    resumed = ", ".join(str(i or "-") for i in stream["last_event_ids"])
    console.print(_pairs(report["events"]))
    console.print(
        f"stream: {stream['connections']} connections (the first dropped after "
        f"{stream['dropped_after']} events); Last-Event-ID per connection: {resumed}\n"
    )
    console.print(_batch_table(report["batches"]), _latency_table(report["latency_ms"]))
    for check in report["checks"]:
        mark = "[green]ok[/green]  " if check["ok"] else "[red]FAIL[/red]"
        console.print(f"{mark} {check['name']}: {check['detail']}")
    click.echo(f"\ndatabase: {report['database']}\nlook inside:")
    for query in report["queries"]:
        click.echo(f"  {query['command']}")


def _pairs(values: dict[str, Any]) -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column(justify="right")
    for name, value in values.items():
        table.add_row(name.replace("_", " "), str(value))
    return table


def _batch_table(batches: dict[str, Any]) -> Table:
    table = Table("batch key", "batches", "avg size", show_edge=False)
    for key, row in batches["batches_by_key"].items():
        table.add_row(key, str(row["batches"]), str(row["avg_size"]))
    table.add_row("all", str(batches["batches"]), str(batches["avg_batch_size"]), style="bold")
    return table


def _latency_table(latency: dict[str, dict[str, Any]]) -> Table:
    table = Table("priority", "deliveries", "p50 ms", "p99 ms", "max ms", show_edge=False)
    table.title = "latency, receipt to handler"
    table.caption = "first deliveries only: a retry's wait would measure its back-off"
    for name, row in latency.items():
        cells = ("-" if row[k] is None else f"{row[k]:.1f}" for k in ("p50_ms", "p99_ms", "max_ms"))
        table.add_row(name, str(row["n"]), *cells)
    return table
