"""The `eventqueue` command, driven in-process with click's CliRunner on real database files."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from eventqueue import EventQueue, PutResult
from eventqueue.store.sqlite import migrations
from eventqueue.tools import cli

HOUR_S = 3600.0
# Events are put an hour "ago" through an injected clock: ages and cutoffs are deterministic.


def an_hour_ago() -> Callable[[], float]:
    """A frozen clock an hour behind now, read when the fixture runs (not at import)."""
    frozen = time.time() - HOUR_S
    return lambda: frozen


def ev(name: str, aggregate_id: str = "a1", **attributes: Any) -> dict[str, Any]:
    return {
        "event_type": "entity_event",
        "event_name": name,
        "aggregate_id": aggregate_id,
        "attributes": attributes,
    }


def run(*args: str, env: dict[str, str] | None = None) -> Result:
    """The command in-process; EVENT_* variables of the caller's shell never leak in."""
    clean: dict[str, str | None] = {k: None for k in os.environ if k.startswith("EVENT_")}
    wide = {"COLUMNS": "200"}  # rich wraps tables at 80 columns when not on a terminal
    return CliRunner().invoke(cli.main, list(args), env={**clean, **wide, **(env or {})})


def rows(path: str | Path, query: str, params: tuple[Any, ...] = ()) -> list[Any]:
    """Plain sqlite3, read-only: the database stays inspectable without eventqueue."""
    uri = f"file:{path}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as connection:
        return connection.execute(query, params).fetchall()


def snapshot(path: str | Path) -> list[Any]:
    """Everything an attack could change: every row, the schema, the user version."""
    return [
        rows(path, "SELECT * FROM events ORDER BY id"),
        rows(path, "SELECT type, name, sql FROM sqlite_master ORDER BY name"),
        rows(path, "PRAGMA user_version"),
    ]


def files(folder: Path) -> set[str]:
    # -wal/-shm come and go with any reader; a created file would show up here.
    return {p.name for p in folder.iterdir() if not p.name.endswith(("-wal", "-shm"))}


def status_of(path: str | Path, event_id: int) -> str:
    return str(rows(path, "SELECT status FROM events WHERE id = ?", (event_id,))[0][0])


def as_json(result: Result) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def failed(result: Result, *needles: str) -> str:
    """Assert a clean failure: exit code 2, the message on stderr, no traceback."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in result.stderr, result.stderr
    return result.stderr


@pytest.fixture
async def db(tmp_path: Path) -> dict[str, Any]:
    """A database with one event in each state, a duplicate and a few pending batches."""
    path = str(tmp_path / "events.db")
    ids: dict[str, Any] = {"path": path}
    async with EventQueue.open(path, batch_window_ms=0, max_attempts=1, clock=an_hour_ago()) as q:
        ids["done"] = (await q.put(ev("order_shipped"))).id
        await q.ack(await _claim(q))
        ids["dead"] = (await q.put(ev("payment_failed"))).id
        await q.nack(await _claim(q), "boom: card declined")
        ids["claimed"] = (await q.put(ev("user_login"))).id
        await _claim(q)
        ids["pending"] = (await q.put(ev("order_created", "o1"))).id
        assert (await q.put(ev("order_created", "o1"))).duplicate
        await q.put(ev("order_created", "o2"))
        ids["critical"] = (await q.put(ev("disk_error", "h1"))).id
        await q.put(ev("heartbeat", "h1"))
    return ids


async def _claim(q: EventQueue) -> Any:
    batch = await q.claim()
    assert batch is not None
    return batch


# --- migrate ------------------------------------------------------------------------------------


def test_migrate_check_reports_without_creating_then_migrate_creates(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    check = run("migrate", "--check", "--db", str(path), "--json")
    assert check.exit_code == 1
    assert json.loads(check.stdout)["state"] == "missing"
    assert not path.exists()

    assert "upgraded from nothing to" in run("migrate", "--db", str(path)).stdout
    assert "already at head" in run("migrate", "--db", str(path)).stdout
    status = as_json(run("migrate", "--check", "--db", str(path), "--json"))
    assert status == {
        "db": str(path),
        "current": migrations.head_revision(),
        "head": migrations.head_revision(),
        "state": "current",
    }


def test_migrate_into_a_missing_folder_says_so(tmp_path: Path) -> None:
    failed(run("migrate", "--db", str(tmp_path / "nope" / "e.db")), "does not exist")


def test_schema_behind_or_unknown_says_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with contextlib.closing(sqlite3.connect(path)) as c:
        c.execute("CREATE TABLE host_table (x)")
    failed(run("stats", "--db", str(path)), "no eventqueue schema", "eventqueue migrate --db")
    assert run("migrate", "--check", "--db", str(path)).exit_code == 1

    run("migrate", "--db", str(path))
    with contextlib.closing(sqlite3.connect(path)) as c, c:
        c.execute("UPDATE eventqueue_alembic_version SET version_num = 'ffff'")
    failed(run("peek", "--db", str(path)), "unknown to this eventqueue", "upgrade eventqueue")
    failed(run("migrate", "--check", "--db", str(path)), "upgrade eventqueue")
    failed(run("migrate", "--db", str(path)), "upgrade eventqueue")


# --- common errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["stats"],
        ["stats", "--json"],
        ["peek"],
        ["show", "1"],
        ["dead"],
        ["requeue", "--all-dead"],
        ["purge", "--older-than", "1d"],
        ["sql", "select 1"],
        ["vacuum"],
        ["backup", "copy.db"],
    ],
)
def test_a_missing_database_is_reported_and_never_created(
    tmp_path: Path, args: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "absent.db"
    failed(run(*args, "--db", str(path)), f"no database at {path}", "eventqueue migrate --db")
    assert files(tmp_path) == set()


def test_db_path_comes_from_the_environment(db: dict[str, Any]) -> None:
    data = as_json(run("stats", "--json", env={"EVENT_DB_PATH": db["path"]}))
    assert data["counts"]["dead"]["CRITICAL"] == 1


def test_not_a_database_and_bad_settings_are_clear_errors(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite" * 100)
    failed(run("stats", "--db", str(junk)), "not a database")
    failed(run("show", "1", "--db", str(tmp_path)), "is a folder")
    bad = run("stats", "--db", str(junk), env={"EVENT_BUSY_TIMEOUT_MS": "soon"})
    failed(bad, "EVENT_BUSY_TIMEOUT_MS")


def test_a_locked_database_names_the_fix_and_readers_are_not_blocked(
    db: dict[str, Any],
) -> None:
    with contextlib.closing(sqlite3.connect(db["path"], isolation_level=None)) as writer:
        writer.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        locked = run(
            "requeue", "--all-dead", "--db", db["path"], env={"EVENT_BUSY_TIMEOUT_MS": "0"}
        )
        failed(locked, "locked", "EVENT_BUSY_TIMEOUT_MS")
        assert (
            as_json(run("stats", "--db", db["path"], "--json"))["counts"]["dead"]["CRITICAL"] == 1
        )
        writer.execute("ROLLBACK")
    assert status_of(db["path"], db["dead"]) == "dead"


# --- stats --------------------------------------------------------------------------------------


def test_stats_json_counts_every_status_and_priority(db: dict[str, Any]) -> None:
    data = as_json(run("stats", "--db", db["path"], "--json"))
    counts = data["counts"]
    assert set(counts) == {"pending", "held", "claimed", "done", "dead"}
    assert all(set(by) == {"LOW", "NORMAL", "HIGH", "CRITICAL"} for by in counts.values())
    assert counts["done"]["NORMAL"] == 1
    assert counts["dead"]["CRITICAL"] == 1
    assert counts["claimed"]["NORMAL"] == 1
    assert counts["pending"] == {"LOW": 1, "NORMAL": 2, "HIGH": 0, "CRITICAL": 1}
    assert data["duplicates_suppressed"] == 1
    assert data["ready_batches"] == 3  # order_created, disk_error, heartbeat
    assert HOUR_S - 60 < data["oldest_pending_age_s"] < HOUR_S + 60
    assert data["spill"]["total"] == 0
    assert data["spill"]["pending"] == {"CRITICAL": 0, "HIGH": 0, "NORMAL": 0, "LOW": 0}


def test_stats_for_people_and_the_spill_section(db: dict[str, Any]) -> None:
    plain = run("stats", "--db", db["path"])
    assert plain.exit_code == 0
    assert "duplicates suppressed" in plain.stdout
    assert "spill" in plain.stdout  # the queue created its spill folder beside the database

    shutil.rmtree(f"{db['path']}.spill")
    assert "spill" not in run("stats", "--db", db["path"]).stdout
    Path(f"{db['path']}.spill").mkdir()
    data = as_json(run("stats", "--db", db["path"], "--json"))
    assert data["spill"]["directory"] == f"{db['path']}.spill"
    assert "spill" in run("stats", "--db", db["path"]).stdout


def test_stats_for_people_reads_as_words_critical_first(db: dict[str, Any]) -> None:
    plain = run("stats", "--db", db["path"]).stdout

    header = next(line for line in plain.splitlines() if "status" in line)
    assert header.index("CRITICAL") < header.index("HIGH") < header.index("NORMAL")
    assert header.index("NORMAL") < header.index("LOW")
    spill = plain[plain.index("\nspill") :]
    for shown in ("folder ", "waiting ", "0 events (CRITICAL 0, HIGH 0, NORMAL 0, LOW 0)"):
        assert shown in spill, shown
    assert "on disk " in spill and "oldest spilled  none" in spill
    for raw in ("{", "'", "bytes_on_disk", "quarantined_records", "directories"):
        assert raw not in spill, raw  # no Python reprs, no JSON field names
    data = as_json(run("stats", "--db", db["path"], "--json"))
    assert list(data["counts"]["pending"]) == ["CRITICAL", "HIGH", "NORMAL", "LOW"]
    assert set(data["spill"]) >= {"pending", "total", "bytes_on_disk", "quarantined_records"}


@pytest.mark.parametrize("json_flag", [[], ["--json"]])
def test_stats_watch_rereads_until_ctrl_c(
    db: dict[str, Any], monkeypatch: pytest.MonkeyPatch, json_flag: list[str]
) -> None:
    naps: list[float] = []

    def nap(seconds: float) -> None:
        naps.append(seconds)
        if len(naps) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_sleep", nap)
    result = run("stats", "--db", db["path"], "--watch", "0.5", *json_flag)
    assert result.exit_code == 0, result.output
    assert naps == [0.5, 0.5, 0.5]
    if json_flag:
        snapshots = [json.loads(line) for line in result.stdout.splitlines()]
        assert [s["duplicates_suppressed"] for s in snapshots] == [1, 1, 1]
    else:
        assert "duplicates suppressed" in result.stdout


# --- peek, show, dead ---------------------------------------------------------------------------


def test_peek_lists_batches_in_claim_order_without_claiming(db: dict[str, Any]) -> None:
    before = snapshot(db["path"])
    data = as_json(run("peek", "--db", db["path"], "--json"))
    batches = data["batches"]
    assert batches[0]["key"] == "disk_error-handler"
    assert batches[0]["priority"] == "CRITICAL"
    assert [e["id"] for e in batches[0]["events"]] == [db["critical"]]
    keys = {b["key"] for b in batches}
    assert keys == {"disk_error-handler", "order_created-handler", "heartbeat-handler"}
    orders = next(b for b in batches if b["key"] == "order_created-handler")
    assert [e["event_name"] for e in orders["events"]] == ["order_created"] * 2
    assert snapshot(db["path"]) == before

    assert len(as_json(run("peek", "--db", db["path"], "--json", "--limit", "1"))["batches"]) == 1
    assert "disk_error-handler" in run("peek", "--db", db["path"]).stdout


def test_show_prints_every_column_with_iso_times(db: dict[str, Any]) -> None:
    info = as_json(run("show", str(db["dead"]), "--db", db["path"], "--json"))
    assert info["id"] == db["dead"]
    assert info["status"] == "dead"
    assert info["priority"] == "CRITICAL"
    assert info["attempts"] == 1
    assert info["last_error"] == "boom: card declined"
    assert info["payload"]["event_name"] == "payment_failed"
    assert info["received_at"].endswith("+00:00")
    assert info["finished_at"].startswith(info["received_at"][:10])
    assert {"lease_owner", "lease_expires_at", "duplicates", "available_at"} <= set(info)

    claimed = as_json(run("show", str(db["claimed"]), "--db", db["path"], "--json"))
    assert claimed["lease_owner"] == "consumer"
    assert claimed["lease_expires_at"] is not None
    people = run("show", str(db["dead"]), "--db", db["path"])
    assert "boom: card declined" in people.stdout
    assert "payment_failed" in people.stdout


@pytest.mark.parametrize("bad", ["abc", "0", "1.5", "1; DROP TABLE events", "1 OR 1=1", "１"])
def test_show_refuses_bad_ids_and_changes_nothing(db: dict[str, Any], bad: str) -> None:
    before = snapshot(db["path"])
    failed(run("show", bad, "--db", db["path"]), "bad id")
    assert snapshot(db["path"]) == before


def test_show_unknown_id(db: dict[str, Any]) -> None:
    failed(run("show", "999999", "--db", db["path"]), "no event with id 999999")
    failed(run("show", str(2**70), "--db", db["path"]), "bad id")


def test_dead_lists_dead_letters_with_their_last_error(db: dict[str, Any]) -> None:
    data = as_json(run("dead", "--db", db["path"], "--json"))
    assert [d["id"] for d in data["dead"]] == [db["dead"]]
    letter = data["dead"][0]
    assert letter["last_error"] == "boom: card declined"
    assert letter["event_name"] == "payment_failed"
    assert letter["died_at"].endswith("+00:00")
    assert "boom: card declined" in run("dead", "--db", db["path"]).stdout


# --- requeue ------------------------------------------------------------------------------------


def test_requeue_moves_given_dead_events_back_to_pending(db: dict[str, Any]) -> None:
    result = as_json(run("requeue", str(db["dead"]), "--db", db["path"], "--json"))
    assert result == {"requeued": 1, "refused": []}
    assert rows(db["path"], "SELECT status, attempts FROM events WHERE id = ?", (db["dead"],)) == [
        ("pending", 0)
    ]


def test_requeue_all_dead(db: dict[str, Any]) -> None:
    assert "requeued 1 dead event" in run("requeue", "--all-dead", "--db", db["path"]).stdout
    assert status_of(db["path"], db["dead"]) == "pending"
    assert "requeued 0" in run("requeue", "--all-dead", "--db", db["path"]).stdout


def test_requeue_refuses_ids_that_are_not_dead_and_changes_nothing(db: dict[str, Any]) -> None:
    before = snapshot(db["path"])
    ids = [str(db["dead"]), str(db["pending"]), "424242"]
    message = failed(run("requeue", *ids, "--db", db["path"]), "nothing requeued")
    assert f"event {db['pending']} is pending" in message
    assert "event 424242 does not exist" in message
    failed(run("requeue", "--db", db["path"]), "--all-dead")
    failed(run("requeue", str(db["dead"]), "--all-dead", "--db", db["path"]), "not both")
    failed(run("requeue", "1; DROP TABLE events", "--db", db["path"]), "bad id")
    failed(run("requeue", f"{db['dead']},{db['pending']}", "--db", db["path"]), "bad id")
    assert snapshot(db["path"]) == before


# --- purge, vacuum, backup ----------------------------------------------------------------------


def test_purge_deletes_done_events_older_than_the_duration(db: dict[str, Any]) -> None:
    kept = as_json(run("purge", "--older-than", "2h", "--db", db["path"], "--json"))
    assert kept["purged"] == 0
    gone = as_json(run("purge", "--older-than", "30m", "--db", db["path"], "--json"))
    assert gone["purged"] == 1
    assert rows(db["path"], "SELECT count(*) FROM events WHERE status = 'done'") == [(0,)]
    assert rows(db["path"], "SELECT count(*) FROM events") == [(6,)]


def test_purge_defaults_to_event_retention_seconds(db: dict[str, Any]) -> None:
    env = {"EVENT_RETENTION_SECONDS": "7200"}
    assert "purged 0 done" in run("purge", "--db", db["path"], env=env).stdout
    env = {"EVENT_RETENTION_SECONDS": "60"}
    assert "purged 1 done" in run("purge", "--db", db["path"], env=env).stdout


async def _acked_a_minute_ago(path: str, **settings: Any) -> None:
    """One event put and acked a minute ago (by the wall clock the CLI reads)."""
    frozen = time.time() - 60.0
    async with EventQueue.open(path, batch_window_ms=0, clock=lambda: frozen, **settings) as q:
        await q.put(ev("order_shipped"))
        await q.ack(await _claim(q))


def test_purge_keeps_what_the_dedup_window_needs_and_says_so(tmp_path: Path) -> None:
    path = str(tmp_path / "events.db")
    asyncio.run(_acked_a_minute_ago(path))  # DEDUP_TTL_SECONDS: 300

    result = run("purge", "--older-than", "0", "--db", path)
    assert result.exit_code == 0, result.output
    assert "purged 0 done event(s)" in result.stdout
    assert "kept 1 received within the dedup window (300 s" in result.stdout
    data = as_json(run("purge", "--older-than", "0", "--db", path, "--json"))
    assert (data["purged"], data["kept_for_dedup"], data["dedup_ttl_s"]) == (0, 1, 300.0)
    assert asyncio.run(_put_again(path)).duplicate


async def _put_again(path: str) -> PutResult:
    async with EventQueue.open(path) as q:
        return await q.put(ev("order_shipped"))


def test_purge_uses_the_dedup_window_the_queue_recorded(tmp_path: Path) -> None:
    # The queue ran with a 30 s window; the CLI's own environment says nothing (300 s default).
    path = str(tmp_path / "events.db")
    asyncio.run(_acked_a_minute_ago(path, dedup_ttl_s=30))

    data = as_json(run("purge", "--older-than", "0", "--db", path, "--json"))
    assert (data["purged"], data["kept_for_dedup"], data["dedup_ttl_s"]) == (1, 0, 30.0)
    assert "kept" not in run("purge", "--older-than", "0", "--db", path).stdout


@pytest.mark.parametrize("bad", ["soon", "5w", "-1h", "1d; DROP TABLE events", "", "99999999d"])
def test_purge_refuses_bad_durations(db: dict[str, Any], bad: str) -> None:
    before = snapshot(db["path"])
    failed(run("purge", "--older-than", bad, "--db", db["path"]), "bad duration")
    assert snapshot(db["path"]) == before


@pytest.fixture
async def big_db(tmp_path: Path) -> str:
    """1,200 done events of about 1 KB each: more than two purge chunks, many pages."""
    path = str(tmp_path / "big.db")
    async with EventQueue.open(path, clock=an_hour_ago(), queue_size=5000) as q:
        await q.put_many([ev("bulk", str(n), pad="x" * 1000) for n in range(1200)])
    return path


def test_purge_in_chunks_then_vacuum_hands_pages_back(big_db: str) -> None:
    path = big_db
    with contextlib.closing(sqlite3.connect(path)) as c, c:
        c.execute("UPDATE events SET status = 'done', finished_at = received_at")
    result = as_json(run("purge", "--older-than", "1m", "--db", path, "--json"))
    assert result["purged"] == 1200
    assert result["freed_pages"] > 100
    assert rows(path, "PRAGMA freelist_count") == [(0,)]
    vacuum = as_json(run("vacuum", "--db", path, "--json"))
    assert vacuum["checkpoint_busy"] is False
    assert vacuum["freed_pages"] == 0
    wal = Path(f"{path}-wal")
    assert not wal.exists() or wal.stat().st_size == 0  # truncated


def test_vacuum_for_people(db: dict[str, Any]) -> None:
    result = run("vacuum", "--db", db["path"])
    assert result.exit_code == 0, result.output
    assert "WAL checkpoint" in result.stdout


def test_backup_writes_a_consistent_copy_and_never_overwrites_silently(
    db: dict[str, Any], tmp_path: Path
) -> None:
    copy = tmp_path / "copy.db"
    result = as_json(run("backup", str(copy), "--db", db["path"], "--json"))
    assert result["path"] == str(copy)
    assert rows(copy, "SELECT * FROM events ORDER BY id") == snapshot(db["path"])[0]
    assert rows(copy, "PRAGMA integrity_check") == [("ok",)]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".eventqueue-backup-")]

    failed(run("backup", str(copy), "--db", db["path"]), "exists", "--force")
    assert run("backup", str(copy), "--force", "--db", db["path"]).exit_code == 0
    failed(run("backup", db["path"], "--force", "--db", db["path"]), "database itself")
    failed(run("backup", str(tmp_path / "no" / "x.db"), "--db", db["path"]), "does not exist")


# --- sql ----------------------------------------------------------------------------------------


def test_sql_runs_a_read_only_query(db: dict[str, Any]) -> None:
    query = "SELECT status, count(*) AS n FROM events GROUP BY status ORDER BY status"
    data = as_json(run("sql", query, "--db", db["path"], "--json"))
    assert data["columns"] == ["status", "n"]
    assert data["rows"] == [["claimed", 1], ["dead", 1], ["done", 1], ["pending", 4]]
    assert data["truncated"] is False
    assert "pending" in run("sql", query, "--db", db["path"]).stdout
    views = as_json(run("sql", "SELECT * FROM eq_dead_letters", "--db", db["path"], "--json"))
    assert views["rows"][0][0] == db["dead"]
    capped = as_json(
        run("sql", "SELECT id FROM events", "--max-rows", "2", "--db", db["path"], "--json")
    )
    assert len(capped["rows"]) == 2
    assert capped["truncated"] is True


@pytest.mark.parametrize(
    "query",
    [
        "WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c WHERE n < 3) SELECT * FROM c",
        "PRAGMA table_info(events)",
        "PRAGMA integrity_check",
        "PRAGMA user_version",
        "SELECT json_extract(payload, '$.event_name') FROM events",
    ],
)
def test_sql_allows_reads_recursive_ctes_and_reading_pragmas(
    db: dict[str, Any], query: str
) -> None:
    assert as_json(run("sql", query, "--db", db["path"], "--json"))["rows"]


@pytest.mark.parametrize(
    "query",
    [
        "ATTACH DATABASE '{tmp}/x.db' AS x",
        "VACUUM INTO '{tmp}/y.db'",
        "DROP TABLE events",
        "DELETE FROM events",
        "UPDATE events SET status = 'done'",
        "INSERT INTO counters VALUES ('x', 1)",
        "CREATE TABLE evil (x)",
        "CREATE TEMP TABLE evil (x)",
        "ALTER TABLE events RENAME TO gone",
        "PRAGMA user_version = 7",
        "PRAGMA journal_mode = DELETE",
        "PRAGMA query_only = OFF",
        "PRAGMA wal_checkpoint(TRUNCATE)",
        "BEGIN",
        "SELECT 1; DROP TABLE events",
        "SELECT load_extension('/tmp/evil')",
        "REPLACE INTO settings VALUES ('max_batch_size', '1')",
    ],
)
def test_sql_refuses_writes_attach_and_pragma_writes(
    db: dict[str, Any], tmp_path: Path, query: str
) -> None:
    before, listing = snapshot(db["path"]), files(tmp_path)
    result = run("sql", query.format(tmp=tmp_path), "--db", db["path"])
    failed(result, "refused")
    assert snapshot(db["path"]) == before
    assert files(tmp_path) == listing
    assert not (tmp_path / "x.db").exists()


def test_sql_injection_through_a_literal_is_harmless(db: dict[str, Any]) -> None:
    before = snapshot(db["path"])
    query = "SELECT * FROM events WHERE id = '1; DROP TABLE events'"
    assert as_json(run("sql", query, "--db", db["path"], "--json"))["rows"] == []
    failed(run("sql", "SELECT * FROM nowhere", "--db", db["path"]), "query failed")
    assert snapshot(db["path"]) == before


def test_read_commands_leave_no_reader_behind(db: dict[str, Any]) -> None:
    for args in (["stats"], ["peek"], ["dead"], ["show", "1"], ["sql", "SELECT 1"]):
        assert run(*args, "--db", db["path"]).exit_code == 0
    with contextlib.closing(sqlite3.connect(db["path"], isolation_level=None)) as c:
        busy, _log, _done = c.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    assert busy == 0


# --- a real process -----------------------------------------------------------------------------


def test_smoke_python_m_eventqueue_stats_json(db: dict[str, Any]) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENT_")}
    completed = subprocess.run(
        [sys.executable, "-m", "eventqueue", "stats", "--db", db["path"], "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    data = json.loads(completed.stdout)
    assert data["counts"]["pending"]["CRITICAL"] == 1
    assert data["duplicates_suppressed"] == 1
