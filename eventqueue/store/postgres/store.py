"""PostgresStore: the Store interface on a PostgreSQL database shared by several hosts. One
method = one transaction = one domain result; no Record or connection leaves this module."""

from __future__ import annotations

import contextlib
import math
import secrets
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from eventqueue.core.coalesce import Debounce
from eventqueue.core.codec import decode_payload
from eventqueue.core.config import Config
from eventqueue.core.errors import LeaseLostError, SchemaError
from eventqueue.core.limits import Holds, KeyLimits
from eventqueue.core.models import Batch, Event, Priority, PutStatus
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
    assemble_batches,
    brief,
    decode_text,
    handoff_ids,
    iso,
    peek_batches,
    priority_name,
    refusals,
    schema_problem,
)
from eventqueue.core.rules import ClaimRules
from eventqueue.store.base import Capabilities, SpillPositions
from eventqueue.store.postgres import limiting
from eventqueue.store.postgres import queries as sql
from eventqueue.store.postgres.coalescing import coalescing, prune, put_coalescing
from eventqueue.store.postgres.connection import Conn, Pool
from eventqueue.store.postgres.limiting import held_args
from eventqueue.store.postgres.listener import Listener
from eventqueue.store.postgres.schema_state import ensure_schema, read_status
from eventqueue.store.postgres.text import from_db, plain_prefix, readable, to_db

_TIME_COLUMNS = ("received_at", "available_at", "lease_expires_at", "finished_at", "dedup_at")
_CAPABILITIES = Capabilities(single_connection=False, cross_process_notify=True)


class PostgresStore:
    """The durable store in one PostgreSQL schema: a small pool, row locks, LISTEN/NOTIFY."""

    def __init__(self, pool: Pool, channel: str, *, queue_size: int) -> None:
        self._pool = pool
        self._channel = channel
        # Waiting counts stop here: beyond EVENT_QUEUE_SIZE the exact number changes nothing.
        self._waiting_cap = queue_size + 1
        # Sent with every notification, so this store's own commits do not wake it again.
        self._instance = secrets.token_hex(8)
        self._listener: Listener | None = None
        self._holder: str | None = None  # the owner this store's leases name (save_owner)

    @classmethod
    async def open(
        cls, config: Config, *, migrate: bool | str = "auto", readonly: bool = False
    ) -> PostgresStore:
        """Check (or bring) the schema to head, then hold a small pool of connections.

        `readonly`: every session is read-only; never migrates, and the schema must be at head.
        """
        dsn, timeout_s = config.db_path, config.busy_timeout_ms / 1000.0
        if readonly:
            status = await read_status(dsn, timeout_s=timeout_s)
            if status["state"] != "current":
                raise SchemaError(schema_problem(status))
        else:
            await ensure_schema(dsn, migrate, timeout_s=timeout_s)
        pool = await Pool.open(
            dsn,
            busy_timeout_ms=config.busy_timeout_ms,
            spill_after_ms=config.spill_after_ms,
            readonly=readonly,
        )
        try:
            schema = await pool.read(lambda c: c.fetchval(sql.CURRENT_SCHEMA.sql))
        except BaseException:
            await pool.close()
            raise
        return cls(pool, channel_for(str(schema)), queue_size=config.queue_size)

    @property
    def name(self) -> str:
        """The database URL without its password."""
        return self._pool.name

    @property
    def capabilities(self) -> Capabilities:
        """A pool of connections; other processes' commits arrive by LISTEN/NOTIFY."""
        return _CAPABILITIES

    async def close(self) -> None:
        """Stop listening and close the pool (idempotent)."""
        if self._listener is not None:
            await self._listener.close()
        await self._pool.close()

    async def watch(self, on_change: Callable[[], None]) -> None:
        """Call `on_change` when another process commits work (after LISTEN is in place).

        A notification lost while the listening connection was down is made up for by one
        `on_change` call after it reconnects.
        """
        if self._listener is None:
            self._listener = Listener(
                self._pool.dsn, self._channel, ignore=self._instance, on_change=on_change
            )
            await self._listener.start()

    async def maintain(self) -> None:
        """Nothing to do: autovacuum keeps the tables compact."""

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
        # One pool of connections: a CRITICAL put never waits for this one, so never split.
        split: Sequence[SplitPoint] | None = None,
        sliding: bool = False,
        debounce: Debounce | None = None,
    ) -> PutCommit:
        """Insert events in one transaction; duplicates within the TTL are counted, not inserted.

        Positions commit with the events. `fail_fast`: StoreBusyError when a connection or a
        lock cannot be had within EVENT_SPILL_AFTER_MS (the caller spills instead). `lease`:
        the CRITICAL events accepted here are leased in the same transaction (hand-off).
        """

        async def body(c: Conn) -> PutCommit:
            if coalescing(rows):
                outcome = await put_coalescing(
                    c, rows, dedup_ttl_s, sliding=sliding, debounce=debounce, insert=_insert
                )
            else:
                outcome = await _insert(c, rows, dedup_ttl_s, sliding) if rows else []
            claimed = await _lease_critical(c, rows, outcome, lease, self._holder) if lease else []
            query = sql.PUT_FINISH
            args = query.args(
                now=now,
                **_source_columns(source_positions or {}),
                **_spill_columns(spill_positions),
                duplicates=sum(1 for status, _ in outcome if status is PutStatus.DUPLICATE),
                channel=self._channel,
                payload=self._instance,
                notify=any(status is PutStatus.ACCEPTED for status, _ in outcome),
                count=count_waiting,
                cap=self._waiting_cap,
            )
            finished = await c.fetchrow(query.sql, *args)
            assert finished is not None
            waiting = None if finished["waiting"] is None else int(finished["waiting"])
            return PutCommit(outcome, waiting, claimed)

        return await self._pool.write(body, fail_fast=fail_fast)

    async def waiting_count(self) -> int:
        """Waiting events: pending, back-off included (what EVENT_QUEUE_SIZE bounds)."""
        args = sql.COUNT_WAITING.args(cap=self._waiting_cap)
        return int(await self._pool.read(lambda c: c.fetchval(sql.COUNT_WAITING.sql, *args)))

    async def unfinished_count(self) -> int:
        """Events not done or dead yet: pending and claimed."""
        return int(await self._pool.read(lambda c: c.fetchval(sql.COUNT_UNFINISHED.sql)))

    async def source_position(self, source: str) -> str | None:
        """The stream position stored with the last committed events of `source`."""
        args = sql.SELECT_SOURCE_POSITION.args(source=to_db(source))
        found = await self._pool.read(lambda c: c.fetchval(sql.SELECT_SOURCE_POSITION.sql, *args))
        return None if found is None else from_db(str(found))

    async def spill_positions(self, spill_log: str) -> dict[int, tuple[int, int]]:
        """Per priority, how far the spill log keyed `spill_log` was promoted."""
        args = sql.SELECT_SPILL_POSITIONS.args(log=to_db(spill_log))
        rows = await self._pool.read(lambda c: c.fetch(sql.SELECT_SPILL_POSITIONS.sql, *args))
        return {int(p): (int(seg), int(off)) for p, seg, off in rows}

    # --- claim and settle -----------------------------------------------------------------

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
        """Lease up to `batches` ready batches, best first ([] when none is ready).

        `acks` are acked first in the same transaction (LeaseLostError and no change if one
        lost its lease); `expire` first returns expired leases to pending. `min_priority`:
        only events of at least this priority.
        """
        args = dict(
            **ready_args(now, rules, min_priority, limits=False),
            batches=batches,
            limit=rules.batch_limit,
            owner=consumer,
            holder=self._holder,
            token=plain_prefix(token, "a claim token"),
            expires=now + rules.lease_s,
            batch_id=plain_prefix(batch_id, "a batch id"),
        )

        async def lease(c: Conn, held: Holds | None, *, acking: bool = False) -> list[Batch]:
            values = {**args, **held_args(held)}
            if acking:
                rows = await _claim_acking(c, sql.CLAIM_ACKING.args(**_ack_columns(acks), **values))
            else:
                rows = await c.fetch(sql.CLAIM.sql, *sql.CLAIM.args(**values))
            # The claim's own key order: each row carries its key's rank (keys SKIP LOCKED left
            # out simply do not appear).
            order = None
            if batches > 1:
                ranked = sorted({(int(r["rank"]), str(r["batch_key"])) for r in rows})
                order = [from_db(key) for _, key in ranked]
            return assemble_batches(
                map(_event, rows),
                batch_id=batch_id,
                token=token,
                consumer=consumer,
                expires_at=now + rules.lease_s,
                order=order,
            )

        async def body(c: Conn) -> list[Batch]:
            if acks:
                await _ack_pairs(c, acks, now)
            if expire:
                expired = sql.EXPIRE_LEASES.args(
                    now=now, max_attempts=rules.max_attempts, lease_horizon=rules.lease_horizon_s
                )
                statuses = await c.fetch(sql.EXPIRE_LEASES.sql, *expired)
                if any(status == "pending" for (status,) in statuses):
                    await self._notify(c)
            if not rules.limits:
                return await lease(c, None)
            # Key limits: the holds read before the claim, a recount under the keys' locks
            # after it (limiting.py). Several statements, so always a transaction.
            held = await limiting.claim_holds(c, rules.limits, now)
            found = await lease(c, held)
            # Twice at most: a claim that lost a key to another host's claim (given back below)
            # claims again without it, in the same transaction, rather than coming back empty.
            for _ in range(2):
                over: list[Batch] = []
                kept = await limiting.settle_claim(c, rules.limits, held, found, batches, now, over)
                for batch in over:  # over its limit after all: unseen, its attempt uncounted
                    await _fenced(c, sql.GIVE_BACK, batch.token, batch.ids)
                if kept or not over:
                    return kept
                held = Holds(held.blocked + tuple(b.key for b in over), held.critical_only)
                found = await lease(c, held)
            return []

        if expire or rules.limits:
            return await self._pool.write(body)

        async def one_statement(c: Conn) -> list[Batch]:
            return await lease(c, None, acking=bool(acks))

        return await self._pool.statement(one_statement)  # no BEGIN/COMMIT round trips

    async def ack(self, token: str, ids: Sequence[int], *, now: float) -> None:
        """Leased events done; LeaseLostError (and no change) if the token is stale."""
        await self._pool.statement(lambda c: _fenced(c, sql.ACK, token, ids, now=now))

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
            raise ValueError(f"retry times must be finite, got {sorted(retry_at.values())}")
        ids = [*retry_at, *dead]
        times: list[float | None] = [*retry_at.values(), *(None for _ in dead)]
        args = sql.NACK.args(
            ids=ids, retry_at=times, token=to_db(token), error=readable(error), now=now
        )

        async def body(c: Conn) -> None:
            changed = await c.fetch(sql.NACK.sql, *args)
            _check_fence(len(changed), len(ids))
            if retry_at:
                await self._notify(c)

        await self._pool.write(body)

    async def extend(self, token: str, ids: Sequence[int], *, expires_at: float) -> None:
        """Push the lease expiry out; LeaseLostError if the token is stale."""
        await self._pool.statement(lambda c: _fenced(c, sql.EXTEND, token, ids, expires=expires_at))

    async def release(
        self, token: str, ids: Sequence[int], *, now: float, max_attempts: int
    ) -> None:
        """Leased events back to pending now, or dead when their attempts are used up;
        LeaseLostError if the token is stale."""

        async def body(c: Conn) -> None:
            await _fenced(c, sql.RELEASE, token, ids, now=now, max_attempts=max_attempts)
            await self._notify(c)

        await self._pool.write(body)

    async def give_back(self, token: str, ids: Sequence[int]) -> None:
        """Leased events no handler received: pending now, their attempt uncounted."""

        async def body(c: Conn) -> None:
            await _fenced(c, sql.GIVE_BACK, token, ids)
            await self._notify(c)

        await self._pool.write(body)

    async def next_wakeup(self, now: float) -> Wakeup:
        """When work that is not ready now may become ready."""
        args = sql.NEXT_WAKEUP.args(now=now)
        row = await self._pool.read(lambda c: c.fetchrow(sql.NEXT_WAKEUP.sql, *args))
        assert row is not None
        return Wakeup(row[0], row[1], row[2], row[3])

    async def limit_hold(self, *, now: float, limits: KeyLimits) -> LimitHold:
        """Whether a key limit holds back pending work now, and when a bucket refills next."""
        return await self._pool.read(lambda c: limiting.limit_hold(c, limits, now))

    # --- lease owners ---------------------------------------------------------------------

    async def save_owner(self, owner: Owner) -> None:
        """Register `owner` or refresh its heartbeat; this store's later leases name it."""
        args = sql.SAVE_OWNER.args(
            owner=owner.owner,
            host=owner.host,
            pid=owner.pid,
            pid_space=owner.pid_space,
            process_start=owner.process_start,
            started_at=owner.started_at,
            heartbeat_at=owner.heartbeat_at,
            heartbeat_s=owner.heartbeat_s,
        )
        await self._pool.write(lambda c: c.execute(sql.SAVE_OWNER.sql, *args))
        self._holder = owner.owner

    async def drop_owner(self, owner: str) -> None:
        """Unregister `owner` (its queue is closing); leases it still holds keep their expiry."""
        args = sql.DELETE_OWNER.args(owner=owner)
        await self._pool.write(lambda c: c.execute(sql.DELETE_OWNER.sql, *args))

    async def owners(self) -> list[Owner]:
        """Every registered owner, with the claimed events each holds, oldest first."""
        rows = await self._pool.read(lambda c: c.fetch(sql.SELECT_OWNERS.sql))
        return [
            Owner(str(owner), str(host), int(pid), str(space), start, started, beat, period, leases)
            for owner, host, pid, space, start, started, beat, period, leases in rows
        ]

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
        args = sql.RELEASE_OWNERS.args(
            dead=list(dead),
            silent=list(silent),
            now=now,
            stale=stale_heartbeats,
            max_attempts=max_attempts,
        )

        async def body(c: Conn) -> int:
            statuses = await c.fetch(sql.RELEASE_OWNERS.sql, *args)
            if any(status == "pending" for (status,) in statuses):
                await self._notify(c)
            return len(statuses)

        return await self._pool.write(body)

    # --- inspection and repair ------------------------------------------------------------

    async def stats(self, *, now: float, rules: ClaimRules) -> StoreStats:
        """Counts by status and priority, counters, oldest pending time, ready batch keys."""

        async def body(c: Conn) -> StoreStats:
            counts: dict[str, dict[str, int]] = {}
            for status, priority, count in await c.fetch(sql.COUNT_BY_STATUS.sql):
                counts.setdefault(status, {})[Priority(priority).name] = int(count)
            counters = {str(n): int(v) for n, v in await c.fetch(sql.SELECT_COUNTERS.sql)}
            oldest = await c.fetchval(sql.OLDEST_PENDING.sql)
            query = sql.COUNT_READY_KEYS
            held = await limiting.claim_holds(c, rules.limits, now) if rules.limits else None
            values = {**ready_args(now, rules, limits=False), **limiting.held_args(held)}
            ready = await c.fetchval(query.sql, *query.args(**values))
            uses = await limiting.key_uses(c, rules.limits, now)
            return StoreStats(counts, counters, oldest, int(ready or 0), uses)

        return await self._pool.read(body)

    async def peek(self, *, now: float, rules: ClaimRules, limit: int) -> list[PeekBatch]:
        """The batches the next claims would lease, in claim order; claims nothing."""
        params = {**ready_args(now, rules), "batches": limit}

        async def body(c: Conn) -> list[PeekBatch]:
            keys = await c.fetch(sql.PEEK_KEYS.sql, *sql.PEEK_KEYS.args(**params))
            found = sql.PEEK_EVENTS.args(**params, limit=rules.batch_limit)
            rows = await c.fetch(sql.PEEK_EVENTS.sql, *found)
            decoded = [
                (from_db(str(k)), effective, oldest, top) for k, effective, oldest, top in keys
            ]
            return peek_batches(decoded, [_event(r) for r in rows], now)

        return await self._pool.read(body)

    async def show(self, event_id: int) -> EventInfo | None:
        """One event with every column, or None when there is no such id."""
        args = sql.SELECT_EVENT.args(id=event_id)
        row = await self._pool.read(lambda c: c.fetchrow(sql.SELECT_EVENT.sql, *args))
        if row is None:
            return None
        info = dict(row.items())
        info.update({k: iso(info[k]) for k in _TIME_COLUMNS})
        info["batch_key"] = from_db(info["batch_key"])
        if info.get("coalesce_key") is not None:
            info["coalesce_key"] = from_db(info["coalesce_key"])
        priority, payload = priority_name(info["priority"]), decode_text(info["payload"])
        return {**info, "priority": priority, "payload": payload}

    async def dead(self, *, limit: int) -> list[EventBrief]:
        """Dead letters, most recent first, with their last error."""
        args = sql.SELECT_DEAD.args(limit=limit)
        rows = await self._pool.read(lambda c: c.fetch(sql.SELECT_DEAD.sql, *args))
        return [
            {
                **brief(r["id"], r["payload"], r["priority"], r["attempts"]),
                "batch_key": from_db(r["batch_key"]),
                "last_error": r["last_error"],
                "died_at": iso(r["finished_at"]),
            }
            for r in rows
        ]

    async def requeue(self, ids: Sequence[int] | None, *, now: float) -> RequeueResult:
        """Dead events (these ids, or all) back to pending; nothing changes if one is not dead."""

        async def body(c: Conn) -> RequeueResult:
            if ids is None:
                status = await c.execute(sql.REQUEUE_ALL.sql, *sql.REQUEUE_ALL.args(now=now))
            else:
                wanted = sorted(set(ids))
                found = await c.fetch(sql.SELECT_STATUSES.sql, wanted)
                refused = refusals(wanted, {int(i): str(s) for i, s in found})
                if refused:
                    return RequeueResult(requeued=0, refused=refused)
                query = sql.REQUEUE_IDS
                status = await c.execute(query.sql, *query.args(ids=wanted, now=now))
            count = _row_count(status)
            if count:
                await self._notify(c)
            return RequeueResult(requeued=count, refused=[])

        return await self._pool.write(body)

    async def purge_done(self, *, cutoff: float, dedup_since: float, now: float, limit: int) -> int:
        """Delete up to `limit` done events finished before `cutoff`, except those inside their
        dedup window; how many."""
        args = sql.PURGE_DONE.args(cutoff=cutoff, since=dedup_since, now=now, chunk=limit)

        async def body(c: Conn) -> str:
            await prune(c, dedup_since)  # replaced versions' keys whose window closed
            return str(await c.execute(sql.PURGE_DONE.sql, *args))

        return _row_count(await self._pool.write(body))

    async def count_kept_for_dedup(self, *, cutoff: float, dedup_since: float, now: float) -> int:
        """How many done events finished before `cutoff` `purge_done` keeps for their window."""
        args = sql.COUNT_KEPT_FOR_DEDUP.args(cutoff=cutoff, since=dedup_since, now=now)
        return int(await self._pool.read(lambda c: c.fetchval(sql.COUNT_KEPT_FOR_DEDUP.sql, *args)))

    async def settings(self) -> dict[str, str]:
        """The settings the last opener recorded."""
        rows = await self._pool.read(lambda c: c.fetch(sql.SELECT_SETTINGS.sql))
        return {from_db(str(name)): from_db(str(value)) for name, value in rows}

    async def save_settings(self, values: Mapping[str, str]) -> None:
        """Record the opener's settings for the debugging views and the CLI."""
        args = sql.SAVE_SETTINGS.args(
            names=[to_db(k) for k in values], values=[to_db(v) for v in values.values()]
        )
        await self._pool.write(lambda c: c.execute(sql.SAVE_SETTINGS.sql, *args))

    async def _notify(self, c: Conn) -> None:
        # Delivered at commit, to every listening session (PostgreSQL folds repeats within
        # one transaction into one).
        args = sql.NOTIFY.args(channel=self._channel, payload=self._instance)
        await c.execute(sql.NOTIFY.sql, *args)


def channel_for(schema: str) -> str:
    """The LISTEN/NOTIFY channel of the queue in `schema` (channels are per database)."""
    return f"eventqueue.{schema}"[:63]


def ready_args(
    now: float, rules: ClaimRules, min_priority: int = 0, *, limits: bool = True
) -> dict[str, Any]:
    """The parameters of every statement that decides readiness (claims, ready counts, peek);
    with `limits`, no key held back (limiting.held_args gives them otherwise)."""
    held: dict[str, Any] = {"blocked": [], "critical_only": []} if limits else {}
    return {
        **held,
        "min_priority": min_priority,
        "now": now,
        "max_batch": rules.max_batch,
        "window_start": now - rules.window_s,
        "high_window_start": now - rules.high_window_effective_s,
        "no_batching": not rules.batching,
        "aging_s": rules.aging_s,
        "retry_horizon": rules.retry_horizon_s,
    }


async def _lease_critical(
    c: Conn,
    rows: Sequence[NewEvent],
    outcome: list[tuple[PutStatus, int]],
    lease: Lease,
    holder: str | None,
) -> list[Batch]:
    """Lease the CRITICAL events this put accepted (the hand-off), one batch per key."""
    ids = handoff_ids(rows, outcome, lease)
    if not ids:
        return []
    args = sql.LEASE_IDS.args(
        ids=ids,
        owner=lease.consumer,
        holder=holder,
        token=plain_prefix(lease.token, "a claim token"),
        expires=lease.expires_at,
        batch_id=plain_prefix(lease.batch_id, "a batch id"),
    )
    return assemble_batches(
        map(_event, await c.fetch(sql.LEASE_IDS.sql, *args)),
        batch_id=lease.batch_id,
        token=lease.token,
        consumer=lease.consumer,
        expires_at=lease.expires_at,
    )


async def _insert(
    c: Conn, rows: Sequence[NewEvent], dedup_ttl_s: float | None, sliding: bool = False
) -> list[tuple[PutStatus, int]]:
    if dedup_ttl_s is None:
        query = sql.PUT_PLAIN
        returned = await c.fetch(query.sql, *query.args(**_columns(rows, [1] * len(rows))))
        # One INSERT ... ORDER BY n: identity values are drawn in the order of its rows.
        return [(PutStatus.ACCEPTED, int(r[0])) for r in returned]
    # Repeats inside the batch fold into their first row (ON CONFLICT DO UPDATE may not touch
    # a row twice in one statement); the first row of each hash is the one that may be new.
    first: dict[str, int] = {}
    copies: dict[str, int] = {}
    for index, row in enumerate(rows):
        first.setdefault(row.content_hash, index)
        copies[row.content_hash] = copies.get(row.content_hash, 0) + 1
    distinct = [rows[i] for i in first.values()]
    hashes = sorted(first)
    received = [rows[first[h]].received_at for h in hashes]  # the window starts at the first
    release = sql.RELEASE_DEDUP.args(hashes=hashes, received=received, ttl=dedup_ttl_s)
    await c.execute(sql.RELEASE_DEDUP.sql, *release)
    counts = [copies[r.content_hash] for r in distinct]
    query = sql.PUT_DEDUP_SLIDING if sliding else sql.PUT_DEDUP
    returned = await c.fetch(query.sql, *query.args(**_columns(distinct, counts)))
    ids = {str(h): int(i) for i, h, _ in returned}
    inserted = {str(h) for _, h, new in returned if new}
    outcome = [
        (
            PutStatus.ACCEPTED
            if first[r.content_hash] == index and r.content_hash in inserted
            else PutStatus.DUPLICATE,
            ids[r.content_hash],
        )
        for index, r in enumerate(rows)
    ]
    return outcome


def _columns(rows: Sequence[NewEvent], copies: list[int]) -> dict[str, list[Any]]:
    return {
        "payloads": [r.payload_json for r in rows],
        "priorities": [r.priority for r in rows],
        "keys": [to_db(r.batch_key) for r in rows],
        "hashes": [r.content_hash for r in rows],
        "received": [r.received_at for r in rows],
        "copies": copies,
        "traces": [r.trace_context for r in rows],
        "orderings": [r.ordering_key for r in rows],
        "coalesce_keys": [None if r.coalesce_key is None else to_db(r.coalesce_key) for r in rows],
    }


def _source_columns(positions: Mapping[str, str | None]) -> dict[str, list[Any]]:
    return {
        "sources": [to_db(s) for s in positions],
        "positions": [None if p is None else to_db(p) for p in positions.values()],
    }


def _spill_columns(spill: tuple[str, SpillPositions] | None) -> dict[str, Any]:
    log, reached = spill if spill else ("", {})
    return {
        "log": to_db(log),
        "priorities": list(reached),
        "segments": [seg for seg, _ in reached.values()],
        "offsets": [off for _, off in reached.values()],
    }


def _ack_columns(acks: Sequence[tuple[str, Sequence[int]]]) -> dict[str, list[Any]]:
    pairs = [(event_id, to_db(token)) for token, ids in acks for event_id in sorted(set(ids))]
    return {"ack_ids": [i for i, _ in pairs], "ack_tokens": [t for _, t in pairs]}


async def _ack_pairs(c: Conn, acks: Sequence[tuple[str, Sequence[int]]], now: float) -> None:
    columns = _ack_columns(acks)
    args = sql.ACK_PAIRS.args(ids=columns["ack_ids"], tokens=columns["ack_tokens"], now=now)
    changed = await c.fetch(sql.ACK_PAIRS.sql, *args)
    _check_fence(len(changed), len(columns["ack_ids"]))


async def _claim_acking(c: Conn, args: list[Any]) -> list[Any]:
    """Ack and lease in one statement (queries.CLAIM_ACKING); the leased rows."""
    rows = await c.fetch(sql.CLAIM_ACKING.sql, *args)
    if not rows[0]["acks_held"]:  # nothing acked, nothing leased
        _check_fence(
            0, len(args[sql.CLAIM_ACKING.params.index("ack_ids")]), held=rows[0]["acks_held_n"]
        )
    return [row for row in rows if row["id"] is not None]


async def _fenced(c: Conn, query: sql.Query, token: str, ids: Sequence[int], **values: Any) -> None:
    wanted = sorted(set(ids))
    found = await c.fetchrow(query.sql, *query.args(ids=wanted, token=to_db(token), **values))
    assert found is not None
    # The statement changes every row or none (see queries._fenced).
    _check_fence(int(found["changed"]), len(wanted), held=int(found["held"]))


def _check_fence(changed: int, wanted: int, *, held: int | None = None) -> None:
    if changed != wanted:
        # Raising rolls the whole transaction back: all of the batch changes, or none.
        lost = wanted - (changed if held is None else held)
        raise LeaseLostError(
            f"lease lost: {lost} of {wanted} events are no longer held under this "
            "claim (its lease expired and another consumer claimed them, or they were finished)"
        )


def _event(row: Any) -> Event:
    # The first ten columns (a claim's rows also carry their key's rank).
    row_id, payload, priority, content_hash, batch_key, attempts, received_at, trace = row[:8]
    group, n = row[8], row[9]
    return Event(
        id=int(row_id),
        payload=decode_payload(payload),
        priority=Priority(priority),
        content_hash=content_hash,
        batch_key=from_db(batch_key),
        attempts=attempts,
        received_at=received_at,
        trace_context=trace,
        ordering_key=group,
        superseded=int(n),
    )


def _row_count(status: str) -> int:
    # asyncpg returns the command tag, e.g. "UPDATE 3" or "DELETE 0".
    with contextlib.suppress(ValueError, IndexError):
        return int(status.split()[-1])
    return 0


__all__ = ["PostgresStore", "channel_for", "ready_args"]
