"""PostgreSQL URLs: `?schema=NAME` reaches that schema everywhere a URL is taken (queue, CLI,
migrations), libpq's `options=-csearch_path%3DNAME` keeps working, a bad name is refused before
anything is created; `backup` hands over the pg_dump line (exit 0), and that line works."""

from __future__ import annotations

import asyncio
import json
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from pgtest import execute, new_schema_name, run_sync

from eventqueue import EventQueue
from eventqueue.core.config import Config
from eventqueue.core.errors import ConfigError
from eventqueue.store.postgres.admin import backup, pg_dump_command
from eventqueue.store.postgres.urls import driver_dsn, url_schema, with_schema_parameter
from eventqueue.tools import cli

BASE = "postgresql://app:secret@db.internal:5432/events"

# --- the URL forms, without a server ------------------------------------------------------------


def test_schema_parameter_becomes_libpq_options_for_the_driver() -> None:
    assert driver_dsn(f"{BASE}?schema=eq_app") == f"{BASE}?options=-csearch_path%3Deq_app"
    assert driver_dsn(f"{BASE}?sslmode=disable&schema=eq_app") == (
        f"{BASE}?sslmode=disable&options=-csearch_path%3Deq_app"
    )
    # Other libpq options stay; the schema joins them.
    assert driver_dsn(f"{BASE}?options=-cwork_mem%3D64MB&schema=eq_app") == (
        f"{BASE}?options=-cwork_mem%3D64MB%20-csearch_path%3Deq_app"
    )


def test_libpq_options_and_plain_urls_pass_through_unchanged() -> None:
    libpq = f"{BASE}?options=-csearch_path%3DMixedCase"
    assert driver_dsn(libpq) == libpq
    assert driver_dsn(BASE) == BASE
    assert driver_dsn("postgres://h/db?schema=x") == "postgresql://h/db?options=-csearch_path%3Dx"


def test_the_schema_a_url_selects() -> None:
    assert url_schema(f"{BASE}?schema=eq_app") == "eq_app"
    assert url_schema(f"{BASE}?options=-csearch_path%3Deq_app") == "eq_app"
    assert url_schema(BASE) is None
    assert with_schema_parameter(f"{BASE}?options=-csearch_path%3Deqdemo_1a") == (
        f"{BASE}?schema=eqdemo_1a"
    )
    other = f"{BASE}?options=-cwork_mem%3D64MB%20-csearch_path%3Deq"
    assert with_schema_parameter(other) == other  # not a plain schema choice: shown as it is


@pytest.mark.parametrize(
    ("query", "needle"),
    [
        ("schema=", "is not a schema name"),
        ("schema=Eq_App", "lower-case"),
        ("schema=eq;drop", "is not a schema name"),
        ("schema=a,b", "is not a schema name"),
        ("schema=1abc", "starting with a letter"),
        (f"schema={'a' * 64}", "at most 63"),
        ("schema=a&schema=b", "give schema= once"),
        ("schema=a&options=-csearch_path%3Db", "named twice"),
    ],
)
def test_a_bad_schema_parameter_is_refused_clearly(query: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle) as caught:
        driver_dsn(f"{BASE}?{query}")
    assert "secret" not in str(caught.value)


def test_backup_hands_over_the_pg_dump_line_for_either_form() -> None:
    for url in (f"{BASE}?schema=eq_app", f"{BASE}?options=-csearch_path%3Deq_app"):
        advice = backup(Config(db_path=url), "/tmp/x.dump")
        assert advice["copied"] is False
        assert advice["command"] == (
            "pg_dump --format=custom --file=/tmp/x.dump --schema=eq_app "
            "postgresql://app@db.internal:5432/events"
        )


# --- against the server -------------------------------------------------------------------------


@pytest.fixture
def schema_url(pg_server: str) -> Any:
    """`pg_server?schema=<fresh schema>` (created here, dropped afterwards)."""
    schema = new_schema_name()
    run_sync(lambda: execute(pg_server, f"CREATE SCHEMA {schema}"))
    try:
        yield schema, f"{pg_server}?schema={schema}"
    finally:
        run_sync(lambda: execute(pg_server, f"DROP SCHEMA {schema} CASCADE"))


def run(*args: str) -> Result:
    return CliRunner().invoke(cli.main, list(args))


async def test_the_queue_and_the_cli_reach_the_schema_named_by_schema_parameter(
    pg_server: str, schema_url: tuple[str, str], tmp_path: Path
) -> None:
    schema, url = schema_url
    async with EventQueue.open(url, spill_dir=str(tmp_path / "spill")) as q:
        await q.put(
            {"event_type": "t", "event_name": "here", "aggregate_id": "a", "attributes": {}}
        )

    rows = await execute(pg_server, f"SELECT payload FROM {schema}.events")
    assert len(rows) == 1 and "here" in rows[0][0]
    # The CLI runs its own event loop: from a thread, as a shell would run it.
    result = await asyncio.to_thread(run, "stats", "--db", url, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["counts"]["pending"]["NORMAL"] == 1


def test_a_bad_schema_name_is_refused_by_the_cli_and_creates_nothing(pg_server: str) -> None:
    result = run("migrate", "--db", f"{pg_server}?schema=no;such")
    assert result.exit_code == 2, result.output
    assert "is not a schema name" in result.stderr and "Traceback" not in result.output
    rows = run_sync(lambda: execute(pg_server, "SELECT nspname FROM pg_namespace"))
    assert not [r for r in rows if "no;such" in r[0]]


def test_backup_exits_0_with_a_pg_dump_line_that_works(
    schema_url: tuple[str, str], tmp_path: Path
) -> None:
    schema, url = schema_url
    assert run("migrate", "--db", url).exit_code == 0
    dump = tmp_path / "queue.dump"

    result = run("backup", str(dump), "--db", url)
    assert result.exit_code == 0, result.output
    assert "Error" not in result.output
    assert pg_dump_command(url, str(dump)) in result.stdout
    data = json.loads(run("backup", str(dump), "--db", url, "--json").stdout)
    assert data["copied"] is False and not dump.exists()

    if shutil.which("pg_dump") is None:
        pytest.skip("pg_dump is not installed: the printed line was not run")
    subprocess.run(shlex.split(data["command"]), check=True, timeout=120)
    listing = subprocess.run(
        ["pg_restore", "--list", str(dump)], check=True, capture_output=True, text=True
    ).stdout
    assert f"TABLE {schema} events " in listing
