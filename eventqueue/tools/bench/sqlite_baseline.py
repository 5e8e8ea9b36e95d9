"""The raw `sqlite3` baselines of `eventqueue bench`: the same work, the same schema and PRAGMAs.

Each baseline runs synchronously on one plain sqlite3 connection to a fresh file created with
eventqueue's own schema (same tables, same partial indexes, same UNIQUE dedup key), configured
with `eventqueue.store.sqlite.pragmas.pragmas()`, so the only difference from the queue is the layers
above SQLite. Nothing here is used by the queue itself.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import secrets
import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from eventqueue.core.priority import batch_key, classify
from eventqueue.store.sqlite.migrations import ensure_schema
from eventqueue.store.sqlite.pragmas import pragmas

# The fields of eventqueue's content hash (codec.HASHED_FIELDS), hashed the same way.
_HASHED = ("event_type", "event_name", "aggregate_id")

_INSERT = (
    "INSERT OR IGNORE INTO events (payload, priority, batch_key, content_hash, dedup_key, status,"
    " received_at, available_at) VALUES (?, ?, ?, ?, ?, 'pending', ?, ?)"
)
# One key's next batch through the partial index ix_events_pending (batch_key, priority,
# received_at): the physical minimum of "lease the next MAX_BATCH_SIZE events of a ready key".
_CLAIM = (
    "UPDATE events SET status = 'claimed', lease_owner = ?, lease_token = ?,"
    " lease_expires_at = ?, batch_id = ?, attempts = attempts + 1"
    " WHERE id IN (SELECT id FROM events WHERE status = 'pending' AND batch_key = ?"
    " AND priority = ? ORDER BY received_at, id LIMIT ?)"
    " RETURNING id, payload, priority, content_hash, batch_key, attempts, received_at"
)
_ACK = (
    "UPDATE events SET status = 'done', finished_at = ?, last_error = NULL, lease_owner = NULL,"
    " lease_token = NULL, lease_expires_at = NULL, batch_id = NULL"
    " WHERE status = 'claimed' AND lease_token = ? AND id IN ({marks})"
)


def connect(path: str, *, durability: str, busy_timeout_ms: int) -> sqlite3.Connection:
    """A file with eventqueue's schema (created when new), and one connection with its PRAGMAs."""
    ensure_schema(path, busy_timeout_ms, "auto")
    db = sqlite3.connect(path, isolation_level=None)
    for statement in pragmas(durability, busy_timeout_ms):
        db.execute(statement)
    return db


def read_pragmas(db: sqlite3.Connection) -> dict[str, Any]:
    """The settings in force on a connection, read back (to show both sides match)."""
    return {
        "journal_mode": db.execute("PRAGMA journal_mode").fetchone()[0],
        "synchronous": db.execute("PRAGMA synchronous").fetchone()[0],
        "busy_timeout": db.execute("PRAGMA busy_timeout").fetchone()[0],
    }


def encode(event: Mapping[str, Any], now: float) -> tuple[Any, ...]:
    """json + sha256: the row eventqueue would store for `event`."""
    payload = json.dumps(event, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    content: dict[str, Any] = {name: event.get(name) for name in _HASHED}
    content["attributes"] = event.get("attributes") or {}
    hashed = json.dumps(content, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(hashed.encode("utf-8")).hexdigest()
    return (payload, int(classify(event)), batch_key(event), digest, digest, now, now)


def put(db: sqlite3.Connection, events: Sequence[Mapping[str, Any]], *, group: int = 100) -> float:
    """Encode and insert-or-ignore `events` in group commits of `group`; seconds taken."""
    start = time.perf_counter()
    for offset in range(0, len(events), group):
        now = time.time()
        rows = [encode(e, now) for e in events[offset : offset + group]]
        db.execute("BEGIN IMMEDIATE")
        db.executemany(_INSERT, rows)
        db.execute("COMMIT")
    return time.perf_counter() - start


def fill(
    db: sqlite3.Connection, events: Iterable[Mapping[str, Any]], *, chunk: int = 10_000
) -> int:
    """Load a backlog as fast as possible (large transactions); rows inserted."""
    inserted = 0
    iterator = iter(events)
    while rows := [encode(e, time.time()) for e in itertools.islice(iterator, chunk)]:
        db.execute("BEGIN IMMEDIATE")
        db.executemany(_INSERT, rows)
        db.execute("COMMIT")
        inserted += len(rows)
    return inserted


def pending_keys(db: sqlite3.Connection) -> list[tuple[str, int]]:
    """(batch_key, priority) pairs with pending rows, best priority first."""
    rows = db.execute(
        "SELECT DISTINCT batch_key, priority FROM events WHERE status = 'pending'"
    ).fetchall()
    return sorted(((str(k), int(p)) for k, p in rows), key=lambda kp: (-kp[1], kp[0]))


def claim_ack(
    db: sqlite3.Connection,
    keys: Sequence[tuple[str, int]],
    *,
    batch_size: int,
    max_events: int,
    max_seconds: float,
) -> tuple[int, float]:
    """Claim (UPDATE … RETURNING, commit) then ack (UPDATE, commit) batches of `batch_size`,
    cycling over `keys` (batch_key, priority), until `max_events` or `max_seconds`:
    (events, seconds)."""
    keys = list(keys)
    done = 0
    start = time.perf_counter()
    while keys and done < max_events and time.perf_counter() - start < max_seconds:
        for key, priority in list(keys):
            now = time.time()
            token = secrets.token_hex(8)
            params = ("baseline", token, now + 30.0, secrets.token_hex(6), key, priority)
            db.execute("BEGIN IMMEDIATE")
            rows = db.execute(_CLAIM, (*params, batch_size)).fetchall()
            db.execute("COMMIT")
            if not rows:
                keys.remove((key, priority))
                continue
            # What a consumer needs from a claim: the ids and the decoded payloads.
            ids = [row[0] for row in rows]
            _payloads = [json.loads(row[1]) for row in rows]
            db.execute("BEGIN IMMEDIATE")
            db.execute(_ACK.format(marks=",".join("?" * len(ids))), (time.time(), token, *ids))
            db.execute("COMMIT")
            done += len(ids)
            if done >= max_events or time.perf_counter() - start >= max_seconds:
                break
    return done, time.perf_counter() - start


class SQLiteBaseline:
    """The functions above as the bench's raw side (the `eventqueue.store.Baseline` protocol
    that PostgreSQL's asyncpg baseline also follows): one sqlite3 connection, whose calls run
    synchronously, with no event loop work in between, as a raw baseline should."""

    single_row = False  # one commit per put: see scripts/group_commit.py

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self._keys: list[tuple[str, int]] | None = None

    @classmethod
    def connect(cls, path: str, *, durability: str, busy_timeout_ms: int) -> SQLiteBaseline:
        """The baseline on the file `path` (see `connect`)."""
        return cls(connect(path, durability=durability, busy_timeout_ms=busy_timeout_ms))

    async def settings(self) -> dict[str, Any]:
        """The PRAGMAs in force on the connection."""
        return read_pragmas(self.db)

    async def put(self, events: Sequence[Mapping[str, Any]], *, group: int) -> float:
        """`put` of the module: group commits of `group`; seconds taken."""
        return put(self.db, events, group=group)

    async def put_single(self, events: Sequence[Mapping[str, Any]]) -> float | None:
        """Not measured on SQLite (None)."""
        return None

    async def fill(self, events: Iterable[Mapping[str, Any]]) -> int:
        """`fill` of the module; rows inserted."""
        return fill(self.db, events)

    async def claim_ack(
        self, *, batch_size: int, max_events: int, max_seconds: float
    ) -> tuple[int, float]:
        """`claim_ack` of the module over the keys pending at the first call."""
        if self._keys is None:
            self._keys = pending_keys(self.db)
        return claim_ack(
            self.db,
            self._keys,
            batch_size=batch_size,
            max_events=max_events,
            max_seconds=max_seconds,
        )

    async def close(self) -> None:
        """Close the connection."""
        self.db.close()
