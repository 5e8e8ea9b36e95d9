"""In-process metrics: outcome counts, batch sizes and latency percentiles in bounded memory."""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Sequence
from typing import Any, Protocol

from eventqueue.core.models import Priority, PutStatus
from eventqueue.core.records import NewEvent

# Latency samples kept per priority: enough for a stable p99, fixed memory however long it runs.
_SAMPLES = 20_000


class MetricsSink(Protocol):
    """An observer of the runtime's figures (the Prometheus exporter is one): `Metrics.attach`.

    Called on the event loop, synchronously: each call must be cheap and must not raise.
    With no sink attached the runtime pays one `is None` test per call site.
    """

    def put(
        self, rows: Sequence[NewEvent], outcome: Sequence[tuple[PutStatus, int | None]]
    ) -> None:
        """One put or put_many: its rows, and what became of each (status, id)."""

    def settled(self, outcome: str, batch_key: str, events: int) -> None:
        """Events of one key acked ("handled"), retried, or dead-lettered by a nack ("dead")."""

    def batch(self, batch_key: str, size: int) -> None:
        """A batch handed to handlers."""

    def latency(self, priority: Priority, seconds: float) -> None:
        """Receipt-to-handler-start latency of one event (first attempts only)."""

    def claim(self, seconds: float, batches: int) -> None:
        """One claim transaction (with its folded acks): how long, how many batches leased."""

    def commit(self, seconds: float, events: int) -> None:
        """One group-commit put transaction: how long, how many rows it wrote."""


class Metrics:
    """Counters and latency reservoirs; every structure has a fixed bound."""

    def __init__(self) -> None:
        self.sink: MetricsSink | None = None
        self.outcomes: Counter[str] = Counter()
        self.batches = 0
        self.batched_events = 0
        self.batches_by_key: Counter[str] = Counter()
        self._events_by_key: Counter[str] = Counter()
        self._latency: dict[Priority, deque[float]] = {p: deque(maxlen=_SAMPLES) for p in Priority}

    def count(self, outcome: str, n: int = 1) -> None:
        """Add `n` to an outcome counter (accepted, duplicate, spilled, handled, retried, dead ...)."""
        self.outcomes[outcome] += n

    def attach(self, sink: MetricsSink) -> None:
        """Send every figure to `sink` from now on (one sink at a time)."""
        if self.sink is not None and self.sink is not sink:
            raise ValueError("a metrics sink is attached already: detach it first")
        self.sink = sink

    def detach(self, sink: MetricsSink) -> None:
        """Stop sending figures to `sink` (nothing happens if it is not the one attached)."""
        if self.sink is sink:
            self.sink = None

    def batch(self, key: str, size: int) -> None:
        """Record a batch handed to handlers."""
        if self.sink is not None:
            self.sink.batch(key, size)
        self.batches += 1
        self.batched_events += size
        # Keys are handler names: a small, bounded set in practice; cap it to stay bounded anyway.
        if key in self.batches_by_key or len(self.batches_by_key) < 1000:
            self.batches_by_key[key] += 1
            self._events_by_key[key] += size

    def latency(self, priority: Priority, seconds: float) -> None:
        """Record receipt-to-handler-start latency of one event."""
        self._latency[priority].append(seconds)
        if self.sink is not None:
            self.sink.latency(priority, seconds)

    def latency_ms(self, priority: Priority) -> dict[str, float | int | None]:
        """p50/p99/max in milliseconds over the recent samples of one priority."""
        samples = sorted(self._latency[priority])
        if not samples:
            return {"n": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}
        return {
            "n": len(samples),
            "p50_ms": round(percentile(samples, 0.50) * 1000, 3),
            "p99_ms": round(percentile(samples, 0.99) * 1000, 3),
            "max_ms": round(samples[-1] * 1000, 3),
        }

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready snapshot."""
        return {
            "outcomes": dict(self.outcomes),
            "batches": self.batches,
            "avg_batch_size": round(self.batched_events / self.batches, 2)
            if self.batches
            else None,
            "batches_by_key": {
                key: {"batches": n, "avg_size": round(self._events_by_key[key] / n, 2)}
                for key, n in self.batches_by_key.most_common()
            },
            "latency": {p.name: self.latency_ms(p) for p in sorted(Priority, reverse=True)},
        }


def percentile(sorted_samples: list[float], q: float) -> float:
    index = min(len(sorted_samples) - 1, max(0, round(q * (len(sorted_samples) - 1))))
    return sorted_samples[index]
