"""asyncpg errors in eventqueue's terms: one translation, with a hint saying what to do next.
The cause is always kept (`raise translate(...) from exc`)."""

from __future__ import annotations

import asyncio

import asyncpg

from eventqueue.core.errors import EventQueueError, SchemaError, StorageError, StoreBusyError

# SQLSTATEs a transaction may simply be run again after (it was rolled back whole).
RETRYABLE = frozenset({"40001", "40P01"})  # serialization failure, deadlock detected

_HINTS = {
    "55P03": "a lock was held elsewhere past the allowed wait; retry, or raise EVENT_BUSY_TIMEOUT_MS",
    "53300": "the server has no connection slots left; raise max_connections or use fewer processes",
    "53100": "the server's disk is full; free space and retry (nothing of this transaction was written)",
    "25006": "the server or this session is read-only (a standby?); point EVENT_DB_PATH at the primary",
    "42501": "the role lacks a privilege on eventqueue's tables; GRANT it, or connect as their owner",
    "3D000": "the database does not exist; create it (createdb NAME) or fix the URL",
    "28P01": "password authentication failed; check the user and password in the URL",
    "28000": "the server refused this role; check the user in the URL and pg_hba.conf",
    "57P01": "the server is shutting down or restarted; retry when it is back",
    "3F000": "the schema in search_path does not exist; create it (CREATE SCHEMA) or fix the URL",
}


def is_busy(exc: BaseException) -> bool:
    """True when a lock or a connection could not be had in time (puts spill on this)."""
    return isinstance(exc, asyncpg.LockNotAvailableError | asyncio.TimeoutError | TimeoutError)


def storage_error(name: str, exc: BaseException) -> EventQueueError:
    """`exc` as eventqueue's error naming the database and the likely fix (raise it `from exc`)."""
    if isinstance(exc, asyncpg.LockNotAvailableError):
        return StoreBusyError(f"database {name}: {exc} ({_HINTS['55P03']})")
    if isinstance(exc, asyncpg.UndefinedTableError):
        return SchemaError(
            f"database {name}: {exc} (eventqueue's tables are missing: run "
            f"`eventqueue migrate --db URL`)"
        )
    if isinstance(exc, asyncpg.PostgresError):
        state = getattr(exc, "sqlstate", "") or ""
        hint = _HINTS.get(state, "see the cause below")
        return StorageError(f"database {name}: {exc} [{state}] ({hint})")
    if isinstance(exc, OSError | asyncpg.InterfaceError | asyncpg.ClientConfigurationError):
        return StorageError(
            f"cannot reach PostgreSQL at {name}: {exc} (is the server running, and is the "
            "URL in EVENT_DB_PATH right?)"
        )
    return StorageError(f"database {name}: {exc!r}")
