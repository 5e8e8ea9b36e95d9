"""Migrations on real files: idempotent upgrades, populated databases, metadata match, neighbours."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

import eventqueue
from eventqueue import EventQueue
from eventqueue.store.sqlite import migrations
from eventqueue.store.sqlite.pragmas import make_migration_engine
from eventqueue.store.sqlite.schema import VIEWS, metadata

Query = Callable[..., list[Any]]
OWN_TABLES = {"events", "source_positions", "spill_positions", "counters", "settings", "owners"}


def schema_objects(query: Query) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for kind, name in query("SELECT type, name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'"):
        found.setdefault(kind, set()).add(name)
    return found


def events_checksum(query: Query) -> tuple[int, str]:
    rows = query("SELECT * FROM events ORDER BY id")
    return len(rows), hashlib.sha256(repr(rows).encode()).hexdigest()


def host_tables_only(
    obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
) -> bool:
    # As migrations/env.py does: a reflected table with no model is the host application's.
    return not (type_ == "table" and reflected and compare_to is None)


def diff_against_metadata(path: str) -> list[Any]:
    engine = make_migration_engine(path, busy_timeout_ms=5000)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(
                connection,
                opts={
                    "version_table": migrations.VERSION_TABLE,
                    "include_object": host_tables_only,
                },
            )
            return list(compare_metadata(context, metadata))
    finally:
        engine.dispose()


def populate(path: str, events: int = 50) -> None:
    """Put events, and move some through claim, ack and nack, with the queue's own API."""

    async def run() -> None:
        async with EventQueue.open(path, batch_window_ms=0, max_attempts=1) as q:
            await q.put_many(
                [{"event_name": f"job_{i % 3}", "aggregate_id": i} for i in range(events)]
            )
            await q.put({"event_name": "job_0", "aggregate_id": 0})  # a duplicate
            done = await q.claim()
            dead = await q.claim()
            assert done is not None and dead is not None
            await q.ack(done)
            await q.nack(dead, error="boom")
            await q.claim("holder")

    asyncio.run(run())


def normalise(sql: str) -> str:
    return re.sub(r"\s+", " ", sql).strip()


# --- upgrade ------------------------------------------------------------------------------


def test_upgrade_creates_every_table_index_and_view(db_path: str, query: Query) -> None:
    migrations.upgrade(db_path)

    objects = schema_objects(query)
    assert OWN_TABLES | {migrations.VERSION_TABLE} <= objects["table"]
    assert set(VIEWS) == objects["view"]
    assert {"ix_events_pending", "ix_events_claimed"} <= objects["index"]


def test_upgraded_schema_matches_the_sqlalchemy_metadata(db_path: str) -> None:
    migrations.upgrade(db_path)

    assert diff_against_metadata(db_path) == []


def test_schema_created_by_opening_a_queue_matches_the_metadata(db_path: str) -> None:
    asyncio.run(_open_close(db_path))

    assert diff_against_metadata(db_path) == []


async def _open_close(path: str) -> None:
    queue = await EventQueue.open(path)
    await queue.close()


def test_view_definitions_match_the_package(db_path: str, query: Query) -> None:
    migrations.upgrade(db_path)

    stored = dict(query("SELECT name, sql FROM sqlite_master WHERE type = 'view'"))
    for name, body in VIEWS.items():
        assert normalise(body) in normalise(stored[name]), name


def test_every_view_answers_on_an_empty_database(db_path: str, query: Query) -> None:
    migrations.upgrade(db_path)

    for name in VIEWS:
        assert query(f"SELECT * FROM {name}") == []


def test_version_table_is_eventqueues_own(db_path: str, query: Query) -> None:
    migrations.upgrade(db_path)

    tables = schema_objects(query)["table"]
    assert "eventqueue_alembic_version" in tables
    assert "alembic_version" not in tables
    assert query("SELECT version_num FROM eventqueue_alembic_version") == [
        (migrations.head_revision(),)
    ]


def test_foreign_key_check_is_clean_after_upgrade(db_path: str, query: Query) -> None:
    migrations.upgrade(db_path)
    populate(db_path)

    assert query("PRAGMA foreign_key_check") == []
    assert query("PRAGMA integrity_check") == [("ok",)]


def test_status_reports_current_and_head(db_path: str) -> None:
    migrations.upgrade(db_path)

    assert migrations.status(db_path) == (migrations.head_revision(), migrations.head_revision())


# --- reruns and populated databases -------------------------------------------------------


def test_upgrade_is_idempotent_when_rerun(db_path: str, query: Query) -> None:
    migrations.upgrade(db_path)
    before = query("SELECT type, name, sql FROM sqlite_master ORDER BY type, name")

    migrations.upgrade(db_path)

    assert query("SELECT type, name, sql FROM sqlite_master ORDER BY type, name") == before


def test_upgrade_rerun_on_a_populated_database_keeps_every_row(db_path: str, query: Query) -> None:
    migrations.upgrade(db_path)
    populate(db_path)
    before = events_checksum(query)
    counters = query("SELECT * FROM counters ORDER BY name")
    assert before[0] == 50

    migrations.upgrade(db_path)

    assert events_checksum(query) == before
    assert query("SELECT * FROM counters ORDER BY name") == counters


def test_a_half_applied_upgrade_completes_when_rerun(db_path: str, query: Query) -> None:
    # As if killed mid-upgrade: some objects made, the version row never written (F11).
    migrations.upgrade(db_path)
    populate(db_path)
    before = events_checksum(query)
    query("DROP VIEW eq_claimed")
    query("DROP TABLE settings")
    query("DROP INDEX ix_events_claimed")
    query("DELETE FROM eventqueue_alembic_version")

    migrations.upgrade(db_path)

    assert set(VIEWS) == schema_objects(query)["view"]
    assert diff_against_metadata(db_path) == []
    assert events_checksum(query) == before


def test_downgrade_to_base_removes_eventqueues_objects(db_path: str, query: Query) -> None:
    migrations.upgrade(db_path)
    populate(db_path)

    migrations.downgrade(db_path, "base")

    objects = schema_objects(query)
    assert objects.get("view", set()) == set()
    assert objects["table"] & OWN_TABLES == set()
    assert query("SELECT count(*) FROM eventqueue_alembic_version") == [(0,)]


def test_upgrade_downgrade_upgrade_round_trip_gives_the_same_schema(
    db_path: str, query: Query
) -> None:
    migrations.upgrade(db_path)
    populate(db_path)
    schema = query("SELECT type, name, sql FROM sqlite_master ORDER BY type, name")

    migrations.downgrade(db_path, "base")
    migrations.upgrade(db_path)

    assert query("SELECT type, name, sql FROM sqlite_master ORDER BY type, name") == schema
    assert diff_against_metadata(db_path) == []
    assert query("PRAGMA foreign_key_check") == []
    populate(db_path)  # and the queue works on it again


# --- a host application in the same file --------------------------------------------------


@pytest.fixture
def host_db(db_path: str, query: Query) -> str:
    """A file that already holds a host application's table and its own alembic history."""
    query("CREATE TABLE orders (id INTEGER PRIMARY KEY, total REAL NOT NULL)")
    query("INSERT INTO orders (total) VALUES (12.5), (99.0)")
    query("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY)")
    query("INSERT INTO alembic_version VALUES ('host_rev_7')")
    return db_path


def test_upgrade_leaves_a_host_applications_tables_alone(host_db: str, query: Query) -> None:
    migrations.upgrade(host_db)
    populate(host_db)

    assert query("SELECT * FROM orders ORDER BY id") == [(1, 12.5), (2, 99.0)]
    assert query("SELECT * FROM alembic_version") == [("host_rev_7",)]
    assert diff_against_metadata(host_db) == []


def test_downgrade_leaves_a_host_applications_tables_alone(host_db: str, query: Query) -> None:
    migrations.upgrade(host_db)

    migrations.downgrade(host_db, "base")

    assert query("SELECT * FROM orders ORDER BY id") == [(1, 12.5), (2, 99.0)]
    assert query("SELECT * FROM alembic_version") == [("host_rev_7",)]


def test_queue_opens_beside_a_host_application_after_migrate(host_db: str, query: Query) -> None:
    async def run() -> int | None:
        async with EventQueue.open(host_db, migrate=True) as q:
            return (await q.put({"event_name": "x"})).id

    assert asyncio.run(run()) is not None
    assert query("SELECT count(*) FROM orders") == [(2,)]


# --- the alembic command line -------------------------------------------------------------


def test_alembic_command_line_upgrades_with_the_checkouts_ini(db_path: str, query: Query) -> None:
    ini = Path(__file__).resolve().parents[2] / "alembic.ini"
    if not ini.is_file():
        pytest.skip("alembic.ini is only in a source checkout")
    package_root = str(Path(eventqueue.__file__).resolve().parent.parent)
    env = {**os.environ, "EVENT_DB_PATH": db_path, "PYTHONPATH": package_root}

    done = subprocess.run(
        [sys.executable, "-m", "alembic", "-c", str(ini), "upgrade", "head"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert done.returncode == 0, done.stderr
    assert query("SELECT version_num FROM eventqueue_alembic_version") == [
        (migrations.head_revision(),)
    ]
    assert "alembic_version" not in schema_objects(query)["table"]
