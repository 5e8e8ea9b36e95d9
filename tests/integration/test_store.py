"""The store on a real file: connection PRAGMAs, views, schema checks at open, stats."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from eventqueue import EventQueue, Priority, QueueClosedError, SchemaError, Status, StorageError
from eventqueue.store.sqlite import migrations
from eventqueue.store.sqlite.pragmas import JOURNAL_SIZE_LIMIT
from eventqueue.store.sqlite.schema import VIEWS

MakeEvent = Callable[..., dict[str, Any]]


async def pragma(q: EventQueue, name: str) -> Any:
    """A PRAGMA's value as the queue's own connection sees it (not a second connection's)."""
    return await q.store.pragma(name)


def wal_size(db_path: str) -> int:
    wal = Path(db_path + "-wal")
    return wal.stat().st_size if wal.exists() else 0


# --- connection settings ------------------------------------------------------------------


async def test_journal_mode_is_wal(open_queue) -> None:
    q = await open_queue()
    assert await pragma(q, "journal_mode") == "wal"


async def test_synchronous_is_full_by_default(open_queue) -> None:
    q = await open_queue()
    assert await pragma(q, "synchronous") == 2


async def test_synchronous_is_normal_with_durability_normal(open_queue) -> None:
    q = await open_queue(durability="normal")
    assert await pragma(q, "synchronous") == 1


async def test_busy_timeout_is_the_short_spill_wait(open_queue) -> None:
    # SQLite's own wait is EVENT_SPILL_AFTER_MS (a put spills after it); other transactions
    # retry without blocking the event loop until EVENT_BUSY_TIMEOUT_MS.
    q = await open_queue(busy_timeout_ms=1234, spill_after_ms=50)
    assert await pragma(q, "busy_timeout") == 50
    q = await open_queue(busy_timeout_ms=30, spill_after_ms=50)
    assert await pragma(q, "busy_timeout") == 30


async def test_foreign_keys_are_on(open_queue) -> None:
    q = await open_queue()
    assert await pragma(q, "foreign_keys") == 1


async def test_journal_size_limit_is_set(open_queue) -> None:
    q = await open_queue()
    assert await pragma(q, "journal_size_limit") == JOURNAL_SIZE_LIMIT


async def test_a_new_file_uses_incremental_auto_vacuum(open_queue) -> None:
    q = await open_queue()
    assert await pragma(q, "auto_vacuum") == 2


async def test_the_queue_still_works_after_pragma_checks(open_queue, make_event: MakeEvent) -> None:
    q = await open_queue(batch_window_ms=0)
    await pragma(q, "journal_mode")

    await q.put(make_event())

    assert await q.claim() is not None


# --- debugging views ----------------------------------------------------------------------


async def test_every_debugging_view_exists(open_queue, query) -> None:
    await open_queue()
    views = {name for (name,) in query("SELECT name FROM sqlite_master WHERE type = 'view'")}
    assert {"eq_overview", "eq_ready_batches", "eq_dead_letters", "eq_claimed"} <= views
    assert set(VIEWS) <= views


async def test_overview_counts_by_status_priority_and_key(
    open_queue, make_event: MakeEvent, query
) -> None:
    q = await open_queue()
    await q.put_many([make_event("job", aggregate_id=str(i)) for i in range(3)])
    await q.put(make_event("heartbeat"))
    await q.put(make_event("heartbeat"))  # a duplicate

    rows = query(
        "SELECT status, priority, batch_key, events, duplicates FROM eq_overview ORDER BY batch_key"
    )
    assert rows == [
        ("pending", "LOW", "heartbeat-handler", 1, 1),
        ("pending", "NORMAL", "job-handler", 3, 0),
    ]


async def test_ready_batches_view_answers(open_queue, make_event: MakeEvent, query) -> None:
    q = await open_queue(max_batch_size=2)
    await q.put_many([make_event("job", aggregate_id=str(i)) for i in range(2)])

    assert query("SELECT batch_key, pending, top_priority, ready FROM eq_ready_batches") == [
        ("job-handler", 2, 2, 1)
    ]


async def test_claimed_view_shows_leases(open_queue, make_event: MakeEvent, query) -> None:
    q = await open_queue(batch_window_ms=0)
    await q.put_many([make_event("job", aggregate_id=str(i)) for i in range(2)])
    batch = await q.claim("worker-7")
    assert batch is not None

    assert query("SELECT batch_id, lease_owner, batch_key, events, attempts FROM eq_claimed") == [
        (batch.id, "worker-7", "job-handler", 2, 1)
    ]


async def test_dead_letters_view_is_empty_without_dead_events(open_queue, query) -> None:
    await open_queue()
    assert query("SELECT * FROM eq_dead_letters") == []


async def test_payload_is_queryable_with_json_extract(
    open_queue, make_event: MakeEvent, query
) -> None:
    q = await open_queue()
    result = await q.put(make_event("order_created", attributes={"total": 12}))

    assert query(
        "SELECT id FROM events WHERE json_extract(payload, '$.attributes.total') = 12"
    ) == [(result.id,)]


# --- the schema at open -------------------------------------------------------------------


async def test_a_new_file_gets_the_schema_at_head(open_queue, query) -> None:
    await open_queue()
    assert query("SELECT version_num FROM eventqueue_alembic_version") == [
        (migrations.head_revision(),)
    ]


async def test_a_database_whose_schema_is_behind_is_refused(open_queue, db_path: str) -> None:
    q = await open_queue()
    await q.close()
    migrations.downgrade(db_path, "base")

    with pytest.raises(SchemaError, match="eventqueue migrate"):
        await EventQueue.open(db_path)


async def test_a_file_with_only_a_foreign_table_is_refused(db_path: str, query) -> None:
    query("CREATE TABLE host_things (id INTEGER PRIMARY KEY)")

    with pytest.raises(SchemaError, match="eventqueue migrate"):
        await EventQueue.open(db_path)


async def test_migrate_false_refuses_even_a_new_file(db_path: str) -> None:
    with pytest.raises(SchemaError, match="eventqueue migrate"):
        await EventQueue.open(db_path, migrate=False)


async def test_migrate_true_upgrades_a_database_behind(open_queue, db_path: str, query) -> None:
    q = await open_queue()
    await q.close()
    migrations.downgrade(db_path, "base")

    await open_queue(migrate=True)

    assert query("SELECT version_num FROM eventqueue_alembic_version") == [
        (migrations.head_revision(),)
    ]


async def test_migrate_true_adds_the_schema_beside_a_host_table(
    open_queue, make_event: MakeEvent, query
) -> None:
    query("CREATE TABLE host_things (id INTEGER PRIMARY KEY, name TEXT)")
    q = await open_queue(migrate=True)

    await q.put(make_event())

    assert query("SELECT count(*) FROM host_things") == [(0,)]
    assert query("SELECT count(*) FROM events") == [(1,)]


async def test_a_database_from_a_newer_eventqueue_is_refused(
    open_queue, db_path: str, query
) -> None:
    q = await open_queue()
    await q.close()
    query("UPDATE eventqueue_alembic_version SET version_num = 'ffff'")

    for migrate in ("auto", True):
        with pytest.raises(SchemaError, match="newer eventqueue"):
            await EventQueue.open(db_path, migrate=migrate)


async def test_a_file_that_is_not_a_database_raises_storage_error(tmp_path: Path) -> None:
    path = tmp_path / "garbage.db"
    path.write_bytes(b"not a database" * 300)

    with pytest.raises(StorageError, match="not a database"):
        await EventQueue.open(str(path))


async def test_a_missing_folder_raises_storage_error(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="does not exist"):
        await EventQueue.open(str(tmp_path / "no" / "such" / "events.db"))


# --- lifecycle ----------------------------------------------------------------------------


async def test_the_queue_is_usable_as_an_async_context_manager(
    db_path: str, clock, make_event: MakeEvent, query
) -> None:
    async with EventQueue.open(db_path, clock=clock) as q:
        await q.put(make_event())

    assert query("SELECT count(*) FROM events") == [(1,)]
    with pytest.raises(QueueClosedError):
        await q.put(make_event())


async def test_close_is_idempotent(open_queue) -> None:
    q = await open_queue()
    await q.close()
    await q.close()


async def test_close_checkpoints_the_wal(open_queue, make_event: MakeEvent, db_path: str) -> None:
    q = await open_queue()
    await q.put_many([make_event(aggregate_id=str(i)) for i in range(50)])
    await q.close()

    assert wal_size(db_path) == 0


async def test_events_survive_close_and_reopen(open_queue, make_event: MakeEvent) -> None:
    q = await open_queue(batch_window_ms=0)
    result = await q.put(make_event())
    await q.close()

    reopened = await open_queue(batch_window_ms=0)
    batch = await reopened.claim()

    assert batch is not None
    assert batch.ids == [result.id]


# --- stats --------------------------------------------------------------------------------


async def test_stats_of_an_empty_queue(open_queue) -> None:
    q = await open_queue()

    stats = await q.stats()

    assert stats.counts == {}
    assert stats.oldest_pending_age_s is None
    assert stats.duplicates_suppressed == 0
    assert stats.ready_batches == 0


async def test_stats_count_by_status_and_priority(open_queue, clock, make_event: MakeEvent) -> None:
    q = await open_queue(batch_window_ms=0, max_attempts=1)
    await q.put(make_event("disk_error"))  # CRITICAL: claimed then acked
    await q.put(make_event("step", event_type="workflow_event"))  # HIGH: claimed, held
    await q.put(make_event("job"))  # NORMAL: claimed then dead
    await q.put(make_event("heartbeat"))  # LOW: pending
    await q.put(make_event("heartbeat"))  # duplicate
    done = await q.claim()
    held = await q.claim()
    dead = await q.claim()
    assert done is not None and held is not None and dead is not None
    await q.ack(done)
    await q.nack(dead, error="x")
    clock.advance(5)

    stats = await q.stats()

    assert stats.count(Status.DONE, Priority.CRITICAL) == 1
    assert stats.count(Status.CLAIMED, Priority.HIGH) == 1
    assert stats.count(Status.DEAD, Priority.NORMAL) == 1
    assert stats.count(Status.PENDING) == 1
    assert stats.count(Status.PENDING, Priority.LOW) == 1
    assert stats.duplicates_suppressed == 1
    assert stats.oldest_pending_age_s == pytest.approx(5)
    assert stats.ready_batches == 1


async def test_stats_ready_batches_follow_the_window(
    open_queue, clock, make_event: MakeEvent
) -> None:
    q = await open_queue(batch_window_ms=100)
    await q.put(make_event("a"))
    await q.put(make_event("b"))

    assert (await q.stats()).ready_batches == 0
    clock.advance(0.2)
    assert (await q.stats()).ready_batches == 2


async def test_stats_as_dict_is_json_ready(open_queue, make_event: MakeEvent) -> None:
    q = await open_queue()
    await q.put(make_event())

    json.dumps((await q.stats()).as_dict())
