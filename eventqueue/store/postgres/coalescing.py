"""The PostgreSQL store's coalescing put: the same steps as the SQLite one (store/sqlite/
coalescing.py) over the plan of core/coalesce.py. Differs from the SQLite version because
writers on several hosts run at once: the put first takes a transaction-scoped advisory lock
per (batch key, coalesce key), in sorted order, so two puts of one key fold one after the
other; and the merge's UPDATE re-checks its target (a consumer may have claimed it since the
read), keeping the put's own rows when it was."""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Sequence

from eventqueue.core import coalesce
from eventqueue.core.coalesce import Candidate, Debounce, Plan
from eventqueue.core.models import PutStatus
from eventqueue.core.records import NewEvent
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
    retired = (
        await _retired_repeats(c, rows, dedup_ttl_s, sliding) if dedup_ttl_s is not None else {}
    )
    rest = [row for i, row in enumerate(rows) if i not in retired]
    stored = await insert(c, rest, dedup_ttl_s, sliding) if rest else []
    fresh = {
        row_id: row
        for row, (status, row_id) in zip(rest, stored, strict=True)
        if status is PutStatus.ACCEPTED and row.coalesce_key is not None
    }
    redirect = await _fold(c, fresh, dedup_ttl_s is not None, debounce) if fresh else {}
    found = iter(stored)
    outcome: Outcome = []
    for index in range(len(rows)):
        if index in retired:
            outcome.append((PutStatus.DUPLICATE, retired[index]))
        else:
            status, row_id = next(found)
            outcome.append((status, redirect.get(row_id, row_id)))
    return outcome


async def _retired_repeats(
    c: Conn, rows: Sequence[NewEvent], ttl_s: float, sliding: bool
) -> dict[int, int]:
    """Rows repeating a version a coalesce replaced inside its window: {row index: the id of
    the event that replaced it}. Counted as duplicates on that event."""
    hashes = sorted({r.content_hash for r in rows if r.coalesce_key is not None})
    if not hashes:
        return {}
    query = sql.SELECT_SUPERSEDED_KEYS
    found = await c.fetch(query.sql, *query.args(hashes=hashes))
    known = {str(k): (int(i), float(at)) for k, i, at in found}
    hits: dict[int, int] = {}
    slides: dict[str, float] = {}
    for index, row in enumerate(rows):
        entry = known.get(row.content_hash)
        if entry is None or not coalesce.within(ttl_s, row.received_at, entry[1]):
            continue
        hits[index] = entry[0]
        if sliding:
            slides[row.content_hash] = max(slides.get(row.content_hash, 0.0), row.received_at)
            known[row.content_hash] = (entry[0], max(entry[1], row.received_at))
    if slides:
        args = sql.SLIDE_SUPERSEDED_KEYS.args(keys=list(slides), ats=list(slides.values()))
        await c.execute(sql.SLIDE_SUPERSEDED_KEYS.sql, *args)
    if hits:
        ids = sorted(set(hits.values()))
        counts = [sum(1 for v in hits.values() if v == i) for i in ids]
        await c.execute(sql.ADD_DUPLICATES.sql, *sql.ADD_DUPLICATES.args(ids=ids, ns=counts))
        args = sql.ADD_TO_COUNTER.args(name="duplicates_suppressed", n=len(hits))
        await c.execute(sql.ADD_TO_COUNTER.sql, *args)
    return hits


async def _fold(
    c: Conn, fresh: dict[int, NewEvent], dedup: bool, debounce: Debounce | None
) -> dict[int, int]:
    """Apply the coalescing plan to the rows this put inserted; {absorbed id: target id}."""
    keys = sorted({to_db(r.coalesce_key) for r in fresh.values() if r.coalesce_key is not None})
    wanted = {(row.batch_key, row.coalesce_key) for row in fresh.values()}
    query = sql.SELECT_COALESCE_CANDIDATES
    candidates = []
    for i, bk, ck, p, r, dk, at in await c.fetch(query.sql, *query.args(keys=keys)):
        pair = (from_db(str(bk)), from_db(str(ck)))
        if pair in wanted:
            candidates.append(Candidate(int(i), *pair, int(p), float(r), dk, float(at)))
    plan = coalesce.plan(candidates, fresh, dedup=dedup, debounce=debounce)
    return await _apply(c, plan)


async def _apply(c: Conn, plan: Plan) -> dict[int, int]:
    if not plan.merges:
        return {}
    # The merge first, as a check: a target claimed since the read keeps its payload, and
    # the rows meant for it stay events of their own (a claimed event is never changed).
    # The absorbed rows still hold the latest key, so the targets take it only after they go.
    merges = plan.merges
    args = sql.APPLY_MERGES.args(
        ids=[m.target for m in merges],
        payloads=[m.row.payload_json for m in merges],
        hashes=[m.row.content_hash for m in merges],
        priorities=[m.priority for m in merges],
        dedup_keys=[None for _ in merges],
        dedup_ats=[m.dedup_at for m in merges],
        traces=[m.row.trace_context for m in merges],
        ns=[m.superseded for m in merges],
        availables=[m.available_at for m in merges],
    )
    took = {int(r[0]) for r in await c.fetch(sql.APPLY_MERGES.sql, *args)}
    redirect = {row: target for row, target in plan.redirect.items() if target in took}
    if redirect:
        await c.execute(sql.DELETE_ABSORBED.sql, *sql.DELETE_ABSORBED.args(ids=list(redirect)))
    done = [m for m in merges if m.target in took]
    keyed = [m for m in done if m.dedup_key is not None]
    if keyed:
        await c.execute(
            sql.SET_DEDUP_KEYS.sql,
            *sql.SET_DEDUP_KEYS.args(
                ids=[m.target for m in keyed], keys=[m.dedup_key for m in keyed]
            ),
        )
    retired = [r for r in plan.retired if r[1] in took]
    if retired:
        args = sql.RETIRE_KEYS.args(
            keys=[k for k, _, _ in retired],
            ids=[i for _, i, _ in retired],
            ats=[at for _, _, at in retired],
        )
        await c.execute(sql.RETIRE_KEYS.sql, *args)
    superseded = sum(m.superseded for m in done)
    if superseded:
        args = sql.ADD_TO_COUNTER.args(name="superseded", n=superseded)
        await c.execute(sql.ADD_TO_COUNTER.sql, *args)
    return redirect


async def prune(c: Conn, since: float) -> None:
    """Forget replaced versions whose dedup window closed before `since`."""
    await c.execute(sql.PRUNE_SUPERSEDED_KEYS.sql, *sql.PRUNE_SUPERSEDED_KEYS.args(since=since))
