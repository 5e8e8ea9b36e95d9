"""Alembic glue for PostgreSQL: the script folder inside the package (so it works from an
installed wheel), eventqueue's own version table, and one migration at a time per schema.

Several hosts may start on a new database at once: each upgrade takes a transaction-level
advisory lock keyed by the schema, then alembic reads the version table under it, so the
second host finds the schema at head and does nothing. DDL is transactional in PostgreSQL: a
migration killed half-way leaves nothing behind (no idempotency tricks needed, unlike F11).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.util import CommandError
from sqlalchemy.engine import Connection as SyncConnection
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from eventqueue.core.errors import SchemaError
from eventqueue.core.records import SchemaState
from eventqueue.store import revisions
from eventqueue.store.postgres import queries as sql
from eventqueue.store.postgres.urls import driver_dsn

# The same version table as on SQLite: eventqueue's history beside a host application's.
VERSION_TABLE = "eventqueue_alembic_version"
SCRIPT_LOCATION = Path(__file__).resolve().parent / "migrations"


def alembic_config() -> AlembicConfig:
    """An alembic Config on the PostgreSQL scripts, independent of the working directory."""
    if not (SCRIPT_LOCATION / "env.py").is_file():
        raise SchemaError(f"eventqueue's PostgreSQL migrations are missing ({SCRIPT_LOCATION})")
    config = AlembicConfig()
    config.set_main_option("script_location", str(SCRIPT_LOCATION))
    return config


def head_revision() -> str:
    """The newest revision this version of eventqueue knows."""
    return revisions.head_revision(alembic_config(), "eventqueue's PostgreSQL migrations")


def is_known_revision(revision: str) -> bool:
    """True when this version of eventqueue has the revision (False: a newer one wrote it)."""
    return revisions.is_known_revision(alembic_config(), revision)


def state_of(current: str | None) -> SchemaState:
    """current / behind / unknown (a revision from a newer eventqueue)."""
    if current == head_revision():
        return "current"
    if current is None or is_known_revision(current):
        return "behind"
    return "unknown"


async def read_revision(connection: asyncpg.Connection) -> tuple[str | None, str | None, bool]:
    """(current schema, revision, whether the events table exists), as the connection sees it."""
    row = await connection.fetchrow(sql.SCHEMA_STATE.sql)
    assert row is not None
    current = None
    if row["has_version_table"]:
        current = await connection.fetchval(sql.VERSION_NUM.sql)
    return row["schema"], current, bool(row["has_events"])


async def upgrade(dsn: str, revision: str = "head") -> None:
    """Upgrade the schema to `revision` in one transaction, under the migration lock."""
    await _run(dsn, lambda config: command.upgrade(config, revision))


async def downgrade(dsn: str, revision: str) -> None:
    """Downgrade the schema to `revision` in one transaction, under the migration lock."""
    await _run(dsn, lambda config: command.downgrade(config, revision))


async def _run(dsn: str, action: Callable[[AlembicConfig], Any]) -> None:
    # NullPool and asyncpg's own DSN parsing of the same driver DSN as the store's pool: the
    # URL's query (schema=, options=-csearch_path...) means the same here.
    engine = create_async_engine(
        "postgresql+asyncpg://",
        async_creator=lambda: asyncpg.connect(driver_dsn(dsn)),
        poolclass=NullPool,
    )
    try:
        async with engine.begin() as connection:
            await connection.exec_driver_sql(sql.MIGRATION_LOCK.sql)

            def migrate(sync_connection: SyncConnection) -> None:
                config = alembic_config()
                config.attributes["connection"] = sync_connection
                try:
                    action(config)
                except CommandError as exc:  # e.g. a revision written by a newer eventqueue
                    raise SchemaError(f"cannot migrate: {exc}") from exc

            await connection.run_sync(migrate)
    finally:
        await engine.dispose()
