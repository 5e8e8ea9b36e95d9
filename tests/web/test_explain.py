"""Every statement the dashboard's pages run uses an index at a million events (issue 25), on
both backends: EXPLAIN on a table of 1,000,000 rows (mostly done, as a long-running queue's
table is), and no plan reads the whole events table.

The Overview's counts come from `Store.stats`, the same read as `eventqueue stats` (shared with
the CLI, not the dashboard's own SQL; it counts every status, done included)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sqlite3
from collections.abc import Iterator
from typing import Any

import pgtest
import pytest

from eventqueue import EventQueue
from eventqueue.tools.top import DEPTH_SQL, LATENCY_SQL, MAX_ID_SQL
from eventqueue.tools.web import queries as Q

ROWS = 1_000_000
BELOW = ROWS + 1
START = 1.7e9
# Row i: done, except every 50th dead, every 1000th claimed, the newest 3% pending; 20 keys,
# 50,000 aggregates. The same rows on both backends (SQLite's recursive CTE, generate_series).
_COLUMNS = """payload, priority, batch_key, content_hash, dedup_key, status, received_at,
  available_at, attempts, last_error, duplicates, finished_at"""
_STATUS = """CASE WHEN i % 1000 = 2 THEN 'claimed' WHEN i % 50 = 3 THEN 'dead'
  WHEN i > 970000 THEN 'pending' ELSE 'done' END"""
SQLITE_FILL = f"""
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {ROWS})
INSERT INTO events ({_COLUMNS})
SELECT json_object('event_name', 'job_' || (i % 20), 'aggregate_id', 'agg-' || (i % 50000),
    'event_id', 'e-' || i),
  1 + i % 4, 'job_' || (i % 20) || '-handler', printf('%064x', i),
  CASE WHEN i > 990000 THEN printf('%064x', i) END, {_STATUS},
  {START} + i * 0.01, {START} + i * 0.01, 1, CASE WHEN i % 50 = 3 THEN 'boom ' || (i % 7) END, 0,
  CASE WHEN {_STATUS} IN ('done', 'dead') THEN {START} + i * 0.01 + 0.5 END
FROM n
"""
POSTGRES_FILL = f"""
INSERT INTO events ({_COLUMNS})
SELECT json_build_object('event_name', 'job_' || (i % 20), 'aggregate_id', 'agg-' || (i % 50000),
    'event_id', 'e-' || i)::text,
  1 + i % 4, 'job_' || (i % 20) || '-handler', lpad(to_hex(i), 64, '0'),
  CASE WHEN i > 990000 THEN lpad(to_hex(i), 64, '0') END, {_STATUS},
  {START} + i * 0.01, {START} + i * 0.01, 1, CASE WHEN i % 50 = 3 THEN 'boom ' || (i % 7) END, 0,
  CASE WHEN {_STATUS} IN ('done', 'dead') THEN {START} + i * 0.01 + 0.5 END
FROM generate_series(1, {ROWS}) AS i
"""
A_HASH = f"{990_500:064x}"


def statements(*, postgres: bool) -> dict[str, str]:
    """Every statement the pages run, with the filters a person would use."""

    def events(**filters: Any) -> str:
        return Q.events_sql(Q.EventFilter(**filters), below=BELOW, limit=50, postgres=postgres)

    return {
        "overview depth by key": DEPTH_SQL,
        "overview latency": LATENCY_SQL.format(since=START + 9_000.0),
        "overview max id": MAX_ID_SQL,
        "events": events(),
        **{f"events status={s}": events(status=s) for s in ("pending", "claimed", "done", "dead")},
        "events priority": events(priority=4),
        "events batch key": events(batch_key="job_3-handler"),
        "events pending of a key": events(status="pending", batch_key="job_3-handler"),
        "events aggregate": events(aggregate="agg-7"),
        "events older page": Q.events_sql(
            Q.EventFilter(status="dead"), below=123_456, limit=50, postgres=postgres
        ),
        "find id": Q.find_sql("12345", below=BELOW, postgres=postgres),
        "find content hash": Q.find_sql(A_HASH, below=BELOW, postgres=postgres),
        "find event_id": Q.find_sql("e-999999", below=BELOW, postgres=postgres),
        "dead letters by error": Q.DEAD_GROUPS_SQL,
        "dead letters of one error": Q.dead_ids_sql("boom 3", limit=10_000),
    }


# --- SQLite -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def million_sqlite(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = str(tmp_path_factory.mktemp("million") / "events.db")

    async def create() -> None:
        async with EventQueue.open(path):
            pass

    asyncio.run(create())
    with contextlib.closing(sqlite3.connect(path)) as connection:
        connection.execute(SQLITE_FILL)
        connection.commit()
    return path


def test_sqlite_plans_use_indexes_at_a_million_events(million_sqlite: str) -> None:
    with contextlib.closing(sqlite3.connect(f"file:{million_sqlite}?mode=ro", uri=True)) as db:
        assert db.execute("SELECT count(*) FROM events").fetchone() == (ROWS,)
        problems = {}
        for name, sql in statements(postgres=False).items():
            plan = [row[3] for row in db.execute(f"EXPLAIN QUERY PLAN {sql}")]
            if any(_reads_the_table(step) for step in plan):
                problems[name] = plan
    assert problems == {}


def _reads_the_table(step: str) -> bool:
    # SEARCH is an index or rowid range; a SCAN may only walk one status's partial index.
    return bool(re.match(r"SCAN events\b", step)) and not re.match(
        r"SCAN events USING (COVERING )?INDEX ix_events_", step
    )


# --- PostgreSQL ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def million_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with pgtest.fresh_schema(pgtest.require_pg()) as url:
        spill = str(tmp_path_factory.mktemp("spill"))

        async def create() -> None:
            async with EventQueue.open(url, spill_dir=spill):
                pass

        pgtest.run_sync(create)
        pgtest.run_sync(lambda: pgtest.execute(url, POSTGRES_FILL))
        pgtest.run_sync(lambda: pgtest.execute(url, "ANALYZE events"))  # as autovacuum would
        yield url


def test_postgres_plans_use_indexes_at_a_million_events(million_postgres: str) -> None:
    problems = {}
    for name, sql in statements(postgres=True).items():
        [[plan]] = pgtest.run_sync(
            lambda sql=sql: pgtest.execute(million_postgres, f"EXPLAIN (FORMAT JSON) {sql}")
        )
        scans = list(_sequential_scans(json.loads(plan)[0]["Plan"]))
        if scans:
            problems[name] = scans
    assert problems == {}


def _sequential_scans(node: dict[str, Any]) -> Iterator[str]:
    if node.get("Node Type") == "Seq Scan" and node.get("Relation Name") == "events":
        yield f"Seq Scan on events, filter {node.get('Filter')}"
    for child in node.get("Plans", []):
        yield from _sequential_scans(child)
