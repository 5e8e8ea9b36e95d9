"""Prometheus metrics (issue 13): /metrics scraped over HTTP from a running dispatcher on
127.0.0.1, its figures checked against the database with plain SQL.

No sleeps: the test waits for the database to say every event is settled (woken by the queue's
own change signal), then scrapes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from eventqueue import ConfigError, Dispatcher, EventQueue
from eventqueue.core.models import Event
from eventqueue.runtime.telemetry.prometheus import start_metrics_server

DEADLINE_S = 30
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """Every sample as (name, sorted labels) -> value."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of `name` over the samples whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, found), v in samples.items() if n == name and wanted <= set(found))


async def scrape(url: str) -> Samples:
    async with httpx.AsyncClient() as client:
        response = await client.get(url, timeout=10)
    response.raise_for_status()
    assert response.headers["content-type"].startswith("text/plain")
    return parse(response.text)


async def settled(q: EventQueue, events: int) -> None:
    """Until the database holds `events` events, all done or dead."""
    async with asyncio.timeout(DEADLINE_S):
        while True:
            changed = q.changed_event()  # taken before the read: no change is missed
            stats = await q.stats()
            if stats.count("done") + stats.count("dead") == events:
                return
            await changed.wait()


async def test_scraped_metrics_match_the_database(
    open_queue: Any, make_event: Callable[..., dict[str, Any]], query: Any
) -> None:
    q: EventQueue = await open_queue(batch_window_ms=0, max_attempts=1, backoff_base_s=0)
    d = Dispatcher(q, concurrency=2, metrics_port=0)
    batches: list[int] = []

    async def ok(events: list[Event]) -> None:
        batches.append(len(events))

    async def broken(events: list[Event]) -> None:
        batches.append(len(events))
        raise RuntimeError("boom")

    d.add_handlers({"order_created": ok, "payment_failed": ok, "broken": broken})
    sent = (
        [make_event("order_created", i) for i in range(30)]
        + [make_event("order_created", 0)]  # a duplicate
        + [make_event("payment_failed", i) for i in range(5)]  # CRITICAL
        + [make_event("broken", i) for i in range(4)]  # dead at once (max_attempts=1)
    )
    release = asyncio.Event()

    async def source() -> AsyncIterator[dict[str, Any]]:
        for e in sent:
            yield e
        await release.wait()  # keeps the dispatcher (and /metrics) up while the test scrapes

    running = asyncio.create_task(d.run(source()))
    try:
        await settled(q, 39)
        server = d.metrics_server
        assert server is not None and server.host == "127.0.0.1" and server.port > 0
        samples = await scrape(server.url)
    finally:
        release.set()
        async with asyncio.timeout(DEADLINE_S):
            await running

    put = "eventqueue_events_put_total"
    [(stored,)] = query("SELECT count(*) FROM events")
    assert total(samples, put, outcome="accepted") == stored == 39
    [(critical,)] = query("SELECT count(*) FROM events WHERE priority = 4")
    assert total(samples, put, outcome="accepted", priority="CRITICAL") == critical == 5
    [(duplicates,)] = query("SELECT value FROM counters WHERE name = 'duplicates_suppressed'")
    assert total(samples, put, outcome="duplicate") == duplicates == 1
    assert total(samples, "eventqueue_duplicates_suppressed_total") == duplicates
    assert total(samples, put, outcome="spilled") == 0

    for status, name in (("done", "eventqueue_events_handled_total"),
                         ("dead", "eventqueue_events_dead_total")):  # fmt: skip
        by_key = dict(
            query("SELECT batch_key, count(*) FROM events WHERE status = ? GROUP BY 1", (status,))
        )
        assert {k: total(samples, name, batch_key=k) for k in by_key} == by_key
        assert total(samples, name) == sum(by_key.values())
    assert total(samples, "eventqueue_events_dead_total", batch_key="broken-handler") == 4
    assert total(samples, "eventqueue_events_retried_total") == 0

    for status, priority, count in query(
        "SELECT status, priority, count(*) FROM events GROUP BY 1, 2"
    ):
        name = {1: "LOW", 2: "NORMAL", 3: "HIGH", 4: "CRITICAL"}[priority]
        assert total(samples, "eventqueue_events", status=status, priority=name) == count
    assert total(samples, "eventqueue_events", status="pending") == 0
    assert total(samples, "eventqueue_oldest_pending_age_seconds") == 0

    assert total(samples, "eventqueue_batch_size_events_count") == len(batches)
    assert total(samples, "eventqueue_batch_size_events_sum") == sum(batches) == 39
    assert total(samples, "eventqueue_receipt_to_handler_seconds_count") == 39
    assert total(samples, "eventqueue_receipt_to_handler_seconds_count", priority="CRITICAL") == 5
    assert total(samples, "eventqueue_claim_duration_seconds_count") >= len(batches) / 2
    assert total(samples, "eventqueue_commit_duration_seconds_count") >= 1
    assert total(samples, "eventqueue_spill_bytes") == 0
    assert total(samples, "eventqueue_stats_errors_total") == 0
    assert total(samples, "process_cpu_seconds_total") > 0

    # The run is over: the server is stopped and the exporter detached.
    assert d.metrics_server is None and q.metrics.sink is None
    with pytest.raises(httpx.TransportError):
        await scrape(server.url)


async def test_a_queue_without_a_dispatcher_serves_metrics_too(
    open_queue: Any, make_event: Callable[..., dict[str, Any]], query: Any
) -> None:
    q: EventQueue = await open_queue(batch_window_ms=0, queue_size=2)
    server = start_metrics_server(q, port=0)
    try:
        await q.put_many([make_event("job", i) for i in range(3)])  # the third one spills
        batch = await q.claim()
        assert batch is not None
        await q.nack(batch, "later", retry_in=60)
        samples = await scrape(server.url)
    finally:
        await server.aclose()

    put = "eventqueue_events_put_total"
    assert total(samples, put, outcome="accepted") == 2
    assert total(samples, put, outcome="spilled") == 1
    assert total(samples, "eventqueue_events_retried_total", batch_key="job-handler") == 2
    spilled = q.overflow.stats()
    assert total(samples, "eventqueue_spill_events") == spilled["total"]
    assert total(samples, "eventqueue_spill_bytes") == spilled["bytes_on_disk"]
    [(pending,)] = query("SELECT count(*) FROM events WHERE status = 'pending'")
    assert total(samples, "eventqueue_events", status="pending") == pending
    assert q.metrics.sink is None


@pytest.mark.parametrize("port", [-1, 65536])
async def test_a_metrics_port_out_of_range_is_refused(open_queue: Any, port: int) -> None:
    q: EventQueue = await open_queue()
    with pytest.raises(ConfigError, match="metrics_port"):
        Dispatcher(q, metrics_port=port)
