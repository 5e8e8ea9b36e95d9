"""The dashboard's reads that the Store has no method for, as text for the read-only console.

They run through `eventqueue sql`'s guarded path (Inspector.sql: a read-only connection, one
statement, closed afterwards), exactly as `eventqueue top` reads its depth and latency. The
console takes no bind parameters, so every value is rendered here as a checked literal: an
integer that is an int, a string quoted with doubled quotes (standard SQL, the same on SQLite
and on PostgreSQL with standard_conforming_strings, its default). Each statement repeats the
partial indexes' `status = '...'` term so that SQLite may use them.
"""

from __future__ import annotations

from dataclasses import dataclass

from eventqueue.core.models import Status

# The columns an event list shows; payload fields are read in Python (both backends alike).
LIST_COLUMNS = (
    "id, status, priority, batch_key, attempts, received_at, finished_at, last_error, payload"
)
# Dead letters by error, through ix_events_dead: only dead rows are read.
DEAD_GROUPS_SQL = """
SELECT coalesce(last_error, ''), count(*), max(finished_at), min(id), max(id)
  FROM events WHERE status = 'dead'
 GROUP BY coalesce(last_error, '') ORDER BY count(*) DESC, max(finished_at) DESC
"""
ID_LIKE_HASH = 64  # a content hash is 64 hex digits
# Event lists and searches look at a window of this many ids at a time (the primary key's
# range), so a filter on an unindexed column (the payload's aggregate_id, event_id, a content
# hash past its dedup window) costs at most this many rows at any table size; the page links
# to the next, older window.
ID_WINDOW = 100_000
MAX_ID_SQL = "SELECT max(id) FROM events"


@dataclass(frozen=True, slots=True)
class EventFilter:
    """What the Events page narrows to; None: any."""

    status: str | None = None
    priority: int | None = None
    batch_key: str | None = None
    aggregate: str | None = None
    before_id: int | None = None  # keyset paging: ids below this one (None: the newest)


def literal(value: str | int | float) -> str:
    """A SQL literal for `value`: numbers as numbers, text quoted (quotes doubled)."""
    if isinstance(value, bool):
        raise TypeError("no booleans in the dashboard's queries")
    if isinstance(value, int | float):
        return repr(value)
    if "\x00" in value:
        raise ValueError("text with a NUL character cannot be searched")
    return "'" + value.replace("'", "''") + "'"


def payload_field(name: str, *, postgres: bool) -> str:
    """The expression reading top-level field `name` of the payload, as text."""
    # The payload is canonical JSON text on both backends: SQLite reads it with json_extract,
    # PostgreSQL casts it to json (differs from SQLite because it has no json_extract).
    if postgres:
        return f"(payload::json ->> {literal(name)})"
    return f"CAST(json_extract(payload, {literal('$.' + name)}) AS TEXT)"


def events_sql(found: EventFilter, *, below: int, limit: int, postgres: bool) -> str:
    """The newest events matching `found` with ids in [below - ID_WINDOW, below), `limit`."""
    terms = [f"id >= {literal(max(0, int(below) - ID_WINDOW))}", f"id < {literal(int(below))}"]
    if found.status is not None:
        terms.append(f"status = {literal(Status(found.status).value)}")
    if found.priority is not None:
        terms.append(f"priority = {literal(int(found.priority))}")
    if found.batch_key is not None:
        terms.append(f"batch_key = {literal(found.batch_key)}")
    if found.aggregate is not None:
        terms.append(
            f"{payload_field('aggregate_id', postgres=postgres)} = {literal(found.aggregate)}"
        )
    where = " AND ".join(terms)
    return f"SELECT {LIST_COLUMNS} FROM events WHERE {where} ORDER BY id DESC LIMIT {int(limit)}"


def find_sql(text: str, *, below: int, postgres: bool) -> str:
    """The ids of events that `text` names: an id, a content hash, or the payload's event_id
    (the last two among the newest ID_WINDOW ids below `below`; a hash in its dedup window
    anywhere)."""
    text = text.strip()
    window = f"id >= {literal(max(0, int(below) - ID_WINDOW))} AND id < {literal(int(below))}"
    if text.isascii() and text.isdigit() and len(text) <= 18:
        return f"SELECT id FROM events WHERE id = {literal(int(text))}"
    if len(text) == ID_LIKE_HASH and all(c in "0123456789abcdef" for c in text.lower()):
        # dedup_key (unique, indexed) holds the hash while the dedup window is open; older
        # events are found by content_hash itself.
        hashed = literal(text.lower())
        return (
            f"SELECT id FROM events WHERE dedup_key = {hashed} UNION "
            f"SELECT id FROM events WHERE {window} AND content_hash = {hashed} "
            "ORDER BY id DESC LIMIT 50"
        )
    field = payload_field("event_id", postgres=postgres)
    return (
        f"SELECT id FROM events WHERE {window} AND {field} = {literal(text)} "
        "ORDER BY id DESC LIMIT 50"
    )


def dead_ids_sql(error: str, *, limit: int) -> str:
    """The ids of dead events whose last error is `error` ('' for none), newest first."""
    return (
        "SELECT id FROM events WHERE status = 'dead' "
        f"AND coalesce(last_error, '') = {literal(error)} ORDER BY finished_at DESC LIMIT {int(limit)}"
    )
