"""The raw asyncpg side of `eventqueue bench --db postgresql://...`, and scratch schemas.

The baseline does the queue's work on eventqueue's own schema (the same tables, partial
indexes and UNIQUE dedup key, created by the same migrations) on one plain asyncpg
connection, with nothing of the queue above it:

- put: json + sha256, then INSERT ... ON CONFLICT (dedup_key) DO NOTHING, one event per
  transaction (`put_single`) or `group` events per transaction in one statement over arrays
  (`put`);
- claim + ack: one key's next batch leased with FOR UPDATE SKIP LOCKED (commit), decoded,
  then acked (commit), cycling over the keys that have pending rows.

Scratch schemas (`<prefix><random>`, selected by libpq's `options=-csearch_path=...`) hold
each bench database and a demo run; only schemas with the caller's prefix are ever dropped.
Nothing here is used by the queue itself.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import secrets
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import asyncpg

from eventqueue.core.config import Config
from eventqueue.core.errors import ConfigError
from eventqueue.core.priority import batch_key, classify
from eventqueue.store.postgres import migrator
from eventqueue.store.postgres.connection import connect, display_name
from eventqueue.store.postgres.errors import storage_error

CONNECT_TIMEOUT_S = 10.0
# The fields of eventqueue's content hash (codec.HASHED_FIELDS), hashed as the SQLite
# baseline does (tools/bench/sqlite_baseline.py).
_HASHED = ("event_type", "event_name", "aggregate_id")
_SETTINGS = ("synchronous_commit", "fsync", "wal_sync_method", "server_version")

_COLUMNS = (
    "payload, priority, batch_key, content_hash, dedup_key, status, received_at, available_at"
)
_INSERT = (
    f"INSERT INTO events ({_COLUMNS}) VALUES ($1, $2, $3, $4, $4, 'pending', $5, $5)"
    " ON CONFLICT (dedup_key) DO NOTHING"
)
_INSERT_MANY = (
    f"INSERT INTO events ({_COLUMNS})"
    " SELECT p, pr, k, h, h, 'pending', r, r"
    " FROM unnest($1::text[], $2::int[], $3::text[], $4::text[], $5::float8[]) AS t(p, pr, k, h, r)"
    " ON CONFLICT (dedup_key) DO NOTHING"
)
_PENDING_KEYS = "SELECT DISTINCT batch_key, priority FROM events WHERE status = 'pending'"
# One key's next batch through the partial index ix_events_pending (batch_key, priority DESC,
# received_at, id): the physical minimum of "lease the next MAX_BATCH_SIZE events of a key".
_CLAIM = """
    WITH picked AS (
        SELECT id FROM events WHERE status = 'pending' AND batch_key = $1 AND priority = $2
        ORDER BY received_at, id LIMIT $3 FOR UPDATE SKIP LOCKED)
    UPDATE events e SET status = 'claimed', lease_owner = 'baseline', lease_token = $4,
        lease_expires_at = $5, batch_id = $6, attempts = e.attempts + 1
    FROM picked WHERE e.id = picked.id
    RETURNING e.id, e.payload, e.priority, e.content_hash, e.batch_key, e.attempts, e.received_at
"""
_ACK = """
    UPDATE events SET status = 'done', finished_at = $1, last_error = NULL, lease_owner = NULL,
        lease_token = NULL, lease_expires_at = NULL, batch_id = NULL
    WHERE status = 'claimed' AND lease_token = $2 AND id = ANY($3::bigint[])
"""

Encoded = tuple[str, int, str, str, float]


def encode(event: Mapping[str, Any], now: float) -> Encoded:
    """json + sha256: the row eventqueue would store for `event`."""
    payload = json.dumps(event, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    content: dict[str, Any] = {name: event.get(name) for name in _HASHED}
    content["attributes"] = event.get("attributes") or {}
    hashed = json.dumps(content, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(hashed.encode("utf-8")).hexdigest()
    return (payload, int(classify(event)), batch_key(event), digest, now)


class PostgresBaseline:
    """The raw baseline on one asyncpg connection (autocommit: one statement, one commit)."""

    single_row = True

    def __init__(self, connection: asyncpg.Connection) -> None:
        self._db = connection
        self._keys: list[tuple[str, int]] | None = None

    async def settings(self) -> dict[str, Any]:
        """The server's durability settings (the queue's sessions keep the same defaults)."""
        return {name: await self._db.fetchval(f"SHOW {name}") for name in _SETTINGS}

    async def put(self, events: Sequence[Mapping[str, Any]], *, group: int) -> float:
        """Encode and insert `events`, `group` rows per statement and commit; seconds taken."""
        start = time.perf_counter()
        for offset in range(0, len(events), group):
            now = time.time()
            await self._insert_many([encode(e, now) for e in events[offset : offset + group]])
        return time.perf_counter() - start

    async def put_single(self, events: Sequence[Mapping[str, Any]]) -> float:
        """Encode and insert `events` one row per transaction; seconds taken."""
        start = time.perf_counter()
        for event in events:
            await self._db.execute(_INSERT, *encode(event, time.time()))
        return time.perf_counter() - start

    async def fill(self, events: Iterable[Mapping[str, Any]], *, chunk: int = 10_000) -> int:
        """Load a backlog in large transactions; rows sent."""
        inserted = 0
        iterator = iter(events)
        while rows := [encode(e, time.time()) for e in itertools.islice(iterator, chunk)]:
            await self._insert_many(rows)
            inserted += len(rows)
        return inserted

    async def claim_ack(
        self, *, batch_size: int, max_events: int, max_seconds: float
    ) -> tuple[int, float]:
        """Claim (commit) then ack (commit) batches of `batch_size`, cycling over the keys
        pending at the first call, until `max_events` or `max_seconds`: (events, seconds)."""
        if self._keys is None:
            rows = await self._db.fetch(_PENDING_KEYS)
            pairs = ((str(r[0]), int(r[1])) for r in rows)
            self._keys = sorted(pairs, key=lambda kp: (-kp[1], kp[0]))
        keys = list(self._keys)
        done = 0
        start = time.perf_counter()
        while keys and done < max_events and time.perf_counter() - start < max_seconds:
            for key, priority in list(keys):
                claimed = await self._claim_ack_one(key, priority, batch_size)
                if not claimed:
                    keys.remove((key, priority))
                    continue
                done += claimed
                if done >= max_events or time.perf_counter() - start >= max_seconds:
                    break
        return done, time.perf_counter() - start

    async def close(self) -> None:
        """Close the connection."""
        await self._db.close()

    async def _claim_ack_one(self, key: str, priority: int, batch_size: int) -> int:
        token = secrets.token_hex(8)
        lease = (token, time.time() + 30.0, secrets.token_hex(6))
        rows = await self._db.fetch(_CLAIM, key, priority, batch_size, *lease)
        if not rows:
            return 0
        # What a consumer needs from a claim: the ids and the decoded payloads.
        ids = [row[0] for row in rows]
        _payloads = [json.loads(row[1]) for row in rows]
        await self._db.execute(_ACK, time.time(), token, ids)
        return len(ids)

    async def _insert_many(self, rows: Sequence[Encoded]) -> None:
        await self._db.execute(_INSERT_MANY, *(list(column) for column in zip(*rows, strict=True)))


async def open_baseline(config: Config) -> PostgresBaseline:
    """The baseline on `config.db_path`, eventqueue's schema migrated to head there first."""
    await migrator.upgrade(config.db_path)
    return PostgresBaseline(await connect(config.db_path, timeout_s=CONNECT_TIMEOUT_S))


async def create_scratch(url: str, prefix: str) -> str:
    """A new empty schema `<prefix><random>` in `url`'s database: the URL that selects it."""
    schema = f"{prefix}{secrets.token_hex(6)}"
    scratch = _with_schema(url, schema)  # refuses a URL that already chooses its schema
    await _execute(url, f"CREATE SCHEMA {schema}")
    return scratch


async def drop_scratch(url: str, prefix: str) -> None:
    """Drop the scratch schema `url` selects, with all in it; refused unless it has `prefix`."""
    schema = scratch_schema(url)
    if not schema.startswith(prefix) or not schema[len(prefix) :].isalnum():
        raise ConfigError(f"not a scratch schema of this tool ({prefix}...): {schema!r}")
    await _execute(_without_options(url), f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def scratch_schema(url: str) -> str:
    """The schema a URL made by `create_scratch` selects."""
    options = dict(parse_qsl(urlsplit(url).query)).get("options", "")
    return options.removeprefix("-csearch_path=")


def _with_schema(url: str, schema: str) -> str:
    parts = urlsplit(url)
    query = parse_qsl(parts.query)
    if any(name in ("options", "schema") for name, _ in query):
        raise ConfigError(
            f"{display_name(url)} already has libpq options or a schema; give the server's URL "
            "without ?options=... or ?schema=...: a scratch schema of its own is made there"
        )
    query.append(("options", f"-csearch_path={schema}"))
    return urlunsplit(parts._replace(query=urlencode(query, quote_via=quote)))


def _without_options(url: str) -> str:
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "options"]
    return urlunsplit(parts._replace(query=urlencode(query, quote_via=quote)))


async def _execute(url: str, statement: str) -> None:
    connection = await connect(url, timeout_s=CONNECT_TIMEOUT_S)
    try:
        await connection.execute(statement)
    except asyncpg.PostgresError as exc:
        raise storage_error(display_name(url), exc) from exc
    finally:
        await connection.close()
