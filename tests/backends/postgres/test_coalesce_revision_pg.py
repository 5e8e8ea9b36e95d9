"""PostgreSQL revision 0006 (coalescing) on top of 0005 (ordering): up with rows kept, the views
carry both revisions' columns and eq_ordering_groups survives, the triggers still hold groups;
down to 0005 restores 0005's views, rows kept."""

from __future__ import annotations

from pgtest import execute

from eventqueue.store.postgres import migrator

ROWS = "SELECT id, status, received_at, ordering_key FROM events ORDER BY id"
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


async def test_up_from_0005_keeps_ordering_and_down_again(pg_db: str) -> None:
    await migrator.upgrade(pg_db, "0005")
    await insert(pg_db, 1, "g")
    await insert(pg_db, 2, "g")
    before = await execute(pg_db, ROWS)

    await migrator.upgrade(pg_db, "0006")

    assert await execute(pg_db, ROWS) == before
    assert [r[1] for r in before] == ["pending", "held"]
    assert (
        await execute(pg_db, "SELECT coalesce_key, superseded, ordering_key FROM eq_dead_letters")
        == []
    )
    assert await execute(pg_db, "SELECT ordering_key, held, pending FROM eq_ordering_groups") == [
        ("g", 1, 1)
    ]
    await execute(pg_db, "UPDATE events SET status = 'done' WHERE received_at = 1")
    assert [r[1] for r in await execute(pg_db, ROWS)] == ["done", "pending"]

    await migrator.downgrade(pg_db, "0005")

    assert await execute(pg_db, VERSION) == [("0005",)]
    assert await execute(pg_db, "SELECT ordering_key FROM eq_dead_letters") == []
    names = await execute(
        pg_db,
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'eq_dead_letters'"
        " AND table_schema = current_schema()",
    )
    assert "coalesce_key" not in {n for (n,) in names}
    assert await execute(pg_db, "SELECT ordering_key, pending FROM eq_ordering_groups") == [
        ("g", 1)
    ]
    await migrator.upgrade(pg_db)
    assert await execute(pg_db, VERSION) == [(migrator.head_revision(),)]
