"""Named crash points for the reliability battery: a test kills the process exactly here.

With EVENTQUEUE_CRASH_AT=<name> (and optionally EVENTQUEUE_CRASH_AFTER=<n>, the n-th pass,
default 1) the process prints `EVENTQUEUE_CRASH_POINT <name>` to stderr when it reaches that
point and then stops dead, holding the event loop, until the test's SIGKILL arrives. Without
the variable a crash point costs one dictionary lookup.
"""

from __future__ import annotations

import os
import sys
import time

POINTS = (
    "after_commit",  # a put group committed, before its puts return
    "after_claim",  # a batch claimed, before the consumer sees it
    "mid_spill",  # part of a spill appended (fsynced), the rest not
    "after_spill",  # a spill appended, before its puts return
    "mid_promotion",  # promoted rows and spill position committed, spill segments not released
    "mid_migration",  # the schema migration half applied, not committed
    "mid_handoff",  # CRITICAL events stored already leased, not yet given to their consumer
    "mid_round",  # a SQLite round's statements run, its COMMIT not (on the connection thread)
    "after_round_commit",  # a SQLite round committed, none of its requests answered yet
)
_passes: dict[str, int] = {}


def crash_point(name: str) -> None:
    """Halt here (for a test to kill) when EVENTQUEUE_CRASH_AT names this point."""
    if os.environ.get("EVENTQUEUE_CRASH_AT") != name:
        return
    _passes[name] = _passes.get(name, 0) + 1
    if _passes[name] < int(os.environ.get("EVENTQUEUE_CRASH_AFTER", "1")):
        return
    sys.stderr.write(f"EVENTQUEUE_CRASH_POINT {name}\n")
    sys.stderr.flush()
    while True:  # deliberately blocking: nothing after this point may run
        time.sleep(3600)
