"""The SQLite backend: one file in WAL mode, one connection per process, BEGIN IMMEDIATE writes.

connection.py runs transactions, queries.py names every statement, schema.py defines the
tables, store.py implements the Store interface, migrations.py drives alembic, admin.py holds
what only SQLite has (vacuum, backup, the read-only SQL console).
"""

from __future__ import annotations

import os

from eventqueue.core.config import Config
from eventqueue.core.errors import SchemaError, StorageError
from eventqueue.core.records import SchemaStatus, schema_problem
from eventqueue.store.sqlite import migrations
from eventqueue.store.sqlite.store import SQLiteStore


async def open_store(
    config: Config, *, migrate: bool | str = "auto", readonly: bool = False
) -> SQLiteStore:
    """Open `config.db_path` (see store.open_store)."""
    return await SQLiteStore.open(config, migrate=migrate, readonly=readonly)


def schema_status(config: Config) -> SchemaStatus:
    """The schema revision against head, read-only: never creates the file."""
    return migrations.schema_status(config.db_path, busy_timeout_ms=config.busy_timeout_ms)


def migrate(config: Config) -> SchemaStatus:
    """Upgrade to head, creating the file and schema if needed; the status before."""
    path = config.db_path
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise StorageError(f"cannot create {path}: folder {folder} does not exist")
    before = schema_status(config)
    if before["state"] == "unknown":
        raise SchemaError(schema_problem(before))
    if before["state"] != "current":
        migrations.upgrade(path, busy_timeout_ms=config.busy_timeout_ms)
    return before


__all__ = ["SQLiteStore", "migrate", "open_store", "schema_status"]
