"""The PostgreSQL backend: one database (one schema) shared by listeners on several hosts.

Selected by a `postgresql://` (or `postgres://`) URL in EVENT_DB_PATH or
`EventQueue.open(url)`; `?schema=NAME`, or libpq's own `?options=-csearch_path%3DNAME` (which
psql and pg_dump read too), puts eventqueue in its own, existing schema (urls.py).
urls.py reads the URL, connection.py runs transactions on a small asyncpg pool, queries.py
names every statement, schema.py defines the tables, store.py implements the Store interface,
listener.py keeps LISTEN up, migrator.py drives alembic, admin.py holds vacuum, backup
(pg_dump) and the read-only SQL console.
"""

from __future__ import annotations

import asyncio

from eventqueue.core.config import Config
from eventqueue.core.errors import SchemaError
from eventqueue.core.records import SchemaStatus, schema_problem
from eventqueue.store.postgres import migrator
from eventqueue.store.postgres.schema_state import read_status
from eventqueue.store.postgres.store import PostgresStore


async def open_store(
    config: Config, *, migrate: bool | str = "auto", readonly: bool = False
) -> PostgresStore:
    """Open the database at `config.db_path` (see store.open_store)."""
    return await PostgresStore.open(config, migrate=migrate, readonly=readonly)


def schema_status(config: Config) -> SchemaStatus:
    """The schema revision against head, read-only (never creates anything)."""
    return asyncio.run(read_status(config.db_path, timeout_s=config.busy_timeout_ms / 1000.0))


def migrate(config: Config) -> SchemaStatus:
    """Upgrade to head, creating eventqueue's tables if needed; the status before."""

    async def run() -> SchemaStatus:
        before = await read_status(config.db_path, timeout_s=config.busy_timeout_ms / 1000.0)
        if before["state"] == "unknown":
            raise SchemaError(schema_problem(before))
        if before["state"] != "current":
            await migrator.upgrade(config.db_path)
        return before

    return asyncio.run(run())


__all__ = ["PostgresStore", "migrate", "open_store", "schema_status"]
