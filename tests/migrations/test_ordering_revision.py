"""Revision 0004 (ordering groups, key limits): upgrade from 0003 with rows keeps them, the
status CHECK takes 'held' (and still refuses anything else), the triggers work on the migrated
file, and a downgrade gives held events back as pending and keeps every row."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

import pytest

from eventqueue.store.sqlite import migrations

Query = Callable[..., list[Any]]
V3_COLUMNS = "id, payload, priority, batch_key, content_hash, status, received_at, attempts"


def insert(query: Query, n: int, group: str | None = None) -> None:
    columns = "payload, priority, batch_key, content_hash, status, received_at, available_at"
    values = (f'{{"n":{n}}}', 2, "job-handler", f"h{n}", "pending", float(n), float(n))
    if group is None:
        query(f"INSERT INTO events ({columns}) VALUES (?, ?, ?, ?, ?, ?, ?)", values)
    else:
        query(
            f"INSERT INTO events ({columns}, ordering_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (*values, group),
        )


def statuses(query: Query) -> list[Any]:
    return query("SELECT id, status FROM events ORDER BY id")


def test_upgrade_keeps_rows_and_the_triggers_hold_groups(db_path: str, query: Query) -> None:
    migrations.upgrade(db_path, "0003")
    for n in range(5):
        insert(query, n)
    before = query(f"SELECT {V3_COLUMNS} FROM events ORDER BY id")

    migrations.upgrade(db_path, "0004")

    assert query(f"SELECT {V3_COLUMNS} FROM events ORDER BY id") == before
    insert(query, 10, "g")
    insert(query, 11, "g")
    assert statuses(query)[-2:] == [(6, "pending"), (7, "held")]
    query("UPDATE events SET status = 'done' WHERE id = 6")
    assert statuses(query)[-1] == (7, "pending")
    with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
        query("UPDATE events SET status = 'parked' WHERE id = 1")


def test_downgrade_gives_held_events_back_as_pending(db_path: str, query: Query) -> None:
    migrations.upgrade(db_path, "0004")
    insert(query, 1, "g")
    insert(query, 2, "g")

    migrations.downgrade(db_path, "0003")

    assert statuses(query) == [(1, "pending"), (2, "pending")]
    assert "ordering_key" not in [r[1] for r in query("PRAGMA table_info(events)")]
    assert query("SELECT name FROM sqlite_master WHERE type = 'trigger'") == []
    with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
        query("UPDATE events SET status = 'held' WHERE id = 1")
    migrations.upgrade(db_path, "0004")  # and up again
    assert query("PRAGMA integrity_check") == [("ok",)]
