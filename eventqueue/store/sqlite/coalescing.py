"""The SQLite store's coalescing put: dedup against replaced versions, the plain insert, then
the plan of core/coalesce.py applied (fold, delete, retire keys). Runs inside the put's one
transaction, which holds SQLite's write lock: nothing can claim a candidate between its read
and its update."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

from eventqueue.core import coalesce
from eventqueue.core.coalesce import Candidate, Debounce
from eventqueue.core.models import PutStatus
from eventqueue.core.records import NewEvent
from eventqueue.store.sqlite import queries as sql
from eventqueue.store.sqlite.bodies import Q, insert_rows
from eventqueue.store.sqlite.connection import Prepared, Tx


class C:
    """The coalescing statements, prepared once per process."""

    superseded = Prepared.of(sql.select_superseded_keys())
    slide = Prepared.of(sql.slide_superseded_key())
    add_duplicates = Prepared.of(sql.add_duplicates())
    candidates = Prepared.of(sql.select_coalesce_candidates())
    absorb = Prepared.of(sql.delete_absorbed())
    merge = Prepared.of(sql.apply_merge())
    retire = Prepared.of(sql.retire_key())
    prune = Prepared.of(sql.prune_superseded_keys())


def coalescing(rows: Sequence[NewEvent]) -> bool:
    """Whether a put takes the coalescing path (some row carries a coalesce key)."""
    return any(row.coalesce_key is not None for row in rows)


def put_coalescing(
    db: Tx,
    rows: Sequence[NewEvent],
    dedup_ttl_s: float | None,
    *,
    sliding: bool,
    debounce: Debounce | None,
    stop: Callable[[], bool] | None = None,
    cuts: Sequence[int] = (),
) -> list[tuple[PutStatus, int]]:
    """Store `rows`, folding the coalescing ones into their key's pending event; (status, id)
    per row as `insert_rows` gives, a folded row's id being the event that holds it now."""
    retired = _retired_repeats(db, rows, dedup_ttl_s, sliding) if dedup_ttl_s is not None else {}
    rest = [row for i, row in enumerate(rows) if i not in retired]
    stored = insert_rows(db, rest, dedup_ttl_s, stop, cuts, sliding=sliding)
    rest = rest[: len(stored)]  # a split put ends early: the caller puts the others
    fresh = {
        row_id: row
        for row, (status, row_id) in zip(rest, stored, strict=True)
        if status is PutStatus.ACCEPTED and row.coalesce_key is not None
    }
    redirect = _fold(db, fresh, dedup_ttl_s is not None, debounce) if fresh else {}
    outcome: list[tuple[PutStatus, int]] = []
    found = iter(stored)
    for index in range(len(rows)):
        if index in retired:
            outcome.append((PutStatus.DUPLICATE, retired[index]))
            continue
        status, row_id = next(found, (None, -1))
        if status is None:
            break  # ended early
        outcome.append((status, redirect.get(row_id, row_id)))
    return outcome


def _retired_repeats(
    db: Tx, rows: Sequence[NewEvent], ttl_s: float, sliding: bool
) -> dict[int, int]:
    """Rows repeating a version a coalesce replaced inside its window: {row index: the id of
    the event that replaced it}. Counted as duplicates on that event."""
    hashes = sorted({r.content_hash for r in rows if r.coalesce_key is not None})
    if not hashes:
        return {}
    params = C.superseded.bind(b_hashes=json.dumps(hashes))
    known = {key: (event_id, at) for key, event_id, at in db.rows(C.superseded.sql, params)}
    hits: dict[int, int] = {}
    for index, row in enumerate(rows):
        entry = known.get(row.content_hash)
        if entry is None or not coalesce.within(ttl_s, row.received_at, entry[1]):
            continue
        hits[index] = entry[0]
        if sliding:
            db.run(C.slide.sql, C.slide.bind(b_key=row.content_hash, b_at=row.received_at))
            known[row.content_hash] = (entry[0], max(entry[1], row.received_at))
    if hits:
        for event_id in set(hits.values()):
            n = sum(1 for v in hits.values() if v == event_id)
            db.run(C.add_duplicates.sql, C.add_duplicates.bind(b_id=event_id, b_n=n, b_at=None))
        db.run(Q.counter.sql, Q.counter.bind(b_name="duplicates_suppressed", b_n=len(hits)))
    return hits


def _fold(
    db: Tx, fresh: dict[int, NewEvent], dedup: bool, debounce: Debounce | None
) -> dict[int, int]:
    """Apply the coalescing plan to the rows this put inserted; {absorbed id: target id}."""
    keys = sorted({row.coalesce_key for row in fresh.values() if row.coalesce_key is not None})
    wanted = {(row.batch_key, row.coalesce_key) for row in fresh.values()}
    params = C.candidates.bind(b_keys=json.dumps(keys))
    candidates = [
        Candidate(int(i), bk, ck, int(p), float(r), dk, float(at))
        for i, bk, ck, p, r, dk, at in db.rows(C.candidates.sql, params)
        if (bk, ck) in wanted
    ]
    plan = coalesce.plan(candidates, fresh, dedup=dedup, debounce=debounce)
    if plan.absorbed:
        db.run(C.absorb.sql, C.absorb.bind(b_ids=json.dumps(plan.absorbed)))
    merges = [
        C.merge.bind(
            b_id=m.target,
            b_payload=m.row.payload_json,
            b_hash=m.row.content_hash,
            b_priority=m.priority,
            b_dedup_key=m.dedup_key,
            b_dedup_at=m.dedup_at,
            b_trace=m.row.trace_context,
            b_n=m.superseded,
            b_available=m.available_at,
        )
        for m in plan.merges
    ]
    if merges:
        db.many(C.merge.sql, merges)
    if plan.retired:
        retire = [C.retire.bind(b_key=k, b_id=i, b_at=at) for k, i, at in plan.retired]
        db.many(C.retire.sql, retire)
    if plan.superseded:
        db.run(Q.counter.sql, Q.counter.bind(b_name="superseded", b_n=plan.superseded))
    return plan.redirect


def prune(db: Tx, since: float) -> None:
    """Forget replaced versions whose dedup window closed before `since`."""
    db.run(C.prune.sql, C.prune.bind(b_since=since))
