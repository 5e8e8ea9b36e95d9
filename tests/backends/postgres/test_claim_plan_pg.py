"""Plans that cannot flip: at a million pending events, every statement that decides readiness
(and the idle wait's next_wakeup) reads `events` only through index scans, never a sequential
or bitmap scan, with the plan the server picks for the given values and with its generic plan
(asyncpg prepares statements; the server may switch to the generic plan after five runs)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest
from pgtest import fresh_schema, run_sync

from eventqueue.core.config import Config
from eventqueue.core.rules import ClaimRules
from eventqueue.store import open_store
from eventqueue.store.postgres import queries as sql
from eventqueue.store.postgres.store import PostgresStore, ready_args

NOW = 1_700_000_000.0
PENDING = 1_000_000
KEYS = 20
RULES = ClaimRules(
    max_batch=100, window_s=0.05, aging_s=60.0, batching=True, lease_s=30.0, max_attempts=5
)
INDEX_SCANS = {"Index Scan", "Index Only Scan"}
INDEXES = {"ix_events_pending", "pk_events", "ix_events_retrying", "ix_events_claimed"}

# One statement: 5 % CRITICAL, 20 % HIGH, 50 % NORMAL, 25 % LOW (as the bench's events), over
# KEYS batch keys, received over the last 100 s; key0 holds every CRITICAL event.
_LOAD = f"""
    INSERT INTO events (payload, priority, batch_key, content_hash, status, received_at,
                        available_at)
    SELECT '{{"n":' || g || '}}',
           CASE WHEN g % 20 = 0 THEN 4 WHEN g % 20 < 5 THEN 3 WHEN g % 20 < 15 THEN 2 ELSE 1 END,
           'key' || (g % {KEYS}), md5(g::text), 'pending', {NOW} - 100 + g * 1e-4,
           {NOW} - 100 + g * 1e-4
    FROM generate_series(1, {PENDING}) AS g
"""

_READINESS = {
    "claim": sql.CLAIM.args(
        **ready_args(NOW, RULES),
        batches=1,
        limit=RULES.batch_limit,
        owner="consumer",
        holder="holder",
        token="token",
        expires=NOW + RULES.lease_s,
        batch_id="batch",
    ),
    # A dispatcher's claim: finished batches acked in the same statement.
    "claim_acking": sql.CLAIM_ACKING.args(
        **ready_args(NOW, RULES),
        batches=4,
        limit=RULES.batch_limit,
        owner="consumer",
        holder="holder",
        token="token",
        expires=NOW + RULES.lease_s,
        batch_id="batch",
        ack_ids=[1, 2, 3],
        ack_tokens=["t:key1", "t:key2", "t:key3"],
    ),
    "peek_keys": sql.PEEK_KEYS.args(**ready_args(NOW, RULES), batches=4),
    "peek_events": sql.PEEK_EVENTS.args(
        **ready_args(NOW, RULES), batches=4, limit=RULES.batch_limit
    ),
    "count_ready_keys": sql.COUNT_READY_KEYS.args(**ready_args(NOW, RULES)),
    # The idle wait: when work that is not ready now may become ready.
    "next_wakeup": sql.NEXT_WAKEUP.args(now=NOW),
}


def scans_of_events(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every plan node, at any depth, that reads the events table (the UPDATE's own
    ModifyTable node writes it: not a read)."""
    if node.get("Relation Name") == "events" and node["Node Type"] != "ModifyTable":
        yield node
    for child in node.get("Plans", ()):
        yield from scans_of_events(child)


@pytest.fixture(scope="module")
def million(pg_server: str) -> Iterator[str]:
    """One schema holding a million pending events (loaded once for the module's tests)."""
    with fresh_schema(pg_server) as url:

        async def load() -> None:
            store = await open_store(Config(db_path=url))
            await store.close()
            c = await asyncpg.connect(url)
            try:
                await c.execute(_LOAD)
                await c.execute("VACUUM ANALYZE events")
            finally:
                await c.close()

        run_sync(load)
        yield url


def literal(value: object) -> str:
    """A parameter value as SQL text, for EXPLAIN EXECUTE (the statement casts every one)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    if isinstance(value, list):  # an array literal, cast by the statement
        return literal("{" + ",".join(f'"{item}"' for item in value) + "}")
    return repr(value)


async def explain(url: str, statement: str, *, generic: bool) -> dict[str, Any]:
    """The plan the server runs `statement` with: the custom plan for these values, or the
    generic plan a prepared statement may switch to (PREPARE, then EXPLAIN EXECUTE)."""
    query = sql.all_queries()[statement]
    values = _READINESS[statement]
    c = await asyncpg.connect(url)
    try:
        if generic:
            await c.execute(f"PREPARE readiness AS {query.sql}")
            await c.execute("SET plan_cache_mode = force_generic_plan")
            listed = ", ".join(literal(v) for v in values)
            plan = await c.fetchval(f"EXPLAIN (FORMAT JSON) EXECUTE readiness({listed})")
        else:
            plan = await c.fetchval(f"EXPLAIN (FORMAT JSON) {query.sql}", *values)
    finally:
        await c.close()
    root: dict[str, Any] = json.loads(plan)[0]["Plan"]
    return root


@pytest.mark.parametrize("generic", [False, True], ids=["custom", "generic"])
@pytest.mark.parametrize("statement", sorted(_READINESS))
async def test_readiness_reads_events_only_through_indexes_at_a_million_pending(
    million: str, statement: str, generic: bool
) -> None:
    root = await explain(million, statement, generic=generic)
    scans = [(n["Node Type"], n.get("Index Name")) for n in scans_of_events(root)]
    assert scans, "the plan does not read events at all"
    assert all(kind in INDEX_SCANS and index in INDEXES for kind, index in scans), scans
    assert any(index == "ix_events_pending" for _, index in scans), scans


async def test_the_store_sessions_never_jit_compile(million: str) -> None:
    # The generic plan of the claim at a million pending is costed above jit_above_cost:
    # compiling it took longer than the claim itself (100-1,500 ms against 3 ms).
    store = await open_store(Config(db_path=million))
    assert isinstance(store, PostgresStore)
    try:
        setting = await store._pool.read(lambda c: c.fetchval("SHOW jit"))
    finally:
        await store.close()
    assert setting == "off"


async def test_a_claim_at_a_million_pending_leases_the_critical_batch(million: str) -> None:
    store = await open_store(Config(db_path=million))
    assert isinstance(store, PostgresStore)
    try:
        [batch] = await store.claim(
            now=NOW, consumer="c", token="t", batch_id="b", rules=RULES, expire=False
        )
    finally:
        await store.close()
    # key0 holds the CRITICAL events: first in claim order, its CRITICAL ones first.
    assert batch.key == "key0"
    assert len(batch.events) == RULES.max_batch
    assert all(e.priority == 4 for e in batch.events)
