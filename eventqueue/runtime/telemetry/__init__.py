"""Optional observability: Prometheus metrics (prometheus.py) and OpenTelemetry spans (tracing.py).

Neither is imported by the rest of eventqueue: each needs its extra (`eventqueue[prometheus]`,
`eventqueue[otel]`) and is switched on explicitly, by `Dispatcher(metrics_port=...)`,
`start_metrics_server(queue, ...)` or `instrument(queue)`. Importing this package imports
neither prometheus_client nor opentelemetry.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from eventqueue.core.errors import ConfigError

if TYPE_CHECKING:
    from eventqueue.runtime.queue import EventQueue
    from eventqueue.runtime.telemetry.tracing import QueueTracing

__all__ = ["instrument", "uninstrument"]


def instrument(queue: EventQueue, tracer_provider: Any = None) -> QueueTracing:
    """Open OpenTelemetry spans for this queue's puts and its dispatcher's handler runs.

    `tracer_provider`: an OpenTelemetry TracerProvider (default: the global one). Needs
    `pip install 'eventqueue[otel]'`; configure an SDK to record the spans.
    """
    try:
        from eventqueue.runtime.telemetry.tracing import QueueTracing
    except ImportError as exc:
        raise ConfigError(
            "tracing needs opentelemetry-api: pip install 'eventqueue[otel]'"
        ) from exc
    queue.tracing = QueueTracing(tracer_provider)
    return queue.tracing


def uninstrument(queue: EventQueue) -> None:
    """Stop opening spans for this queue."""
    queue.tracing = None
