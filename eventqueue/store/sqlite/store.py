"""SQLiteStore: one method = one transaction = one domain result. No Row leaves this module.

Statements are SQLAlchemy Core constructs (statements.py), compiled once and executed through
aiosqlite. SQLAlchemy's own async layer is not used at run time: its aiosqlite adapter costs
four thread hops per statement (measured here: ~370 µs per statement against ~100 µs for one
aiosqlite call), and the hot paths need one hop per statement, with lists bound as JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import os
import sqlite3
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import aiosqlite
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.sql import ClauseElement

from eventqueue.core.codec import decode_payload
from eventqueue.core.errors import DatabaseBusyError, LeaseLostError, QueueClosedError, StorageError
from eventqueue.core.models import Batch, Event, Priority, PutStatus
from eventqueue.store.sqlite import queries as sql
from eventqueue.store.sqlite.migrations import ensure_schema
from eventqueue.store.sqlite.pragmas import pragmas

T = TypeVar("T")
_DIALECT = sqlite_dialect.dialect()
# RETURNING (3.35) and UPDATE ... FROM (3.33) are used on the hot paths.
MIN_SQLITE = (3, 35, 0)
# With less free space than this, the WAL is checkpointed and truncated after every write.
# Otherwise it grows to SQLite's auto-checkpoint size (1000 pages, ~4 MiB) before any
# checkpoint, and on a nearly full disk it takes the space that returns before one can run (F14).
LOW_DISK_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Prepared:
    """A Core statement compiled once: SQL text and the order of its named parameters."""

    sql: str
    order: tuple[str, ...]
    defaults: Mapping[str, Any]

    @classmethod
    def of(cls, statement: ClauseElement) -> Prepared:
        compiled = statement.compile(dialect=_DIALECT)
        # The SQLite dialect compiles to qmark style; positiontup names each "?" in order.
        order = getattr(compiled, "positiontup", None) or ()
        return cls(compiled.string, tuple(order), dict(compiled.params))

    def bind(self, **values: Any) -> tuple[Any, ...]:
        """Positional parameters from named values (compiled-in constants as defaults)."""
        return tuple(values[n] if n in values else self.defaults[n] for n in self.order)


class _Q:
    """The hot statements, prepared once per process."""

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


@dataclass(frozen=True, slots=True)
class NewEvent:
    """A validated event ready to insert."""

    payload_json: str
    priority: int
    batch_key: str
    content_hash: str
    received_at: float


@dataclass(frozen=True, slots=True)
class PutCommit:
    """What one put transaction did: (status, id) per row, and pending + claimed after it."""

    outcome: list[tuple[PutStatus, int]]
    scheduled: int


@dataclass(frozen=True, slots=True)
class ClaimRules:
    """What makes a batch ready and how it is leased (from Config, in claim terms)."""

    max_batch: int
    window_s: float
    aging_s: float
    batching: bool
    lease_s: float
    max_attempts: int
    # The longest a lease or a retry back-off can legitimately run; stored times further ahead
    # than that mean the wall clock stepped back, and count as due.
    lease_horizon_s: float = 86_400.0
    retry_horizon_s: float = 604_800.0


@dataclass(frozen=True, slots=True)
class Wakeup:
    """When pending work not ready now may become ready (any of these may be None)."""

    oldest_pending_at: float | None
    next_retry_at: float | None
    next_lease_expiry_at: float | None


Body = Callable[[aiosqlite.Connection], Awaitable[T]]


class SQLiteStore:
    """The durable store on one SQLite file: one connection, one transaction at a time."""

    def __init__(self, path: str, db: aiosqlite.Connection, *, busy_timeout_ms: int) -> None:
        self.path = path
        self._db = db
        self._busy_timeout_s = busy_timeout_ms / 1000.0
        self._lock = asyncio.Lock()
        self._closed = False
        self._identity = _file_identity(path)
        self._wal_identity = _file_identity(path + "-wal")
        self._directory = os.path.dirname(os.path.abspath(path))

    @classmethod
    async def open(
        cls,
        path: str,
        *,
        durability: str,
        busy_timeout_ms: int,
        lock_wait_ms: int = 100,
        migrate: bool | str = "auto",
    ) -> SQLiteStore:
        """Open the file, check (or bring) its schema to head, and hold one connection."""
        if sqlite3.sqlite_version_info < MIN_SQLITE:
            raise StorageError(
                f"SQLite {sqlite3.sqlite_version} is too old; eventqueue needs 3.35 or newer"
            )
        await asyncio.to_thread(ensure_schema, path, busy_timeout_ms, migrate)
        try:
            # isolation_level=None: we emit BEGIN ourselves (F4); PRAGMAs run before any
            # transaction, where they take effect (F5).
            db = await aiosqlite.connect(path, isolation_level=None)
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open database {path}: {exc}") from exc
        try:
            for statement in pragmas(durability, min(busy_timeout_ms, lock_wait_ms)):
                await db.execute(statement)
        except sqlite3.Error as exc:
            await db.close()
            raise _storage_error(path, exc) from exc
        return cls(path, db, busy_timeout_ms=busy_timeout_ms)

    async def close(self) -> None:
        """Checkpoint the WAL and close the connection (idempotent)."""
        if self._closed:
            return
        async with self._lock:
            self._closed = True
            try:
                await self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error:
                pass  # an optimisation: a reader in another process may hold the WAL
            finally:
                await self._db.close()

    async def pragma(self, name: str) -> Any:
        """The value of one PRAGMA on the store's own connection (for checks and tests)."""
        return await self.read(lambda db: _scalar(db, f"PRAGMA {name}", ()))

    # --- transactions ---------------------------------------------------------------------

    async def write(self, body: Body[T], *, wait: bool = True) -> T:
        """Run `body` in one BEGIN IMMEDIATE transaction (F3), shielded from cancellation.

        `wait`: when another connection holds the write lock, keep trying for up to
        busy_timeout_ms; otherwise raise DatabaseBusyError after the connection's short wait.
        """
        return await self._shielded(body, "BEGIN IMMEDIATE", wait)

    async def read(self, body: Body[T]) -> T:
        """Run `body` in one short read transaction."""
        return await self._shielded(body, "BEGIN DEFERRED", True)

    async def _shielded(self, body: Body[T], begin: str, wait: bool) -> T:
        # Cancelling an awaited aiosqlite call does not stop its SQL (F2). A cancelled caller
        # therefore leaves the transaction to finish on its own (commit or roll back): the
        # connection is never left inside a transaction.
        task = asyncio.ensure_future(self._run(body, begin, wait))
        task.add_done_callback(_retrieve)
        return await asyncio.shield(task)

    async def _run(self, body: Body[T], begin: str, wait: bool) -> T:
        # The connection's own busy timeout is short (EVENT_SPILL_AFTER_MS) so that a put can
        # spill instead of waiting. Other transactions retry BEGIN until busy_timeout_ms has
        # passed, sleeping *outside* this process's lock so that its puts go on (and spill)
        # meanwhile instead of queueing behind a claim that waits for another process.
        deadline = time.monotonic() + self._busy_timeout_s
        pause = 0.005
        while True:
            async with self._lock:
                began, result = await self._attempt(body, begin, wait, deadline)
                if began:
                    return result  # type: ignore[return-value]
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.1)

    async def _attempt(
        self, body: Body[T], begin: str, wait: bool, deadline: float
    ) -> tuple[bool, T | None]:
        """One try at the transaction: (False, None) when the write lock is held elsewhere."""
        if self._closed:
            raise QueueClosedError("the queue is closed")
        writing = begin == "BEGIN IMMEDIATE"
        if writing:
            self._check_file()
        try:
            # Inside the try: if BEGIN took effect but its await still failed, the rollback
            # below ends the transaction instead of wedging the connection for good.
            if not await self._begin(begin, retry=wait and time.monotonic() < deadline):
                return False, None
            result = await body(self._db)
            await self._db.execute("COMMIT")
        except BaseException as exc:
            await self._rollback()
            if isinstance(exc, sqlite3.Error):
                raise _storage_error(self.path, exc) from exc
            raise
        if writing:
            # Deleted while this transaction ran: it committed into an unlinked file (F13),
            # so its work must not be reported as stored.
            self._check_file()
            await self._relieve_disk()
        return True, result

    async def _begin(self, begin: str, *, retry: bool) -> bool:
        """BEGIN; False when another connection holds the write lock and `retry` allows waiting."""
        try:
            await self._db.execute(begin)
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc):
                raise _storage_error(self.path, exc) from exc
            if retry:
                return False
            raise DatabaseBusyError(
                f"database {self.path} is locked by another connection "
                f"({exc}); retry, or raise EVENT_BUSY_TIMEOUT_MS"
            ) from exc
        return True

    async def _rollback(self) -> None:
        # SQLite may already have rolled back by itself (disk full, F14): no blind ROLLBACK.
        if self._db.in_transaction:
            # The original error is what the caller needs to see, not a failed ROLLBACK.
            with contextlib.suppress(sqlite3.Error):
                await self._db.execute("ROLLBACK")

    async def _relieve_disk(self) -> None:
        # Outside any transaction, under the lock: an optimisation, so failures are ignored.
        try:
            st = os.statvfs(self._directory)
        except OSError:
            return
        if st.f_bavail * st.f_frsize < LOW_DISK_BYTES:
            with contextlib.suppress(sqlite3.Error):
                await self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def _check_file(self) -> None:
        # A database file deleted or replaced under an open WAL connection keeps accepting
        # writes into the unlinked inode: fail loudly rather than acknowledge lost events (F13).
        # Likewise the WAL: SQLite never deletes it while a connection is open, so once seen, a
        # missing or different -wal was deleted under us (commits would go where no other
        # connection looks, and a crash would lose them).
        wal = _file_identity(self.path + "-wal")
        if self._wal_identity is None:
            self._wal_identity = wal
        if _file_identity(self.path) != self._identity or wal != self._wal_identity:
            raise StorageError(
                f"database file {self.path} (or its -wal) was deleted or replaced while open; "
                "events written now would be lost. Restore the file or restart the process."
            )

    # --- put ------------------------------------------------------------------------------

    async def put(
        self,
        rows: Sequence[NewEvent],
        *,
        now: float,
        dedup_ttl_s: float | None,
        source_positions: Mapping[str, str | None] | None = None,
        spill_positions: tuple[str, Mapping[int, tuple[int, int]]] | None = None,
        wait: bool = True,
    ) -> PutCommit:
        """Insert events in one transaction; duplicates within the TTL are counted, not inserted.

        `source_positions` (stream name -> position reached) and `spill_positions` (spill log, {priority:
        (segment, offset) promoted up to}) commit with the events, so a restart resumes exactly
        after what is stored. `wait=False`: raise DatabaseBusyError at once when another
        connection holds the write lock (the caller spills instead of waiting).
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
            scheduled = await _scalar(db, _Q.scheduled.sql, _Q.scheduled.bind())
            return PutCommit(outcome, int(scheduled))

        return await self.write(body, wait=wait)

    async def spill_positions(self, spill_log: str) -> dict[int, tuple[int, int]]:
        """Per priority, how far `spill_log` was promoted (committed with the promoted rows)."""

        async def body(db: aiosqlite.Connection) -> dict[int, tuple[int, int]]:
            params = _Q.spill_read.bind(b_log=spill_log)
            rows = await db.execute_fetchall(_Q.spill_read.sql, params)
            return {int(p): (int(seg), int(off)) for p, seg, off in rows}

        return await self.read(body)

    async def scheduled_count(self) -> int:
        """Pending + claimed rows (what EVENT_QUEUE_SIZE bounds)."""
        return int(await self.read(lambda db: _scalar(db, _Q.scheduled.sql, _Q.scheduled.bind())))

    async def source_position(self, source: str) -> str | None:
        """The stream position stored with the last committed events of `source`."""
        params = _Q.source.bind(b_source=source)
        position = await self.read(lambda db: _scalar(db, _Q.source.sql, params))
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

        return await self.write(body)

    async def ack(self, token: str, ids: Sequence[int], *, now: float) -> None:
        """Mark leased events done; LeaseLostError (and no change) if the token is stale."""
        await self.write(lambda db: _fenced(db, _Q.ack, token, ids, b_now=now))

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

        await self.write(body)

    async def extend(self, token: str, ids: Sequence[int], *, expires_at: float) -> None:
        """Push the lease expiry out; LeaseLostError if the token is stale."""
        await self.write(lambda db: _fenced(db, _Q.extend, token, ids, b_expires=expires_at))

    async def release(self, token: str, ids: Sequence[int]) -> None:
        """Give leased events back to pending now (shutdown); LeaseLostError if stale."""
        await self.write(lambda db: _fenced(db, _Q.release, token, ids))

    async def next_wakeup(self, now: float) -> Wakeup:
        """Times at which work that is not ready now may become ready."""

        async def body(db: aiosqlite.Connection) -> Wakeup:
            rows = list(await db.execute_fetchall(_Q.wakeup.sql, _Q.wakeup.bind(b_now=now)))
            oldest, retry, expiry = rows[0]
            return Wakeup(oldest, retry, expiry)

        return await self.read(body)

    # --- inspection -----------------------------------------------------------------------

    async def counts(self) -> dict[str, dict[str, int]]:
        """Events by status, then priority name."""

        async def body(db: aiosqlite.Connection) -> dict[str, dict[str, int]]:
            result: dict[str, dict[str, int]] = {}
            for status, priority, count in await db.execute_fetchall(
                _Q.by_status.sql, _Q.by_status.bind()
            ):
                result.setdefault(status, {})[Priority(priority).name] = count
            return result

        return await self.read(body)

    async def summary(self, *, now: float, rules: ClaimRules) -> dict[str, Any]:
        """Counters, oldest pending time and the number of ready batch keys."""

        async def body(db: aiosqlite.Connection) -> dict[str, Any]:
            counters = {
                n: v for n, v in await db.execute_fetchall(_Q.counters.sql, _Q.counters.bind())
            }
            oldest = await _scalar(db, _Q.oldest.sql, _Q.oldest.bind())
            ready = await _scalar(
                db, _Q.ready_keys.sql, _Q.ready_keys.bind(**ready_params(now, rules))
            )
            return {"counters": counters, "oldest_pending_at": oldest, "ready_batches": ready}

        return await self.read(body)

    async def purge_done(self, *, cutoff: float, limit: int) -> int:
        """Delete up to `limit` done events finished before `cutoff` (one small transaction)."""
        params = _Q.purge.bind(b_cutoff=cutoff, b_chunk=limit)

        async def body(db: aiosqlite.Connection) -> int:
            cursor = await db.execute(_Q.purge.sql, params)
            return int(cursor.rowcount)

        return await self.write(body)

    async def checkpoint(self) -> None:
        """Copy the WAL into the database file so it stays small (F7); skipped when busy."""
        async with self._lock:
            if not self._closed:
                with contextlib.suppress(sqlite3.Error):
                    await self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")

    async def save_settings(self, values: Mapping[str, str]) -> None:
        """Record the opener's settings for the debugging views."""
        params = [_Q.setting.bind(b_name=k, b_value=v) for k, v in values.items()]
        await self.write(lambda db: db.executemany(_Q.setting.sql, params))


# --- transaction bodies ---------------------------------------------------------------------


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
        b_limit=rules.max_batch if rules.batching else 1,
        b_owner=consumer,
        b_token=token,
        b_expires=now + rules.lease_s,
        b_batch_id=batch_id,
    )
    by_key: dict[str, list[Event]] = {}
    for row in await db.execute_fetchall(_Q.claim.sql, params):
        event = _event(row)
        by_key.setdefault(event.batch_key, []).append(event)
    claimed = [
        Batch(
            id=f"{batch_id}:{key}",
            key=key,
            token=f"{token}:{key}",
            consumer=consumer,
            priority=max(e.priority for e in found),
            events=tuple(sorted(found, key=lambda e: (-e.priority, e.received_at, e.id))),
            lease_expires_at=now + rules.lease_s,
        )
        for key, found in by_key.items()
    ]
    return sorted(claimed, key=lambda b: (-b.priority, b.events[0].received_at))


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


async def _scalar(db: aiosqlite.Connection, statement: str, params: tuple[Any, ...]) -> Any:
    rows = list(await db.execute_fetchall(statement, params))
    return rows[0][0] if rows else None


def _retrieve(task: asyncio.Future[Any]) -> None:
    # The caller may have been cancelled and will never read this task's error: mark it
    # retrieved so asyncio does not warn. A caller still waiting gets it as usual.
    if not task.cancelled():
        task.exception()


def _file_identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino)


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    return getattr(exc, "sqlite_errorcode", None) in (
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
    ) or ("locked" in str(exc).lower())


def _storage_error(path: str, exc: sqlite3.Error) -> StorageError:
    message = str(exc)
    lowered = message.lower()
    if "locked" in lowered or "busy" in lowered:
        hint = "another process holds a write lock; retry, or raise EVENT_BUSY_TIMEOUT_MS"
    elif "full" in lowered:
        hint = "the disk is full; free space and retry (nothing of this transaction was written)"
    elif "readonly" in lowered or "read-only" in lowered:
        hint = "the database is read-only; check the file's permissions"
    elif "disk i/o error" in lowered:
        hint = (
            "the file could not be read or written: it may have been made read-only or "
            "removed, or the disk is failing; check it, then retry"
        )
    else:
        hint = "see the cause below"
    return StorageError(f"database {path}: {message} ({hint})")
