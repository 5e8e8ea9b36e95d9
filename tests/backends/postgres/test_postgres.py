"""What only the PostgreSQL backend has to prove: concurrent claimers on SKIP LOCKED never
lease a row twice, LISTEN/NOTIFY wakes other processes' stores, dedup races across hosts,
fail-fast puts, text PostgreSQL cannot hold, the read-only console, backup via pg_dump."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from pgtest import execute

from eventqueue.core.config import Config
from eventqueue.core.errors import LeaseLostError, QueryError, StoreBusyError
from eventqueue.core.models import PutStatus
from eventqueue.core.records import NewEvent
from eventqueue.core.rules import ClaimRules
from eventqueue.store import open_store
from eventqueue.store.postgres import admin
from eventqueue.store.postgres.store import PostgresStore

NOW = 1_700_000_000.0
RULES = ClaimRules(
    max_batch=5, window_s=0.0, aging_s=60.0, batching=True, lease_s=30.0, max_attempts=5
)
OpenStore = Callable[..., Awaitable[PostgresStore]]


def new_event(n: int, key: str = "k", priority: int = 2, at: float = NOW) -> NewEvent:
    payload = json.dumps({"event_name": key, "n": n}, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(payload.encode()).hexdigest()
    return NewEvent(payload, priority, key, digest, at)


@pytest.fixture
async def stores(pg_db: str) -> AsyncIterator[OpenStore]:
    """Open stores on the test's schema (each one is a "host"); all closed afterwards."""
    opened: list[PostgresStore] = []

    async def _open(**settings: object) -> PostgresStore:
        store = await open_store(Config(db_path=pg_db, **settings))  # type: ignore[arg-type]
        assert isinstance(store, PostgresStore)
        opened.append(store)
        return store

    yield _open
    for store in opened:
        await store.close()


async def test_concurrent_claimers_never_lease_a_row_twice(stores: OpenStore) -> None:
    hosts = [await stores() for _ in range(4)]
    rows = [new_event(n, key=f"k{n % 7}") for n in range(300)]
    await hosts[0].put(rows, now=NOW, dedup_ttl_s=300.0)
    leased: list[int] = []

    async def consume(store: PostgresStore, name: str) -> None:
        for turn in range(1000):
            batches = await store.claim(
                now=NOW + 1, consumer=name, token=f"{name}t{turn}", batch_id="b", rules=RULES,
                batches=2,
            )  # fmt: skip
            if not batches:
                return
            for batch in batches:
                leased.extend(batch.ids)
                await store.ack(batch.token, batch.ids, now=NOW + 1)

    await asyncio.gather(*(consume(s, f"c{i}") for i, s in enumerate(hosts * 2)))
    assert sorted(leased) == sorted(set(leased)) and len(leased) == 300
    stats = await hosts[0].stats(now=NOW + 1, rules=RULES)
    assert sum(stats.counts["done"].values()) == 300


async def test_a_commit_elsewhere_wakes_a_watching_store(stores: OpenStore) -> None:
    watcher, other = await stores(), await stores()
    woken = asyncio.Event()
    calls: list[float] = []

    def on_change() -> None:
        calls.append(time.monotonic())
        woken.set()

    await watcher.watch(on_change)
    await watcher.put([new_event(1)], now=NOW, dedup_ttl_s=None)  # its own: no wake-up
    await other.put([new_event(2)], now=NOW, dedup_ttl_s=None)
    await asyncio.wait_for(woken.wait(), timeout=10)
    # Notifications arrive in commit order: the watcher's own came first and was ignored.
    assert len(calls) == 1


async def test_the_listener_comes_back_after_its_connection_is_killed(
    stores: OpenStore, pg_server: str
) -> None:
    watcher, other = await stores(), await stores()
    woken = asyncio.Event()
    await watcher.watch(woken.set)
    listener = watcher._listener
    assert listener is not None and listener._connection is not None
    pid = listener._connection.get_server_pid()
    await execute(pg_server, "SELECT pg_terminate_backend($1)", pid)
    # Reconnecting calls on_change once (whatever was sent meanwhile is made up for) ...
    await asyncio.wait_for(woken.wait(), timeout=10)
    woken.clear()
    # ... and notifications flow again on the new connection.
    await other.put([new_event(3)], now=NOW, dedup_ttl_s=None)
    await asyncio.wait_for(woken.wait(), timeout=10)


async def test_hosts_putting_the_same_events_at_once_store_each_once(stores: OpenStore) -> None:
    hosts = [await stores() for _ in range(3)]
    rows = [new_event(n, key=f"k{n % 3}") for n in range(60)]
    orders = [rows, rows[::-1], rows[20:] + rows[:20]]
    commits = await asyncio.gather(
        *(h.put(o, now=NOW, dedup_ttl_s=300.0) for h, o in zip(hosts, orders, strict=True))
    )
    statuses = Counter(status for c in commits for status, _ in c.outcome)
    assert statuses == {PutStatus.ACCEPTED: 60, PutStatus.DUPLICATE: 120}
    stats = await hosts[0].stats(now=NOW, rules=RULES)
    assert stats.counters["duplicates_suppressed"] == 120
    assert sum(stats.counts["pending"].values()) == 60


async def test_repeats_within_one_put_count_on_their_original(stores: OpenStore) -> None:
    store = await stores()
    first = new_event(1)
    commit = await store.put([first, new_event(2), first, first], now=NOW, dedup_ttl_s=300.0)
    (s1, id1), (s2, _), (s3, id3), (s4, id4) = commit.outcome
    assert (s1, s2, s3, s4) == ("accepted", "accepted", "duplicate", "duplicate")
    assert id1 == id3 == id4 and commit.waiting == 2
    info = await store.show(id1)
    assert info is not None and info["duplicates"] == 2


async def test_a_fail_fast_put_spills_instead_of_waiting_for_a_lock(
    stores: OpenStore, pg_db: str
) -> None:
    import asyncpg

    store = await stores(spill_after_ms=100, busy_timeout_ms=5000)
    holder = await asyncpg.connect(pg_db)
    try:
        async with holder.transaction():
            await holder.execute("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
            started = time.monotonic()
            with pytest.raises(StoreBusyError):
                await store.put([new_event(1)], now=NOW, dedup_ttl_s=300.0, fail_fast=True)
            assert time.monotonic() - started < 3.0
    finally:
        await holder.close()
    commit = await store.put([new_event(1)], now=NOW, dedup_ttl_s=300.0, fail_fast=True)
    assert commit.outcome[0][0] is PutStatus.ACCEPTED


async def test_text_postgres_cannot_hold_round_trips(stores: OpenStore) -> None:
    store = await stores()
    key = "a\x00b\x01c-handler"
    commit = await store.put([new_event(1, key=key, priority=4)], now=NOW, dedup_ttl_s=300.0)
    await store.put([], now=NOW, dedup_ttl_s=None, source_positions={"sse\x00": "id\x00\x01"})
    assert await store.source_position("sse\x00") == "id\x00\x01"
    (batch,) = await store.claim(now=NOW, consumer="c", token="t1", batch_id="b1", rules=RULES)
    assert batch.key == key and batch.events[0].batch_key == key
    assert batch.ids == [commit.outcome[0][1]]
    await store.extend(batch.token, batch.ids, expires_at=NOW + 60)
    await store.nack(batch.token, {}, batch.ids, error="boom\x00", now=NOW)
    (dead,) = await store.dead(limit=5)
    assert dead["batch_key"] == key and dead["last_error"] == "boom\ufffd"


async def test_a_stale_token_is_refused(stores: OpenStore) -> None:
    store = await stores()
    await store.put([new_event(1, priority=4)], now=NOW, dedup_ttl_s=None)
    (batch,) = await store.claim(now=NOW, consumer="c", token="t1", batch_id="b", rules=RULES)
    later = NOW + RULES.lease_s + 1
    (again,) = await store.claim(now=later, consumer="d", token="t2", batch_id="b", rules=RULES)
    assert again.ids == batch.ids and again.events[0].attempts == 2
    with pytest.raises(LeaseLostError):
        await store.ack(batch.token, batch.ids, now=later)
    await store.ack(again.token, again.ids, now=later)


async def test_the_sql_console_reads_and_refuses_writes(stores: OpenStore, pg_db: str) -> None:
    store = await stores()
    await store.put([new_event(1), new_event(2)], now=NOW, dedup_ttl_s=None)
    config = Config(db_path=pg_db)
    result = await asyncio.to_thread(
        admin.sql, config, "SELECT id, status FROM events ORDER BY id", max_rows=1
    )
    assert result["columns"] == ["id", "status"] and result["truncated"] is True
    assert result["rows"] == [[1, "pending"]]
    views = await asyncio.to_thread(admin.sql, config, "SELECT * FROM eq_overview")
    assert views["rows"][0][:4] == ["pending", "NORMAL", "k", 2]
    for refused in (
        "DELETE FROM events",
        "WITH gone AS (DELETE FROM events RETURNING id) SELECT * FROM gone",
        "SELECT nextval(pg_get_serial_sequence('events', 'id'))",
        "SELECT 1; DELETE FROM events",
        "SELECT set_config('role', 'postgres', true)",
        "SELECT pg_read_file('/etc/passwd')",
        "SELECT * FROM events FOR UPDATE",
    ):
        with pytest.raises(QueryError, match="refused"):
            await asyncio.to_thread(admin.sql, config, refused)
    assert await store.waiting_count() == 2


async def test_backup_says_to_use_pg_dump(pg_db: str) -> None:
    advice = admin.backup(Config(db_path=pg_db), "/tmp/x.dump")
    assert advice["copied"] is False
    assert advice["command"].startswith("pg_dump --format=custom --file=/tmp/x.dump --schema=")
