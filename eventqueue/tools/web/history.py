"""The last 15 minutes the dashboard saw, for its charts: one sample per overview read.

The database keeps counts, not a time series, so the series are the dashboard's own readings
(each overview request or poll takes one, at most one a second); rates are the changes between
two readings, as `eventqueue top` computes them. Shared by every request of one app, behind a
lock: requests are served from worker threads.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

WINDOW_S = 15 * 60.0
MIN_SPACING_S = 1.0  # two readings closer than this keep the first only


@dataclass(frozen=True, slots=True)
class Sample:
    """One reading of the queue."""

    at: float
    pending: int
    claimed: int
    dead: int
    done: int
    max_id: int
    p50_s: float | None
    p99_s: float | None


@dataclass(frozen=True, slots=True)
class Point:
    """One chart point: the reading, and the rates since the reading before it."""

    at: float
    pending: int
    claimed: int
    dead: int
    accepted_per_s: float | None
    handled_per_s: float | None
    p50_s: float | None
    p99_s: float | None


class History:
    """A rolling window of samples."""

    def __init__(self, window_s: float = WINDOW_S) -> None:
        self.window_s = window_s
        self._samples: deque[Sample] = deque()
        self._lock = threading.Lock()

    def add(self, sample: Sample) -> None:
        """Keep `sample` (unless the last one is under a second old); forget what is too old."""
        with self._lock:
            if self._samples and sample.at - self._samples[-1].at < MIN_SPACING_S:
                return
            self._samples.append(sample)
            while self._samples and self._samples[0].at < sample.at - self.window_s:
                self._samples.popleft()

    def points(self) -> list[dict[str, Any]]:
        """The chart series, oldest first, as JSON-ready dicts."""
        with self._lock:
            samples = list(self._samples)
        return [
            asdict(_point(before, now))
            for before, now in zip([None, *samples], samples, strict=False)
        ]


def _point(before: Sample | None, now: Sample) -> Point:
    accepted = handled = None
    if before is not None and now.at > before.at:
        elapsed = now.at - before.at
        # A purge or requeue between two readings makes a count go down: no rate then.
        if now.max_id >= before.max_id:
            accepted = round((now.max_id - before.max_id) / elapsed, 3)
        if now.done >= before.done:
            handled = round((now.done - before.done) / elapsed, 3)
    return Point(
        at=now.at,
        pending=now.pending,
        claimed=now.claimed,
        dead=now.dead,
        accepted_per_s=accepted,
        handled_per_s=handled,
        p50_s=now.p50_s,
        p99_s=now.p99_s,
    )
