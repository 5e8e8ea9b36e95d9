"""OpenTelemetry spans for put (producer) and handler runs (consumer): `eventqueue[otel]`.

Follows the OpenTelemetry messaging semantic conventions: `messaging.system` "eventqueue",
`messaging.operation.type` "send" / "process", `messaging.destination.name` the batch key,
`messaging.message.id` the event id (single messages), `messaging.batch.message_count`
(batches). A put opens a PRODUCER span "send <key>" and stores its W3C trace context with each
event ("traceparent[ tracestate]", the `events.trace_context` column and the spill records),
so it survives restarts and spills. A handler run opens a CONSUMER span "process <key>" that
links to the context of every event in its batch; a batch of one event is also its child, in
the producer's trace.

Only the API is used: configure any SDK (or none: then every span is a no-op). Switched on per
queue by `instrument(queue)`; an uninstrumented queue pays one `is None` test per put and batch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from eventqueue.core.models import Batch, Priority, PutResult
from eventqueue.core.records import NewEvent

SYSTEM = "eventqueue"
# Handler failures are recorded on the span; their texts are cut to keep spans small.
_MAX_DESCRIPTION = 500

Admit = Callable[[list[NewEvent]], Awaitable[list[PutResult]]]
Outcome = Callable[[Batch], Awaitable[dict[int, str] | None]]


class QueueTracing:
    """Opens the producer and consumer spans of one queue (set as `queue.tracing`)."""

    def __init__(self, tracer_provider: trace.TracerProvider | None = None) -> None:
        self.tracer = trace.get_tracer("eventqueue", _version(), tracer_provider=tracer_provider)
        self._propagator = TraceContextTextMapPropagator()

    # --- producer ---------------------------------------------------------------------------

    async def put(self, rows: list[NewEvent], admit: Admit) -> list[PutResult]:
        """Run `admit` inside a PRODUCER span, the span's context stored with every row."""
        keys = {row.batch_key for row in rows}
        key = next(iter(keys)) if len(keys) == 1 else None
        attributes = _common("send", key)
        if len(rows) > 1:
            attributes["messaging.batch.message_count"] = len(rows)
        name = "send" if key is None else f"send {key}"
        with self.tracer.start_as_current_span(
            name, kind=SpanKind.PRODUCER, attributes=attributes
        ) as span:
            carried = self.carrier(span)
            if carried is not None:
                rows = [dataclasses.replace(row, trace_context=carried) for row in rows]
            results = await admit(rows)
            if len(results) == 1:
                _describe_put(span, results[0])
            return results

    def carrier(self, span: trace.Span) -> str | None:
        """The span's W3C context as stored: "traceparent[ tracestate]" (None if invalid)."""
        headers: dict[str, str] = {}
        self._propagator.inject(headers, context=trace.set_span_in_context(span))
        parent = headers.get("traceparent")
        if parent is None:
            return None
        state = headers.get("tracestate")
        return f"{parent} {state}" if state else parent

    # --- consumer ---------------------------------------------------------------------------

    async def process(self, batch: Batch, run: Outcome) -> dict[int, str] | None:
        """Run `run(batch)` (the handlers) inside a CONSUMER span linked to the producers."""
        links: list[Link] = []
        for event in batch.events:
            found = self.extract(event.trace_context)
            if found is not None:
                links.append(Link(found, {"messaging.message.id": str(event.id)}))
        attributes = _common("process", batch.key)
        attributes["eventqueue.priority"] = Priority(batch.priority).name
        if len(batch) == 1:
            attributes["messaging.message.id"] = str(batch.events[0].id)
            attributes["eventqueue.attempt"] = batch.events[0].attempts
        else:
            attributes["messaging.batch.message_count"] = len(batch)
        # One event: a child of its put, in the put's trace. Several: a trace of its own that
        # links to each put (a span has one parent).
        parent = otel_context.Context()
        if len(batch) == 1 and links:
            parent = trace.set_span_in_context(trace.NonRecordingSpan(links[0].context))
        with self.tracer.start_as_current_span(
            f"process {batch.key}",
            context=parent,
            kind=SpanKind.CONSUMER,
            links=links,
            attributes=attributes,
        ) as span:
            failed = await run(batch)
            _describe_outcome(span, failed)
            return failed

    def extract(self, carried: str | None) -> SpanContext | None:
        """The span context stored by `carrier` (None when absent or unreadable)."""
        if not carried:
            return None
        parent, _, state = carried.partition(" ")
        headers = {"traceparent": parent}
        if state:
            headers["tracestate"] = state
        found = trace.get_current_span(self._propagator.extract(headers)).get_span_context()
        return found if found.is_valid else None


def _common(operation: str, key: str | None) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "messaging.system": SYSTEM,
        "messaging.operation.type": operation,
        "messaging.operation.name": operation,
    }
    if key is not None:
        attributes["messaging.destination.name"] = key
    return attributes


def _describe_put(span: trace.Span, result: PutResult) -> None:
    span.set_attribute("eventqueue.put.outcome", result.status.value)
    span.set_attribute("eventqueue.priority", result.priority.name)
    if result.id is not None:
        span.set_attribute("messaging.message.id", str(result.id))


def _describe_outcome(span: trace.Span, failed: dict[int, str] | None) -> None:
    if failed is None:
        span.set_attribute("eventqueue.outcome", "released")
        return
    if not failed:
        span.set_attribute("eventqueue.outcome", "handled")
        return
    span.set_attribute("eventqueue.outcome", "failed")
    span.set_attribute("eventqueue.failed_count", len(failed))
    errors = sorted(set(failed.values()))
    span.set_status(Status(StatusCode.ERROR, "; ".join(errors)[:_MAX_DESCRIPTION]))


def _version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("eventqueue")
    except PackageNotFoundError:
        return None
