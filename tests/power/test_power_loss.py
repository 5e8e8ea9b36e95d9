"""Power cuts under a running queue, over both durabilities; then reopen and score.

The contract (README, RELIABILITY.md): with `durability=full` a put that returned survives power
loss, so lost 0, unexpected 0, a repeat delivery only with attempts > 1 and an intact database
after every cut. With `normal` a put survives a process crash only: the database is never
corrupt, nothing unexpected is delivered, and the puts lost are only those that returned after
the last durable point (the start of the last fsync of the WAL before the cut that ended their
run); their number is reported. A torn spill record is quarantined, every record before it kept.

Fast tier: one chain of named cuts per durability, a cut mid-migration, a few random cuts.
Soak tier (`pytest -m soak tests/power -s`): many random cuts over tens of thousands of events.
"""

from __future__ import annotations

import contextlib
import random
import sqlite3
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from .battery import Battery, Cut, Run, child_env, integrity_of_copy
from .journal import MODES
from .mount import PowerLossMount, skip_unless_available
from .process import Process

skip_unless_available()

DURABILITIES = ["full", "normal"]
SPILL = r"\.spill[^/]*/p\d+-\d+\.log$"
SPILL_MAGIC = b"EQS1"  # each spill record starts with it (the framing in the spill module)

# The named cuts, in the order one chain runs them. Each step puts the next slice of events.
CHAIN: list[tuple[str, dict[str, Any]]] = [
    ("after commit", {"crash_at": "after_commit", "crash_after": 2, "mode": "torn-byte"}),
    (
        "mid group commit",
        {"trigger": {"op": "write", "match": r"-wal$", "n": 25}, "mode": "torn-sector"},
    ),
    ("mid claim", {"crash_at": "after_claim", "crash_after": 4, "mode": "reorder"}),
    ("mid spill write", {"trigger": {"op": "write", "match": SPILL, "n": 3}, "mode": "torn-byte"}),
    ("recovery", {}),  # a clean run: it finds the torn record and quarantines it
    ("mid spill", {"crash_at": "mid_spill", "crash_after": 1, "mode": "drop"}),
    ("mid promotion", {"crash_at": "mid_promotion", "crash_after": 2, "mode": "torn-sector"}),
    (
        "mid checkpoint",  # the database file is written only by checkpoints (here: at close)
        {"trigger": {"op": "write", "match": r"/events\.db$", "n": 2}, "mode": "torn-byte"},
    ),
]


def assert_contract(battery: Battery, final: Run) -> str:
    """Everything the contract promises after the last run; returns the summary line."""
    score = battery.score()
    cuts = battery.cuts
    stats = final.result["stats"]
    summary = (
        f"{battery.durability}: cuts={len(cuts)} events={len(battery.order)} {score.line()} "
        f"quarantined={stats['spill']['quarantined_records']}"
    )
    lost_by_cut = _lost_by_scenario(battery, score.lost)
    report = f"{summary}\nlost by run: {lost_by_cut}\ncuts: {[c.scenario for c in cuts]}"
    assert all(cut.integrity == ["ok"] for cut in cuts), [(c.scenario, c.integrity) for c in cuts]
    assert score.unexpected == [], f"{score.unexpected[:10]}\n{report}"
    if battery.durability == "full":
        assert score.lost == [], f"lost {score.lost[:20]}\n{report}"
        assert score.bad_duplicates == [], f"{score.bad_duplicates[:10]}\n{report}"
    else:
        lost = score.lost_before_durable_point
        assert lost == [], f"lost before the last durable point: {lost[:20]}\n{report}"
    with contextlib.closing(sqlite3.connect(battery.db)) as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)], report
        counts = dict(db.execute("SELECT status, count(*) FROM events GROUP BY status"))
    assert set(counts) <= {"done"}, f"{counts}\n{report}"
    assert stats["spill"]["total"] == 0, f"{stats['spill']}\n{report}"
    return summary


def _lost_by_scenario(battery: Battery, lost: list[int]) -> dict[str, int]:
    where: dict[str, int] = {}
    produced = battery.logs / "produced.log"
    for run in battery.runs:
        text = produced.read_bytes()[run.log_span[0] : run.log_span[1]].decode()
        acked = {int(line.split()[1]) for line in text.split("\n") if line}
        hit = len(acked & set(lost))
        if hit:
            where[run.scenario] = where.get(run.scenario, 0) + hit
            lost = [e for e in lost if e not in acked]
    return where


def torn_spill_damage(cut: Cut) -> bool:
    """True when the cut tore a spill record in the middle (not exactly between two records)."""
    for path, change in cut.report["files"].items():
        torn = change.get("torn")
        if "/p" in path and ".spill" in path and torn is not None:
            return not bytes.fromhex(torn["next"]).startswith(SPILL_MAGIC)
    return False


@pytest.mark.parametrize("durability", DURABILITIES)
def test_cut_at_each_named_point_then_reopen(
    power: PowerLossMount, tmp_path: Path, durability: str, record_property: Any
) -> None:
    battery = Battery(power, tmp_path / "logs", durability=durability, unique=1_200, seed=14)
    step = -(-len(battery.order) // (len(CHAIN) + 1))
    for index, (name, plan) in enumerate(CHAIN):
        run = battery.run(limit=(index + 1) * step, cut_seed=index, **plan)
        if name == "recovery":
            damaged = battery.runs[-2].cut is not None and torn_spill_damage(battery.runs[-2].cut)
            quarantined = run.result["stats"]["spill"]["quarantined_records"]
            assert quarantined >= 1 if damaged else quarantined >= 0, run.result["stats"]["spill"]
        else:
            assert run.cut is not None, f"{name}: the worker never got to its cut"
    summary = assert_contract(battery, battery.finish())
    record_property("power_loss", summary)
    print(summary)


def migrate(db: Path, settings: dict[str, str], crash_at: str | None = None) -> tuple[bool, int]:
    env = child_env(settings)
    if crash_at is not None:
        env["EVENTQUEUE_CRASH_AT"] = crash_at
    process = Process(["-m", "eventqueue", "migrate", "--db", str(db)], env)
    try:
        crashed = process.await_crash(time.monotonic() + 60)
    finally:
        process.kill()
    code = process.reap()
    assert crashed or code == 0, process.err()
    return crashed, code


def schema(db: Path) -> list[tuple[str, str, str]]:
    with contextlib.closing(sqlite3.connect(db)) as connection:
        rows = connection.execute(
            "SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY name"
        )
        return [tuple(row) for row in rows]


@pytest.mark.parametrize("durability", DURABILITIES)
def test_cut_mid_migration_then_reopen_completes_the_schema(
    power: PowerLossMount, tmp_path: Path, durability: str
) -> None:
    """The first open of a new file migrates it; the power goes mid-migration; the next open
    (EventQueue.open, as the worker does it) finishes the schema and the queue works."""
    reference = tmp_path / "reference.db"  # on the real disk
    migrate(reference, {"EVENT_DURABILITY": durability})
    battery = Battery(power, tmp_path / "logs", durability=durability, unique=400, seed=3)
    assert battery.run(limit=100, crash_at="mid_migration", mode="torn-sector", cut_seed=11).cut
    assert battery.run(limit=300, crash_at="after_claim", crash_after=3, mode="torn-byte").cut
    assert_contract(battery, battery.finish())
    assert schema(battery.db) == schema(reference)
    with contextlib.closing(sqlite3.connect(battery.db)) as connection:
        assert connection.execute("PRAGMA foreign_key_check").fetchall() == []
        version = connection.execute("SELECT * FROM eventqueue_alembic_version").fetchall()
    with contextlib.closing(sqlite3.connect(reference)) as connection:
        assert connection.execute("SELECT * FROM eventqueue_alembic_version").fetchall() == version


def test_cli_migrate_reruns_after_a_cut_mid_migration(power: PowerLossMount) -> None:
    db = power.path("events.db")
    assert migrate(db, {}, crash_at="mid_migration")[0], "never reached mid_migration"
    power.cut("drop")
    assert integrity_of_copy(power.backing) == ["ok"]
    migrate(db, {})  # the hot journal of the cut migration is rolled back, then it reruns


def test_spilled_puts_survive_a_cut_in_a_new_spill_folder(
    power: PowerLossMount, tmp_path: Path
) -> None:
    battery = Battery(power, tmp_path / "logs", durability="full", unique=300, seed=5)
    assert battery.run(limit=200, crash_at="after_spill", crash_after=2, mode="drop").cut
    final = battery.finish()
    score = battery.score()
    assert score.statuses["spilled"] > 0, score.line()
    assert score.lost == [], f"{score.line()} {final.result['stats']['spill']}"


# Named points and the largest pass a random cut asks for (each is reached in a short run).
RANDOM_POINTS = [
    ("after_commit", 3),
    ("after_claim", 20),
    ("mid_spill", 2),
    ("after_spill", 3),
    ("mid_promotion", 3),
]


def random_cut(rng: random.Random) -> dict[str, Any]:
    """A random way to lose power: at a named point (its n-th pass) or at the n-th write or
    fsync of the WAL, the database, a spill segment or any file; over a scheduling set of 50
    (most puts spill) or 100,000 (puts commit)."""
    mode = rng.choice(MODES)
    size = rng.choice(["50", "100000"])
    if rng.random() < 0.4:
        point, most = rng.choice(RANDOM_POINTS)
        if point in ("mid_spill", "after_spill", "mid_promotion"):
            size = "50"
        plan: dict[str, Any] = {"crash_at": point, "crash_after": rng.randint(1, most)}
    else:
        match = rng.choice([r"-wal$", r"-wal$", r"/events\.db$", SPILL, r"."])
        op = rng.choice(["write", "write", "fsync", "any"])
        size = "50" if match == SPILL else size
        plan = {"trigger": {"op": op, "match": match, "n": rng.randint(1, 30)}}
    return {**plan, "mode": mode, "settings": {"EVENT_QUEUE_SIZE": size}}


def random_cuts(battery: Battery, rng: random.Random, cuts: int, spare: int) -> None:
    """Runs cut at random until `cuts` cuts; each run puts the next slice of the events. Up to
    `spare` runs may finish without reaching their cut (a trigger on an fsync that `normal`
    never makes, say)."""
    step = -(-len(battery.order) // (cuts + spare))
    for cycle in range(cuts + spare):
        if len(battery.cuts) == cuts:
            break
        battery.run(limit=(cycle + 1) * step, cut_seed=rng.randrange(2**31), **random_cut(rng))


@pytest.mark.parametrize("durability", DURABILITIES)
def test_cuts_at_random_points(power: PowerLossMount, tmp_path: Path, durability: str) -> None:
    battery = Battery(
        power, tmp_path / "logs", durability=durability, unique=600, seed=21, chunk=50
    )
    random_cuts(battery, random.Random(f"fast-{durability}"), cuts=4, spare=6)
    assert len(battery.cuts) == 4, [run.scenario for run in battery.runs]
    print(assert_contract(battery, battery.finish()))


@pytest.mark.soak
@pytest.mark.parametrize("durability", DURABILITIES)
def test_soak_power_cuts_at_random_points(
    power: PowerLossMount,
    tmp_path: Path,
    durability: str,
    request: pytest.FixtureRequest,
    record_property: Any,
) -> None:
    """Runs only under `-m soak` (pytest -m soak tests/power -s); skipped otherwise."""
    selected = request.config.getoption("-m") or ""
    if "soak" not in selected or "not soak" in selected:
        pytest.skip("soak tier: run with -m soak")
    started = time.monotonic()
    battery = Battery(
        power,
        tmp_path / "logs",
        durability=durability,
        unique=50_000,
        seed=100,
        chunk=250,
        timeout_s=600,
    )
    random_cuts(battery, random.Random(f"soak-{durability}"), cuts=60, spare=30)
    summary = assert_contract(battery, battery.finish())
    cuts = battery.cuts
    modes = dict(Counter(cut.report["mode"] for cut in cuts))
    triggered = sum("triggered" in cut.report for cut in cuts)
    line = (
        f"soak {summary} cuts_by_filesystem_trigger={triggered} "
        f"cuts_at_crash_points={len(cuts) - triggered} modes={modes} "
        f"runtime={time.monotonic() - started:.0f}s"
    )
    record_property("power_loss_soak", line)
    print(line)
    assert len(battery.cuts) == 60, line
