"""SQLite errors in eventqueue's terms: one translation, with a hint saying what to do next."""

from __future__ import annotations

import sqlite3

from eventqueue.core.errors import StorageError

_HINTS = (
    ("locked", "another process holds a write lock; retry, or raise EVENT_BUSY_TIMEOUT_MS"),
    ("busy", "another process holds a write lock; retry, or raise EVENT_BUSY_TIMEOUT_MS"),
    ("not a database", "the file is not an eventqueue database (or is damaged); check --db"),
    ("full", "the disk is full; free space and retry (nothing of this transaction was written)"),
    ("readonly", "the database is read-only; check the permissions of the file and its folder"),
    ("read-only", "the database is read-only; check the permissions of the file and its folder"),
    ("unable to open", "check the path and its permissions"),
    (
        "disk i/o error",
        "the file could not be read or written: it may have been made read-only or removed, "
        "or the disk is failing; check it, then retry",
    ),
)


def is_busy(exc: BaseException) -> bool:
    """True when SQLite refused because another connection holds the lock."""
    if not isinstance(exc, sqlite3.OperationalError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    message = str(exc).lower()
    return code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) or "locked" in message


def storage_error(path: str, exc: BaseException) -> StorageError:
    """`exc` as a StorageError naming the database and the likely fix (raise it `from exc`)."""
    message = str(exc)
    lowered = message.lower()
    hint = next((h for needle, h in _HINTS if needle in lowered), "see the cause below")
    return StorageError(f"database {path}: {message} ({hint})")
