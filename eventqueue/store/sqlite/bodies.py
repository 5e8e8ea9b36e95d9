"""The SQLite store's transaction bodies: the statements each store method runs (compiled once,
`Q`), and the conversion of their rows into records. Called only by store.py, inside one
transaction each."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence
from typing import Any

from eventqueue.core.codec import decode_payload
from eventqueue.core.errors import LeaseLostError
from eventqueue.core.limits import Holds
from eventqueue.core.models import Batch, Event, Priority, PutStatus
from eventqueue.core.owners import Owner
from eventqueue.core.records import (
    Lease,
    NewEvent,
    assemble_batches,
    first_receipts,
    handoff_ids,
)
from eventqueue.core.rules import ClaimRules
from eventqueue.store.sqlite import limiting
from eventqueue.store.sqlite import queries as sql
from eventqueue.store.sqlite.connection import Prepared, Tx


class Q:
    """Every statement, prepared once per process."""

    release_dedup = Prepared.of(sql.release_expired_dedup_keys())
    last_id = Prepared.of(sql.last_event_id())
    dedup_holders = Prepared.of(sql.dedup_holders())
    positions = Prepared.of(sql.save_source_positions())
    counter = Prepared.of(sql.add_to_counter())
    expire = Prepared.of(sql.expire_all_leases())
    claim = Prepared.of(sql.claim_ready())
    ack_pairs = Prepared.of(sql.ack_pairs())
    ack = Prepared.of(sql.ack_ids())
    extend = Prepared.of(sql.extend_ids())
    release = Prepared.of(sql.release_ids())
    give_back = Prepared.of(sql.give_back_ids())
    nack = Prepared.of(sql.nack_items())
    waiting = Prepared.of(sql.count_waiting())
    unfinished = Prepared.of(sql.count_unfinished())
    wakeup = Prepared.of(sql.next_wakeup())
    by_status = Prepared.of(sql.count_by_status_priority())
    oldest = Prepared.of(sql.oldest_pending())
    ready_keys = Prepared.of(sql.count_ready_keys())
    counters = Prepared.of(sql.select_counters())
    source = Prepared.of(sql.select_source_position())
    setting = Prepared.of(sql.save_setting())
    spill_save = Prepared.of(sql.save_spill_position())
    purge = Prepared.of(sql.purge_done())
    kept_for_dedup = Prepared.of(sql.count_kept_for_dedup())
    spill_read = Prepared.of(sql.select_spill_positions())
    peek = Prepared.of(sql.peek_ready())
    lease_ids = Prepared.of(sql.lease_ids())
    leased = Prepared.of(sql.select_leased())
    peek_keys = Prepared.of(sql.select_ready_keys())
    event = Prepared.of(sql.select_event())
    dead = Prepared.of(sql.select_dead())
    statuses = Prepared.of(sql.select_statuses())
    requeue_ids = Prepared.of(sql.requeue_events(all_dead=False))
    requeue_all = Prepared.of(sql.requeue_events(all_dead=True))
    settings = Prepared.of(sql.select_settings())
    save_owner = Prepared.of(sql.save_owner())
    owners = Prepared.of(sql.select_owners())
    drop_owner = Prepared.of(sql.delete_owner())
    delete_owners = Prepared.of(sql.delete_gone_owners())
    release_owned = Prepared.of(sql.release_owner_leases())


def insert_rows(
    db: Tx,
    rows: Sequence[NewEvent],
    dedup_ttl_s: float | None,
    stop: Callable[[], bool] | None = None,
    cuts: Sequence[int] = (),
    sliding: bool = False,
) -> list[tuple[PutStatus, int]]:
    """Insert `rows`; (status, id) per row. `stop` is asked at each of `cuts` (row counts,
    ascending): when True, the rest is left out and the outcome covers only the rows stored."""
    dedup = dedup_ttl_s is not None
    if dedup_ttl_s is not None:
        arrived = first_receipts(rows)
        db.run(
            Q.release_dedup.sql,
            Q.release_dedup.bind(
                b_hashes=json.dumps(list(arrived)),
                b_received=json.dumps(list(arrived.values())),
                b_ttl=dedup_ttl_s,
            ),
        )
    # One writer, AUTOINCREMENT: the rows these INSERTs add get the ids after `before`, in the
    # order of their rows. (No RETURNING: one step per statement, not one per row.)
    before = int(db.scalar(Q.last_id.sql, Q.last_id.bind()))
    offset = 0
    for cut in [*cuts, len(rows)]:
        if offset and stop is not None and stop():
            rows = rows[:offset]
            break
        for size in statement_sizes(cut - offset):
            chunk = rows[offset : offset + size]
            offset += size
            params = [value for row in chunk for value in _values(row, dedup)]
            db.run(put_statement(size, dedup, sliding and dedup).sql, params)
    if not dedup:
        return [(PutStatus.ACCEPTED, before + 1 + i) for i in range(len(rows))]
    hashes = json.dumps(list(dict.fromkeys(row.content_hash for row in rows)))
    holders = db.scalar(Q.dedup_holders.sql, Q.dedup_holders.bind(b_hashes=hashes))
    outcome = _dedup_outcome(rows, json.loads(holders), before)
    duplicates = sum(1 for status, _ in outcome if status is PutStatus.DUPLICATE)
    if duplicates:
        db.run(Q.counter.sql, Q.counter.bind(b_name="duplicates_suppressed", b_n=duplicates))
    return outcome


# Rows per INSERT: at most 64 (512 parameters, well under SQLite's limit of 32,766), and a
# remainder split into powers of two, so 7 sizes cover every put: few statements to compile,
# each kept in the connection's statement cache.
MAX_ROWS_PER_INSERT = 64


def statement_sizes(rows: int) -> list[int]:
    """How `rows` rows are split into INSERTs: full ones of MAX_ROWS_PER_INSERT, then powers of
    two, largest first (e.g. 100 -> [64, 32, 4])."""
    sizes = [MAX_ROWS_PER_INSERT] * (rows // MAX_ROWS_PER_INSERT)
    rest = rows % MAX_ROWS_PER_INSERT
    sizes += [1 << bit for bit in reversed(range(rest.bit_length())) if rest & (1 << bit)]
    return sizes


def stop_cuts(ends: Sequence[int], total: int) -> list[int]:
    """Where a split put may stop, from the row counts at which its puts end (`ends`,
    ascending): at whole puts only, about MAX_ROWS_PER_INSERT rows apart (a single put of more
    rows is never cut). Never 0 or `total` (nothing to ask there)."""
    cuts: list[int] = []
    last = candidate = 0
    for end in ends:
        if end - last > MAX_ROWS_PER_INSERT and candidate > last:
            cuts.append(candidate)
            last = candidate
        candidate = end
    if total - last > MAX_ROWS_PER_INSERT and last < candidate < total:
        cuts.append(candidate)
    return cuts


@functools.cache
def put_statement(rows: int, dedup: bool, sliding: bool = False) -> Prepared:
    """queries.put_values compiled for `rows` rows (once per size; at most 21 in a process)."""
    prepared = Prepared.of(sql.put_values(rows, dedup=dedup, sliding=sliding))
    expected = tuple(f"r{i}_{name}" for i in range(rows) for name in sql.PUT_COLUMNS)
    if prepared.order != expected:  # _values binds by position: row after row, PUT_COLUMNS each
        raise RuntimeError("queries.put_values no longer binds row after row in PUT_COLUMNS order")
    return prepared


def _values(row: NewEvent, dedup: bool) -> tuple[Any, ...]:
    """One row's parameters, in queries.PUT_COLUMNS order."""
    return (
        row.payload_json,
        row.priority,
        row.batch_key,
        row.content_hash,
        row.content_hash if dedup else None,
        row.received_at,
        row.received_at,  # available_at: claimable as soon as it is stored
        row.trace_context,
        row.ordering_key,
        row.coalesce_key,
    )


def _dedup_outcome(
    rows: Sequence[NewEvent], holders: list[Any], before: int
) -> list[tuple[PutStatus, int]]:
    # Per hash, the row now holding its dedup key: one this put inserted (id after `before`),
    # or a live original that absorbed every row of the hash. Per hash, the first row of the
    # group is the accepted one if a row of that hash was inserted.
    ids: dict[str, int] = {}
    inserted: set[str] = set()
    for content_hash, row_id in holders:
        ids[content_hash] = row_id
        if row_id > before:
            inserted.add(content_hash)
    outcome: list[tuple[PutStatus, int]] = []
    for row in rows:
        if row.content_hash in inserted:
            inserted.discard(row.content_hash)
            outcome.append((PutStatus.ACCEPTED, ids[row.content_hash]))
        else:
            outcome.append((PutStatus.DUPLICATE, ids[row.content_hash]))
    return outcome


def ready_params(now: float, rules: ClaimRules, min_priority: int = 0) -> dict[str, Any]:
    """The parameters of every statement that decides readiness (claims, ready counts, peek)."""
    return {
        "b_min_priority": min_priority,
        "b_now": now,
        "b_max_batch": rules.max_batch,
        "b_window_start": now - rules.window_s,
        "b_high_window_start": now - rules.high_window_effective_s,
        "b_no_batching": 0 if rules.batching else 1,
        "b_aging_s": rules.aging_s,
        "b_retry_horizon": rules.retry_horizon_s,
    }


def claim_batches(
    db: Tx,
    now: float,
    consumer: str,
    token: str,
    batch_id: str,
    rules: ClaimRules,
    batches: int,
    min_priority: int = 0,
    holder: str | None = None,
) -> list[Batch]:
    held = limiting.claim_holds(db, rules.limits, now) if rules.limits else None
    lists = held_lists(held)
    params = Q.claim.bind(
        **ready_params(now, rules, min_priority),
        **lists,
        b_batches=batches,
        b_limit=rules.batch_limit,
        b_owner=consumer,
        b_holder=holder,
        b_token=token,
        b_expires=now + rules.lease_s,
        b_batch_id=batch_id,
    )
    order = None
    if batches > 1:
        # The claim's own key order (effective priority, then oldest), read in the same
        # transaction just before it: RETURNING cannot carry the CTE's rank.
        keys_params = Q.peek_keys.bind(
            **ready_params(now, rules, min_priority), **lists, b_batches=batches
        )
        order = [row[0] for row in db.rows(Q.peek_keys.sql, keys_params)]
    db.run(Q.claim.sql, params)
    found = assemble_batches(
        leased_events(db, token, now + rules.lease_s),
        batch_id=batch_id,
        token=token,
        consumer=consumer,
        expires_at=now + rules.lease_s,
        order=order,
    )
    if held is not None:
        limiting.settle_claim(db, rules.limits, held, found, batches, now)
    return found


def held_lists(held: Holds | None) -> dict[str, str]:
    # The readiness statements' key-limit parameters (JSON arrays of batch keys).
    if not held:
        return {}
    return {
        "b_blocked": json.dumps(list(held.blocked)),
        "b_critical_only": json.dumps(list(held.critical_only)),
    }


def leased_events(db: Tx, token: str, expires_at: float) -> list[Event]:
    """The events a claim or hand-off under `token` just leased: one row, one step."""
    params = Q.leased.bind(b_token=token, b_expires=expires_at)
    items = json.loads(db.scalar(Q.leased.sql, params))
    return [
        Event(
            id=row_id,
            payload=decode_payload(payload),
            priority=Priority(priority),
            content_hash=content_hash,
            batch_key=batch_key,
            attempts=attempts,
            received_at=float(received_at),  # quote()'s exact text (queries.select_leased)
            trace_context=trace,
            ordering_key=group,
            superseded=n,
        )
        for (
            row_id,
            payload,
            priority,
            content_hash,
            batch_key,
            attempts,
            received_at,
            trace,
            group,
            n,
        ) in items
    ]


def ack_pairs(db: Tx, acks: Sequence[tuple[str, Sequence[int]]], now: float) -> None:
    pairs = [[event_id, token] for token, ids in acks for event_id in sorted(set(ids))]
    params = Q.ack_pairs.bind(b_pairs=json.dumps(pairs), b_now=now)
    check_fence(db.run(Q.ack_pairs.sql, params), len(pairs))


def to_event(row: Any) -> Event:
    row_id, payload, priority, content_hash, batch_key, attempts, received_at, trace, group, n = row
    return Event(
        id=row_id,
        payload=decode_payload(payload),
        priority=Priority(priority),
        content_hash=content_hash,
        batch_key=batch_key,
        attempts=attempts,
        received_at=received_at,
        trace_context=trace,
        ordering_key=group,
        superseded=n,
    )


def fenced(db: Tx, statement: Prepared, token: str, ids: Sequence[int], **values: Any) -> None:
    wanted = sorted(set(ids))
    params = statement.bind(b_ids=json.dumps(wanted), b_token=token, **values)
    check_fence(db.run(statement.sql, params), len(wanted))


def check_fence(changed: int, wanted: int) -> None:
    if changed != wanted:
        # Raising rolls the whole transaction back: all of the batch changes, or none.
        raise LeaseLostError(
            f"lease lost: {wanted - changed} of {wanted} events are no longer held under this "
            "claim (its lease expired and another consumer claimed them, or they were finished)"
        )


def lease_critical(
    db: Tx,
    rows: Sequence[NewEvent],
    outcome: list[tuple[PutStatus, int]],
    lease: Lease,
    holder: str | None = None,
) -> list[Batch]:
    """Lease the CRITICAL events this put accepted (the hand-off), one batch per key."""
    ids = handoff_ids(rows, outcome, lease)
    if not ids:
        return []
    params = Q.lease_ids.bind(
        b_ids=json.dumps(ids),
        b_owner=lease.consumer,
        b_holder=holder,
        b_token=lease.token,
        b_expires=lease.expires_at,
        b_batch_id=lease.batch_id,
    )
    db.run(Q.lease_ids.sql, params)
    return assemble_batches(
        leased_events(db, lease.token, lease.expires_at),
        batch_id=lease.batch_id,
        token=lease.token,
        consumer=lease.consumer,
        expires_at=lease.expires_at,
    )


def to_owner(row: Any) -> Owner:
    owner, host, pid, pid_space, start, started_at, heartbeat_at, heartbeat_s, leases = row
    return Owner(
        owner, host, int(pid), pid_space, start, started_at, heartbeat_at, heartbeat_s, int(leases)
    )
