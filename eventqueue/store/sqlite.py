"""SQLiteStore: one method = one transaction = one domain result. No Row leaves this module."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from eventqueue.codec import decode_payload
from eventqueue.errors import LeaseLostError, QueueClosedError, SchemaError, StorageError
from eventqueue.models import Batch, Event, Priority, PutStatus
from eventqueue.store import migrations
from eventqueue.store import statements as sql
from eventqueue.store.engine import BEGIN_MODE, is_locked_error, make_engine, make_migration_engine

T = TypeVar("T")
# SQLite allows 32766 bound parameters; stay well below for IN lists.
_IN_CHUNK = 500


@dataclass(frozen=True, slots=True)
class NewEvent:
    """A validated event ready to insert."""

    payload_json: str
    priority: int
    batch_key: str
    content_hash: str
    received_at: float


@dataclass(frozen=True, slots=True)
class ClaimRules:
    """What makes a batch ready and how it is leased (from Config, in claim terms)."""

    max_batch: int
    window_s: float
    aging_s: float
    batching: bool
    lease_s: float
    max_attempts: int


@dataclass(frozen=True, slots=True)
class Wakeup:
    """When pending work not ready now may become ready (any of these may be None)."""

    oldest_pending_at: float | None
    next_retry_at: float | None
    next_lease_expiry_at: float | None


class SQLiteStore:
    """The durable store on one SQLite file; one connection, one transaction at a time."""

    def __init__(self, path: str, engine: AsyncEngine, connection: AsyncConnection) -> None:
        self.path = path
        self._engine = engine
        self._conn = connection
        self._lock = asyncio.Lock()
        self._closed = False
        self._identity = _file_identity(path)

    @classmethod
    async def open(
        cls, path: str, *, durability: str, busy_timeout_ms: int, migrate: bool | str = "auto"
    ) -> SQLiteStore:
        """Open the file, check (or bring) its schema to head, and hold one connection."""
        await asyncio.to_thread(_ensure_schema, path, busy_timeout_ms, migrate)
        engine = make_engine(path, durability=durability, busy_timeout_ms=busy_timeout_ms)
        try:
            connection = await engine.connect()
        except sa_exc.DBAPIError as exc:
            await engine.dispose()
            raise StorageError(f"cannot open database {path}: {exc.orig}") from exc
        return cls(path, engine, connection)

    async def close(self) -> None:
        """Checkpoint the WAL and close the connection (idempotent)."""
        if self._closed:
            return
        async with self._lock:
            self._closed = True
            try:
                await self._conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
            except sa_exc.DBAPIError:
                pass  # a checkpoint is an optimisation; a busy reader may prevent it
            finally:
                await self._conn.close()
                await self._engine.dispose()

    # --- transactions ---------------------------------------------------------------------

    async def _tx(self, body: Callable[..., T], *args: Any, mode: str = "IMMEDIATE") -> T:
        """Run `body(connection, *args)` as one transaction, shielded from cancellation.

        Cancelling an awaited aiosqlite call does not stop the SQL (F2); so a cancelled caller
        leaves the transaction to finish (commit or roll back) on its own and the connection
        is never left inside a transaction.
        """
        task = asyncio.ensure_future(self._run_tx(body, args, mode))
        task.add_done_callback(_retrieve)
        return await asyncio.shield(task)

    async def _run_tx(self, body: Callable[..., T], args: tuple[Any, ...], mode: str) -> T:
        async with self._lock:
            if self._closed:
                raise QueueClosedError("the queue is closed")
            if mode == "IMMEDIATE":
                self._check_file()
            await self._conn.execution_options(**{BEGIN_MODE: mode})
            try:
                async with self._conn.begin():
                    return await self._conn.run_sync(body, *args)
            except sa_exc.DBAPIError as exc:
                raise _storage_error(self.path, exc) from exc

    def _check_file(self) -> None:
        # A database file deleted or replaced under an open WAL connection keeps accepting
        # writes into the unlinked inode: fail loudly instead of acknowledging lost events (F13).
        if _file_identity(self.path) != self._identity:
            raise StorageError(
                f"database file {self.path} was deleted or replaced while open; "
                "events written now would be lost. Restart the process."
            )

    # --- put ------------------------------------------------------------------------------

    async def put(
        self,
        rows: Sequence[NewEvent],
        *,
        now: float,
        dedup_ttl_s: float | None,
        source_positions: Mapping[str, str | None] | None = None,
    ) -> list[tuple[PutStatus, int]]:
        """Insert events in one transaction; duplicates within the TTL are counted, not inserted.

        `source_positions` (stream name -> position reached) commit with the events, so a
        restarted listener resumes exactly after what is stored.
        """
        return await self._tx(_put_tx, rows, now, dedup_ttl_s, dict(source_positions or {}))

    async def scheduled_count(self) -> int:
        """Pending + claimed rows (what EVENT_QUEUE_SIZE bounds)."""
        return await self._tx(
            lambda c: int(c.execute(sql.count_scheduled()).scalar_one()), mode="DEFERRED"
        )

    async def source_position(self, source: str) -> str | None:
        """The stream position stored with the last committed events of `source`."""
        return await self._tx(
            lambda c: c.execute(sql.select_source_position(source)).scalar(), mode="DEFERRED"
        )

    # --- claim, ack, nack, extend, release ------------------------------------------------

    async def claim(
        self, *, now: float, consumer: str, token: str, batch_id: str, rules: ClaimRules
    ) -> Batch | None:
        """Lease the best ready batch, or None when nothing is ready."""
        return await self._tx(_claim_tx, now, consumer, token, batch_id, rules)

    async def ack(self, token: str, ids: Sequence[int], *, now: float) -> None:
        """Mark leased events done; LeaseLostError (and no change) if the token is stale."""
        await self._tx(_ack_tx, token, list(ids), now)

    async def nack(
        self,
        token: str,
        retry_at: Mapping[int, float],
        dead: Sequence[int],
        *,
        error: str,
        now: float,
    ) -> None:
        """Leased events back to pending at their retry time, or dead; fenced by token."""
        await self._tx(_nack_tx, token, dict(retry_at), list(dead), error, now)

    async def extend(self, token: str, ids: Sequence[int], *, expires_at: float) -> None:
        """Push the lease expiry out; LeaseLostError if the token is stale."""
        await self._tx(
            _fenced_update, sql.extend_lease(), token, list(ids), {"b_expires": expires_at}
        )

    async def release(self, token: str, ids: Sequence[int]) -> None:
        """Give leased events back to pending now (shutdown); LeaseLostError if stale."""
        await self._tx(_fenced_update, sql.release_events(), token, list(ids), {})

    async def next_wakeup(self, now: float) -> Wakeup:
        """Times at which work that is not ready now may become ready."""

        def body(c: Connection) -> Wakeup:
            oldest, retry, expiry = c.execute(sql.next_wakeup(), {"b_now": now}).one()
            return Wakeup(oldest, retry, expiry)

        return await self._tx(body, mode="DEFERRED")

    # --- inspection -----------------------------------------------------------------------

    async def counts(self) -> dict[str, dict[str, int]]:
        """Events by status, then priority name."""

        def body(c: Connection) -> dict[str, dict[str, int]]:
            result: dict[str, dict[str, int]] = {}
            for status, priority, count in c.execute(sql.count_by_status_priority()):
                result.setdefault(status, {})[Priority(priority).name] = count
            return result

        return await self._tx(body, mode="DEFERRED")

    async def summary(self, *, now: float, rules: ClaimRules) -> dict[str, Any]:
        """Counters, oldest pending time and the number of ready batch keys."""

        def body(c: Connection) -> dict[str, Any]:
            counters: dict[str, int] = {
                name: value for name, value in c.execute(sql.select_counters())
            }
            oldest = c.execute(sql.oldest_pending()).scalar()
            ready = c.execute(sql.count_ready_keys(), _ready_params(now, rules)).scalar_one()
            return {"counters": counters, "oldest_pending_at": oldest, "ready_batches": ready}

        return await self._tx(body, mode="DEFERRED")

    async def save_settings(self, values: Mapping[str, str]) -> None:
        """Record the opener's settings for the debugging views."""
        params = [{"b_name": k, "b_value": v} for k, v in values.items()]
        await self._tx(lambda c: c.execute(sql.save_setting(), params))


# --- transaction bodies (run in SQLAlchemy's sync world via run_sync) -----------------------


def _put_tx(
    c: Connection,
    rows: Sequence[NewEvent],
    now: float,
    dedup_ttl_s: float | None,
    source_positions: dict[str, str | None],
) -> list[tuple[PutStatus, int]]:
    holders: dict[str, tuple[int, float]] = {}
    if dedup_ttl_s is not None:
        hashes = list({r.content_hash for r in rows})
        for start in range(0, len(hashes), _IN_CHUNK):
            chunk = hashes[start : start + _IN_CHUNK]
            for row_id, key, received_at in c.execute(sql.select_dedup_holders(chunk)):
                holders[key] = (row_id, received_at)
    expired = [
        hid for hid, at in holders.values() if dedup_ttl_s is not None and at < now - dedup_ttl_s
    ]
    if expired:
        c.execute(sql.release_dedup_keys(), [{"b_id": i} for i in expired])
    live = {k: v[0] for k, v in holders.items() if v[0] not in set(expired)}
    outcome, to_insert = _sort_duplicates(rows, live, dedup_ttl_s is not None)
    if to_insert:
        params = [_insert_params(rows[i], now, dedup_ttl_s is not None) for i in to_insert]
        new_ids = c.execute(sql.insert_events(), params).scalars().all()
        for index, new_id in zip(to_insert, new_ids, strict=True):
            outcome[index] = (PutStatus.ACCEPTED, new_id)
            live.setdefault(rows[index].content_hash, new_id)
    resolved = _resolve_in_group_duplicates(rows, outcome, live)
    _count_duplicates(c, resolved)
    if source_positions:
        params = [
            {"b_source": s, "b_position": p, "b_now": now} for s, p in source_positions.items()
        ]
        c.execute(sql.save_source_position(), params)
    return resolved


def _sort_duplicates(
    rows: Sequence[NewEvent], live: dict[str, int], dedup: bool
) -> tuple[list[tuple[PutStatus, int] | None], list[int]]:
    outcome: list[tuple[PutStatus, int] | None] = [None] * len(rows)
    to_insert: list[int] = []
    first_in_group: set[str] = set()
    for index, row in enumerate(rows):
        if dedup and row.content_hash in live:
            outcome[index] = (PutStatus.DUPLICATE, live[row.content_hash])
        elif dedup and row.content_hash in first_in_group:
            continue  # a duplicate of an event earlier in this same group: resolved after insert
        else:
            first_in_group.add(row.content_hash)
            to_insert.append(index)
    return outcome, to_insert


def _resolve_in_group_duplicates(
    rows: Sequence[NewEvent], outcome: list[tuple[PutStatus, int] | None], live: dict[str, int]
) -> list[tuple[PutStatus, int]]:
    return [
        o if o is not None else (PutStatus.DUPLICATE, live[r.content_hash])
        for r, o in zip(rows, outcome, strict=True)
    ]


def _count_duplicates(c: Connection, outcome: list[tuple[PutStatus, int]]) -> None:
    per_original: dict[int, int] = {}
    for status, row_id in outcome:
        if status is PutStatus.DUPLICATE:
            per_original[row_id] = per_original.get(row_id, 0) + 1
    if per_original:
        c.execute(sql.count_duplicates(), [{"b_id": i, "b_n": n} for i, n in per_original.items()])
        c.execute(
            sql.add_to_counter(),
            {"b_name": "duplicates_suppressed", "b_n": sum(per_original.values())},
        )


def _insert_params(row: NewEvent, now: float, dedup: bool) -> dict[str, Any]:
    return {
        "payload": row.payload_json,
        "priority": row.priority,
        "batch_key": row.batch_key,
        "content_hash": row.content_hash,
        "dedup_key": row.content_hash if dedup else None,
        "status": "pending",
        "received_at": row.received_at,
        "available_at": row.received_at,
    }


def _ready_params(now: float, rules: ClaimRules) -> dict[str, Any]:
    return {
        "b_now": now,
        "b_max_batch": rules.max_batch,
        "b_window_start": now - rules.window_s,
        "b_no_batching": 0 if rules.batching else 1,
        "b_aging_s": rules.aging_s,
    }


def _claim_tx(
    c: Connection, now: float, consumer: str, token: str, batch_id: str, rules: ClaimRules
) -> Batch | None:
    expiry = {"b_now": now, "b_max_attempts": rules.max_attempts}
    c.execute(sql.expire_leases(dead=True), expiry)
    c.execute(sql.expire_leases(dead=False), expiry)
    chosen = c.execute(sql.select_ready_key(), _ready_params(now, rules)).first()
    if chosen is None:
        return None
    key, _effective, oldest, top = chosen
    # A key ready only because it holds CRITICAL events: take those at once, let the rest
    # keep filling their batch.
    full_or_due = not rules.batching or oldest <= now - rules.window_s
    critical_only = (
        top == sql.CRITICAL and not full_or_due and not _has_full_batch(c, key, now, rules)
    )
    limit = rules.max_batch if rules.batching else 1
    params = {
        "b_key": key,
        "b_now": now,
        "b_limit": limit,
        "b_owner": consumer,
        "b_token": token,
        "b_expires": now + rules.lease_s,
        "b_batch_id": batch_id,
    }
    rows = c.execute(sql.claim_batch(critical_only=critical_only), params).all()
    found = sorted((_event(r) for r in rows), key=lambda e: (-e.priority, e.received_at, e.id))
    return Batch(
        id=batch_id,
        key=key,
        token=token,
        consumer=consumer,
        priority=max(e.priority for e in found),
        events=tuple(found),
        lease_expires_at=now + rules.lease_s,
    )


def _has_full_batch(c: Connection, key: str, now: float, rules: ClaimRules) -> bool:
    params = {"b_key": key, "b_now": now, "b_limit": rules.max_batch}
    return len(c.execute(sql.select_pending_for_key(), params).all()) >= rules.max_batch


def _event(row: Any) -> Event:
    return Event(
        id=row.id,
        payload=decode_payload(row.payload),
        priority=Priority(row.priority),
        content_hash=row.content_hash,
        batch_key=row.batch_key,
        attempts=row.attempts,
        received_at=row.received_at,
    )


def _fence(c: Connection, token: str, ids: list[int]) -> None:
    held = c.execute(sql.count_leased(), {"b_ids": ids, "b_token": token}).scalar_one()
    if held != len(set(ids)):
        raise LeaseLostError(
            f"lease lost: {len(set(ids)) - held} of {len(set(ids))} events are no longer held under "
            "this claim (the lease expired and another consumer claimed them, or they were finished)"
        )


def _ack_tx(c: Connection, token: str, ids: list[int], now: float) -> None:
    _fence(c, token, ids)
    c.execute(sql.ack_events(), {"b_ids": ids, "b_token": token, "b_now": now})


def _nack_tx(
    c: Connection, token: str, retry_at: dict[int, float], dead: list[int], error: str, now: float
) -> None:
    _fence(c, token, [*retry_at, *dead])
    if retry_at:
        params = [
            {"b_id": i, "b_token": token, "b_available_at": at, "b_error": error}
            for i, at in retry_at.items()
        ]
        c.execute(sql.nack_event(), params)
    if dead:
        c.execute(
            sql.bury_event(),
            [{"b_id": i, "b_token": token, "b_error": error, "b_now": now} for i in dead],
        )


def _fenced_update(
    c: Connection, statement: Any, token: str, ids: list[int], extra: dict[str, Any]
) -> None:
    _fence(c, token, ids)
    c.execute(statement, {"b_ids": ids, "b_token": token, **extra})


def _retrieve(task: asyncio.Future[Any]) -> None:
    # The caller may have been cancelled; its error was then reported to nobody. Mark it
    # retrieved so asyncio does not warn; the caller that is still waiting gets it as usual.
    if not task.cancelled():
        task.exception()


# --- opening --------------------------------------------------------------------------------


def _ensure_schema(path: str, busy_timeout_ms: int, migrate: bool | str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise StorageError(f"cannot open database {path}: folder {directory} does not exist")
    engine = make_migration_engine(path, busy_timeout_ms=busy_timeout_ms)
    try:
        current = migrations.current_revision(engine)
        fresh = current is None and not migrations.has_tables(engine)
    except sa_exc.DBAPIError as exc:
        raise _storage_error(path, exc) from exc
    finally:
        engine.dispose()
    head = migrations.head_revision()
    if current == head:
        return
    if migrate is True or (migrate == "auto" and fresh):
        migrations.upgrade(path, busy_timeout_ms=busy_timeout_ms)
        return
    if current is None:
        raise SchemaError(
            f"{path} holds no eventqueue schema: run `eventqueue migrate --db {path}` "
            "(or open it with migrate=True)"
        )
    raise SchemaError(
        f"{path} has schema revision {current}, this eventqueue needs {head}: run "
        f"`eventqueue migrate --db {path}` (or open it with migrate=True)"
    )


def _file_identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino)


def _storage_error(path: str, exc: sa_exc.DBAPIError) -> StorageError:
    orig = exc.orig
    message = str(orig)
    if is_locked_error(exc):
        hint = "another process holds a write lock; retry, or raise EVENT_BUSY_TIMEOUT_MS"
    elif "full" in message.lower():
        hint = "the disk is full; free space and retry (nothing of this transaction was written)"
    elif "readonly" in message.lower() or "read-only" in message.lower():
        hint = "the database is read-only; check the file's permissions"
    else:
        hint = "see the cause below"
    return StorageError(f"database {path}: {message} ({hint})")
