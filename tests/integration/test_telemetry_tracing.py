"""OpenTelemetry spans (issue 13): a put's trace context is stored with its event and reaches
the handler's span across a restart and across a spill, checked with the SDK's in-memory
exporter and the `events.trace_context` column.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from eventqueue import Dispatcher, EventQueue
from eventqueue.core.models import Event
from eventqueue.runtime.telemetry import instrument, uninstrument

DEADLINE_S = 30
MakeEvent = Callable[..., dict[str, Any]]


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


def of_kind(exporter: InMemorySpanExporter, kind: SpanKind) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.kind is kind]


def span_id_in(trace_context: str) -> int:
    """The parent span id of a stored "traceparent[ tracestate]"."""
    version, _trace_id, span_id, _flags = trace_context.split(" ")[0].split("-")
    assert version == "00"
    return int(span_id, 16)


async def handle_all(q: EventQueue, handled: list[Event] | None = None, fail: str = "") -> None:
    """Run a dispatcher on `q` until the queue is empty."""
    d = Dispatcher(q, concurrency=1)

    async def handler(events: list[Event]) -> None:
        if handled is not None:
            handled.extend(events)
        if fail and any(e.name == fail for e in events):
            raise ValueError(f"{fail} is not welcome")

    d.add_handler("*", handler)
    async with asyncio.timeout(DEADLINE_S):
        await d.run()


async def test_consumer_span_is_a_child_of_the_put_across_a_restart(
    open_queue: Any, provider: TracerProvider, exporter: InMemorySpanExporter,
    make_event: MakeEvent, query: Any,
) -> None:  # fmt: skip
    first: EventQueue = await open_queue(batch_window_ms=0)
    instrument(first, provider)
    result = await first.put(make_event("order_created", 7))
    await first.close()
    [producer] = of_kind(exporter, SpanKind.PRODUCER)

    second: EventQueue = await open_queue(batch_window_ms=0)  # a new process, as far as it knows
    instrument(second, provider)
    await handle_all(second)

    [consumer] = of_kind(exporter, SpanKind.CONSUMER)
    made = producer.context
    assert made is not None and consumer.context is not None
    assert consumer.context.trace_id == made.trace_id
    assert consumer.parent is not None and consumer.parent.span_id == made.span_id
    assert [link.context.span_id for link in consumer.links] == [made.span_id]
    assert consumer.links[0].attributes == {"messaging.message.id": str(result.id)}
    [(stored,)] = query("SELECT trace_context FROM events WHERE id = ?", (result.id,))
    assert stored.startswith(f"00-{made.trace_id:032x}-{made.span_id:016x}-")

    assert producer.name == "send order_created-handler"
    assert producer.attributes == {
        "messaging.system": "eventqueue",
        "messaging.operation.type": "send",
        "messaging.operation.name": "send",
        "messaging.destination.name": "order_created-handler",
        "messaging.message.id": str(result.id),
        "eventqueue.put.outcome": "accepted",
        "eventqueue.priority": "NORMAL",
    }
    assert consumer.name == "process order_created-handler"
    assert consumer.attributes is not None
    assert consumer.attributes["messaging.operation.type"] == "process"
    assert consumer.attributes["messaging.destination.name"] == "order_created-handler"
    assert consumer.attributes["messaging.message.id"] == str(result.id)
    assert consumer.attributes["eventqueue.outcome"] == "handled"
    assert consumer.status.status_code is StatusCode.UNSET


async def test_spilled_events_keep_their_trace_context_through_restart_and_promotion(
    open_queue: Any, provider: TracerProvider, exporter: InMemorySpanExporter,
    make_event: MakeEvent, query: Any,
) -> None:  # fmt: skip
    first: EventQueue = await open_queue(batch_window_ms=0, queue_size=3)
    instrument(first, provider)
    results = [await first.put(make_event("job", i)) for i in range(10)]
    await first.close()
    assert sum(r.spilled for r in results) >= 5
    producers = {s.context.span_id: s for s in of_kind(exporter, SpanKind.PRODUCER) if s.context}
    assert len(producers) == 10
    spilled = [
        s for s in producers.values() if s.attributes and "messaging.message.id" not in s.attributes
    ]
    assert len(spilled) == sum(r.spilled for r in results)

    second: EventQueue = await open_queue(batch_window_ms=0, queue_size=100)
    instrument(second, provider)
    handled: list[Event] = []
    await handle_all(second, handled)

    assert len(handled) == 10 and all(e.trace_context for e in handled)
    rows = query("SELECT id, trace_context FROM events")
    assert {span_id_in(text) for _, text in rows} == set(producers)
    consumers = of_kind(exporter, SpanKind.CONSUMER)
    linked = [link.context.span_id for span in consumers for link in span.links]
    assert sorted(linked) == sorted(producers)
    for span in consumers:
        # Every link names the event it came from: its stored context is that producer's.
        for link in span.links:
            assert link.attributes is not None
            event_id = int(str(link.attributes["messaging.message.id"]))
            [(text,)] = query("SELECT trace_context FROM events WHERE id = ?", (event_id,))
            assert span_id_in(text) == link.context.span_id
    several = [s for s in consumers if len(s.links) > 1]
    for span in several:  # a batch: a trace of its own, linking to each put
        assert span.parent is None and span.attributes is not None
        assert span.attributes["messaging.batch.message_count"] == len(span.links)


async def test_a_put_many_is_one_producer_span_and_a_failed_batch_is_an_error(
    open_queue: Any, provider: TracerProvider, exporter: InMemorySpanExporter,
    make_event: MakeEvent,
) -> None:  # fmt: skip
    q: EventQueue = await open_queue(batch_window_ms=0, max_attempts=1)
    instrument(q, provider)
    await q.put_many([make_event("refund", i) for i in range(3)])
    await handle_all(q, fail="refund")

    [producer] = of_kind(exporter, SpanKind.PRODUCER)
    assert producer.attributes is not None
    assert producer.attributes["messaging.batch.message_count"] == 3
    assert "messaging.message.id" not in producer.attributes
    [consumer] = of_kind(exporter, SpanKind.CONSUMER)
    assert consumer.status.status_code is StatusCode.ERROR
    assert consumer.status.description == "ValueError: refund is not welcome"
    assert consumer.attributes is not None and consumer.attributes["eventqueue.failed_count"] == 3
    assert len(consumer.links) == 3


async def test_an_uninstrumented_queue_stores_no_trace_context(
    open_queue: Any, provider: TracerProvider, exporter: InMemorySpanExporter,
    make_event: MakeEvent, query: Any,
) -> None:  # fmt: skip
    q: EventQueue = await open_queue(batch_window_ms=0)
    instrument(q, provider)
    uninstrument(q)
    await q.put(make_event("quiet", 1))
    handled: list[Event] = []
    await handle_all(q, handled)

    assert exporter.get_finished_spans() == ()
    assert query("SELECT trace_context FROM events") == [(None,)]
    assert handled[0].trace_context is None


async def test_a_put_inside_an_application_span_continues_its_trace(
    open_queue: Any, provider: TracerProvider, exporter: InMemorySpanExporter,
    make_event: MakeEvent,
) -> None:  # fmt: skip
    q: EventQueue = await open_queue(batch_window_ms=0)
    instrument(q, provider)
    with provider.get_tracer("app").start_as_current_span("request") as request:
        await q.put(make_event("signup", 1))
    await handle_all(q)

    [producer] = of_kind(exporter, SpanKind.PRODUCER)
    [consumer] = of_kind(exporter, SpanKind.CONSUMER)
    trace_id = request.get_span_context().trace_id
    assert producer.parent is not None
    assert producer.parent.span_id == request.get_span_context().span_id
    assert consumer.context is not None and consumer.context.trace_id == trace_id
