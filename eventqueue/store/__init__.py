"""Storage backends behind one interface (base.Store); the only package that imports
sqlalchemy, aiosqlite, asyncpg or alembic. The backend is picked from the database location:
a `postgresql://` URL, else an SQLite file path. Backends are imported lazily, so a driver that
is not installed costs nothing until it is asked for."""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal, Protocol, cast

from eventqueue.core.config import Config
from eventqueue.core.errors import ConfigError
from eventqueue.core.records import SchemaStatus
from eventqueue.store.base import Capabilities, Store

Backend = Literal["sqlite", "postgresql"]
_POSTGRES_SCHEMES = ("postgresql://", "postgres://")


class _BackendModule(Protocol):
    """What each backend package exports (store/sqlite/__init__.py, store/postgres/...)."""

    __name__: str

    async def open_store(self, config: Config, *, migrate: bool | str, readonly: bool) -> Store:
        """Open the backend's store."""
        ...

    def schema_status(self, config: Config) -> SchemaStatus:
        """The schema revision against head, read-only."""
        ...

    def migrate(self, config: Config) -> SchemaStatus:
        """Upgrade the schema to head; the status before."""
        ...


def backend_of(location: str) -> Backend:
    """Which backend serves `location`: a PostgreSQL URL, else an SQLite file path."""
    return "postgresql" if location.startswith(_POSTGRES_SCHEMES) else "sqlite"


async def open_store(
    config: Config, *, migrate: bool | str = "auto", readonly: bool = False
) -> Store:
    """Open the backend for `config.db_path`.

    `migrate`: "auto" creates the schema in a new database and refuses an old one; True
    upgrades; False never touches the schema. `readonly`: never write (the CLI's reads); the
    database must exist with its schema at head.
    """
    return await backend(config).open_store(config, migrate=migrate, readonly=readonly)


def schema_status(config: Config) -> SchemaStatus:
    """The schema revision against head, read-only (never creates the database)."""
    return backend(config).schema_status(config)


def migrate(config: Config) -> SchemaStatus:
    """Upgrade the schema to head, creating the tables if needed; the status before."""
    return backend(config).migrate(config)


class Admin(Protocol):
    """A backend's own maintenance commands (store/<backend>/admin.py)."""

    def vacuum(self, config: Config) -> Mapping[str, Any]:
        """Give free space back and compact the database's logs."""
        ...

    def compact(self, config: Config) -> int:
        """Give free space back after a purge; the pages freed (0 where not applicable)."""
        ...

    def backup(self, config: Config, destination: str, *, force: bool = False) -> Mapping[str, Any]:
        """A consistent copy of the database at `destination`."""
        ...

    def sql(self, config: Config, query: str, *, max_rows: int = 1000) -> Mapping[str, Any]:
        """One read-only statement's columns and rows."""
        ...


def admin(config: Config) -> Admin:
    """The admin commands of the backend serving `config.db_path`."""
    module = backend(config)
    return cast(Admin, importlib.import_module(f"{module.__name__}.admin"))


class Baseline(Protocol):
    """A raw-driver side for `eventqueue bench`: the queue's work on eventqueue's own schema,
    on one plain driver connection, with nothing of the queue above it."""

    single_row: bool  # whether `put_single` measures one-row transactions here

    async def settings(self) -> dict[str, Any]:
        """The durability settings in force on its connection (the queue's must match)."""
        ...

    async def put(self, events: Sequence[Mapping[str, Any]], *, group: int) -> float:
        """Encode and insert-or-ignore `events`, `group` per transaction; seconds taken."""
        ...

    async def put_single(self, events: Sequence[Mapping[str, Any]]) -> float | None:
        """The same, one event per transaction; seconds taken (None: not measured here)."""
        ...

    async def fill(self, events: Iterable[Mapping[str, Any]]) -> int:
        """Load a backlog in large transactions (untimed); rows inserted."""
        ...

    async def claim_ack(
        self, *, batch_size: int, max_events: int, max_seconds: float
    ) -> tuple[int, float]:
        """Claim then ack batches of `batch_size` (a commit each) until `max_events` or
        `max_seconds`: (events, seconds)."""
        ...

    async def close(self) -> None:
        """Close its connection."""
        ...


class RawTools(Protocol):
    """What the tools do with a server backend's driver directly (store/<backend>/baseline.py):
    scratch schemas for `bench` and `demo`, and the bench's raw baseline."""

    async def create_scratch(self, url: str, prefix: str) -> str:
        """A new empty schema `<prefix><random>` on `url`'s database: the URL selecting it."""
        ...

    async def drop_scratch(self, url: str, prefix: str) -> None:
        """Drop the scratch schema `url` selects (only one named `<prefix>...`)."""
        ...

    async def open_baseline(self, config: Config) -> Baseline:
        """The raw baseline on `config.db_path` (eventqueue's schema created there first)."""
        ...


def raw_tools(config: Config) -> RawTools:
    """The driver-level tools of the server backend serving `config.db_path` (bench, demo).

    SQLite has none here: its scratch databases are files, and its baseline needs only the
    stdlib (tools/bench/sqlite_baseline.py).
    """
    if backend_of(config.db_path) == "sqlite":
        raise ConfigError("raw_tools: SQLite needs none (files and the stdlib sqlite3 suffice)")
    module = backend(config)
    return cast(RawTools, importlib.import_module(f"{module.__name__}.baseline"))


def backend(config: Config) -> _BackendModule:
    """The backend package serving `config.db_path`, imported on first use."""
    if backend_of(config.db_path) == "sqlite":
        return cast(_BackendModule, importlib.import_module("eventqueue.store.sqlite"))
    try:
        return cast(_BackendModule, importlib.import_module("eventqueue.store.postgres"))
    except ImportError as exc:
        raise ConfigError(
            f"EVENT_DB_PATH is a PostgreSQL URL, but the PostgreSQL backend cannot be loaded "
            f"({exc}): install it from eventqueue's clone with `pip install -e '.[postgres]'` "
            "(it adds asyncpg)"
        ) from exc


__all__ = [
    "Admin",
    "Baseline",
    "Capabilities",
    "RawTools",
    "Store",
    "admin",
    "backend",
    "backend_of",
    "migrate",
    "open_store",
    "raw_tools",
    "schema_status",
]
