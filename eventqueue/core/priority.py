"""The plan's priority rules and batch keys. Pure; both are replaceable callables."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from eventqueue.core.models import Priority

Classifier = Callable[[Mapping[str, Any]], Priority]
BatchKeyFn = Callable[[Mapping[str, Any]], str]

LOW_NAMES = frozenset({"heartbeat", "metrics", "log"})


def classify(event: Mapping[str, Any]) -> Priority:
    """CRITICAL for errors/failures, HIGH for workflows and commands, LOW for housekeeping."""
    name = event.get("event_name") or ""
    lowered = name.lower()
    if "error" in lowered or "failed" in lowered:
        return Priority.CRITICAL
    attributes = event.get("attributes") or {}
    if event.get("event_type") == "workflow_event" or "command" in attributes:
        return Priority.HIGH
    if name in LOW_NAMES:
        return Priority.LOW
    return Priority.NORMAL


def batch_key(event: Mapping[str, Any]) -> str:
    """`<event_name>-handler`, as in the plan: events for one handler are batched together."""
    return f"{event.get('event_name') or ''}-handler"
