"""PostgreSQL migrations: created on first open, down and up again with the data's shape
intact, exactly the tables, indexes and views schema.py describes, one upgrade at a time."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from pgtest import execute
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from eventqueue.core.config import Config
from eventqueue.core.errors import SchemaError
from eventqueue.store import open_store, postgres
from eventqueue.store.postgres import migrator
from eventqueue.store.postgres.schema import VIEWS, metadata

TABLES = {"events", "source_positions", "spill_positions", "counters", "settings", "owners"}


async def tables(url: str) -> set[str]:
    rows = await execute(
        url,
        "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()",
    )
    return {r[0] for r in rows}


async def test_down_and_up_again(pg_db: str) -> None:
    store = await open_store(Config(db_path=pg_db))
    await store.close()
    assert TABLES | set(VIEWS) | {"eventqueue_alembic_version"} <= await tables(pg_db)
    await migrator.downgrade(pg_db, "base")
    assert await tables(pg_db) == {"eventqueue_alembic_version"}
    status = await asyncio.to_thread(postgres.schema_status, Config(db_path=pg_db))
    assert status["state"] == "missing" and status["current"] is None
    with pytest.raises(SchemaError):
        await open_store(Config(db_path=pg_db), migrate=False, readonly=True)
    before = await asyncio.to_thread(postgres.migrate, Config(db_path=pg_db))
    assert before["current"] is None
    after = await asyncio.to_thread(postgres.schema_status, Config(db_path=pg_db))
    assert after["state"] == "current" and after["current"] == migrator.head_revision()


async def test_the_migrations_make_exactly_the_schema(pg_db: str) -> None:
    await migrator.upgrade(pg_db)
    engine = create_async_engine(
        "postgresql+asyncpg://", async_creator=lambda: asyncpg.connect(pg_db), poolclass=NullPool
    )
    try:
        async with engine.connect() as connection:
            diff = await connection.run_sync(
                lambda c: compare_metadata(
                    MigrationContext.configure(c, opts={"version_table": migrator.VERSION_TABLE}),
                    metadata,
                )
            )
    finally:
        await engine.dispose()
    assert diff == []


async def test_hosts_starting_at_once_migrate_once(pg_db: str) -> None:
    opened = await asyncio.gather(*(open_store(Config(db_path=pg_db)) for _ in range(4)))
    for store in opened:
        await store.close()
    rows = await execute(pg_db, "SELECT version_num FROM eventqueue_alembic_version")
    assert [r[0] for r in rows] == [migrator.head_revision()]


async def test_a_schema_from_a_newer_eventqueue_is_refused(pg_db: str) -> None:
    await migrator.upgrade(pg_db)
    await execute(pg_db, "UPDATE eventqueue_alembic_version SET version_num = '9999'")
    with pytest.raises(SchemaError, match="newer eventqueue"):
        await open_store(Config(db_path=pg_db))
