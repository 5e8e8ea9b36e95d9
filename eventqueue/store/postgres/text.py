"""Text that PostgreSQL cannot store as is: `text` holds no NUL character.

A batch key (from an event name), a source position or a spill log name may hold one. Such a
text is stored escaped behind a mark (TEXT_MARK, U+0001), which round-trips exactly; every
other text is stored unchanged, so the views and SQL show it as it is. A text is marked when
it holds NUL or the mark itself, so a stored text that does not start with the mark is always
the original.
"""

from __future__ import annotations

import re

from eventqueue.store.postgres.queries import TEXT_MARK

_ESCAPED = re.compile(re.escape(TEXT_MARK) + "(.)", re.DOTALL)


def to_db(text: str) -> str:
    """`text` as stored: unchanged, or marked and escaped when it holds NUL or the mark."""
    if "\x00" not in text and TEXT_MARK not in text:
        return text
    return TEXT_MARK + text.replace(TEXT_MARK, TEXT_MARK + "1").replace("\x00", TEXT_MARK + "0")


def from_db(stored: str) -> str:
    """The original of a stored text (the inverse of `to_db`)."""
    if not stored.startswith(TEXT_MARK):
        return stored
    return _ESCAPED.sub(lambda m: TEXT_MARK if m[1] == "1" else "\x00", stored[1:])


def plain_prefix(value: str, what: str) -> str:
    """A token or batch id prefix, which SQL joins to stored keys: it must need no escaping."""
    if "\x00" in value or TEXT_MARK in value:
        raise ValueError(f"{what} must not contain NUL or U+0001, got {value!r}")
    return value


def readable(text: str) -> str:
    """An error message for storage: NUL shown as U+FFFD (a message need not round-trip)."""
    return text.replace("\x00", "\ufffd")
