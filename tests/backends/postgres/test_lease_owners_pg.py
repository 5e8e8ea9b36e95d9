"""PostgreSQL revision 0003 (owners, events.lease_holder): down to 0002 and up again with rows
kept, and each step safe to run twice."""

from __future__ import annotations

from pgtest import execute

from eventqueue.store.postgres import migrator

ROWS = "SELECT id, status, attempts, lease_owner, lease_token FROM events ORDER BY id"


async def columns(url: str) -> set[str]:
    rows = await execute(
        url,
        "SELECT column_name FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND table_name = 'events'",
    )
    return {r[0] for r in rows}


async def has_owners(url: str) -> bool:
    rows = await execute(url, "SELECT to_regclass('owners') IS NOT NULL")
    return bool(rows[0][0])


async def test_down_to_0002_and_up_again_keeps_every_row(pg_db: str) -> None:
    await migrator.upgrade(pg_db, "0002")
    for i in range(5):
        await execute(
            pg_db,
            "INSERT INTO events (payload, priority, batch_key, content_hash, status, received_at,"
            " available_at, attempts, lease_owner, lease_token) VALUES"
            " ($1, 2, 'k', $2, 'claimed', 1, 1, 1, 'worker', $3)",
            f'{{"n": {i}}}',
            f"h{i}",
            f"t{i}:k",
        )
    before = await execute(pg_db, ROWS)

    await migrator.upgrade(pg_db)
    assert "lease_holder" in await columns(pg_db) and await has_owners(pg_db)
    assert await execute(pg_db, ROWS) == before
    assert await execute(pg_db, "SELECT count(*) FROM events WHERE lease_holder IS NULL") == [(5,)]

    await migrator.downgrade(pg_db, "0002")
    assert "lease_holder" not in await columns(pg_db) and not await has_owners(pg_db)
    assert await execute(pg_db, ROWS) == before
    assert await execute(pg_db, "SELECT version_num FROM eventqueue_alembic_version") == [("0002",)]


async def test_an_upgrade_over_a_half_made_0003_completes(pg_db: str) -> None:
    await migrator.upgrade(pg_db, "0002")
    # As if the objects existed before the stamp moved (e.g. made by hand): no error, one each.
    await execute(pg_db, "ALTER TABLE events ADD COLUMN lease_holder text")

    await migrator.upgrade(pg_db)

    assert await has_owners(pg_db)
    assert await execute(pg_db, "SELECT version_num FROM eventqueue_alembic_version") == [
        (migrator.head_revision(),)
    ]
