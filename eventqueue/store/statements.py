"""Every statement eventqueue runs, each a small named builder over SQLAlchemy Core.

Only `store/sqlite.py` executes these; nothing else in the package names a table or column.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Delete,
    Insert,
    Select,
    Update,
    and_,
    bindparam,
    case,
    cast,
    delete,
    func,
    insert,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy import Integer as SAInteger
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from eventqueue.store.tables import counters, events, settings, source_positions, spill_positions

CRITICAL = 4
TOP_AGED_PRIORITY = 3  # aging lifts an event at most to HIGH, never to CRITICAL

# Columns a claim returns to build Event values.
EVENT_COLUMNS = (
    events.c.id,
    events.c.payload,
    events.c.priority,
    events.c.content_hash,
    events.c.batch_key,
    events.c.attempts,
    events.c.received_at,
)


# --- put ------------------------------------------------------------------------------------


def select_dedup_holders(keys: Sequence[str]) -> Select[Any]:
    """Rows currently holding any of these dedup keys."""
    return select(events.c.id, events.c.dedup_key, events.c.received_at).where(
        events.c.dedup_key.in_(keys)
    )


def release_dedup_keys() -> Update:
    """An expired original gives up its dedup key so the same content can be accepted again."""
    return update(events).where(events.c.id == bindparam("b_id")).values(dedup_key=None)


def insert_events() -> Insert:
    """Insert accepted events (executemany), returning their ids in parameter order."""
    return insert(events).returning(events.c.id, sort_by_parameter_order=True)


def count_duplicates() -> Update:
    """Add suppressed duplicates to the original row's count."""
    return (
        update(events)
        .where(events.c.id == bindparam("b_id"))
        .values(duplicates=events.c.duplicates + bindparam("b_n"))
    )


def add_to_counter() -> Insert:
    """Upsert: counter += n."""
    stmt = sqlite_insert(counters).values(name=bindparam("b_name"), value=bindparam("b_n"))
    return stmt.on_conflict_do_update(
        index_elements=[counters.c.name], set_={"value": counters.c.value + stmt.excluded.value}
    )


def select_counters() -> Select[Any]:
    return select(counters.c.name, counters.c.value)


def save_source_position() -> Insert:
    """Upsert the stream position reached by the events of this transaction."""
    stmt = sqlite_insert(source_positions).values(
        source=bindparam("b_source"),
        position=bindparam("b_position"),
        updated_at=bindparam("b_now"),
    )
    return stmt.on_conflict_do_update(
        index_elements=[source_positions.c.source],
        set_={"position": stmt.excluded.position, "updated_at": stmt.excluded.updated_at},
    )


def select_source_position(source: str) -> Select[Any]:
    return select(source_positions.c.position).where(source_positions.c.source == source)


def count_scheduled() -> Select[Any]:
    """Rows in the scheduling set (pending + claimed), the set EVENT_QUEUE_SIZE bounds."""
    pending = select(func.count()).select_from(events).where(events.c.status == "pending")
    claimed = select(func.count()).select_from(events).where(events.c.status == "claimed")
    return select(pending.scalar_subquery() + claimed.scalar_subquery())


# --- claim ----------------------------------------------------------------------------------


def expire_leases(*, dead: bool) -> Update:
    """Expired leases: back to pending, or dead when the attempts are used up."""
    where = and_(
        events.c.status == "claimed",
        events.c.lease_expires_at <= bindparam("b_now"),
        (events.c.attempts >= bindparam("b_max_attempts"))
        if dead
        else (events.c.attempts < bindparam("b_max_attempts")),
    )
    values: dict[str, object] = {
        "status": "dead" if dead else "pending",
        "lease_owner": None,
        "lease_token": None,
        "lease_expires_at": None,
        "batch_id": None,
    }
    if dead:
        values["last_error"] = func.coalesce(events.c.last_error, "lease expired")
        values["finished_at"] = bindparam("b_now")
    return update(events).where(where).values(**values)


def _effective_priority() -> ColumnElement[int]:
    # CRITICAL stays CRITICAL; anything else gains one level per aging period, capped at HIGH.
    aged = events.c.priority + cast(
        (bindparam("b_now") - events.c.received_at) / bindparam("b_aging_s"), SAInteger
    )
    return case(
        (events.c.priority == CRITICAL, CRITICAL),
        else_=func.min(aged, TOP_AGED_PRIORITY),
    )


def select_ready_key() -> Select[Any]:
    """The best ready batch key: highest effective priority, then oldest.

    A key is ready when it has a full batch pending, its oldest event has waited the batch
    window, it holds a CRITICAL event, or batching is off.
    """
    oldest = func.min(events.c.received_at)
    top = func.max(events.c.priority)
    effective = func.max(_effective_priority())
    count = func.count()
    ready = or_(
        count >= bindparam("b_max_batch"),
        oldest <= bindparam("b_window_start"),
        top == CRITICAL,
        bindparam("b_no_batching") == literal(1),
    )
    return (
        select(
            events.c.batch_key,
            effective.label("effective"),
            oldest.label("oldest"),
            top.label("top"),
        )
        .where(events.c.status == "pending", events.c.available_at <= bindparam("b_now"))
        .group_by(events.c.batch_key)
        .having(ready)
        .order_by(effective.desc(), oldest.asc())
        .limit(1)
    )


def claim_batch(*, critical_only: bool) -> Update:
    """Lease the key's next events (priority, then FIFO) in one statement, returning them."""
    conditions = [
        events.c.status == "pending",
        events.c.batch_key == bindparam("b_key"),
        events.c.available_at <= bindparam("b_now"),
    ]
    if critical_only:
        conditions.append(events.c.priority == CRITICAL)
    chosen = (
        select(events.c.id)
        .where(*conditions)
        .order_by(events.c.priority.desc(), events.c.received_at, events.c.id)
        .limit(bindparam("b_limit"))
        .scalar_subquery()
    )
    return (
        update(events)
        .where(events.c.id.in_(chosen))
        .values(
            status="claimed",
            lease_owner=bindparam("b_owner"),
            lease_token=bindparam("b_token"),
            lease_expires_at=bindparam("b_expires"),
            batch_id=bindparam("b_batch_id"),
            attempts=events.c.attempts + 1,
        )
        .returning(*EVENT_COLUMNS)
    )


def next_wakeup() -> Select[Any]:
    """When something not yet ready may become ready: oldest pending, next retry, next expiry."""
    oldest = (
        select(func.min(events.c.received_at))
        .where(events.c.status == "pending", events.c.available_at <= bindparam("b_now"))
        .scalar_subquery()
    )
    retry = (
        select(func.min(events.c.available_at))
        .where(events.c.status == "pending", events.c.available_at > bindparam("b_now"))
        .scalar_subquery()
    )
    expiry = (
        select(func.min(events.c.lease_expires_at))
        .where(events.c.status == "claimed")
        .scalar_subquery()
    )
    return select(oldest, retry, expiry)


# --- ack, nack, extend, release ---------------------------------------------------------------


def _leased(ids_param: str = "b_ids") -> list[ColumnElement[bool]]:
    return [
        events.c.id.in_(bindparam(ids_param, expanding=True)),
        events.c.status == "claimed",
        events.c.lease_token == bindparam("b_token"),
    ]


def count_leased() -> Select[Any]:
    """How many of these ids are still claimed under this token (the fence)."""
    return select(func.count()).select_from(events).where(*_leased())


_LEASE_CLEARED = {"lease_owner": None, "lease_token": None, "lease_expires_at": None}


def ack_events() -> Update:
    """Leased events are done."""
    return (
        update(events)
        .where(*_leased())
        .values(status="done", finished_at=bindparam("b_now"), last_error=None, **_LEASE_CLEARED)
    )


def nack_event() -> Update:
    """One leased event back to pending after its back-off (executemany: per-event times)."""
    return (
        update(events)
        .where(events.c.id == bindparam("b_id"), events.c.lease_token == bindparam("b_token"))
        .values(
            status="pending",
            available_at=bindparam("b_available_at"),
            last_error=bindparam("b_error"),
            batch_id=None,
            **_LEASE_CLEARED,
        )
    )


def bury_event() -> Update:
    """One leased event is dead: attempts used up."""
    return (
        update(events)
        .where(events.c.id == bindparam("b_id"), events.c.lease_token == bindparam("b_token"))
        .values(
            status="dead",
            last_error=bindparam("b_error"),
            finished_at=bindparam("b_now"),
            **_LEASE_CLEARED,
        )
    )


def select_attempts() -> Select[Any]:
    return select(events.c.id, events.c.attempts).where(*_leased())


def extend_lease() -> Update:
    return update(events).where(*_leased()).values(lease_expires_at=bindparam("b_expires"))


def release_events() -> Update:
    """Unfinished claims back to pending at once (graceful shutdown), not after their lease."""
    return (
        update(events).where(*_leased()).values(status="pending", batch_id=None, **_LEASE_CLEARED)
    )


# --- inspection and repair ------------------------------------------------------------------


def count_by_status_priority() -> Select[Any]:
    return select(events.c.status, events.c.priority, func.count()).group_by(
        events.c.status, events.c.priority
    )


def oldest_pending() -> Select[Any]:
    return select(func.min(events.c.received_at)).where(events.c.status == "pending")


def count_ready_keys() -> Select[Any]:
    return select(func.count()).select_from(select_ready_key().limit(None).subquery())


def select_ready_keys(limit: int) -> Select[Any]:
    """Ready keys in claim order (for `peek`)."""
    return select_ready_key().limit(limit)


def select_pending_for_key() -> Select[Any]:
    return (
        select(*EVENT_COLUMNS)
        .where(
            events.c.status == "pending",
            events.c.batch_key == bindparam("b_key"),
            events.c.available_at <= bindparam("b_now"),
        )
        .order_by(events.c.priority.desc(), events.c.received_at, events.c.id)
        .limit(bindparam("b_limit"))
    )


def select_event(event_id: int) -> Select[Any]:
    return select(events).where(events.c.id == event_id)


def select_dead(limit: int) -> Select[Any]:
    return (
        select(events)
        .where(events.c.status == "dead")
        .order_by(events.c.finished_at.desc(), events.c.id.desc())
        .limit(limit)
    )


def requeue_events(*, all_dead: bool) -> Update:
    """Dead events (all, or the given ids) back to pending with a fresh attempt count."""
    where = [events.c.status == "dead"]
    if not all_dead:
        where.append(events.c.id.in_(bindparam("b_ids", expanding=True)))
    return (
        update(events)
        .where(*where)
        .values(status="pending", attempts=0, available_at=bindparam("b_now"), finished_at=None)
    )


def purge_done() -> Delete:
    """Delete one small chunk of done events finished before the cutoff."""
    chunk = (
        select(events.c.id)
        .where(events.c.status == "done", events.c.finished_at < bindparam("b_cutoff"))
        .limit(bindparam("b_chunk"))
        .scalar_subquery()
    )
    return delete(events).where(events.c.id.in_(chunk))


def save_setting() -> Insert:
    stmt = sqlite_insert(settings).values(name=bindparam("b_name"), value=bindparam("b_value"))
    return stmt.on_conflict_do_update(
        index_elements=[settings.c.name], set_={"value": stmt.excluded.value}
    )


# --- spill promotion ------------------------------------------------------------------------


def select_spill_positions() -> Select[Any]:
    return select(spill_positions.c.priority, spill_positions.c.segment, spill_positions.c.offset)


def save_spill_position() -> Insert:
    stmt = sqlite_insert(spill_positions).values(
        priority=bindparam("b_priority"),
        segment=bindparam("b_segment"),
        offset=bindparam("b_offset"),
    )
    return stmt.on_conflict_do_update(
        index_elements=[spill_positions.c.priority],
        set_={"segment": stmt.excluded.segment, "offset": stmt.excluded.offset},
    )
