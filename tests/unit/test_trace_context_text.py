"""The stored trace context text (issue 13): W3C traceparent, then the tracestate after a space."""

from __future__ import annotations

import pytest
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState

from eventqueue.runtime.telemetry.tracing import QueueTracing

PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.mark.parametrize("text", [PARENT, f"{PARENT} vendor=abc,other=x", PARENT[:-2] + "00"])
def test_a_stored_context_reads_back_and_writes_out_the_same(text: str) -> None:
    tracing = QueueTracing()

    found = tracing.extract(text)

    assert found is not None and found.is_remote
    assert found.trace_id == 0x0AF7651916CD43DD8448EB211C80319C
    assert found.span_id == 0xB7AD6B7169203331
    assert tracing.carrier(NonRecordingSpan(found)) == text


@pytest.mark.parametrize(
    "text",
    [None, "", "garbage", PARENT.upper(), "01" + PARENT[2:], f"00-{'0' * 32}-b7ad6b7169203331-01"],
)
def test_an_absent_or_unreadable_context_is_none(text: str | None) -> None:
    assert QueueTracing().extract(text) is None


def test_an_invalid_span_carries_nothing() -> None:
    invalid = SpanContext(
        0, 0, is_remote=False, trace_flags=TraceFlags(0), trace_state=TraceState()
    )
    assert QueueTracing().carrier(NonRecordingSpan(invalid)) is None
