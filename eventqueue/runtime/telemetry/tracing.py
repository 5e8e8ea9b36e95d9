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
import re
from collections.abc import Awaitable, Callable
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceState

from eventqueue.core.models import Batch, Priority, PutResult
from eventqueue.core.records import NewEvent

SYSTEM = "eventqueue"
# W3C traceparent, version 00: version-trace_id-parent_id-flags (lower-case hex).
_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
# Handler failures are recorded on the span; their texts are cut to keep spans small.
_MAX_DESCRIPTION = 500

Admit = Callable[[list[NewEvent]], Awaitable[list[PutResult]]]
Outcome = Callable[[Batch], Awaitable[dict[int, str] | None]]


class QueueTracing:
    """Opens the producer and consumer spans of one queue (set as `queue.tracing`)."""

    def __init__(self, tracer_provider: trace.TracerProvider | None = None) -> None:
        self.tracer = trace.get_tracer("eventqueue", _version(), tracer_provider=tracer_provider)

    # --- producer ---------------------------------------------------------------------------

    async def put(self, rows: list[NewEvent], admit: Admit) -> list[PutResult]:
        """Run `admit` inside a PRODUCER span, the span's context stored with every row.

        The span is started, not made current: nothing runs in the put's task that could be
        its child, and skipping the context switch keeps a traced put cheap (puts are the
        hot path: every allocation here shows in the bench).
        """
        first = rows[0]
        if len(rows) == 1:
            key: str | None = first.batch_key
            attributes = _common("send", key)
            attributes["eventqueue.priority"] = _NAMES[first.priority]
        else:
            key = first.batch_key if all(r.batch_key == first.batch_key for r in rows) else None
            attributes = _common("send", key)
            attributes["messaging.batch.message_count"] = len(rows)
        span = self.tracer.start_span(
            "send" if key is None else f"send {key}", kind=SpanKind.PRODUCER, attributes=attributes
        )
        try:
            carried = self.carrier(span)
            if carried is not None:
                rows = [_with_context(row, carried) for row in rows]
            results = await admit(rows)
        except BaseException as exc:
            if isinstance(exc, Exception):
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
            raise
        else:
            if len(results) == 1:
                _describe_put(span, results[0])
            return results
        finally:
            span.end()

    def carrier(self, span: trace.Span) -> str | None:
        """The span's W3C context as stored: "traceparent[ tracestate]" (None if invalid).

        Formatted here rather than by the propagator API: the same text, at a tenth the cost.
        """
        found = span.get_span_context()
        if not found.is_valid:
            return None
        parent = f"00-{found.trace_id:032x}-{found.span_id:016x}-{found.trace_flags:02x}"
        state = found.trace_state.to_header() if found.trace_state else ""
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
        match = _TRACEPARENT.fullmatch(parent)
        if match is None:
            return None
        trace_id, span_id, flags = (int(part, 16) for part in match.groups())
        found = SpanContext(
            trace_id,
            span_id,
            is_remote=True,
            trace_flags=trace.TraceFlags(flags),
            trace_state=TraceState.from_header([state]) if state else None,
        )
        return found if found.is_valid else None


_NAMES = {int(p): p.name for p in Priority}


def _with_context(row: NewEvent, carried: str) -> NewEvent:
    return dataclasses.replace(row, trace_context=carried)


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
    if result.id is None:  # spilled: the id comes with promotion
        span.set_attribute("eventqueue.put.outcome", result.status.value)
    else:
        span.set_attributes(
            {"eventqueue.put.outcome": result.status.value, "messaging.message.id": str(result.id)}
        )


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
