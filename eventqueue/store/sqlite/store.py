"""SQLiteStore: the Store interface on one SQLite file. One method = one transaction = one
domain result; no Row or connection leaves this module."""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import os
import shlex
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import aiosqlite

from eventqueue.core.codec import decode_payload
from eventqueue.core.config import Config
from eventqueue.core.errors import LeaseLostError, SchemaError, StorageError
from eventqueue.core.models import Batch, Event, Priority, PutStatus
from eventqueue.core.records import (
    EventBrief,
    EventInfo,
    NewEvent,
    PeekBatch,
    PutCommit,
    Refusal,
    RequeueResult,
    StoreStats,
    Wakeup,
    assemble_batches,
    decode_text,
    event_name,
    iso,
    priority_name,
    schema_problem,
)
from eventqueue.core.rules import ClaimRules
from eventqueue.store.base import Capabilities, SpillPositions
from eventqueue.store.sqlite import queries as sql
from eventqueue.store.sqlite.connection import Connection, Prepared, scalar
from eventqueue.store.sqlite.migrations import ensure_schema, schema_status

_TIME_COLUMNS = ("received_at", "available_at", "lease_expires_at", "finished_at")
_CAPABILITIES = Capabilities(single_connection=True, cross_process_notify=False)


class _Q:
    """Every statement, prepared once per process."""

    put_dedup = Prepared.of(sql.put_rows(dedup=True))
    put_plain = Prepared.of(sql.put_rows(dedup=False))
    release_dedup = Prepared.of(sql.release_expired_dedup_keys())
    positions = Prepared.of(sql.save_source_positions())
    counter = Prepared.of(sql.add_to_counter())
    expire = Prepared.of(sql.expire_all_leases())
    claim = Prepared.of(sql.claim_ready())
    ack_pairs = Prepared.of(sql.ack_pairs())
    ack = Prepared.of(sql.ack_ids())
    extend = Prepared.of(sql.extend_ids())
    release = Prepared.of(sql.release_ids())
    nack = Prepared.of(sql.nack_items())
    scheduled = Prepared.of(sql.count_scheduled())
    wakeup = Prepared.of(sql.next_wakeup())
    by_status = Prepared.of(sql.count_by_status_priority())
    oldest = Prepared.of(sql.oldest_pending())
    ready_keys = Prepared.of(sql.count_ready_keys())
    counters = Prepared.of(sql.select_counters())
    source = Prepared.of(sql.select_source_position())
    setting = Prepared.of(sql.save_setting())
    spill_save = Prepared.of(sql.save_spill_position())
    purge = Prepared.of(sql.purge_done())
    spill_read = Prepared.of(sql.select_spill_positions())
    peek = Prepared.of(sql.peek_ready())
    peek_keys = Prepared.of(sql.select_ready_keys())
    event = Prepared.of(sql.select_event())
    dead = Prepared.of(sql.select_dead())
    statuses = Prepared.of(sql.select_statuses())
    requeue_ids = Prepared.of(sql.requeue_events(all_dead=False))
    requeue_all = Prepared.of(sql.requeue_events(all_dead=True))
    settings = Prepared.of(sql.select_settings())


class SQLiteStore:
    """The durable store on one SQLite file: one connection, one transaction at a time."""

    def __init__(self, connection: Connection) -> None:
        self._conn = connection

    @classmethod
    async def open(
        cls, config: Config, *, migrate: bool | str = "auto", readonly: bool = False
    ) -> SQLiteStore:
        """Open the file, check (or bring) its schema to head, and hold one connection.

        `readonly`: open an existing file read-only (mode=ro, query_only); never create it,
        never migrate, and refuse a schema that is not at head.
        """
        path = config.db_path
        if readonly:
            require_file(path)
            # mode=ro: never created, never migrated, and no PRAGMA that would write.
            status = await asyncio.to_thread(
                schema_status, path, busy_timeout_ms=config.busy_timeout_ms
            )
            if status["state"] != "current":
                raise SchemaError(schema_problem(status))
        else:
            await asyncio.to_thread(ensure_schema, path, config.busy_timeout_ms, migrate)
        connection = await Connection.open(
            path,
            durability=config.durability,
            busy_timeout_ms=config.busy_timeout_ms,
            lock_wait_ms=config.spill_after_ms,
            readonly=readonly,
        )
        return cls(connection)

    @property
    def name(self) -> str:
        """The database file."""
        return self._conn.path

    @property
    def capabilities(self) -> Capabilities:
        """One connection per process; other processes' commits are found by polling."""
        return _CAPABILITIES

    async def close(self) -> None:
        """Checkpoint the WAL and close the connection (idempotent)."""
        await self._conn.close()

    async def watch(self, on_change: Callable[[], None]) -> None:
        """No cross-process notifications in SQLite: consumers poll (EVENT_POLL_MS)."""

    async def pragma(self, name: str) -> Any:
        """The value of one PRAGMA on the store's own connection (for checks and tests)."""
        return await self._conn.read(lambda db: scalar(db, f"PRAGMA {name}", ()))

    async def maintain(self) -> None:
        """Checkpoint the WAL so the file stays small (F7); skipped when busy."""
        await self._conn.checkpoint()

    # --- put ------------------------------------------------------------------------------

    async def put(
        self,
        rows: Sequence[NewEvent],
        *,
        now: float,
        dedup_ttl_s: float | None,
        source_positions: Mapping[str, str | None] | None = None,
        spill_positions: tuple[str, SpillPositions] | None = None,
        fail_fast: bool = False,
    ) -> PutCommit:
        """Insert events in one transaction; duplicates within the TTL are counted, not inserted.

        `source_positions` (stream name -> position reached) and `spill_positions` (spill log,
        {priority: (segment, offset) promoted up to}) commit with the events, so a restart
        resumes exactly after what is stored. `fail_fast`: raise StoreBusyError at once when
        another connection holds the write lock (the caller spills instead of waiting).
        """

        async def body(db: aiosqlite.Connection) -> PutCommit:
            outcome = await _insert(db, rows, now, dedup_ttl_s) if rows else []
            if source_positions:
                pairs = json.dumps([[s, p] for s, p in source_positions.items()])
                await db.execute(_Q.positions.sql, _Q.positions.bind(b_positions=pairs, b_now=now))
            if spill_positions:
                spill_log, reached = spill_positions
                params = [
                    _Q.spill_save.bind(b_log=spill_log, b_priority=p, b_segment=seg, b_offset=off)
                    for p, (seg, off) in reached.items()
                ]
                await db.executemany(_Q.spill_save.sql, params)
            scheduled = await scalar(db, _Q.scheduled.sql, _Q.scheduled.bind())
            return PutCommit(outcome, int(scheduled))

        return await self._conn.write(body, fail_fast=fail_fast)

    async def spill_positions(self, spill_log: str) -> dict[int, tuple[int, int]]:
        """Per priority, how far `spill_log` was promoted (committed with the promoted rows)."""

        async def body(db: aiosqlite.Connection) -> dict[int, tuple[int, int]]:
            params = _Q.spill_read.bind(b_log=spill_log)
            rows = await db.execute_fetchall(_Q.spill_read.sql, params)
            return {int(p): (int(seg), int(off)) for p, seg, off in rows}

        return await self._conn.read(body)

    async def scheduled_count(self) -> int:
        """Pending + claimed rows (what EVENT_QUEUE_SIZE bounds)."""
        statement = _Q.scheduled
        return int(await self._conn.read(lambda db: scalar(db, statement.sql, statement.bind())))

    async def source_position(self, source: str) -> str | None:
        """The stream position stored with the last committed events of `source`."""
        params = _Q.source.bind(b_source=source)
        position = await self._conn.read(lambda db: scalar(db, _Q.source.sql, params))
        return None if position is None else str(position)

    # --- claim, ack, nack, extend, release ------------------------------------------------

    async def claim(
        self,
        *,
        now: float,
        consumer: str,
        token: str,
        batch_id: str,
        rules: ClaimRules,
        batches: int = 1,
        expire: bool = True,
        acks: Sequence[tuple[str, Sequence[int]]] = (),
    ) -> list[Batch]:
        """Lease up to `batches` ready batches (best first; [] when nothing is ready).

        `acks` ((token, ids) of finished batches) are acked in the same transaction: one
        commit for the lot. If any of them lost its lease, LeaseLostError and nothing changes.
        `expire` first returns expired leases to pending.
        """

        async def body(db: aiosqlite.Connection) -> list[Batch]:
            if acks:
                await _ack_pairs(db, acks, now)
            if expire:
                params = _Q.expire.bind(
                    b_now=now,
                    b_max_attempts=rules.max_attempts,
                    b_lease_horizon=rules.lease_horizon_s,
                )
                await db.execute(_Q.expire.sql, params)
            return await _claim(db, now, consumer, token, batch_id, rules, batches)

        return await self._conn.write(body)

    async def ack(self, token: str, ids: Sequence[int], *, now: float) -> None:
        """Mark leased events done; LeaseLostError (and no change) if the token is stale."""
        await self._conn.write(lambda db: _fenced(db, _Q.ack, token, ids, b_now=now))

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
        if not all(math.isfinite(at) for at in retry_at.values()):
            # json.dumps would write Infinity/NaN, which SQLite rejects as "malformed JSON".
            raise ValueError(f"retry times must be finite, got {sorted(retry_at.values())}")
        items = [[i, at] for i, at in retry_at.items()] + [[i, None] for i in dead]
        params = _Q.nack.bind(b_items=json.dumps(items), b_token=token, b_error=error, b_now=now)

        async def body(db: aiosqlite.Connection) -> None:
            changed = await db.execute_fetchall(_Q.nack.sql, params)
            _check_fence(len(list(changed)), len(items))

        await self._conn.write(body)

    async def extend(self, token: str, ids: Sequence[int], *, expires_at: float) -> None:
        """Push the lease expiry out; LeaseLostError if the token is stale."""
        await self._conn.write(lambda db: _fenced(db, _Q.extend, token, ids, b_expires=expires_at))

    async def release(self, token: str, ids: Sequence[int]) -> None:
        """Give leased events back to pending now (shutdown); LeaseLostError if stale."""
        await self._conn.write(lambda db: _fenced(db, _Q.release, token, ids))

    async def next_wakeup(self, now: float) -> Wakeup:
        """Times at which work that is not ready now may become ready."""

        async def body(db: aiosqlite.Connection) -> Wakeup:
            rows = list(await db.execute_fetchall(_Q.wakeup.sql, _Q.wakeup.bind(b_now=now)))
            oldest, retry, expiry = rows[0]
            return Wakeup(oldest, retry, expiry)

        return await self._conn.read(body)

    # --- inspection and repair ------------------------------------------------------------

    async def stats(self, *, now: float, rules: ClaimRules) -> StoreStats:
        """Counts by status and priority, counters, oldest pending time, ready keys."""

        async def body(db: aiosqlite.Connection) -> StoreStats:
            counts: dict[str, dict[str, int]] = {}
            for status, priority, count in await db.execute_fetchall(
                _Q.by_status.sql, _Q.by_status.bind()
            ):
                counts.setdefault(status, {})[Priority(priority).name] = int(count)
            rows = await db.execute_fetchall(_Q.counters.sql, _Q.counters.bind())
            oldest = await scalar(db, _Q.oldest.sql, _Q.oldest.bind())
            ready_params_ = _Q.ready_keys.bind(**ready_params(now, rules))
            ready = await scalar(db, _Q.ready_keys.sql, ready_params_)
            return StoreStats(counts, {n: int(v) for n, v in rows}, oldest, int(ready or 0))

        return await self._conn.read(body)

    async def peek(self, *, now: float, rules: ClaimRules, limit: int) -> list[PeekBatch]:
        """The batches the next claim of `limit` batches would lease (its own statement)."""
        params = {**ready_params(now, rules), "b_batches": limit, "b_limit": rules.batch_limit}

        async def body(db: aiosqlite.Connection) -> list[PeekBatch]:
            keys = await db.execute_fetchall(_Q.peek_keys.sql, _Q.peek_keys.bind(**params))
            rows = await db.execute_fetchall(_Q.peek.sql, _Q.peek.bind(**params))
            return _peek_batches(list(keys), [_event(r) for r in rows], now)

        return await self._conn.read(body)

    async def show(self, event_id: int) -> EventInfo | None:
        """One event with every column, or None when there is no such id."""

        async def body(db: aiosqlite.Connection) -> EventInfo | None:
            cursor = await db.execute(_Q.event.sql, _Q.event.bind(b_id=event_id))
            row = await cursor.fetchone()
            names = [d[0] for d in cursor.description]
            return None if row is None else dict(zip(names, row, strict=True))

        info = await self._conn.read(body)
        if info is None:
            return None
        info.update({k: iso(info[k]) for k in _TIME_COLUMNS})
        priority, payload = priority_name(info["priority"]), decode_text(info["payload"])
        return {**info, "priority": priority, "payload": payload}

    async def dead(self, *, limit: int) -> list[EventBrief]:
        """Dead letters, most recent first, with their last error."""

        async def body(db: aiosqlite.Connection) -> list[dict[str, Any]]:
            cursor = await db.execute(_Q.dead.sql, _Q.dead.bind(b_limit=limit))
            names = [d[0] for d in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in await cursor.fetchall()]

        return [
            {
                **_brief(r["id"], r["payload"], r["priority"], r["attempts"]),
                "batch_key": r["batch_key"],
                "last_error": r["last_error"],
                "died_at": iso(r["finished_at"]),
            }
            for r in await self._conn.read(body)
        ]

    async def requeue(self, ids: Sequence[int] | None, *, now: float) -> RequeueResult:
        """Dead events (these ids, or all) back to pending; nothing changes if one is not dead."""

        async def body(db: aiosqlite.Connection) -> RequeueResult:
            if ids is None:
                cursor = await db.execute(_Q.requeue_all.sql, _Q.requeue_all.bind(b_now=now))
                return RequeueResult(requeued=cursor.rowcount, refused=[])
            wanted = json.dumps(sorted(set(ids)))
            found = await db.execute_fetchall(_Q.statuses.sql, _Q.statuses.bind(b_ids=wanted))
            refused = _refusals(ids, {int(i): str(s) for i, s in found})
            if refused:
                return RequeueResult(requeued=0, refused=refused)
            params = _Q.requeue_ids.bind(b_ids=wanted, b_now=now)
            cursor = await db.execute(_Q.requeue_ids.sql, params)
            return RequeueResult(requeued=cursor.rowcount, refused=[])

        return await self._conn.write(body)

    async def purge_done(self, *, cutoff: float, limit: int) -> int:
        """Delete up to `limit` done events finished before `cutoff` (one small transaction)."""
        params = _Q.purge.bind(b_cutoff=cutoff, b_chunk=limit)

        async def body(db: aiosqlite.Connection) -> int:
            cursor = await db.execute(_Q.purge.sql, params)
            return int(cursor.rowcount)

        return await self._conn.write(body)

    async def settings(self) -> dict[str, str]:
        """The settings the last opener recorded."""

        async def body(db: aiosqlite.Connection) -> dict[str, str]:
            rows = await db.execute_fetchall(_Q.settings.sql, _Q.settings.bind())
            return {str(name): str(value) for name, value in rows}

        return await self._conn.read(body)

    async def save_settings(self, values: Mapping[str, str]) -> None:
        """Record the opener's settings for the debugging views."""
        params = [_Q.setting.bind(b_name=k, b_value=v) for k, v in values.items()]
        await self._conn.write(lambda db: db.executemany(_Q.setting.sql, params))


def require_file(path: str) -> None:
    if os.path.isdir(path):
        raise StorageError(f"{path} is a folder: give the database file with --db PATH")
    if not os.path.isfile(path):
        raise StorageError(
            f"no database at {path}: run `eventqueue migrate --db {shlex.quote(path)}` "
            "to create one"
        )


def _brief(event_id: int, payload: str, priority: Any, attempts: int) -> EventBrief:
    return {
        "id": event_id,
        "event_name": event_name(payload),
        "priority": priority_name(priority),
        "attempts": attempts,
    }


def _peek_batches(keys: list[Any], found: list[Event], now: float) -> list[PeekBatch]:
    by_key: dict[str, list[Event]] = {}
    for event in found:
        by_key.setdefault(event.batch_key, []).append(event)
    batches = []
    for key, effective, oldest, top in keys:
        events = sorted(by_key.get(key, []), key=lambda e: (-e.priority, e.received_at, e.id))
        briefs: list[EventBrief] = [
            {
                "id": e.id,
                "event_name": e.name,
                "priority": e.priority.name,
                "attempts": e.attempts,
                "received_at": iso(e.received_at),
            }
            for e in events
        ]
        batches.append(
            PeekBatch(
                key=key,
                priority=priority_name(effective),
                top_priority=priority_name(top),
                oldest_age_s=round(max(0.0, now - oldest), 3),
                events=briefs,
            )
        )
    return batches


def _refusals(ids: Sequence[int], statuses: Mapping[int, str]) -> list[Refusal]:
    return [
        Refusal(id=i, status=statuses.get(i, "missing"))
        for i in sorted(set(ids))
        if statuses.get(i) != "dead"
    ]


async def _insert(
    db: aiosqlite.Connection, rows: Sequence[NewEvent], now: float, dedup_ttl_s: float | None
) -> list[tuple[PutStatus, int]]:
    payload = json.dumps([_json_row(r) for r in rows], ensure_ascii=False)
    if dedup_ttl_s is None:
        returned = await db.execute_fetchall(_Q.put_plain.sql, _Q.put_plain.bind(b_rows=payload))
        # One writer, AUTOINCREMENT: the ids of one INSERT ascend in the order of its rows.
        return [(PutStatus.ACCEPTED, row_id) for row_id in sorted(r[0] for r in returned)]
    hashes = json.dumps(sorted({r.content_hash for r in rows}))
    await db.execute(
        _Q.release_dedup.sql,
        _Q.release_dedup.bind(b_hashes=hashes, b_cutoff=now - dedup_ttl_s, b_now=now),
    )
    returned = await db.execute_fetchall(_Q.put_dedup.sql, _Q.put_dedup.bind(b_rows=payload))
    outcome = _dedup_outcome(rows, list(returned))
    duplicates = sum(1 for status, _ in outcome if status is PutStatus.DUPLICATE)
    if duplicates:
        await db.execute(
            _Q.counter.sql, _Q.counter.bind(b_name="duplicates_suppressed", b_n=duplicates)
        )
    return outcome


def _json_row(row: NewEvent) -> list[Any]:
    """One row as statements.put_rows reads it."""
    key, key_escape = _nul_safe(row.batch_key)
    return [row.payload_json, row.priority, key, row.content_hash, row.received_at, key_escape]


def _nul_safe(text: str) -> tuple[str, str | None]:
    """(text with NUL replaced, the replacement) for statements.put_rows; (text, None) if no NUL."""
    if "\x00" not in text:
        return text, None
    private_use = itertools.chain(range(0xE000, 0xF900), range(0xF0000, 0xFFFFE))
    escape = next(c for c in map(chr, private_use) if c not in text)
    return text.replace("\x00", escape), escape


def _dedup_outcome(rows: Sequence[NewEvent], returned: list[Any]) -> list[tuple[PutStatus, int]]:
    # Every row of the INSERT returns (id, hash, duplicates): inserted rows with duplicates 0,
    # rows absorbed by a live original with that original's id. Per hash, the first row of the
    # group is the accepted one if any row of that hash was inserted.
    ids: dict[str, int] = {}
    inserted: set[str] = set()
    for row_id, content_hash, dups in returned:
        ids[content_hash] = row_id
        if dups == 0:
            inserted.add(content_hash)
    outcome: list[tuple[PutStatus, int]] = []
    for row in rows:
        if row.content_hash in inserted:
            inserted.discard(row.content_hash)
            outcome.append((PutStatus.ACCEPTED, ids[row.content_hash]))
        else:
            outcome.append((PutStatus.DUPLICATE, ids[row.content_hash]))
    return outcome


def ready_params(now: float, rules: ClaimRules) -> dict[str, Any]:
    """The parameters of every statement that decides readiness (claims, ready counts, peek)."""
    return {
        "b_now": now,
        "b_max_batch": rules.max_batch,
        "b_window_start": now - rules.window_s,
        "b_no_batching": 0 if rules.batching else 1,
        "b_aging_s": rules.aging_s,
        "b_retry_horizon": rules.retry_horizon_s,
    }


async def _claim(
    db: aiosqlite.Connection,
    now: float,
    consumer: str,
    token: str,
    batch_id: str,
    rules: ClaimRules,
    batches: int,
) -> list[Batch]:
    params = _Q.claim.bind(
        **ready_params(now, rules),
        b_batches=batches,
        b_limit=rules.batch_limit,
        b_owner=consumer,
        b_token=token,
        b_expires=now + rules.lease_s,
        b_batch_id=batch_id,
    )
    rows = await db.execute_fetchall(_Q.claim.sql, params)
    return assemble_batches(
        map(_event, rows),
        batch_id=batch_id,
        token=token,
        consumer=consumer,
        expires_at=now + rules.lease_s,
    )


async def _ack_pairs(
    db: aiosqlite.Connection, acks: Sequence[tuple[str, Sequence[int]]], now: float
) -> None:
    pairs = [[event_id, token] for token, ids in acks for event_id in sorted(set(ids))]
    params = _Q.ack_pairs.bind(b_pairs=json.dumps(pairs), b_now=now)
    changed = await db.execute_fetchall(_Q.ack_pairs.sql, params)
    _check_fence(len(list(changed)), len(pairs))


def _event(row: Any) -> Event:
    row_id, payload, priority, content_hash, batch_key, attempts, received_at = row
    return Event(
        id=row_id,
        payload=decode_payload(payload),
        priority=Priority(priority),
        content_hash=content_hash,
        batch_key=batch_key,
        attempts=attempts,
        received_at=received_at,
    )


async def _fenced(
    db: aiosqlite.Connection, statement: Prepared, token: str, ids: Sequence[int], **values: Any
) -> None:
    wanted = sorted(set(ids))
    params = statement.bind(b_ids=json.dumps(wanted), b_token=token, **values)
    changed = await db.execute_fetchall(statement.sql, params)
    _check_fence(len(list(changed)), len(wanted))


def _check_fence(changed: int, wanted: int) -> None:
    if changed != wanted:
        # Raising rolls the whole transaction back: all of the batch changes, or none.
        raise LeaseLostError(
            f"lease lost: {wanted - changed} of {wanted} events are no longer held under this "
            "claim (its lease expired and another consumer claimed them, or they were finished)"
        )
