"""The SQLite store's coalescing put: the rows are routed before anything is inserted
(core/coalesce.py `route`): duplicates first, then each row with a coalesce key folds into its
key's newest pending, never delivered event (one UPDATE), or is inserted like any row and
becomes the target of the put's later rows of its key. Runs inside the put's one transaction,
which holds SQLite's write lock: nothing can claim a target between its read and its update.

A coalescing put is never cut short (`split`): it stores all its rows, as the Store contract
allows."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from eventqueue.core import coalesce
from eventqueue.core.coalesce import Candidate, Debounce, Ref, Routing
from eventqueue.core.models import PutStatus
from eventqueue.core.records import NewEvent, first_receipts
from eventqueue.store.sqlite import queries as sql
from eventqueue.store.sqlite.bodies import Q, insert_rows
from eventqueue.store.sqlite.connection import Prepared, Tx


class C:
    """The coalescing statements, prepared once per process."""

    superseded = Prepared.of(sql.select_superseded_keys())
    slide = Prepared.of(sql.slide_superseded_key())
    add_duplicates = Prepared.of(sql.add_duplicates())
    candidates = Prepared.of(sql.select_coalesce_candidates())
    holders = Prepared.of(sql.select_dedup_holders())
    merge = Prepared.of(sql.apply_merge(full=False))
    merge_full = Prepared.of(sql.apply_merge(full=True))
    available = Prepared.of(sql.set_available())
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
) -> list[tuple[PutStatus, int]]:
    """Store `rows`, folding the coalescing ones into their key's pending event; (status, id)
    per row, a folded row's id being the event that holds it now."""
    live: dict[str, int] = {}
    retired: dict[str, int] = {}
    if dedup_ttl_s is not None:
        live = _live_originals(db, rows, dedup_ttl_s)
        retired = _retired_versions(db, rows, dedup_ttl_s, sliding)
    targets = _targets(db, rows)
    routing = coalesce.route(rows, live=live, retired=retired, targets=targets)
    fresh = [rows[i] for i in routing.inserts]
    stored = insert_rows(db, fresh, dedup_ttl_s, sliding=sliding) if fresh else []
    ids = {index: row_id for index, (_, row_id) in zip(routing.inserts, stored, strict=True)}

    def resolve(ref: Ref) -> int:
        return ref[1] if ref[0] == "id" else ids[ref[1]]

    _count_duplicates(db, rows, routing, resolve, live if sliding else {})
    dedup = dedup_ttl_s is not None
    _fold(db, coalesce.folding(rows, routing, ids, targets, dedup=dedup, debounce=debounce))
    if debounce is not None:  # new events of a key: wait for quiet like a folded one
        ready = coalesce.first_ready(rows, routing, ids, debounce)
        if ready:
            db.many(C.available.sql, [C.available.bind(b_id=i, b_available=at) for i, at in ready])
    status = dict(zip(routing.inserts, (s for s, _ in stored), strict=True))
    outcome: list[tuple[PutStatus, int]] = []
    folded = {i: target for target, members in routing.folds.items() for i in members}
    for index in range(len(rows)):
        if index in routing.duplicates:
            outcome.append((PutStatus.DUPLICATE, resolve(routing.duplicates[index])))
        elif index in folded:
            outcome.append((PutStatus.ACCEPTED, resolve(folded[index])))
        else:
            outcome.append((status[index], ids[index]))
    return outcome


def _live_originals(db: Tx, rows: Sequence[NewEvent], ttl_s: float) -> dict[str, int]:
    """Content hashes held by an event inside its window (closed windows released first)."""
    arrived = first_receipts(rows)
    release = Q.release_dedup.bind(
        b_hashes=json.dumps(list(arrived)),
        b_received=json.dumps(list(arrived.values())),
        b_ttl=ttl_s,
    )
    db.run(Q.release_dedup.sql, release)
    found = db.rows(C.holders.sql, C.holders.bind(b_hashes=json.dumps(list(arrived))))
    return {str(key): int(event_id) for event_id, key in found}


def _retired_versions(
    db: Tx, rows: Sequence[NewEvent], ttl_s: float, sliding: bool
) -> dict[str, int]:
    """Hashes of versions a coalesce replaced, inside their window at the put's first row of
    that content: {hash: the event that replaced it}."""
    arrived = first_receipts(r for r in rows if r.coalesce_key is not None)
    if not arrived:
        return {}
    params = C.superseded.bind(b_hashes=json.dumps(sorted(arrived)))
    found: dict[str, int] = {}
    for key, event_id, at in db.rows(C.superseded.sql, params):
        if coalesce.within(ttl_s, arrived[key], float(at)):
            found[str(key)] = int(event_id)
            if sliding:
                db.run(C.slide.sql, C.slide.bind(b_key=key, b_at=arrived[key]))
    return found


def _targets(db: Tx, rows: Sequence[NewEvent]) -> dict[tuple[str, str], Candidate]:
    """Per (batch key, coalesce key) of the put: its newest pending (or held), never delivered
    event, with its ordering group and whether it is the group's last."""
    pairs = set(coalesce.pairs(rows))
    keys = sorted({ck for _, ck in pairs})
    found: dict[tuple[str, str], Candidate] = {}
    for i, bk, ck, p, r, dk, at, group, last in db.rows(
        C.candidates.sql, C.candidates.bind(b_keys=json.dumps(keys))
    ):
        if (bk, ck) in pairs:  # rows come in id order: the last one is the newest
            found[(bk, ck)] = Candidate(
                int(i), bk, ck, int(p), float(r), dk, float(at), group, bool(last)
            )
    return found


def _count_duplicates(
    db: Tx,
    rows: Sequence[NewEvent],
    routing: Routing,
    resolve: Any,
    slide: dict[str, int],
) -> None:
    """Repeats found before the insert count on the event they repeat; with a sliding window
    a repeat of a live original restarts its window (`slide`: those originals)."""
    if not routing.duplicates:
        return
    params = []
    for index, ref in routing.duplicates.items():
        row = rows[index]
        at = row.received_at if row.content_hash in slide else None
        params.append(C.add_duplicates.bind(b_id=resolve(ref), b_n=1, b_at=at))
    db.many(C.add_duplicates.sql, params)
    n = len(routing.duplicates)
    db.run(Q.counter.sql, Q.counter.bind(b_name="duplicates_suppressed", b_n=n))


def _fold(db: Tx, plan: coalesce.Folding) -> None:
    """Each target takes its latest version; the versions replaced keep their dedup keys."""
    plain: list[tuple[Any, ...]] = []
    full: list[tuple[Any, ...]] = []
    for m in plan.merges:
        values = {
            "b_id": m.target,
            "b_payload": m.row.payload_json,
            "b_hash": m.row.content_hash,
            "b_dedup_key": m.dedup_key,
            "b_dedup_at": m.dedup_at,
            "b_trace": m.row.trace_context,
            "b_n": m.superseded,
        }
        if m.raised or m.available_at is not None:
            full.append(
                C.merge_full.bind(**values, b_priority=m.priority, b_available=m.available_at)
            )
        else:
            plain.append(C.merge.bind(**values))
    retire = [C.retire.bind(b_key=k, b_id=i, b_at=at) for k, i, at in plan.retired]
    for statement, params in ((C.merge, plain), (C.merge_full, full), (C.retire, retire)):
        if params:
            db.many(statement.sql, params)
    if plan.superseded:
        db.run(Q.counter.sql, Q.counter.bind(b_name="superseded", b_n=plan.superseded))


def prune(db: Tx, since: float) -> None:
    """Forget replaced versions whose dedup window closed before `since`."""
    db.run(C.prune.sql, C.prune.bind(b_since=since))
