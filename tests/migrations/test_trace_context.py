"""Revision 0002 (events.trace_context): upgrade from 0001 with rows, downgrade, idempotent reruns."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from typing import Any

import pytest

from eventqueue import EventQueue
from eventqueue.core.errors import SchemaError
from eventqueue.store.sqlite import migrations

Query = Callable[..., list[Any]]
# The columns revision 0001 made, in its order: what a round trip must keep, row for row.
V1_COLUMNS = (
    "id, payload, priority, batch_key, content_hash, dedup_key, status, received_at, "
    "available_at, attempts, lease_owner, lease_token, lease_expires_at, batch_id, last_error, "
    "duplicates, finished_at"
)


def columns(query: Query) -> list[str]:
    return [row[1] for row in query("PRAGMA table_info(events)")]


def version(query: Query) -> list[Any]:
    return query(f"SELECT version_num FROM {migrations.VERSION_TABLE}")


def v1_rows(query: Query) -> list[Any]:
    return query(f"SELECT {V1_COLUMNS} FROM events ORDER BY id")


@pytest.fixture
def at_0001(db_path: str, query: Query) -> str:
    """A database at revision 0001 holding rows, as an earlier eventqueue left it."""
    migrations.upgrade(db_path, "0001")
    for i in range(20):
        query(
            "INSERT INTO events (payload, priority, batch_key, content_hash, dedup_key, status, "
            "received_at, available_at) VALUES (?, ?, ?, ?, ?, 'pending', ?, ?)",
            (f'{{"event_name":"job","n":{i}}}', 1 + i % 4, "job-handler", f"h{i}", f"h{i}", i, i),
        )
    return db_path


def test_upgrade_from_0001_adds_a_null_column_and_keeps_every_row(
    at_0001: str, query: Query
) -> None:
    before = v1_rows(query)

    migrations.upgrade(at_0001, "0002")

    assert "trace_context" in columns(query)
    assert v1_rows(query) == before
    assert query("SELECT count(*) FROM events WHERE trace_context IS NULL") == [(20,)]
    assert version(query) == [("0002",)]


def test_downgrade_to_0001_drops_the_column_and_keeps_every_row(at_0001: str, query: Query) -> None:
    migrations.upgrade(at_0001, "0002")
    query("UPDATE events SET trace_context = '00-' || id WHERE id <= 5")
    before = v1_rows(query)

    migrations.downgrade(at_0001, "0001")

    assert "trace_context" not in columns(query)
    assert v1_rows(query) == before
    assert version(query) == [("0001",)]
    assert query("PRAGMA integrity_check") == [("ok",)]
    migrations.upgrade(at_0001, "0002")  # and up again
    assert "trace_context" in columns(query)


def test_upgrade_rerun_after_a_kill_between_the_alter_and_the_stamp(
    at_0001: str, query: Query
) -> None:
    # As if killed after ADD COLUMN committed and before the version row moved to 0002.
    query("ALTER TABLE events ADD COLUMN trace_context TEXT")

    migrations.upgrade(at_0001, "0002")

    assert columns(query).count("trace_context") == 1
    assert version(query) == [("0002",)]


def test_downgrade_rerun_when_the_column_is_already_gone(at_0001: str, query: Query) -> None:
    migrations.upgrade(at_0001, "0002")
    query("ALTER TABLE events DROP COLUMN trace_context")

    migrations.downgrade(at_0001, "0001")

    assert version(query) == [("0001",)]


def test_a_queue_refuses_a_0001_database_until_migrated(at_0001: str) -> None:
    async def put_one(migrate: bool | str) -> int | None:
        async with EventQueue.open(at_0001, migrate=migrate) as q:
            return (await q.put({"event_name": "after_upgrade"})).id

    with pytest.raises(SchemaError, match="eventqueue migrate"):
        asyncio.run(put_one("auto"))
    assert asyncio.run(put_one(True)) == 21


def test_downgrade_on_a_sqlite_without_drop_column_rebuilds_and_keeps_the_views(
    at_0001: str, query: Query, monkeypatch: pytest.MonkeyPatch
) -> None:
    migrations.upgrade(at_0001, "0002")
    views = query("SELECT name, sql FROM sqlite_master WHERE type = 'view' ORDER BY name")
    indexes = query("SELECT name, sql FROM sqlite_master WHERE type = 'index' ORDER BY name")
    before = v1_rows(query)
    monkeypatch.setattr(sqlite3, "sqlite_version_info", (3, 31, 1))  # before DROP COLUMN (3.35)

    migrations.downgrade(at_0001, "0001")

    assert "trace_context" not in columns(query)
    assert v1_rows(query) == before
    assert query("SELECT name, sql FROM sqlite_master WHERE type = 'view' ORDER BY name") == views
    assert query("SELECT name, sql FROM sqlite_master WHERE type = 'index' ORDER BY name") == (
        indexes
    )
    assert query("SELECT count(*) FROM eq_overview") != []
