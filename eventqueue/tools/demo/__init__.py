"""`eventqueue demo`: a local SSE stream into a dispatcher, shown live, then checked with SQL.

A synthetic stream (bursts of similar events, exact re-sends, CRITICAL failures, LOW heartbeats,
HIGH workflow steps) is served on 127.0.0.1 and its first connection is dropped part-way, so the
source resumes with Last-Event-ID. Sample handlers include one that fails some first attempts
(retried, then done) and one that always fails (dead-lettered). Afterwards the report's counts
are verified against the database with plain SQL; a lost event makes the demo exit 1.

The package: stream.py (the synthetic stream, its pacing, the counted source), handlers.py (the
sample handlers), live.py (the progress view), run.py (run_demo and its steps), verify.py (the
checks against the database and the example queries), report.py (the report for people).
"""

from eventqueue.tools.demo.run import (
    DEFAULT_EVENTS,
    DEFAULT_RATE,
    DEFAULT_SECONDS,
    DemoOptions,
    run_demo,
)
from eventqueue.tools.demo.stream import BROKEN, FLAKY

__all__ = [
    "BROKEN",
    "DEFAULT_EVENTS",
    "DEFAULT_RATE",
    "DEFAULT_SECONDS",
    "FLAKY",
    "DemoOptions",
    "run_demo",
]
