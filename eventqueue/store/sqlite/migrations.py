"""Alembic glue that works from a source checkout and from an installed wheel."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from urllib.parse import quote

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.util import CommandError
from sqlalchemy import Engine, create_engine, inspect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from eventqueue.core.errors import SchemaError, StorageError
from eventqueue.core.records import SchemaState, SchemaStatus
from eventqueue.store import revisions
from eventqueue.store.sqlite.errors import storage_error
from eventqueue.store.sqlite.pragmas import make_migration_engine

# eventqueue's own version table, so it can live beside a host application's alembic history.
VERSION_TABLE = "eventqueue_alembic_version"


def script_location() -> Path:
    """The migrations folder: packaged as eventqueue/_migrations in a wheel, top-level in a checkout."""
    package_dir = Path(__file__).resolve().parents[2]  # eventqueue/
    for candidate in (package_dir / "_migrations", package_dir.parent / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise SchemaError(f"eventqueue's migrations are missing (looked beside {package_dir})")


def alembic_config() -> AlembicConfig:
    """An alembic Config pointing at eventqueue's migrations, independent of the working directory."""
    config = AlembicConfig()
    config.set_main_option("script_location", str(script_location()))
    return config


def head_revision() -> str:
    """The newest revision this version of eventqueue knows."""
    return revisions.head_revision(alembic_config(), "eventqueue's migrations")


def is_known_revision(revision: str) -> bool:
    """True when this version of eventqueue has the revision (False: a newer one wrote it)."""
    return revisions.is_known_revision(alembic_config(), revision)


def schema_state(engine: Engine) -> tuple[str | None, bool]:
    """(revision, whether the file holds any tables), read in one transaction.

    BEGIN IMMEDIATE (the engine's default) waits for a process that is creating the schema
    right now, so the two answers can never straddle its commit.
    """
    with engine.begin() as connection:
        context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
        return context.get_current_revision(), bool(inspect(connection).get_table_names())


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at (None for a database eventqueue never migrated)."""
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
        revision = context.get_current_revision()
        connection.rollback()
        return revision


def has_tables(engine: Engine) -> bool:
    """True when the file already holds tables of any application."""
    with engine.connect() as connection:
        names = inspect(connection).get_table_names()
        connection.rollback()
        return bool(names)


def upgrade(path: str, revision: str = "head", *, busy_timeout_ms: int = 5000) -> None:
    """Upgrade the database file to `revision` in one transaction (blocking; run in a thread)."""
    _run(path, busy_timeout_ms, lambda config: command.upgrade(config, revision))


def downgrade(path: str, revision: str, *, busy_timeout_ms: int = 5000) -> None:
    """Downgrade the database file to `revision` (blocking)."""
    _run(path, busy_timeout_ms, lambda config: command.downgrade(config, revision))


def status(path: str, *, busy_timeout_ms: int = 5000) -> tuple[str | None, str]:
    """(current revision, head revision) of the database file."""
    engine = make_migration_engine(path, busy_timeout_ms=busy_timeout_ms)
    try:
        return current_revision(engine), head_revision()
    finally:
        engine.dispose()


def _run(path: str, busy_timeout_ms: int, action: object) -> None:
    engine = make_migration_engine(path, busy_timeout_ms=busy_timeout_ms)
    try:
        with engine.begin() as connection:
            config = alembic_config()
            config.attributes["connection"] = connection
            try:
                action(config)  # type: ignore[operator]
            except CommandError as exc:  # e.g. a revision written by a newer eventqueue
                raise SchemaError(f"cannot migrate {path}: {exc}") from exc
        with engine.connect() as connection:
            problems = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
            connection.rollback()
        if problems:
            raise SchemaError(f"foreign key check failed after migration: {problems[:5]}")
    finally:
        engine.dispose()


def ensure_schema(path: str, busy_timeout_ms: int, migrate: bool | str) -> None:
    """Check the schema is at head; create it in a new file or upgrade when asked (blocking)."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise StorageError(f"cannot open database {path}: folder {directory} does not exist")
    engine = make_migration_engine(path, busy_timeout_ms=busy_timeout_ms)
    try:
        current, has_any_table = schema_state(engine)
        fresh = current is None and not has_any_table
    except DBAPIError as exc:
        raise storage_error(path, exc.orig or exc) from exc
    finally:
        engine.dispose()
    head = head_revision()
    if current == head:
        return
    if current is not None and not is_known_revision(current):
        # Migrating cannot help here, and downgrading would need the newer revision's code.
        raise SchemaError(
            f"{path} has schema revision {current}, written by a newer eventqueue than this one "
            f"(which knows up to {head}): upgrade eventqueue to open it"
        )
    if migrate is True or (migrate == "auto" and fresh):
        upgrade(path, busy_timeout_ms=busy_timeout_ms)
        return
    if current is None:
        raise SchemaError(
            f"{path} holds no eventqueue schema: run `eventqueue migrate --db {path}` "
            "(or open it with migrate=True)"
        )
    raise SchemaError(
        f"{path} has schema revision {current}, this eventqueue needs {head}: run "
        f"`eventqueue migrate --db {path}` (or open it with migrate=True)"
    )


def schema_status(path: str, *, busy_timeout_ms: int) -> SchemaStatus:
    """The file's schema revision against head, read-only (mode=ro: never creates the file)."""
    head = head_revision()
    if not os.path.exists(path):
        return SchemaStatus(db=path, current=None, head=head, state="missing")
    uri = f"file:{quote(os.path.abspath(path))}?mode=ro"
    engine = create_engine(
        "sqlite://",
        creator=lambda: sqlite3.connect(uri, uri=True, timeout=busy_timeout_ms / 1000),
        poolclass=NullPool,
    )
    try:
        try:
            current = current_revision(engine)
        except DBAPIError as exc:
            if getattr(exc.orig, "sqlite_errorcode", None) != _READONLY_ROLLBACK:
                raise
            # A hot journal (a crash or power cut mid-transaction, e.g. mid-migration) must be
            # rolled back before anyone can read, and a read-only connection cannot: one
            # read-write open does it, as the sqlite3 shell would. Then read again.
            _roll_back_hot_journal(path, busy_timeout_ms)
            current = current_revision(engine)
    except DBAPIError as exc:
        raise storage_error(path, exc.orig or exc) from exc
    finally:
        engine.dispose()
    return SchemaStatus(db=path, current=current, head=head, state=_state(current, head))


# SQLITE_READONLY_ROLLBACK: a read-only connection found a hot journal it may not roll back.
_READONLY_ROLLBACK = 776


def _roll_back_hot_journal(path: str, busy_timeout_ms: int) -> None:
    connection = sqlite3.connect(path, timeout=busy_timeout_ms / 1000, isolation_level=None)
    try:
        connection.execute("PRAGMA schema_version").fetchone()  # reading recovers the file
    finally:
        connection.close()


def _state(current: str | None, head: str) -> SchemaState:
    if current == head:
        return "current"
    if current is None or is_known_revision(current):
        return "behind"
    return "unknown"
