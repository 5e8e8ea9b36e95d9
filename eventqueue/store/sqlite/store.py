"""SQLiteStore: the Store interface on one SQLite file. One method = one transaction = one
domain result; no Row or connection leaves this module."""

from __future__ import annotations

import asyncio
import json
import math
import os
import shlex
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from eventqueue.core.coalesce import Debounce
from eventqueue.core.config import Config
from eventqueue.core.errors import SchemaError, StorageError
from eventqueue.core.limits import KeyLimits
from eventqueue.core.models import Batch, Priority
from eventqueue.core.owners import Owner
from eventqueue.core.records import (
    EventBrief,
    EventInfo,
    Lease,
    LimitHold,
    NewEvent,
    PeekBatch,
    PutCommit,
    RequeueResult,
    SplitPoint,
    StoreStats,
    Wakeup,
    brief,
    decode_text,
    iso,
    peek_batches,
    priority_name,
    refusals,
    schema_problem,
)
from eventqueue.core.rules import ClaimRules
from eventqueue.store.base import Capabilities, SpillPositions
from eventqueue.store.sqlite import limiting
from eventqueue.store.sqlite.bodies import (
    Q,
    ack_pairs,
    check_fence,
    claim_batches,
    fenced,
    held_lists,
    insert_rows,
    lease_critical,
    ready_params,
    stop_cuts,
    to_event,
    to_owner,
)
from eventqueue.store.sqlite.coalescing import coalescing, prune, put_coalescing
from eventqueue.store.sqlite.connection import Connection, Tx
from eventqueue.store.sqlite.migrations import ensure_schema, schema_status
from eventqueue.store.sqlite.rounds import Rank

_TIME_COLUMNS = ("received_at", "available_at", "lease_expires_at", "finished_at", "dedup_at")
_SETTLE = Rank.SETTLE
_CAPABILITIES = Capabilities(single_connection=True, cross_process_notify=False)


class SQLiteStore:
    """The durable store on one SQLite file: one connection, one transaction at a time."""

    def __init__(self, connection: Connection) -> None:
        self._conn = connection
        self._holder: str | None = None  # the owner this store's leases name (save_owner)

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
        return await self._conn.read(lambda db: db.scalar(f"PRAGMA {name}", ()))

    def round_profile(self) -> dict[str, float]:
        """The round engine's per-round figures: rounds, and p50/p99 of requests, sqlite3
        steps, COMMIT and round time per round (the last rounds.PROFILE_ROUNDS rounds)."""
        return self._conn.engine.profile.summary()

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
        lease: Lease | None = None,
        count_waiting: bool = True,
        split: Sequence[SplitPoint] | None = None,
        sliding: bool = False,
        debounce: Debounce | None = None,
    ) -> PutCommit:
        """Insert events in one transaction; duplicates within the TTL are counted, not inserted.

        `source_positions` (stream name -> position reached) and `spill_positions` (spill log,
        {priority: (segment, offset) promoted up to}) commit with the events, so a restart
        resumes exactly after what is stored. `fail_fast`: raise StoreBusyError at once when
        another connection holds the write lock (the caller spills instead of waiting).
        `lease`: lease the CRITICAL events accepted here in the same transaction (hand-off).
        """

        # Between whole puts about 64 rows apart, a split group commit ends early when a
        # CRITICAL put waits for the connection, which then waits for ~64 rows, not 1000.
        stop = self._conn.critical_waiting if split else None
        points = dict(split or ())  # rows -> positions safe to store with them
        cuts = stop_cuts(sorted(points), len(rows)) if split else []

        def body(db: Tx) -> PutCommit:
            if coalescing(rows):
                # Never cut short: it stores every row (the contract allows it).
                outcome = put_coalescing(db, rows, dedup_ttl_s, sliding=sliding, debounce=debounce)
            else:
                outcome = insert_rows(db, rows, dedup_ttl_s, stop, cuts, sliding) if rows else []
            positions = source_positions
            if len(outcome) < len(rows):  # ended early: the caller puts the rest
                positions = points[len(outcome)]
            if positions:
                pairs = json.dumps([[s, p] for s, p in positions.items()])
                db.run(Q.positions.sql, Q.positions.bind(b_positions=pairs, b_now=now))
            if len(outcome) < len(rows):
                stored = rows[: len(outcome)]
                claimed = lease_critical(db, stored, outcome, lease, self._holder) if lease else []
                return PutCommit(outcome, None, claimed)
            if spill_positions:
                spill_log, reached = spill_positions
                params = [
                    Q.spill_save.bind(b_log=spill_log, b_priority=p, b_segment=seg, b_offset=off)
                    for p, (seg, off) in reached.items()
                ]
                db.many(Q.spill_save.sql, params)
            claimed = (
                lease_critical(db, rows, outcome, lease, self._holder) if lease and outcome else []
            )
            if not count_waiting:
                return PutCommit(outcome, None, claimed)
            waiting = db.scalar(Q.waiting.sql, Q.waiting.bind())
            return PutCommit(outcome, int(waiting), claimed)

        # A put carrying CRITICAL events goes first in its round; a promotion chunk after claims.
        if any(row.priority == Priority.CRITICAL for row in rows):
            rank = Rank.CRITICAL
        else:
            rank = Rank.PROMOTE if spill_positions else Rank.PUT
        return await self._conn.write(body, fail_fast=fail_fast, rank=rank, rows=len(rows))

    async def spill_positions(self, spill_log: str) -> dict[int, tuple[int, int]]:
        """Per priority, how far `spill_log` was promoted (committed with the promoted rows)."""

        def body(db: Tx) -> dict[int, tuple[int, int]]:
            params = Q.spill_read.bind(b_log=spill_log)
            rows = db.rows(Q.spill_read.sql, params)
            return {int(p): (int(seg), int(off)) for p, seg, off in rows}

        return await self._conn.read(body)

    async def waiting_count(self) -> int:
        """Waiting events: pending, back-off included (what EVENT_QUEUE_SIZE bounds)."""
        statement = Q.waiting
        return int(await self._conn.read(lambda db: db.scalar(statement.sql, statement.bind())))

    async def unfinished_count(self) -> int:
        """Events not done or dead yet: pending and claimed."""
        statement = Q.unfinished
        return int(await self._conn.read(lambda db: db.scalar(statement.sql, statement.bind())))

    async def source_position(self, source: str) -> str | None:
        """The stream position stored with the last committed events of `source`."""
        params = Q.source.bind(b_source=source)
        position = await self._conn.read(lambda db: db.scalar(Q.source.sql, params))
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
        min_priority: int = 0,
    ) -> list[Batch]:
        """Lease up to `batches` ready batches (best first; [] when nothing is ready).

        `acks` ((token, ids) of finished batches) are acked in the same transaction: one
        commit for the lot. If any of them lost its lease, LeaseLostError and nothing changes.
        `expire` first returns expired leases to pending.
        """

        def body(db: Tx) -> list[Batch]:
            if acks:
                ack_pairs(db, acks, now)
            if expire:
                params = Q.expire.bind(
                    b_now=now,
                    b_max_attempts=rules.max_attempts,
                    b_lease_horizon=rules.lease_horizon_s,
                )
                db.run(Q.expire.sql, params)
            return claim_batches(
                db, now, consumer, token, batch_id, rules, batches, min_priority, self._holder
            )

        # A claim for CRITICAL work only goes first in its round, as CRITICAL puts do; acks
        # carried with a claim go with it (one request: its acks and its claim together).
        rank = Rank.CRITICAL if min_priority >= Priority.CRITICAL else Rank.CLAIM
        return await self._conn.write(body, rank=rank)

    async def ack(self, token: str, ids: Sequence[int], *, now: float) -> None:
        """Mark leased events done; LeaseLostError (and no change) if the token is stale."""
        await self._conn.write(lambda db: fenced(db, Q.ack, token, ids, b_now=now), rank=_SETTLE)

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
        params = Q.nack.bind(b_items=json.dumps(items), b_token=token, b_error=error, b_now=now)

        def body(db: Tx) -> None:
            check_fence(db.run(Q.nack.sql, params), len(items))

        await self._conn.write(body, rank=_SETTLE)

    async def extend(self, token: str, ids: Sequence[int], *, expires_at: float) -> None:
        """Push the lease expiry out; LeaseLostError if the token is stale."""
        values = {"b_expires": expires_at}
        await self._conn.write(lambda db: fenced(db, Q.extend, token, ids, **values), rank=_SETTLE)

    async def release(
        self, token: str, ids: Sequence[int], *, now: float, max_attempts: int
    ) -> None:
        """Give leased events back to pending now (shutdown), or dead when their attempts are
        used up; LeaseLostError if stale."""
        values = {"b_now": now, "b_max_attempts": max_attempts}
        await self._conn.write(lambda db: fenced(db, Q.release, token, ids, **values), rank=_SETTLE)

    async def give_back(self, token: str, ids: Sequence[int]) -> None:
        """Leased events no handler received: pending now, their attempt uncounted."""
        await self._conn.write(lambda db: fenced(db, Q.give_back, token, ids), rank=_SETTLE)

    async def next_wakeup(self, now: float) -> Wakeup:
        """Times at which work that is not ready now may become ready."""

        def body(db: Tx) -> Wakeup:
            rows = list(db.rows(Q.wakeup.sql, Q.wakeup.bind(b_now=now)))
            oldest, retry, expiry, oldest_high = rows[0]
            return Wakeup(oldest, retry, expiry, oldest_high)

        return await self._conn.read(body)

    async def limit_hold(self, *, now: float, limits: KeyLimits) -> LimitHold:
        """Whether a key limit holds back pending work now, and when a bucket refills next."""
        return await self._conn.read(lambda db: limiting.limit_hold(db, limits, now))

    # --- lease owners ---------------------------------------------------------------------

    async def save_owner(self, owner: Owner) -> None:
        """Register `owner` or refresh its heartbeat; this store's later leases name it."""
        params = Q.save_owner.bind(
            b_owner=owner.owner,
            b_host=owner.host,
            b_pid=owner.pid,
            b_pid_space=owner.pid_space,
            b_process_start=owner.process_start,
            b_started_at=owner.started_at,
            b_heartbeat_at=owner.heartbeat_at,
            b_heartbeat_s=owner.heartbeat_s,
        )
        await self._conn.write(lambda db: db.run(Q.save_owner.sql, params))
        self._holder = owner.owner

    async def drop_owner(self, owner: str) -> None:
        """Unregister `owner` (its queue is closing); leases it still holds keep their expiry."""
        params = Q.drop_owner.bind(b_owner=owner)
        await self._conn.write(lambda db: db.run(Q.drop_owner.sql, params))

    async def owners(self) -> list[Owner]:
        """Every registered owner, with the claimed events each holds, oldest first."""
        rows = await self._conn.read(lambda db: list(db.rows(Q.owners.sql, Q.owners.bind())))
        return [to_owner(row) for row in rows]

    async def release_owners(
        self,
        dead: Sequence[str],
        silent: Sequence[str],
        *,
        now: float,
        stale_heartbeats: int,
        max_attempts: int,
    ) -> int:
        """Delete the gone owners' rows and release their leases in one transaction."""
        gone = Q.delete_owners.bind(
            b_dead=json.dumps(list(dead)),
            b_silent=json.dumps(list(silent)),
            b_now=now,
            b_stale=stale_heartbeats,
        )

        def body(db: Tx) -> int:
            deleted = [str(row[0]) for row in db.rows(Q.delete_owners.sql, gone)]
            if not deleted:
                return 0
            params = Q.release_owned.bind(
                b_holders=json.dumps(deleted), b_now=now, b_max_attempts=max_attempts
            )
            return len(list(db.rows(Q.release_owned.sql, params)))

        return await self._conn.write(body)

    # --- inspection and repair ------------------------------------------------------------

    async def stats(self, *, now: float, rules: ClaimRules) -> StoreStats:
        """Counts by status and priority, counters, oldest pending time, ready keys."""

        def body(db: Tx) -> StoreStats:
            counts: dict[str, dict[str, int]] = {}
            for status, priority, count in db.rows(Q.by_status.sql, Q.by_status.bind()):
                counts.setdefault(status, {})[Priority(priority).name] = int(count)
            rows = db.rows(Q.counters.sql, Q.counters.bind())
            oldest = db.scalar(Q.oldest.sql, Q.oldest.bind())
            held = limiting.claim_holds(db, rules.limits, now) if rules.limits else None
            ready_params_ = Q.ready_keys.bind(**ready_params(now, rules), **held_lists(held))
            ready = db.scalar(Q.ready_keys.sql, ready_params_)
            uses = limiting.key_uses(db, rules.limits, now)
            return StoreStats(counts, {n: int(v) for n, v in rows}, oldest, int(ready or 0), uses)

        return await self._conn.read(body)

    async def peek(self, *, now: float, rules: ClaimRules, limit: int) -> list[PeekBatch]:
        """The batches the next claim of `limit` batches would lease (its own statement)."""
        params = {**ready_params(now, rules), "b_batches": limit, "b_limit": rules.batch_limit}

        def body(db: Tx) -> list[PeekBatch]:
            keys = db.rows(Q.peek_keys.sql, Q.peek_keys.bind(**params))
            rows = db.rows(Q.peek.sql, Q.peek.bind(**params))
            return peek_batches(list(keys), [to_event(r) for r in rows], now)

        return await self._conn.read(body)

    async def show(self, event_id: int) -> EventInfo | None:
        """One event with every column, or None when there is no such id."""

        def body(db: Tx) -> EventInfo | None:
            found = db.dicts(Q.event.sql, Q.event.bind(b_id=event_id))
            return found[0] if found else None

        info = await self._conn.read(body)
        if info is None:
            return None
        info.update({k: iso(info[k]) for k in _TIME_COLUMNS})
        priority, payload = priority_name(info["priority"]), decode_text(info["payload"])
        return {**info, "priority": priority, "payload": payload}

    async def dead(self, *, limit: int) -> list[EventBrief]:
        """Dead letters, most recent first, with their last error."""

        def body(db: Tx) -> list[dict[str, Any]]:
            return db.dicts(Q.dead.sql, Q.dead.bind(b_limit=limit))

        return [
            {
                **brief(r["id"], r["payload"], r["priority"], r["attempts"]),
                "batch_key": r["batch_key"],
                "last_error": r["last_error"],
                "died_at": iso(r["finished_at"]),
            }
            for r in await self._conn.read(body)
        ]

    async def requeue(self, ids: Sequence[int] | None, *, now: float) -> RequeueResult:
        """Dead events (these ids, or all) back to pending; nothing changes if one is not dead."""

        def body(db: Tx) -> RequeueResult:
            if ids is None:
                requeued = db.run(Q.requeue_all.sql, Q.requeue_all.bind(b_now=now))
                return RequeueResult(requeued=requeued, refused=[])
            wanted = json.dumps(sorted(set(ids)))
            found = db.rows(Q.statuses.sql, Q.statuses.bind(b_ids=wanted))
            refused = refusals(ids, {int(i): str(s) for i, s in found})
            if refused:
                return RequeueResult(requeued=0, refused=refused)
            params = Q.requeue_ids.bind(b_ids=wanted, b_now=now)
            return RequeueResult(requeued=db.run(Q.requeue_ids.sql, params), refused=[])

        return await self._conn.write(body)

    async def purge_done(self, *, cutoff: float, dedup_since: float, now: float, limit: int) -> int:
        """Delete up to `limit` done events finished before `cutoff`, except those inside their
        dedup window (one small transaction)."""
        params = Q.purge.bind(b_cutoff=cutoff, b_since=dedup_since, b_now=now, b_chunk=limit)

        def body(db: Tx) -> int:
            prune(db, dedup_since)  # replaced versions' keys whose window closed
            return db.run(Q.purge.sql, params)

        return await self._conn.write(body)

    async def count_kept_for_dedup(self, *, cutoff: float, dedup_since: float, now: float) -> int:
        """How many done events finished before `cutoff` `purge_done` keeps for their window."""
        params = Q.kept_for_dedup.bind(b_cutoff=cutoff, b_since=dedup_since, b_now=now)
        return int(await self._conn.read(lambda db: db.scalar(Q.kept_for_dedup.sql, params)))

    async def settings(self) -> dict[str, str]:
        """The settings the last opener recorded."""

        def body(db: Tx) -> dict[str, str]:
            rows = db.rows(Q.settings.sql, Q.settings.bind())
            return {str(name): str(value) for name, value in rows}

        return await self._conn.read(body)

    async def save_settings(self, values: Mapping[str, str]) -> None:
        """Record the opener's settings for the debugging views."""
        params = [Q.setting.bind(b_name=k, b_value=v) for k, v in values.items()]
        await self._conn.write(lambda db: db.many(Q.setting.sql, params))


def require_file(path: str) -> None:
    if os.path.isdir(path):
        raise StorageError(f"{path} is a folder: give the database file with --db PATH")
    if not os.path.isfile(path):
        raise StorageError(
            f"no database at {path}: run `eventqueue migrate --db {shlex.quote(path)}` "
            "to create one"
        )
