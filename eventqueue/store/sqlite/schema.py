"""The schema, defined once: every table, index and debugging view. Migrations create them."""

from __future__ import annotations

from sqlalchemy import (
    CheckConstraint,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    text,
)

# Named constraints from the first revision: alembic's batch mode on SQLite rebuilds tables and
# can only drop or alter what has a name (failure mode F9).
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)

# 'held' (revision 0004): an ordered event waiting for the earlier events of its ordering key.
STATUSES = ("pending", "held", "claimed", "done", "dead")

events = Table(
    "events",
    metadata,
    # AUTOINCREMENT: ids are never reused after a purge, so "what happened to event X" has one answer.
    Column("id", Integer, primary_key=True),
    Column("payload", Text, nullable=False),  # canonical JSON text: json_extract() works in SQL
    Column("priority", Integer, nullable=False),
    Column("batch_key", Text, nullable=False),
    Column("content_hash", Text, nullable=False),
    # The dedup key: the content hash while the event's dedup window is open, NULL after it (or
    # when dedup is off). UNIQUE makes the schema itself refuse a duplicate inside the window.
    Column("dedup_key", Text, nullable=True, unique=True),
    Column("status", Text, nullable=False, server_default="pending"),
    Column("received_at", Float, nullable=False),  # unix seconds, wall clock
    Column("available_at", Float, nullable=False),  # not claimable before (retry back-off)
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("lease_owner", Text, nullable=True),
    Column("lease_token", Text, nullable=True),
    Column("lease_expires_at", Float, nullable=True),
    Column("batch_id", Text, nullable=True),
    Column("last_error", Text, nullable=True),
    Column("duplicates", Integer, nullable=False, server_default="0"),
    Column("finished_at", Float, nullable=True),  # when it became done or dead
    # The put's W3C trace context, "traceparent[ tracestate]" (revision 0002; NULL: not traced).
    Column("trace_context", Text, nullable=True),
    # The owner (a queue in one process, see `owners`) holding the lease (revision 0003; NULL
    # when not claimed, or claimed before 0003). `lease_owner` is the consumer's name.
    Column("lease_holder", Text, nullable=True),
    # The event's ordering group (revision 0004; NULL: unordered). The triggers below keep
    # at most one event of a group pending or claimed: the earliest not done or dead.
    Column("ordering_key", Text, nullable=True),
    # Coalescing (revision 0005): pending events of one batch key and coalesce key are one,
    # latest wins (NULL: never coalesced); how many newer versions replaced its payload; and
    # when its dedup window runs from (NULL: received_at; a sliding window or a coalesced
    # version moves it).
    Column("coalesce_key", Text, nullable=True),
    Column("superseded", Integer, nullable=False, server_default="0"),
    Column("dedup_at", Float, nullable=True),
    CheckConstraint(f"status IN {STATUSES!r}", name="status"),
    CheckConstraint("priority BETWEEN 1 AND 4", name="priority"),
    sqlite_autoincrement=True,
)

# The scheduler's index: claims only ever look at pending rows, so the index covers just those
# and never history. A claim only seeks in it (statements.claim_ready), so its cost does not
# grow with the pending set either: the column order is each key's claim order (priority
# DESC, received_at, id), so a LIMITed walk stops after one batch with no sort step, and per
# key and priority the oldest and newest event are one seek each. available_at makes it
# covering for the `_available` test: no table lookups.
Index(
    "ix_events_pending",
    events.c.batch_key,
    events.c.priority.desc(),
    events.c.received_at,
    events.c.id,
    events.c.available_at,
    sqlite_where=text("status = 'pending'"),
)
# Expired leases are found without scanning finished rows.
Index("ix_events_claimed", events.c.lease_expires_at, sqlite_where=text("status = 'claimed'"))
# Retention purges walk done rows by age; dead-letter listings walk dead rows by age. (Two
# indexes, not one over "status IN (...)": SQLite proves a query may use a partial index only
# when the query repeats the index's WHERE term.)
Index("ix_events_done", events.c.finished_at, sqlite_where=text("status = 'done'"))
Index("ix_events_dead", events.c.finished_at, sqlite_where=text("status = 'dead'"))

# Ordering groups (revision 0004): per key, its unfinished events in order (received_at, id)
# are a few seeks away, for the triggers that pick each group's head. Done rows are kept out
# of the claim path; they stay in this index until purged.
Index(
    "ix_events_ordering",
    events.c.ordering_key,
    events.c.status,
    events.c.received_at,
    events.c.id,
    sqlite_where=text("ordering_key IS NOT NULL"),
)

# Held events are counted (unfinished work) without reading the rest of the table.
Index("ix_events_held", events.c.id, sqlite_where=text("status = 'held'"))

# Per batch key under a limit (revision 0004): its token bucket (tokens at refilled_at; NULL:
# never drawn from, full) and how many claims a limit held it back. Batches in flight are
# counted from the leased rows, so a crash never leaves a count behind.
key_limits = Table(
    "key_limits",
    metadata,
    Column("batch_key", Text, primary_key=True),
    Column("tokens", Float, nullable=True),
    Column("refilled_at", Float, nullable=True),
    Column("ready_at", Float, nullable=True),  # when the bucket holds a token again
    Column("held_back", Integer, nullable=False, server_default="0"),
)

# The keys whose bucket is empty now: one range read per claim, however many keys.
Index("ix_key_limits_ready_at", key_limits.c.ready_at)

# A coalescing put finds the pending event of its keys (revision 0005).
Index(
    "ix_events_coalesce",
    events.c.coalesce_key,
    events.c.batch_key,
    sqlite_where=text("status IN ('pending', 'held') AND coalesce_key IS NOT NULL"),
)

# The dedup keys of versions a coalesce replaced, while their window is open: a repeat of a
# replaced payload is still a duplicate (of the event that replaced it), so a stale re-send
# never overwrites newer state. Pruned by the purge once the window closed.
superseded_keys = Table(
    "superseded_keys",
    metadata,
    Column("dedup_key", Text, primary_key=True),
    Column("event_id", Integer, nullable=False),
    Column("dedup_at", Float, nullable=False),
)

# Where each stream source stands (e.g. SSE Last-Event-ID), written in the same transaction
# as the events it produced, so a restarted listener resumes exactly after what was committed.
source_positions = Table(
    "source_positions",
    metadata,
    Column("source", Text, primary_key=True),
    Column("position", Text, nullable=True),
    Column("updated_at", Float, nullable=False),
)

# How far each spill log (one per process that spills, by its directory) has been promoted,
# per priority, written in the promoting transaction.
spill_positions = Table(
    "spill_positions",
    metadata,
    Column("log", Text, primary_key=True),
    Column("priority", Integer, primary_key=True),
    Column("segment", Integer, nullable=False),
    Column("offset", Integer, nullable=False),
)

# Totals that must outlive purged rows (duplicates suppressed, spilled, promoted ...).
# Every open queue (revision 0003): the owner its leases name, where it runs and when it last
# said it was alive. A queue registers at open and refreshes its row every
# EVENT_OWNER_HEARTBEAT_S; an owner found gone (runtime/owners.py) has its leases released
# and its row deleted, in one transaction.
owners = Table(
    "owners",
    metadata,
    Column("owner", Text, primary_key=True),  # host/pid/random: unique per opened queue
    Column("host", Text, nullable=False),
    Column("pid", Integer, nullable=False),
    # Where `pid` means this process: boot id and pid namespace ("" when unknown). Only a
    # judge in the same pid space may check the pid; any other judges by heartbeat.
    Column("pid_space", Text, nullable=False),
    Column("process_start", Integer, nullable=True),  # /proc/<pid>/stat starttime (ticks)
    Column("started_at", Float, nullable=False),
    Column("heartbeat_at", Float, nullable=False),
    Column("heartbeat_s", Float, nullable=False),  # this owner's own heartbeat period
)

counters = Table(
    "counters",
    metadata,
    Column("name", Text, primary_key=True),
    Column("value", Integer, nullable=False, server_default="0"),
)

# The settings of the last process that opened the queue, so the views can apply the same
# batch window and batch size as the scheduler.
settings = Table(
    "settings",
    metadata,
    Column("name", Text, primary_key=True),
    Column("value", Text, nullable=False),
)

_NOW = "(julianday('now') - 2440587.5) * 86400.0"
_PRIORITY_NAME = (
    "CASE priority WHEN 4 THEN 'CRITICAL' WHEN 3 THEN 'HIGH' WHEN 2 THEN 'NORMAL' ELSE 'LOW' END"
)

# Debugging views: `sqlite3 events.db 'select * from eq_overview'`. Created by migrations;
# kept here so a test can check the migrations produce exactly these.
VIEWS: dict[str, str] = {
    "eq_overview": f"""
        SELECT status, {_PRIORITY_NAME} AS priority, batch_key, count(*) AS events,
               round({_NOW} - min(received_at), 3) AS oldest_age_s,
               sum(duplicates) AS duplicates, sum(superseded) AS superseded
        FROM events GROUP BY status, events.priority, batch_key
    """,
    "eq_ready_batches": f"""
        SELECT batch_key, count(*) AS pending, max(priority) AS top_priority,
               round({_NOW} - min(received_at), 3) AS oldest_age_s,
               (count(*) >= CAST((SELECT value FROM settings WHERE name = 'max_batch_size') AS INTEGER)
                OR max(priority) = 4
                OR ({_NOW} - min(received_at)) * 1000.0
                   >= CAST((SELECT value FROM settings WHERE name = 'batch_window_ms') AS REAL)
                OR (SELECT value FROM settings WHERE name = 'enable_batching') = 'false'
               ) AS ready,
               count(coalesce_key) AS coalesce_keys, sum(superseded) AS superseded
        FROM events WHERE status = 'pending' AND available_at <= {_NOW}
        GROUP BY batch_key
    """,
    "eq_dead_letters": f"""
        SELECT id, json_extract(payload, '$.event_name') AS event_name, {_PRIORITY_NAME} AS priority,
               attempts, last_error, datetime(finished_at, 'unixepoch') AS died_at,
               coalesce_key, superseded, payload, ordering_key
        FROM events WHERE status = 'dead'
    """,
    # Revision 0004: ordering groups with unfinished events, and what holds each.
    "eq_ordering_groups": f"""
        SELECT ordering_key, sum(status = 'held') AS held, sum(status = 'pending') AS pending,
               sum(status = 'claimed') AS claimed,
               round({_NOW} - min(received_at), 3) AS oldest_age_s
        FROM events WHERE ordering_key IS NOT NULL AND status IN ('pending', 'held', 'claimed')
        GROUP BY ordering_key
    """,
    "eq_claimed": f"""
        SELECT batch_id, lease_owner, batch_key, count(*) AS events,
               round(min(lease_expires_at) - {_NOW}, 3) AS lease_left_s, max(attempts) AS attempts
        FROM events WHERE status = 'claimed' GROUP BY batch_id, lease_owner, batch_key
    """,
}


# The head of an ordering group: its earliest unfinished event by (received_at, id), `{k}`
# the group's key. One seek per status on ix_events_ordering, never a walk of the group.
_HEAD = """(SELECT id FROM (
        SELECT * FROM (SELECT id, received_at FROM events WHERE ordering_key = {k}
                       AND status = 'pending' ORDER BY received_at, id LIMIT 1)
        UNION ALL
        SELECT * FROM (SELECT id, received_at FROM events WHERE ordering_key = {k}
                       AND status = 'held' ORDER BY received_at, id LIMIT 1))
    ORDER BY received_at, id LIMIT 1)"""
_BUSY = "EXISTS (SELECT 1 FROM events WHERE ordering_key = {k} AND status = 'claimed')"

# Make group {k} right: its head pending (unless an event of it is claimed), every other
# unfinished event held. Pending rows of the group are few (the head, and rows just put or
# requeued), so this reads a handful of index entries however long the group is.
_NORMALISE = f"""
    UPDATE events SET status = CASE WHEN id = {_HEAD} AND NOT {_BUSY}
                                    THEN 'pending' ELSE 'held' END
    WHERE (ordering_key = {{k}} AND status = 'pending') OR id = {_HEAD};
"""

# The ordering rule lives in the schema, so it holds for every writer (each process, the CLI's
# requeue, an older eventqueue that knows nothing of it): an event with an ordering key is
# inserted pending and held at once if its group has an earlier unfinished event or a claimed
# one; when a group's event becomes done or dead, or a dead one is requeued, the group's head
# is chosen again. A dead head records that the events after it went on. SQLite runs each
# trigger once per row (recursive_triggers is off: the triggers' own updates fire nothing).
TRIGGERS: dict[str, str] = {
    "eq_ordering_put": f"""
        CREATE TRIGGER IF NOT EXISTS eq_ordering_put AFTER INSERT ON events
        WHEN NEW.ordering_key IS NOT NULL
        BEGIN {_NORMALISE.format(k="NEW.ordering_key")} END
    """,
    "eq_ordering_settle": f"""
        CREATE TRIGGER IF NOT EXISTS eq_ordering_settle AFTER UPDATE OF status ON events
        WHEN NEW.ordering_key IS NOT NULL AND OLD.status <> NEW.status
             AND (NEW.status IN ('done', 'dead') OR OLD.status = 'dead')
        BEGIN
            UPDATE events SET last_error = coalesce(last_error || '; ', '')
                                           || 'later events of its ordering key went on'
            WHERE id = NEW.id AND NEW.status = 'dead'
              AND (EXISTS (SELECT 1 FROM events WHERE ordering_key = NEW.ordering_key
                           AND status = 'held')
                   OR EXISTS (SELECT 1 FROM events WHERE ordering_key = NEW.ordering_key
                              AND status = 'pending'));
            {_NORMALISE.format(k="NEW.ordering_key")}
        END
    """,
}
