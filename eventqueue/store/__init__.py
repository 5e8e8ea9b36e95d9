"""Storage backends behind one interface (base.Store); the only package that imports
sqlalchemy, aiosqlite or alembic. `open_store` picks the backend from the database location."""

from __future__ import annotations

from typing import Literal

from eventqueue.core.config import Config
from eventqueue.core.records import SchemaStatus
from eventqueue.store.base import Capabilities, Store

Backend = Literal["sqlite", "postgresql"]
_POSTGRES_SCHEMES = ("postgresql://", "postgres://", "postgresql+asyncpg://")


def backend_of(location: str) -> Backend:
    """Which backend serves `location`: a PostgreSQL URL, else an SQLite file path."""
    return "postgresql" if location.startswith(_POSTGRES_SCHEMES) else "sqlite"


async def open_store(
    config: Config, *, migrate: bool | str = "auto", readonly: bool = False
) -> Store:
    """Open the backend for `config.db_path`.

    `migrate`: "auto" creates the schema in a new database and refuses an old one; True
    upgrades; False never touches the schema (and requires it at head). `readonly`: never
    write (the CLI's reads); the schema must be at head.
    """
    if backend_of(config.db_path) == "postgresql":
        from eventqueue.store import postgres  # lazy: its driver is an optional extra

        return await postgres.open_store(config, migrate=migrate, readonly=readonly)
    from eventqueue.store import sqlite

    return await sqlite.open_store(config, migrate=migrate, readonly=readonly)


def schema_status(config: Config) -> SchemaStatus:
    """The schema revision against head, read-only (never creates the database)."""
    return _backend(config).schema_status(config)


def migrate(config: Config) -> SchemaStatus:
    """Upgrade the schema to head, creating the database's tables if needed; the status before."""
    return _backend(config).migrate(config)


def _backend(config: Config):  # type: ignore[no-untyped-def]
    if backend_of(config.db_path) == "postgresql":
        from eventqueue.store import postgres

        return postgres
    from eventqueue.store import sqlite

    return sqlite


__all__ = ["Capabilities", "Store", "backend_of", "migrate", "open_store", "schema_status"]
