"""Revision 0003 (owners, events.lease_holder): upgrade from 0002 with rows, downgrade,
idempotent reruns, and a queue on a migrated database names its leases' owner."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from typing import Any

import pytest

from eventqueue import EventQueue
from eventqueue.core.errors import SchemaError
from eventqueue.store.sqlite import migrations

Query = Callable[..., list[Any]]
# The columns revision 0002 made, in its order: what a round trip must keep, row for row.
V2_COLUMNS = (
    "id, payload, priority, batch_key, content_hash, dedup_key, status, received_at, "
    "available_at, attempts, lease_owner, lease_token, lease_expires_at, batch_id, last_error, "
    "duplicates, finished_at, trace_context"
)


def columns(query: Query) -> list[str]:
    return [row[1] for row in query("PRAGMA table_info(events)")]


def tables(query: Query) -> set[str]:
    return {r[0] for r in query("SELECT name FROM sqlite_master WHERE type = 'table'")}


def version(query: Query) -> list[Any]:
    return query(f"SELECT version_num FROM {migrations.VERSION_TABLE}")


def v2_rows(query: Query) -> list[Any]:
    return query(f"SELECT {V2_COLUMNS} FROM events ORDER BY id")


@pytest.fixture
def at_0002(db_path: str, query: Query) -> str:
    """A database at revision 0002 holding rows, some claimed, as an earlier eventqueue left it."""
    migrations.upgrade(db_path, "0002")
    for i in range(20):
        claimed = i < 5
        query(
            "INSERT INTO events (payload, priority, batch_key, content_hash, dedup_key, status, "
            "received_at, available_at, attempts, lease_owner, lease_token, lease_expires_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                f'{{"event_name":"job","n":{i}}}',
                1 + i % 4,
                "job-handler",
                f"h{i}",
                f"h{i}",
                "claimed" if claimed else "pending",
                i,
                i,
                1 if claimed else 0,
                "consumer" if claimed else None,
                f"t{i}:job-handler" if claimed else None,
                time.time() + 20 if claimed else None,  # within the lease: not expired
            ),
        )
    return db_path


def test_upgrade_from_0002_adds_owners_and_a_null_holder_and_keeps_every_row(
    at_0002: str, query: Query
) -> None:
    before = v2_rows(query)

    migrations.upgrade(at_0002, "0003")

    assert "lease_holder" in columns(query)
    assert "owners" in tables(query)
    assert v2_rows(query) == before
    # Leases taken before 0003 name no owner: they are left to their expiry.
    assert query("SELECT count(*) FROM events WHERE lease_holder IS NULL") == [(20,)]
    assert version(query) == [("0003",)]


def test_downgrade_to_0002_drops_them_and_keeps_every_row(at_0002: str, query: Query) -> None:
    migrations.upgrade(at_0002)
    query("UPDATE events SET lease_holder = 'host/1/ab' WHERE status = 'claimed'")
    query(
        "INSERT INTO owners VALUES ('host/1/ab', 'host', 1, '', NULL, 1.0, 1.0, 5.0)",
    )
    before = v2_rows(query)

    migrations.downgrade(at_0002, "0002")

    assert "lease_holder" not in columns(query)
    assert "owners" not in tables(query)
    assert v2_rows(query) == before
    assert version(query) == [("0002",)]
    assert query("PRAGMA integrity_check") == [("ok",)]
    migrations.upgrade(at_0002)  # and up again
    assert "lease_holder" in columns(query)


def test_upgrade_rerun_after_a_kill_between_the_steps_and_the_stamp(
    at_0002: str, query: Query
) -> None:
    # As if killed after both steps committed and before the version row moved to 0003.
    query("CREATE TABLE owners (owner TEXT NOT NULL, CONSTRAINT pk_owners PRIMARY KEY (owner))")
    query("ALTER TABLE events ADD COLUMN lease_holder TEXT")

    migrations.upgrade(at_0002, "0003")

    assert columns(query).count("lease_holder") == 1
    assert version(query) == [("0003",)]


def test_downgrade_rerun_when_they_are_already_gone(at_0002: str, query: Query) -> None:
    migrations.upgrade(at_0002)
    query("ALTER TABLE events DROP COLUMN lease_holder")
    query("DROP TABLE owners")

    migrations.downgrade(at_0002, "0002")

    assert version(query) == [("0002",)]


def test_a_queue_refuses_a_0002_database_until_migrated_then_names_its_leases(
    at_0002: str, query: Query
) -> None:
    async def claim_one(migrate: bool | str) -> None:
        async with EventQueue.open(at_0002, migrate=migrate, batch_window_ms=0) as q:
            batch = await q.claim()
            assert batch is not None
            holders = query("SELECT DISTINCT lease_holder FROM events WHERE status = 'claimed'")
            owners = query("SELECT owner FROM owners")
            assert (None,) in holders  # the five claimed before the upgrade
            assert [o for (o,) in owners if (o,) in holders] == [o for (o,) in owners]

    with pytest.raises(SchemaError, match="eventqueue migrate"):
        asyncio.run(claim_one("auto"))
    asyncio.run(claim_one(True))
    # Closed: its row went; what it held keeps its expiry, as the leases from before do.
    assert query("SELECT count(*) FROM owners") == [(0,)]
    held = "SELECT count(*) FROM events WHERE status = 'claimed' AND lease_holder IS NOT NULL"
    assert query(held) == [(10,)]  # one batch (MAX_BATCH_SIZE) under the closed owner's name


def test_downgrade_on_a_sqlite_without_drop_column_rebuilds_and_keeps_the_views(
    at_0002: str, query: Query, monkeypatch: pytest.MonkeyPatch
) -> None:
    migrations.upgrade(at_0002, "0003")
    views = query("SELECT name, sql FROM sqlite_master WHERE type = 'view' ORDER BY name")
    indexes = query(
        "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name != 'owners' "
        "ORDER BY name"
    )
    before = v2_rows(query)
    monkeypatch.setattr(sqlite3, "sqlite_version_info", (3, 31, 1))  # before DROP COLUMN (3.35)

    migrations.downgrade(at_0002, "0002")

    assert "lease_holder" not in columns(query)
    assert v2_rows(query) == before
    assert query("SELECT name, sql FROM sqlite_master WHERE type = 'view' ORDER BY name") == views
    assert query("SELECT name, sql FROM sqlite_master WHERE type = 'index' ORDER BY name") == (
        indexes
    )
    assert query("SELECT count(*) FROM eq_overview") != []
