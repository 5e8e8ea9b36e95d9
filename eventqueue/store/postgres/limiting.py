"""Key limits on PostgreSQL: what a claim transaction reads and writes for them (the rules are
eventqueue.core.limits).

Claims on several hosts run at once (SKIP LOCKED), so the holds read before a claim can be
stale by the time it commits. After the claim, the rows of its limited keys in `key_limits`
are locked (in key order), and under those locks the key's leased batches are counted again
(the committed claims of every host, and this one) and its bucket read again: a batch over the
limit is given back in the same transaction, unseen, its attempt uncounted. Two claimers of
one key thus decide one after the other, and neither can miss the other's lease.
"""

from __future__ import annotations

from collections.abc import Sequence

from eventqueue.core.limits import Holds, KeyLimits, debit, holds
from eventqueue.core.limits import key_uses as shape_key_uses
from eventqueue.core.models import Batch, Priority
from eventqueue.core.records import KeyUse, LimitHold
from eventqueue.store.postgres import queries as sql
from eventqueue.store.postgres.connection import Conn
from eventqueue.store.postgres.text import from_db, to_db


async def in_flight(c: Conn) -> dict[str, int]:
    """Batches leased now, per batch key."""
    return {from_db(k): int(n) for k, n in await c.fetch(sql.IN_FLIGHT.sql)}


async def _empty(c: Conn, now: float) -> dict[str, float]:
    rows = await c.fetch(sql.EMPTY_BUCKETS.sql, *sql.EMPTY_BUCKETS.args(now=now))
    return {from_db(k): float(at) for k, at in rows}


async def claim_holds(c: Conn, limits: KeyLimits, now: float) -> Holds:
    """The keys at their limit as committed now, for the claim's readiness test."""
    return holds(limits, await in_flight(c), await _empty(c, now))


def held_args(held: Holds | None) -> dict[str, list[str]]:
    """The readiness statements' key-limit parameters."""
    if not held:
        return {"blocked": [], "critical_only": []}
    return {
        "blocked": [to_db(k) for k in held.blocked],
        "critical_only": [to_db(k) for k in held.critical_only],
    }


async def settle_claim(
    c: Conn,
    limits: KeyLimits,
    held: Holds,
    batches: Sequence[Batch],
    asked: int,
    now: float,
    give_back: list[Batch],
) -> list[Batch]:
    """Check the claimed batches against their limits under the keys' locks; draw the kept
    ones from their buckets. The batches kept, best first; `give_back` collects the rest."""
    limited = {b.key: b for b in batches if limits.for_key(b.key) is not None}
    counted = []
    if held and len(batches) < asked:
        args = sql.PENDING_KEYS_AMONG.args(keys=[to_db(k) for k in held.all()])
        counted = [from_db(k) for (k,) in await c.fetch(sql.PENDING_KEYS_AMONG.sql, *args)]
    if not limited and not counted:
        return list(batches)
    keys = sorted({*limited, *counted})
    lock = sql.LOCK_KEYS.args(keys=[to_db(k) for k in keys], held=[to_db(k) for k in counted])
    buckets = {from_db(k): (t, at) for k, t, at in await c.fetch(sql.LOCK_KEYS.sql, *lock)}
    if not limited:
        return list(batches)
    args = sql.IN_FLIGHT_OF.args(keys=[to_db(k) for k in limited])
    flying = {from_db(k): int(n) for k, n in await c.fetch(sql.IN_FLIGHT_OF.sql, *args)}
    over = set()
    for key, batch in sorted(limited.items()):
        limit = limits.for_key(key)
        assert limit is not None
        tokens, at = buckets.get(key, (None, None))
        exempt = limit.exempt_critical and all(
            e.priority == Priority.CRITICAL for e in batch.events
        )
        # flying counts this batch too: over the limit when the others already fill it.
        if not exempt and limit.blocked(flying.get(key, 1) - 1, limit.refill(tokens, at, now)):
            over.add(key)
            continue
        if limit.rate_per_s is not None:
            level, ready_at = debit(limit, tokens, at, now, len(batch))
            save = sql.SAVE_BUCKET.args(key=to_db(key), tokens=level, now=now, ready_at=ready_at)
            await c.execute(sql.SAVE_BUCKET.sql, *save)
    give_back.extend(b for b in batches if b.key in over)
    return [b for b in batches if b.key not in over]


async def limit_hold(c: Conn, limits: KeyLimits, now: float) -> LimitHold:
    """Whether a limit holds back pending work now, and the first refill among those keys."""
    empty = await _empty(c, now)
    held = holds(limits, await in_flight(c), empty)
    if not held:
        return LimitHold()
    args = sql.PENDING_KEYS_AMONG.args(keys=[to_db(k) for k in held.all()])
    waiting = [from_db(k) for (k,) in await c.fetch(sql.PENDING_KEYS_AMONG.sql, *args)]
    refills = [empty[k] for k in waiting if k in empty]
    return LimitHold(bool(waiting), min(refills) if refills else None)


async def key_uses(c: Conn, limits: KeyLimits, now: float) -> dict[str, KeyUse]:
    """Per key under a limit: batches leased now, claims held back, bucket level now."""
    flying = await in_flight(c)
    rows = await c.fetch(sql.SELECT_KEY_LIMITS.sql)
    stored = {from_db(k): (int(h), t, at) for k, h, t, at in rows}
    return shape_key_uses(limits, flying, stored, now)
