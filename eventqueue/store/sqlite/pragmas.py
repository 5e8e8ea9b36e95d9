"""SQLite connection settings in one place: the PRAGMAs every connection runs, and the engine
alembic migrates with."""

from __future__ import annotations

from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import NullPool

# 64 MiB: after a checkpoint the WAL file is truncated back to this, so a burst cannot leave a
# large WAL behind (failure mode F7).
JOURNAL_SIZE_LIMIT = 64 * 1024 * 1024


def pragmas(durability: str, busy_timeout_ms: int) -> list[str]:
    """The PRAGMAs every connection runs at connect time, outside any transaction (F5)."""
    return [
        # First: auto_vacuum only takes effect before the file's first page is written. It lets
        # `vacuum` hand pages back in small steps instead of rewriting the whole file.
        "PRAGMA auto_vacuum=INCREMENTAL",
        "PRAGMA journal_mode=WAL",
        # FULL: a committed event survives power loss; NORMAL: survives a process crash only.
        f"PRAGMA synchronous={'FULL' if durability == 'full' else 'NORMAL'}",
        f"PRAGMA busy_timeout={int(busy_timeout_ms)}",
        "PRAGMA foreign_keys=ON",
        f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT}",
    ]


def make_migration_engine(path: str, *, busy_timeout_ms: int) -> Engine:
    """A plain sqlite3 engine for alembic, with foreign keys off while tables are rebuilt (F10)."""
    engine = create_engine(f"sqlite:///{path}", poolclass=NullPool)
    statements = [s for s in pragmas("full", busy_timeout_ms) if "foreign_keys" not in s]
    install_hooks(engine, [*statements, "PRAGMA foreign_keys=OFF"])
    return engine


def install_hooks(engine: Engine, statements: list[str]) -> None:
    """PRAGMAs at connect time, and a BEGIN of our choosing for every transaction."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Python's sqlite3 legacy transaction handling emits no BEGIN before SELECT or DDL; take
        # transactions into our own hands (SQLAlchemy's documented recipe, F4). PRAGMAs run
        # here, outside any transaction, where they take effect (F5).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            for statement in statements:
                cursor.execute(statement)
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        # IMMEDIATE: a migration reads, then writes (F3); a second process waits its turn.
        connection.exec_driver_sql("BEGIN IMMEDIATE")
