"""Where a database's eventqueue schema stands, and bringing it to head when asked."""

from __future__ import annotations

from eventqueue.core.errors import SchemaError, StorageError
from eventqueue.core.records import SchemaStatus
from eventqueue.store.postgres import migrator
from eventqueue.store.postgres.connection import connect, display_name


async def read_state(dsn: str, *, timeout_s: float) -> tuple[str | None, bool]:
    """(revision, whether eventqueue's events table exists) in the URL's current schema."""
    connection = await connect(dsn, timeout_s=timeout_s)
    try:
        schema, current, has_events = await migrator.read_revision(connection)
    finally:
        await connection.close()
    if schema is None:
        raise StorageError(
            f"database {display_name(dsn)}: no schema of its search_path exists; create it "
            "(CREATE SCHEMA name) or fix search_path in the URL"
        )
    return current, has_events


async def read_status(dsn: str, *, timeout_s: float) -> SchemaStatus:
    """The schema revision against head, read-only."""
    current, has_events = await read_state(dsn, timeout_s=timeout_s)
    head = migrator.head_revision()
    state = "missing" if current is None and not has_events else migrator.state_of(current)
    return SchemaStatus(db=display_name(dsn), current=current, head=head, state=state)


async def ensure_schema(dsn: str, migrate: bool | str, *, timeout_s: float) -> None:
    """Check the schema is at head; create it in a schema without one, or upgrade when asked.

    "auto" creates eventqueue's tables where none of them exist (other applications' tables
    in the same schema are fine: a PostgreSQL database is shared) and refuses an old schema.
    """
    current, has_events = await read_state(dsn, timeout_s=timeout_s)
    head = migrator.head_revision()
    if current == head:
        return
    name = display_name(dsn)
    if current is not None and not migrator.is_known_revision(current):
        raise SchemaError(
            f"{name} has schema revision {current}, written by a newer eventqueue than this one "
            f"(which knows up to {head}): upgrade eventqueue to open it"
        )
    fresh = current is None and not has_events
    if migrate is True or (migrate == "auto" and fresh):
        await migrator.upgrade(dsn)
        return
    if current is None:
        raise SchemaError(
            f"{name} holds an events table but no eventqueue schema revision: run "
            f"`eventqueue migrate --db URL` (or open it with migrate=True)"
        )
    raise SchemaError(
        f"{name} has schema revision {current}, this eventqueue needs {head}: run "
        "`eventqueue migrate --db URL` (or open it with migrate=True)"
    )
