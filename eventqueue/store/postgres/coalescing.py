"""The PostgreSQL store's coalescing put: the same routing as the SQLite one (core/coalesce.py
`route`, store/sqlite/coalescing.py), in few round trips. Differs from the SQLite version
because writers on several hosts run at once: the put first takes a transaction-scoped
advisory lock per (batch key, coalesce key), in sorted order, so two puts of one key fold one
after the other; and the merge's UPDATE re-checks its target (a consumer on any host may have
claimed it since the read, or put a later event of its ordering group), the rows meant for a
target that was claimed (or is no longer its group's last) being stored as new events
instead."""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from eventqueue.core import coalesce
from eventqueue.core.coalesce import Candidate, Debounce, Folding, Ref, Routing
from eventqueue.core.models import PutStatus
from eventqueue.core.records import NewEvent, first_receipts
from eventqueue.store.postgres import queries as sql
from eventqueue.store.postgres.connection import Conn
from eventqueue.store.postgres.text import from_db, to_db

Outcome = list[tuple[PutStatus, int]]
Insert = Callable[[Conn, Sequence[NewEvent], "float | None", bool], Awaitable[Outcome]]


def coalescing(rows: Sequence[NewEvent]) -> bool:
    """Whether a put takes the coalescing path (some row carries a coalesce key)."""
    return any(row.coalesce_key is not None for row in rows)


def lock_id(batch_key: str, coalesce_key: str) -> int:
    """A 64-bit advisory lock id for one (batch key, coalesce key)."""
    digest = hashlib.blake2b(f"{batch_key}\x00{coalesce_key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class _State:
    """What the put read: live originals, replaced versions, targets per key."""

    def __init__(self) -> None:
        self.live: dict[str, int] = {}
        self.expired = False  # a holder whose window closed: release before writing
        self.retired: dict[str, tuple[int, float]] = {}
        self.targets: dict[tuple[str, str], Candidate] = {}


async def _read(c: Conn, rows: Sequence[NewEvent], ttl_s: float | None) -> _State:
    state = _State()
    arrived = first_receipts(rows) if ttl_s is not None else {}
    pairs = set(coalesce.pairs(rows))
    keys = sorted({to_db(ck) for _, ck in pairs})
    query = sql.SELECT_COALESCE_STATE
    found = await c.fetch(query.sql, *query.args(hashes=list(arrived), keys=keys))
    for kind, i, bk, ck, p, r, dk, at, group, last in found:
        if kind == "live" and ttl_s is not None:
            if coalesce.within(ttl_s, arrived[str(dk)], float(at)):
                state.live[str(dk)] = int(i)
            else:
                state.expired = True
        elif kind == "retired" and ttl_s is not None:
            if coalesce.within(ttl_s, arrived[str(dk)], float(at)):
                state.retired[str(dk)] = (int(i), float(at))
        elif kind == "target":
            pair = (from_db(str(bk)), from_db(str(ck)))
            if pair in pairs:  # id order: the last one is the newest
                state.targets[pair] = Candidate(
                    int(i), *pair, int(p), float(r), dk, float(at), group, bool(last)
                )
    return state


async def put_coalescing(
    c: Conn,
    rows: Sequence[NewEvent],
    dedup_ttl_s: float | None,
    *,
    sliding: bool,
    debounce: Debounce | None,
    insert: Insert,
) -> Outcome:
    """Store `rows`, folding the coalescing ones into their key's pending event; (status, id)
    per row, a folded row's id being the event that holds it now."""
    locks = sorted({lock_id(bk, ck) for bk, ck in coalesce.pairs(rows)})
    await c.fetchval(sql.LOCK_COALESCE_KEYS.sql, *sql.LOCK_COALESCE_KEYS.args(locks=locks))
    state = await _read(c, rows, dedup_ttl_s)
    if state.expired and dedup_ttl_s is not None:
        arrived = first_receipts(rows)
        args = sql.RELEASE_DEDUP.args(
            hashes=list(arrived), received=list(arrived.values()), ttl=dedup_ttl_s
        )
        await c.execute(sql.RELEASE_DEDUP.sql, *args)
    retired = {h: i for h, (i, _) in state.retired.items()}
    routing = coalesce.route(rows, live=state.live, retired=retired, targets=state.targets)
    fresh = [rows[i] for i in routing.inserts]
    inserted = await insert(c, fresh, dedup_ttl_s, sliding) if fresh else []
    ids = {index: row_id for index, (_, row_id) in zip(routing.inserts, inserted, strict=True)}
    status = dict(zip(routing.inserts, (s for s, _ in inserted), strict=True))

    def resolve(ref: Ref) -> int:
        return ref[1] if ref[0] == "id" else ids[ref[1]]

    await _duplicates(c, rows, routing, resolve, state, sliding)
    dedup = dedup_ttl_s is not None
    plan = coalesce.folding(rows, routing, ids, state.targets, dedup=dedup, debounce=debounce)
    missed = await _fold(c, plan)
    folded = {i: t for t, members in routing.folds.items() for i in members}
    for target_ref in [t for t in routing.folds if resolve(t) in missed]:
        # Claimed since the read: its versions are stored as events of their own.
        members = routing.folds[target_ref]
        again = await insert(c, [rows[i] for i in members], dedup_ttl_s, sliding)
        for index, (s, row_id) in zip(members, again, strict=True):
            folded.pop(index)
            ids[index], status[index] = row_id, s
    if debounce is not None:
        ready = coalesce.first_ready(rows, routing, ids, debounce)
        if ready:
            args = sql.SET_AVAILABLE.args(ids=[i for i, _ in ready], ats=[at for _, at in ready])
            await c.execute(sql.SET_AVAILABLE.sql, *args)
    outcome: Outcome = []
    for index in range(len(rows)):
        if index in routing.duplicates:
            outcome.append((PutStatus.DUPLICATE, resolve(routing.duplicates[index])))
        elif index in folded:
            outcome.append((PutStatus.ACCEPTED, resolve(folded[index])))
        else:
            outcome.append((status[index], ids[index]))
    return outcome


async def _duplicates(
    c: Conn, rows: Sequence[NewEvent], routing: Routing, resolve: Any, state: _State, sliding: bool
) -> None:
    """Repeats found before the insert count on the event they repeat; a sliding window
    restarts at each (a live original's dedup_at, a replaced version's key). The store-wide
    counter is added by the put's closing statement (PUT_FINISH), from the outcome."""
    if not routing.duplicates:
        return
    counts: dict[int, list[Any]] = {}
    slides: dict[str, float] = {}
    for index, ref in routing.duplicates.items():
        row = rows[index]
        entry = counts.setdefault(resolve(ref), [0, None])
        entry[0] += 1
        if sliding and row.content_hash in state.live:
            entry[1] = max(entry[1] or row.received_at, row.received_at)
        elif sliding and row.content_hash in state.retired:
            slides[row.content_hash] = max(slides.get(row.content_hash, 0.0), row.received_at)
    ids = sorted(counts)
    args = sql.ADD_DUPLICATES.args(
        ids=ids, ns=[counts[i][0] for i in ids], ats=[counts[i][1] for i in ids]
    )
    await c.execute(sql.ADD_DUPLICATES.sql, *args)
    if slides:
        args = sql.SLIDE_SUPERSEDED_KEYS.args(keys=list(slides), ats=list(slides.values()))
        await c.execute(sql.SLIDE_SUPERSEDED_KEYS.sql, *args)


async def _fold(c: Conn, plan: Folding) -> set[int]:
    """Apply the merges; the targets that were claimed since the read (nothing changed)."""
    merges = plan.merges
    if not merges:
        return set()
    args = sql.APPLY_MERGES.args(
        ids=[m.target for m in merges],
        payloads=[m.row.payload_json for m in merges],
        hashes=[m.row.content_hash for m in merges],
        priorities=[m.priority for m in merges],
        dedup_keys=[m.dedup_key for m in merges],
        dedup_ats=[m.dedup_at for m in merges],
        traces=[m.row.trace_context for m in merges],
        ns=[m.superseded for m in merges],
        availables=[m.available_at for m in merges],
        retired_keys=[k for k, _, _ in plan.retired],
        retired_ids=[i for _, i, _ in plan.retired],
        retired_ats=[at for _, _, at in plan.retired],
    )
    took = {int(r[0]) for r in await c.fetch(sql.APPLY_MERGES.sql, *args)}
    return {m.target for m in merges} - took


async def prune(c: Conn, since: float) -> None:
    """Forget replaced versions whose dedup window closed before `since`."""
    await c.execute(sql.PRUNE_SUPERSEDED_KEYS.sql, *sql.PRUNE_SUPERSEDED_KEYS.args(since=since))
