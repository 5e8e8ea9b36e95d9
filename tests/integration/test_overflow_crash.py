"""Overflow (issue 4) under kill -9: a burst of 10,000 events (with exact repeats) into a queue of
100, the process killed at a handshake mid-spill, after a spill and mid-promotion, twice each,
then restarted to finish: every acknowledged event handled, none doubled except by redelivery
(attempts > 1), CRITICAL never spilled, the spill empty and the database intact.

The subprocess, the kill and the scoring are the reliability battery's (tests/reliability).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from reliability.harness import CrashHarness


@pytest.mark.parametrize("point", ["mid_spill", "after_spill", "mid_promotion"])
def test_burst_killed_at_spill_and_promotion_points_then_restarted(
    tmp_path: Path, point: str
) -> None:
    harness = CrashHarness(
        tmp_path,
        unique=9_500,
        dup_share=0.06,
        seed=4,
        settings={"EVENT_QUEUE_SIZE": "100"},
        chunk=10_000,  # the whole burst in flight at once
    )
    assert len(harness.order) >= 10_000
    harness.crash(point, after=2)
    harness.crash(point, after=5)  # a second kill, further in, during the restart's own work
    harness.finish()
    score, state = harness.assert_contract()
    assert score.critical_spilled == 0, score.line()
    assert score.put_statuses["spilled"] > len(harness.order) // 2, score.line()
    assert state.spill_pending == 0 and state.scheduled == 0, state.line()
