"""Prometheus metrics for a queue and its dispatcher (`pip install 'eventqueue[prometheus]'`).

Two kinds of figure, named after Prometheus' rules (base units, `_total`, `_seconds`):

- events as they happen (puts, acks, nacks, batches, latencies, claim and commit durations),
  pushed by the runtime through the `MetricsSink` hook of `runtime/metrics.py`;
- the state of the database (events by status and priority, oldest pending age, spill), read
  from `EventQueue.stats()` when Prometheus scrapes (at most once per `stats_max_age_s`), never
  per event.

`start_metrics_server(queue, port=...)` serves `/metrics` on 127.0.0.1 (pass `host="0.0.0.0"`
to be scraped from other hosts); `Dispatcher(..., metrics_port=...)` does it for a run.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from eventqueue.core.models import Priority, PutStatus, QueueStats, Status
from eventqueue.core.records import NewEvent

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from eventqueue.runtime.queue import EventQueue

log = logging.getLogger(__name__)

PREFIX = "eventqueue"
# Batch keys are handler names, a small set; past this many, the rest share one label value.
MAX_KEYS = 1000
OTHER_KEY = "_other"
SIZE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
# Receipt to handler start: fine below 10 ms (the CRITICAL target), coarse up to minutes.
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0
)  # fmt: skip
DURATION_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0
)  # fmt: skip
SETTLED = ("handled", "retried", "dead")


class PrometheusExporter:
    """The queue's figures as Prometheus metrics: a `MetricsSink` plus a scrape-time collector."""

    def __init__(
        self,
        queue: EventQueue,
        *,
        registry: CollectorRegistry | None = None,
        stats_max_age_s: float = 1.0,
        stats_timeout_s: float = 5.0,
    ) -> None:
        """`registry`: where to register (default: a new one, with process metrics)."""
        self.queue = queue
        if registry is None:
            registry = CollectorRegistry(auto_describe=True)
            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)
        self.registry = registry
        self._make_metrics(registry)
        self._keys: set[str] = set()
        self._state = _QueueState(queue, stats_max_age_s, stats_timeout_s)
        registry.register(self._state)

    def _make_metrics(self, registry: CollectorRegistry) -> None:
        put = Counter(
            f"{PREFIX}_events_put",
            "Events put, by outcome (accepted, duplicate, spilled) and priority.",
            ["outcome", "priority"],
            registry=registry,
        )
        self._put = {(s, int(p)): put.labels(s.value, p.name) for s in PutStatus for p in Priority}
        self._settled = {
            outcome: Counter(
                f"{PREFIX}_events_{outcome}",
                f"Events {_SETTLED_HELP[outcome]}, by batch key.",
                ["batch_key"],
                registry=registry,
            )
            for outcome in SETTLED
        }
        self._batch_size = Histogram(
            f"{PREFIX}_batch_size_events",
            "Events per batch handed to handlers, by batch key.",
            ["batch_key"],
            buckets=SIZE_BUCKETS,
            registry=registry,
        )
        latency = Histogram(
            f"{PREFIX}_receipt_to_handler_seconds",
            "Seconds from put to handler start (first attempts), by priority.",
            ["priority"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self._latency = {p: latency.labels(p.name) for p in Priority}
        self._claim = Histogram(
            f"{PREFIX}_claim_duration_seconds",
            "Seconds per claim transaction (acks folded into it included).",
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self._commit = Histogram(
            f"{PREFIX}_commit_duration_seconds",
            "Seconds per group-commit put transaction.",
            buckets=DURATION_BUCKETS,
            registry=registry,
        )

    # --- lifecycle ----------------------------------------------------------------------------

    def attach(self) -> None:
        """Start receiving the queue's figures (call on the queue's event loop)."""
        self._state.loop = asyncio.get_running_loop()
        self._state.loop_thread = threading.get_ident()
        self.queue.metrics.attach(self)

    def detach(self) -> None:
        """Stop receiving figures; the metrics keep their values."""
        self.queue.metrics.detach(self)

    async def refresh(self) -> None:
        """Read the queue's stats now (for a scrape served on the event loop's own thread)."""
        await self._state.refresh()

    # --- MetricsSink --------------------------------------------------------------------------

    def put(
        self, rows: Sequence[NewEvent], outcome: Sequence[tuple[PutStatus, int | None]]
    ) -> None:
        children = self._put
        for row, (status, _) in zip(rows, outcome, strict=True):
            children[status, row.priority].inc()

    def settled(self, outcome: str, batch_key: str, events: int) -> None:
        if events:
            self._settled[outcome].labels(self._key(batch_key)).inc(events)

    def batch(self, batch_key: str, size: int) -> None:
        self._batch_size.labels(self._key(batch_key)).observe(size)

    def latency(self, priority: Priority, seconds: float) -> None:
        self._latency[priority].observe(seconds)

    def claim(self, seconds: float, batches: int) -> None:
        self._claim.observe(seconds)

    def commit(self, seconds: float, events: int) -> None:
        self._commit.observe(seconds)

    def _key(self, key: str) -> str:
        if key in self._keys:
            return key
        if len(self._keys) >= MAX_KEYS:
            return OTHER_KEY
        self._keys.add(key)
        return key


_SETTLED_HELP = {
    "handled": "acked after their handler returned",
    "retried": "nacked and scheduled for another attempt",
    "dead": "nacked with their attempts used up (dead letters)",
}


class _QueueState:
    """A collector: the database's state from `EventQueue.stats()`, read at scrape time.

    Scrapes arrive on the HTTP server's thread; the read runs on the queue's event loop (one
    short read transaction) and is reused for `max_age_s`, so scrapes in quick succession cost
    one read.
    """

    def __init__(self, queue: EventQueue, max_age_s: float, timeout_s: float) -> None:
        self.queue = queue
        self.loop: asyncio.AbstractEventLoop | None = None
        self.loop_thread: int | None = None
        self._max_age_s = max_age_s
        self._timeout_s = timeout_s
        self._snapshot: QueueStats | None = None
        self._read_at = float("-inf")
        self._errors = 0
        self._lock = threading.Lock()

    async def refresh(self) -> None:
        self._keep(await self.queue.stats())

    def _keep(self, snapshot: QueueStats) -> None:
        self._snapshot, self._read_at = snapshot, time.monotonic()

    def _current(self) -> QueueStats | None:
        if time.monotonic() - self._read_at < self._max_age_s:
            return self._snapshot
        loop = self.loop
        if loop is None or threading.get_ident() == self.loop_thread or loop.is_closed():
            return self._snapshot  # never block the loop on itself: `refresh()` feeds it there
        try:
            future = asyncio.run_coroutine_threadsafe(self.queue.stats(), loop)
            self._keep(future.result(self._timeout_s))
        except (concurrent.futures.TimeoutError, concurrent.futures.CancelledError) as exc:
            self._failed(exc)
        except Exception as exc:  # a closed queue, a busy database: the last snapshot stays
            self._failed(exc)
        return self._snapshot

    def _failed(self, error: BaseException) -> None:
        self._errors += 1
        log.warning("metrics: reading the queue's stats failed: %r", error)

    def collect(self) -> Iterator[Metric]:
        with self._lock:  # concurrent scrapes share one read
            snapshot = self._current()
        errors = CounterMetricFamily(
            f"{PREFIX}_stats_errors", "Scrapes whose read of the queue's stats failed."
        )
        errors.add_metric([], self._errors)
        yield errors
        if snapshot is not None:
            yield from _state_metrics(snapshot)

    def describe(self) -> Iterator[Metric]:
        return iter(())  # families vary with the snapshot: not described up front


def _state_metrics(s: QueueStats) -> Iterator[Metric]:
    events = GaugeMetricFamily(
        f"{PREFIX}_events",
        "Events in the database by status and priority (done ones are kept for retention).",
        labels=["status", "priority"],
    )
    for status in Status:  # every combination, zeros included: no series comes and goes
        by_priority = s.counts.get(str(status), {})
        for priority in Priority:
            events.add_metric([str(status), priority.name], by_priority.get(priority.name, 0))
    yield events
    yield _gauge(
        "oldest_pending_age_seconds",
        "Seconds the oldest pending event has waited (0 when none is pending).",
        s.oldest_pending_age_s or 0.0,
    )
    yield _gauge("ready_batches", "Batch keys ready to be claimed now.", s.ready_batches)
    duplicates = CounterMetricFamily(
        f"{PREFIX}_duplicates_suppressed", "Duplicates absorbed by dedup (stored in the database)."
    )
    duplicates.add_metric([], s.duplicates_suppressed)
    yield duplicates
    superseded = CounterMetricFamily(
        f"{PREFIX}_superseded",
        "Versions coalesced into a pending event, latest wins (stored in the database).",
    )
    superseded.add_metric([], s.superseded)
    yield superseded
    yield _gauge(
        "intake_queued_events",
        "Events put and not yet committed or spilled.",
        s.metrics.get("intake_queued", 0),
    )
    yield from _spill_metrics(s.spill)
    yield from _key_limit_metrics(s.key_limits)


def _key_limit_metrics(uses: dict[str, dict[str, Any]]) -> Iterator[Metric]:
    in_flight = GaugeMetricFamily(
        f"{PREFIX}_key_in_flight_batches",
        "Batches of a limited batch key leased now (counted in the store, every process).",
        labels=["batch_key"],
    )
    held_back = CounterMetricFamily(
        f"{PREFIX}_key_claims_held_back",
        "Claims that found a limited batch key with pending work at its limit (in the store).",
        labels=["batch_key"],
    )
    for key, use in uses.items():
        in_flight.add_metric([key], use["in_flight"])
        held_back.add_metric([key], use["held_back"])
    yield in_flight
    yield held_back


def _spill_metrics(spill: dict[str, Any]) -> Iterator[Metric]:
    if not spill:
        return
    pending = GaugeMetricFamily(
        f"{PREFIX}_spill_events",
        "Events waiting in the spill log for promotion, by priority.",
        labels=["priority"],
    )
    for name, count in spill.get("pending", {}).items():
        pending.add_metric([name], count)
    yield pending
    yield _gauge("spill_bytes", "Bytes of spill log on disk.", spill.get("bytes_on_disk", 0))
    yield _gauge(
        "spill_oldest_age_seconds",
        "Seconds the oldest spilled event has waited (0 when none).",
        spill.get("oldest_spilled_age_s") or 0.0,
    )
    yield _gauge(
        "spill_quarantined_records",
        "Damaged spill records set aside (never silently skipped).",
        spill.get("quarantined_records", 0),
    )
    yield _gauge(
        "spill_quarantined_bytes", "Bytes of quarantined spill.", spill.get("quarantined_bytes", 0)
    )


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{PREFIX}_{name}", documentation, value=value)


# --- serving ------------------------------------------------------------------------------------


@dataclass
class MetricsServer:
    """`/metrics` served from a thread, for one exporter; `close()` stops it and detaches."""

    exporter: PrometheusExporter
    host: str
    port: int
    _server: WSGIServer
    _thread: threading.Thread

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving (waits for the server thread) and detach the exporter. Idempotent."""
        self.exporter.detach()
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()

    async def aclose(self) -> None:
        """`close()` off the event loop: a scrape in progress may be waiting on it."""
        await asyncio.to_thread(self.close)


def start_metrics_server(
    queue: EventQueue,
    *,
    port: int,
    host: str = "127.0.0.1",
    registry: CollectorRegistry | None = None,
) -> MetricsServer:
    """Attach an exporter to `queue` and serve `/metrics` on host:port (port 0: any free one).

    Binds 127.0.0.1 by default: only this machine can scrape. Call on the queue's event loop.
    """
    exporter = PrometheusExporter(queue, registry=registry)
    exporter.attach()
    try:
        server, thread = start_http_server(port, addr=host, registry=exporter.registry)
    except BaseException:
        exporter.detach()
        raise
    return MetricsServer(exporter, host, int(server.server_port), server, thread)
