"""PostgreSQL revision 0005 (ordering groups, key limits): up from 0004 with rows kept, the
statement triggers hold a group on the migrated schema, and down to 0004 gives held events
back as pending, rows kept; an upgrade rerun over a finished one changes nothing."""

from __future__ import annotations

from pgtest import execute

from eventqueue.store.postgres import migrator

ROWS = "SELECT id, status, received_at FROM events ORDER BY id"
VERSION = "SELECT version_num FROM eventqueue_alembic_version"


async def insert(url: str, n: int, group: str | None) -> None:
    await execute(
        url,
        "INSERT INTO events (payload, priority, batch_key, content_hash, status, received_at,"
        " available_at, ordering_key) VALUES ($1, 2, 'k', $2, 'pending', $3, $3, $4)",
        f'{{"n": {n}}}',
        f"h{n}",
        float(n),
        group,
    )


async def test_up_from_0004_holds_groups_and_down_again(pg_db: str) -> None:
    await migrator.upgrade(pg_db, "0004")
    await execute(
        pg_db,
        "INSERT INTO events (payload, priority, batch_key, content_hash, status, received_at,"
        " available_at) VALUES ('{}', 2, 'k', 'h0', 'pending', 0, 0)",
    )
    before = await execute(pg_db, ROWS)

    await migrator.upgrade(pg_db, "0005")
    await migrator.upgrade(pg_db, "0005")  # a rerun is a no-op
    assert await execute(pg_db, ROWS) == before
    await insert(pg_db, 1, "g")
    await insert(pg_db, 2, "g")
    assert [r[1] for r in await execute(pg_db, ROWS)] == ["pending", "pending", "held"]
    await execute(pg_db, "UPDATE events SET status = 'done' WHERE received_at = 1")
    assert [r[1] for r in await execute(pg_db, ROWS)] == ["pending", "done", "pending"]
    await insert(pg_db, 3, "g")

    await migrator.downgrade(pg_db, "0004")

    assert [r[1] for r in await execute(pg_db, ROWS)] == ["pending", "done", "pending", "pending"]
    assert await execute(pg_db, VERSION) == [("0004",)]
    await migrator.upgrade(pg_db, "0005")
    assert await execute(pg_db, VERSION) == [("0005",)]
