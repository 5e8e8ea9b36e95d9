"""PostgreSQL revision 0004 (ix_events_retrying): down to 0003 and up again with rows kept, and
an upgrade over a half-made 0004."""

from __future__ import annotations

from pgtest import execute

from eventqueue.store.postgres import migrator

ROWS = "SELECT id, status, received_at, available_at FROM events ORDER BY id"
VERSION = "SELECT version_num FROM eventqueue_alembic_version"


async def has_retry_index(url: str) -> bool:
    rows = await execute(url, "SELECT to_regclass('ix_events_retrying') IS NOT NULL")
    return bool(rows[0][0])


async def add_events(url: str) -> None:
    # Two puts not yet claimed (available at receipt) and one nacked event waiting for its retry.
    for n, available_at in ((1, 10.0), (2, 20.0), (3, 99.0)):
        await execute(
            url,
            "INSERT INTO events (payload, priority, batch_key, content_hash, status, received_at,"
            " available_at) VALUES ($1, 2, 'k', $2, 'pending', $3, $4)",
            f'{{"n": {n}}}',
            f"h{n}",
            float(n * 10),
            available_at,
        )


async def test_down_to_0003_and_up_again_keeps_every_row(pg_db: str) -> None:
    await migrator.upgrade(pg_db, "0003")
    await add_events(pg_db)
    before = await execute(pg_db, ROWS)

    await migrator.upgrade(pg_db, "0004")
    assert await has_retry_index(pg_db)
    assert await execute(pg_db, ROWS) == before
    assert await execute(pg_db, VERSION) == [("0004",)]

    await migrator.downgrade(pg_db, "0003")
    assert not await has_retry_index(pg_db)
    assert await execute(pg_db, ROWS) == before
    assert await execute(pg_db, VERSION) == [("0003",)]


async def test_an_upgrade_over_a_half_made_0004_completes(pg_db: str) -> None:
    await migrator.upgrade(pg_db, "0003")
    # As if the index existed before the stamp moved (e.g. made by hand): no error, one index.
    await execute(pg_db, "CREATE INDEX ix_events_retrying ON events (available_at)")

    await migrator.upgrade(pg_db, "0004")

    assert await has_retry_index(pg_db)
    assert await execute(pg_db, VERSION) == [("0004",)]
