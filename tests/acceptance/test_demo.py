"""`eventqueue demo`, small: it exits 0, its report's counts equal the database's, its SQL works."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from eventqueue.tools import cli, demo

SMALL = ("--events", "300", "--rate", "5000")


def run(*args: str) -> Result:
    return CliRunner().invoke(cli.main, ["demo", *args])


def rows(path: str | Path, query: str) -> list[Any]:
    """Plain sqlite3, read-only: what anyone can do with the database the demo leaves."""
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as connection:
        return connection.execute(query).fetchall()


@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """One small demo on a named database (in a folder it must create), as JSON."""
    db = tmp_path_factory.mktemp("demo") / "kept" / "demo.db"
    result = run(*SMALL, "--db", str(db), "--json")
    assert result.exit_code == 0, result.output
    return db, json.loads(result.stdout)


def test_small_demo_passes_its_own_checks(small_run: tuple[Path, dict[str, Any]]) -> None:
    db, report = small_run
    assert report["ok"] and report["finished"]
    assert [c for c in report["checks"] if not c["ok"]] == []
    assert report["database"] == str(db)
    # The mid-stream drop happened and the second connection resumed after the last id seen.
    assert report["stream"]["connections"] == 2
    assert report["stream"]["last_event_ids"] == [None, "100"]


def test_report_counts_match_the_database(small_run: tuple[Path, dict[str, Any]]) -> None:
    db, report = small_run
    events = report["events"]
    assert events["sent"] == events["received"] == 300
    assert events["accepted"] + events["duplicates_suppressed"] == 300
    assert events["duplicates_suppressed"] > 0 and events["dead"] > 0
    assert events["retried"] > events["dead"]  # the flaky handler's retries, not only the dead
    seq = "json_extract(payload, '$.attributes.seq')"
    # order_updated versions folded into a pending event of their order are not rows of their own
    stored = events["accepted"] - events["superseded"]
    assert rows(db, f"SELECT count(*), count(DISTINCT {seq}) FROM events") == [(stored, stored)]
    assert events["superseded"] > 0
    assert rows(db, "SELECT sum(superseded) FROM events") == [(events["superseded"],)]
    assert rows(db, "SELECT value FROM counters WHERE name = 'superseded'") == [
        (events["superseded"],)
    ]
    by_status = dict(rows(db, "SELECT status, count(*) FROM events GROUP BY status"))
    assert by_status == {"done": events["handled"], "dead": events["dead"]}
    assert rows(db, "SELECT value FROM counters WHERE name = 'duplicates_suppressed'") == [
        (events["duplicates_suppressed"],)
    ]
    dead_names = rows(db, "SELECT DISTINCT event_name FROM eq_dead_letters")
    assert dead_names == [(demo.BROKEN,)]
    batched = sum(k["batches"] for k in report["batches"]["batches_by_key"].values())
    assert batched == report["batches"]["batches"] > 0
    assert report["latency_ms"]["CRITICAL"]["n"] > 0


def test_json_report_has_stable_fields_and_the_critical_target(
    small_run: tuple[Path, dict[str, Any]],
) -> None:
    _, report = small_run
    # The fields the README's figures come from (`eventqueue demo --json`): a contract.
    assert set(report) >= {"finished", "seconds", "events", "batches", "latency_ms", "ok"}
    assert list(report["latency_ms"]) == ["CRITICAL", "HIGH", "NORMAL", "LOW"]
    for row in report["latency_ms"].values():
        assert set(row) == {"n", "p50_ms", "p99_ms", "max_ms"}
    critical = report["latency_ms"]["CRITICAL"]
    assert report["critical_target"] == {
        "p99_ms": 10.0,
        "measured_p99_ms": critical["p99_ms"],
        "n": critical["n"],
        "met": critical["p99_ms"] <= 10.0,
    }


def test_the_report_states_the_plans_target_beside_critical_with_n(tmp_path: Path) -> None:
    result = run(*SMALL, "--db", str(tmp_path / "demo.db"))

    assert result.exit_code == 0, result.output

    def cells(line: str) -> list[str]:
        return [c.strip() for c in line.replace("┃", "│").split("│")]

    header = next(cells(line) for line in result.stdout.splitlines() if "p50 ms" in line)
    assert header[:3] == ["priority", "n", "p50 ms"]  # n beside the percentiles
    critical = next(line for line in result.stdout.splitlines() if line.startswith(" CRITICAL"))
    assert "p99 <= 10" in critical
    assert "the plan's target: CRITICAL p99 <= 10 ms" in result.stdout
    assert "over n=" in result.stdout


def test_printed_queries_work(small_run: tuple[Path, dict[str, Any]]) -> None:
    db, report = small_run
    queries = report["queries"]
    assert [q["tool"] for q in queries] == ["sqlite3", "sqlite3", "eventqueue"]
    for query in queries:
        assert rows(db, query["sql"]), query["sql"]  # each shows something after a run
        words = shlex.split(query["command"])
        assert words[-1] == query["sql"] and str(db) in words
    # Exactly as printed, through a shell: the quoting survives copy and paste.
    shell = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for query in queries:
        if shutil.which(query["tool"], path=shell["PATH"]) is None:
            continue  # no sqlite3 shell on this machine; its SQL ran above
        done = subprocess.run(
            ["bash", "-c", query["command"]], env=shell, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip()


def test_plain_progress_and_report_when_not_a_terminal(tmp_path: Path) -> None:
    result = run(*SMALL, "--db", str(tmp_path / "demo.db"))
    assert result.exit_code == 0, result.output
    assert "\x1b[" not in result.stdout  # no cursor movement or colour in a pipe
    lines = result.stdout.splitlines()
    assert lines[0] == f"database: {tmp_path / 'demo.db'}"
    assert any(line.startswith("[") and "received 300/300" in line for line in lines)
    assert "FAIL" not in result.stdout
    assert sum(line.startswith("  sqlite3 ") for line in lines) == 2


def test_an_existing_database_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "events.db"
    db.write_bytes(b"precious")
    result = run("--db", str(db), "--json")
    assert result.exit_code == 2
    assert "already exists" in result.stderr
    assert db.read_bytes() == b"precious"


def test_the_deadline_stops_and_reports_with_exit_1(tmp_path: Path) -> None:
    late = ("--events", "6", "--rate", "1", "--seconds", "1")  # 6 events at 1 a second: too slow
    result = run(*late, "--db", str(tmp_path / "text.db"))
    assert result.exit_code == 1, result.output
    assert "stopped at the deadline" in result.stdout
    result = run(*late, "--db", str(tmp_path / "json.db"), "--json")
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    assert not report["finished"] and not report["ok"]
    failed = {c["name"] for c in report["checks"] if not c["ok"]}
    # Not everything arrived (and the last arrival may still be pending); nothing was lost and
    # the counts still agree with the database after the graceful stop.
    assert "every event received once, in order, across the reconnect" in failed
    assert failed <= {
        "every event received once, in order, across the reconnect",
        "every event finished (done or dead)",
    }


def test_defaults_are_the_documented_ones() -> None:
    params = {p.name: p.default for p in cli.main.commands["demo"].params}
    assert params["events"] == demo.DEFAULT_EVENTS == 2000
    assert params["rate"] == demo.DEFAULT_RATE == 2000.0
    assert params["seconds"] == demo.DEFAULT_SECONDS == 60.0
    assert params["db_path"] is None
    help_text = " ".join(CliRunner().invoke(cli.main, ["demo", "--help"]).output.split())
    for shown in ("[default: 2000;", "[default: 2000.0;", "[default: 60.0;"):
        assert shown in help_text
