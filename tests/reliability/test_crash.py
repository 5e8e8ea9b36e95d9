"""kill -9 at every named crash point and at random ones, then restart: nothing lost, nothing
unexpected, a repeat only with attempts > 1, an empty queue and spill, an intact database.

Fast tier (every run): one kill per named point, `mid_migration` through the CLI, and 20 kill
cycles at seeded random points over a few thousand events. Soak tier: the same random cycles
over >= 100,000 events; it runs only when `-m soak` selects it (`pytest -m soak tests/reliability`)
and is skipped otherwise, whatever else the command line says.
"""

from __future__ import annotations

import contextlib
import random
import sqlite3
import time
from pathlib import Path

import pytest

from eventqueue.store.sqlite.migrations import VERSION_TABLE, head_revision

from .harness import RUNTIME_POINTS, CrashHarness, Outcome, run_killable

# Enough spill and promotion in a few thousand events: the queue holds only 50 waiting events.
SMALL_QUEUE = {"EVENT_QUEUE_SIZE": "50"}
# The largest pass of each point a random cycle asks for: every cycle puts a fresh burst of
# about 130 events (fast tier) into a full queue, so each pass is reached before it drains.
MAX_PASS = {
    "after_commit": 3,
    "after_claim": 40,
    "mid_spill": 3,
    "after_spill": 2,
    "mid_promotion": 3,
    "mid_handoff": 2,
    "mid_round": 40,  # every write passes these: a claim, an ack, a put is a round
    "after_round_commit": 40,
}
# Soak cycles put about 4,000 events each: kills land deeper into each cycle's work.
SOAK_MAX_PASS = {
    "after_commit": 10,
    "after_claim": 300,
    "mid_spill": 20,
    "after_spill": 8,
    "mid_promotion": 6,
    "mid_round": 300,
    "after_round_commit": 300,
}


@pytest.mark.parametrize("dedup", [True, False], ids=["dedup", "no-dedup"])
@pytest.mark.parametrize("point", RUNTIME_POINTS)
def test_kill_at_named_point_then_restart_loses_and_doubles_nothing(
    tmp_path: Path, point: str, dedup: bool
) -> None:
    """With dedup off and no retried puts, dedup cannot hide a double insert or promotion:
    a second row for one event fails the score."""
    harness = CrashHarness(
        tmp_path,
        unique=2_000,
        seed=7,
        dup_share=0.05 if dedup else 0.0,
        retry=dedup,
        settings={**SMALL_QUEUE, "ENABLE_DEDUP": "true" if dedup else "false"},
    )
    harness.crash(point, after=3)
    harness.finish()
    score, state = harness.assert_contract()
    assert score.critical_spilled == 0, score.line()
    assert score.put_statuses["spilled"] > 0, score.line()  # the spill was exercised
    assert state.quarantined == 0 or point in ("mid_spill", "after_spill"), state.line()


def schema(db: Path) -> list[tuple[str, str, str]]:
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as connection:
        rows = connection.execute(
            "SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY name"
        )
        return [tuple(row) for row in rows]


def migrate(db: Path, crash_at: str | None = None) -> Outcome:
    argv = ["-m", "eventqueue", "migrate", "--db", str(db)]
    return run_killable(argv, crash_at=crash_at, timeout_s=60)


def test_kill_mid_migration_then_rerun_completes_the_schema(tmp_path: Path) -> None:
    reference = tmp_path / "reference.db"
    assert migrate(reference).returncode == 0
    db = tmp_path / "events.db"

    killed = migrate(db, crash_at="mid_migration")
    assert killed.crashed_at == "mid_migration", killed.stderr
    rerun = migrate(db)
    assert rerun.crashed_at is None and rerun.returncode == 0, rerun.stderr

    assert schema(db) == schema(reference)
    with contextlib.closing(sqlite3.connect(db)) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert connection.execute("PRAGMA foreign_key_check").fetchall() == []
        version = connection.execute(f"SELECT version_num FROM {VERSION_TABLE}").fetchall()
    assert version == [(head_revision(),)]
    # The migrated file is a working queue: a worker run on it scores clean.
    harness = CrashHarness(tmp_path, unique=300, seed=3, settings=SMALL_QUEUE)
    harness.crash("after_claim", after=5)
    harness.finish()
    harness.assert_contract()


def random_kill_cycles(
    harness: CrashHarness,
    rng: random.Random,
    kills: int,
    max_pass: dict[str, int] = MAX_PASS,
    spare: int = 4,
) -> tuple[list[tuple[str, int]], int]:
    """Run workers killed at random (point, pass) until `kills` kills, each cycle putting the
    next slice of the workload; then a clean run finishes. `spare`: cycles that may end without
    reaching their point and still leave work for the next. Returns the kills made and how many
    events were acknowledged before the finishing run."""
    slice_ops = -(-len(harness.order) // (kills + spare))
    made: list[tuple[str, int]] = []
    for cycle in range(kills + spare):
        if len(made) == kills:
            break
        point = rng.choice(RUNTIME_POINTS)
        after = rng.randint(1, max_pass[point])
        outcome = harness.run(crash_at=point, crash_after=after, limit=(cycle + 1) * slice_ops)
        if outcome.crashed_at is not None:
            made.append((point, after))
    acknowledged = harness.score().acknowledged
    harness.finish()
    return made, acknowledged


def test_twenty_kill_cycles_at_random_points(tmp_path: Path) -> None:
    harness = CrashHarness(tmp_path, unique=3_000, seed=20, settings=SMALL_QUEUE)
    made, _ = random_kill_cycles(harness, random.Random(20), kills=20)
    assert len(made) == 20, made
    score, _ = harness.assert_contract()
    assert score.critical_spilled == 0, score.line()


def test_kill_cycles_with_ordering_on_keep_every_group_in_order(tmp_path: Path) -> None:
    """Ordering on (200 groups, every priority inside them, a queue of 50 so the spill and its
    promotion carry groups too): lost 0, and every group whose events were each handled once
    was handled in its order."""
    harness = CrashHarness(tmp_path, unique=2_000, seed=22, settings=SMALL_QUEUE, groups=200)
    made, _ = random_kill_cycles(harness, random.Random(22), kills=12, spare=8)
    # Some points are rarer with ordering on (a held CRITICAL event is not handed over).
    assert len(made) >= 10, made
    score, _ = harness.assert_contract()
    broken, checked = harness.order_breaks()
    assert broken == [], f"groups out of order: {broken[:10]} ({checked} checked)"
    assert checked >= 50, f"only {checked} of 200 groups had every event handled once"
    assert score.put_statuses["spilled"] > 0, score.line()


@pytest.mark.soak
def test_soak_kill_cycles_over_100000_events(
    tmp_path: Path, request: pytest.FixtureRequest, record_property: pytest.RecordProperty
) -> None:
    """Runs only under `-m soak` (pytest -m soak tests/reliability); skipped otherwise."""
    selected = request.config.getoption("-m") or ""
    if "soak" not in selected or "not soak" in selected:
        pytest.skip("soak tier: run with -m soak")
    started = time.monotonic()
    harness = CrashHarness(
        tmp_path,
        unique=100_000,
        seed=100,
        settings={"EVENT_QUEUE_SIZE": "500"},
        chunk=500,
        timeout_s=1800,
    )
    made, before_finish = random_kill_cycles(
        harness, random.Random(100), kills=24, max_pass=SOAK_MAX_PASS, spare=8
    )
    score, state = harness.assert_contract()
    line = (
        f"soak: events={len(harness.order)} (unique {harness.unique}) kill_cycles={len(made)} "
        f"acknowledged_before_last_run={before_finish} {score.line()} "
        f"quarantined={state.quarantined} runtime={time.monotonic() - started:.0f}s kills={made}"
    )
    record_property("soak", line)
    print(line)
    assert len(made) >= 20, line
