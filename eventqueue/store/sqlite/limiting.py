"""Key limits on SQLite: what a claim transaction reads and writes for them (the rules are
eventqueue.core.limits). Claims run one at a time under BEGIN IMMEDIATE, across every process
on the file, so the state read here is exact until the claim commits."""

from __future__ import annotations

import json
from collections.abc import Sequence

from eventqueue.core.limits import Holds, KeyLimits, debit, holds
from eventqueue.core.limits import key_uses as shape_key_uses
from eventqueue.core.models import Batch
from eventqueue.core.records import KeyUse, LimitHold
from eventqueue.store.sqlite import queries as sql
from eventqueue.store.sqlite.connection import Prepared, Tx


class L:
    """The key-limit statements, prepared once per process."""

    in_flight = Prepared.of(sql.select_in_flight())
    empty = Prepared.of(sql.select_empty_buckets())
    buckets = Prepared.of(sql.select_buckets())
    save = Prepared.of(sql.save_bucket())
    held_back = Prepared.of(sql.count_held_back())
    waiting = Prepared.of(sql.pending_keys_among())
    rows = Prepared.of(sql.select_key_limits())


def in_flight(db: Tx) -> dict[str, int]:
    """Batches leased now, per batch key."""
    return {str(k): int(n) for k, n in db.rows(L.in_flight.sql, L.in_flight.bind())}


def _empty(db: Tx, now: float) -> dict[str, float]:
    return {str(k): float(at) for k, at in db.rows(L.empty.sql, L.empty.bind(b_now=now))}


def claim_holds(db: Tx, limits: KeyLimits, now: float) -> Holds:
    """The keys at their limit now, for the claim's readiness test."""
    return holds(limits, in_flight(db), _empty(db, now))


def settle_claim(
    db: Tx, limits: KeyLimits, held: Holds, batches: Sequence[Batch], asked: int, now: float
) -> None:
    """After the claim: draw each claimed batch from its key's bucket, and count a claim held
    back for every held key with pending work when the claim found fewer batches than asked."""
    drawn = {b.key: len(b) for b in batches if _rate(limits, b.key)}
    if drawn:
        params = L.buckets.bind(b_keys=json.dumps(sorted(drawn)))
        known = {str(k): (t, at) for k, t, at in db.rows(L.buckets.sql, params)}
        for key, events in sorted(drawn.items()):
            limit = limits.for_key(key)
            assert limit is not None  # _rate checked it
            tokens, at = known.get(key, (None, None))
            level, ready_at = debit(limit, tokens, at, now, events)
            values = L.save.bind(b_key=key, b_tokens=level, b_now=now, b_ready_at=ready_at)
            db.run(L.save.sql, values)
    if held and len(batches) < asked:
        db.run(L.held_back.sql, L.held_back.bind(b_keys=json.dumps(list(held.all()))))


def _rate(limits: KeyLimits, key: str) -> bool:
    limit = limits.for_key(key)
    return limit is not None and limit.rate_per_s is not None


def limit_hold(db: Tx, limits: KeyLimits, now: float) -> LimitHold:
    """Whether a limit holds back pending work now, and the first refill among those keys."""
    empty = _empty(db, now)
    held = holds(limits, in_flight(db), empty)
    if not held:
        return LimitHold()
    params = L.waiting.bind(b_keys=json.dumps(list(held.all())))
    waiting = [str(k) for (k,) in db.rows(L.waiting.sql, params)]
    refills = [empty[k] for k in waiting if k in empty]
    return LimitHold(bool(waiting), min(refills) if refills else None)


def key_uses(db: Tx, limits: KeyLimits, now: float) -> dict[str, KeyUse]:
    """Per key under a limit: batches leased now, claims held back, bucket level now."""
    flying = in_flight(db)
    stored = {str(k): (int(h), t, at) for k, h, t, at in db.rows(L.rows.sql, L.rows.bind())}
    return shape_key_uses(limits, flying, stored, now)
