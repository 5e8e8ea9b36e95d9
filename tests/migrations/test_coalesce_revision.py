"""Revision 0005 (coalesce_key, superseded, dedup_at, superseded_keys, the views' new columns):
upgrade from 0004 (ordering) with rows, downgrade (in place, and by a rebuild on an SQLite
without DROP COLUMN), and up again; every row kept, 0004's views and triggers kept."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

import pytest

from eventqueue.store.sqlite import migrations

Query = Callable[..., list[Any]]
NEW = ("coalesce_key", "superseded", "dedup_at")


def columns(query: Query) -> list[str]:
    return [row[1] for row in query("PRAGMA table_info(events)")]


def rows(query: Query) -> list[Any]:
    return query("SELECT id, payload, status, dedup_key, received_at FROM events ORDER BY id")


@pytest.fixture
def at_0004(db_path: str, query: Query) -> str:
    migrations.upgrade(db_path, "0004")
    for i in range(10):
        query(
            "INSERT INTO events (payload, priority, batch_key, content_hash, dedup_key, status,"
            " received_at, available_at) VALUES (?, 2, 'k', ?, ?, 'pending', ?, ?)",
            (f'{{"n":{i}}}', f"h{i}", f"h{i}", float(i), float(i)),
        )
    return db_path


@pytest.mark.parametrize("old_sqlite", [False, True], ids=["drop-column", "rebuild"])
def test_upgrade_downgrade_and_up_again_keep_every_row(
    at_0004: str, query: Query, monkeypatch: pytest.MonkeyPatch, old_sqlite: bool
) -> None:
    before = rows(query)
    triggers = "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' ORDER BY name"
    ordering_triggers = query(triggers)
    assert len(ordering_triggers) == 2
    migrations.upgrade(at_0004, "0005")
    assert set(NEW) <= set(columns(query))
    assert query("SELECT count(*) FROM events WHERE superseded = 0") == [(10,)]
    assert query("SELECT coalesce_key, superseded, ordering_key FROM eq_dead_letters") == []
    assert query("SELECT held FROM eq_ordering_groups") == []
    assert rows(query) == before

    if old_sqlite:
        monkeypatch.setattr(sqlite3, "sqlite_version_info", (3, 31, 1))
    migrations.downgrade(at_0004, "0004")

    assert not set(NEW) & set(columns(query))
    assert "superseded_keys" not in {r[0] for r in query("SELECT name FROM sqlite_master")}
    assert rows(query) == before
    assert query("PRAGMA integrity_check") == [("ok",)]
    assert query("SELECT count(*) FROM eq_overview") != []
    assert query("SELECT ordering_key FROM eq_dead_letters") == []  # 0004's view again
    assert query(triggers) == ordering_triggers  # a rebuild keeps the ordering triggers
    assert query("SELECT held FROM eq_ordering_groups") == []
    monkeypatch.undo()
    migrations.upgrade(at_0004, "0005")
    assert rows(query) == before
