"""`eventqueue demo --db postgresql://...`: a new schema of its own, its checks pass, its printed
queries work, and nothing that existed before is touched."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from pgtest import execute, run_sync

from eventqueue.tools import cli, demo

SMALL = ("--events", "300", "--rate", "5000")


def schemas(url: str, prefix: str) -> set[str]:
    rows = run_sync(lambda: execute(url, "SELECT nspname FROM pg_namespace"))
    return {r[0] for r in rows if r[0].startswith(prefix)}


@pytest.fixture(scope="module")
def demo_run(pg_server: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """One small demo on the test server, as JSON; its schema dropped afterwards."""
    before = schemas(pg_server, "eqdemo_")
    result = CliRunner().invoke(cli.main, ["demo", *SMALL, "--db", pg_server, "--json"])
    made = schemas(pg_server, "eqdemo_") - before
    try:
        assert result.exit_code == 0, result.output
        assert len(made) == 1, made
        yield next(iter(made)), json.loads(result.stdout)
    finally:
        for schema in made:
            run_sync(lambda s=schema: execute(pg_server, f"DROP SCHEMA {s} CASCADE"))


def test_demo_passes_its_checks_in_a_schema_of_its_own(demo_run: tuple[str, Any]) -> None:
    schema, report = demo_run
    assert report["ok"] and report["finished"]
    assert [c for c in report["checks"] if not c["ok"]] == []
    assert report["database"].endswith(f"/test?schema={schema}")
    assert report["cleanup"].endswith(shlex.quote(f"DROP SCHEMA {schema} CASCADE"))
    assert report["stream"]["connections"] == 2


def test_report_counts_match_the_database(pg_server: str, demo_run: tuple[str, Any]) -> None:
    schema, report = demo_run
    events = report["events"]
    assert events["sent"] == events["received"] == 300
    assert events["duplicates_suppressed"] > 0 and events["dead"] > 0
    by_status = dict(
        run_sync(
            lambda: execute(pg_server, f"SELECT status, count(*) FROM {schema}.events GROUP BY 1")
        )
    )
    assert by_status == {"done": events["handled"], "dead": events["dead"]}
    dead = run_sync(
        lambda: execute(pg_server, f"SELECT DISTINCT event_name FROM {schema}.eq_dead_letters")
    )
    assert [r[0] for r in dead] == [demo.BROKEN]


def test_the_printed_database_url_reaches_the_demos_schema(demo_run: tuple[str, Any]) -> None:
    _, report = demo_run
    result = CliRunner().invoke(cli.main, ["stats", "--db", report["database"], "--json"])
    assert result.exit_code == 0, result.output
    done = sum(json.loads(result.stdout)["counts"]["done"].values())
    assert done == report["events"]["handled"] > 0


def test_printed_queries_work(demo_run: tuple[str, Any]) -> None:
    _, report = demo_run
    queries = report["queries"]
    assert [q["tool"] for q in queries] == ["psql", "psql", "eventqueue"]
    bin_dir = Path(sys.executable).parent
    shell = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    for query in queries:
        assert shlex.split(query["command"])[-1] == query["sql"]
        if shutil.which(query["tool"], path=shell["PATH"]) is None:
            continue  # no psql on this machine
        done = subprocess.run(
            ["bash", "-c", query["command"]], env=shell, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip()


def test_a_url_that_chooses_its_schema_is_refused(pg_db: str, pg_server: str) -> None:
    """A URL with its own options or schema= (here: a test schema) is refused; nothing is
    created."""
    before = schemas(pg_db, "eqdemo_")
    for url in (pg_db, f"{pg_server}?schema=public"):
        result = CliRunner().invoke(cli.main, ["demo", *SMALL, "--db", url, "--json"])
        assert result.exit_code == 2
        assert "without ?options=... or ?schema=..." in result.stderr
    assert schemas(pg_db, "eqdemo_") == before
