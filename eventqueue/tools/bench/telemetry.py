"""`eventqueue bench --telemetry`: the same scenarios with metrics and tracing on, to show
their overhead.

"metrics": the Prometheus exporter attached (no scrapes). "tracing": OpenTelemetry spans for
every put and handler run, recorded by the SDK (sampling every span) and handed to a
BatchSpanProcessor whose exporter drops them (no network in the figures). "all": both. Needs
prometheus-client and opentelemetry-sdk (both in the `dev` extra). The put and end_to_end
scenarios attach it to their queues through `attached(q)`, a no-op in a plain run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import click

from eventqueue.runtime.queue import EventQueue
from eventqueue.tools.bench.rows import Row

DESCRIPTIONS = {
    "metrics": "Prometheus exporter",
    "tracing": "OpenTelemetry SDK spans (batch processor, dropped)",
    "all": "Prometheus exporter + OpenTelemetry SDK spans (batch processor, dropped)",
}


@dataclass
class _Run:
    metrics: bool
    provider: Any  # the run's TracerProvider, None without tracing


_active: _Run | None = None


@contextlib.contextmanager
def session(mode: str) -> Iterator[None]:
    """Telemetry (`mode`: metrics, tracing or all) on for the queues opened in this block."""
    global _active
    try:
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            SpanExporter,
            SpanExportResult,
        )

        import eventqueue.runtime.telemetry.prometheus  # noqa: F401  (present, or say so now)
    except ImportError as exc:
        raise click.UsageError(
            f"--telemetry needs prometheus-client and opentelemetry-sdk ({exc.name} is missing): "
            "pip install -e '.[dev]'"
        ) from exc

    class Drop(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = None
    if mode in ("tracing", "all"):
        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(Drop()))
    _active = _Run(metrics=mode in ("metrics", "all"), provider=provider)
    try:
        yield
    finally:
        _active = None
        if provider is not None:
            provider.shutdown()


@contextlib.contextmanager
def attached(q: EventQueue) -> Iterator[None]:
    """Metrics and spans on `q` during a telemetry run; nothing otherwise."""
    run = _active
    if run is None:
        yield
        return
    from eventqueue.runtime.telemetry import instrument, uninstrument
    from eventqueue.runtime.telemetry.prometheus import PrometheusExporter

    exporter = PrometheusExporter(q) if run.metrics else None
    if exporter is not None:
        exporter.attach()
    if run.provider is not None:
        instrument(q, run.provider)
    try:
        yield
    finally:
        uninstrument(q)
        if exporter is not None:
            exporter.detach()


def mark(rows: list[Row], mode: str) -> list[Row]:
    """The rows of a telemetry run, named apart from the plain ones ("put +tracing")."""
    for row in rows:
        row["scenario"] += f" +{mode}"
        row["telemetry"] = DESCRIPTIONS[mode]
    return rows


def overhead(plain: Sequence[Row], traced: Sequence[Row]) -> list[str]:
    """One line per scenario measured both ways: events/s off and on, and the difference."""
    on = {row["scenario"].split(" +")[0]: row for row in traced}
    lines = []
    for row in plain:
        other = on.get(row["scenario"])
        if other is None or not row.get("events_per_s") or other.get("events_per_s") is None:
            continue
        off_rate, on_rate = row["events_per_s"], other["events_per_s"]
        change = (on_rate / off_rate - 1) * 100
        lines.append(
            f"telemetry overhead ({other['telemetry']}), {row['scenario']}: "
            f"{off_rate:,.0f}/s off, {on_rate:,.0f}/s on ({change:+.1f} %)"
        )
    return lines
