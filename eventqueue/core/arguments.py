"""Checks of the arguments a caller passes to the settle calls (nack, extend), made before
anything changes. Pure: no I/O."""

from __future__ import annotations

import math

from eventqueue.core.errors import InvalidArgumentError

# The longest explicit delays, the ceilings of the matching settings: a retry waits at most as
# long as EVENT_BACKOFF_MAX_SECONDS may be set (7 days), a lease runs at most as long as
# EVENT_LEASE_SECONDS may be (1 day; extend again to hold it longer). A stored time further
# ahead than the longest delay in use reads as a wall-clock step back, so an unbounded delay
# would blind that check; and a "retry" months away is a scheduled job, not a retry (dead-letter
# it and `eventqueue requeue` it later).
MAX_RETRY_IN_S = 604_800.0
MAX_EXTEND_S = 86_400.0


def _seconds(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidArgumentError(f"{name} must be a number of seconds, got {value!r}")
    if not math.isfinite(value):
        raise InvalidArgumentError(f"{name} must be a finite number of seconds, got {value!r}")
    return float(value)


def retry_in_s(value: object) -> float | None:
    """`nack(retry_in=)`: None (back-off) or 0 .. MAX_RETRY_IN_S seconds."""
    if value is None:
        return None
    seconds = _seconds("retry_in", value)
    if not 0.0 <= seconds <= MAX_RETRY_IN_S:
        raise InvalidArgumentError(
            f"retry_in must be between 0 and {MAX_RETRY_IN_S:.0f} seconds (7 days), got {value!r}"
            " (for a longer wait, let the event dead-letter and requeue it later)"
        )
    return seconds


def extend_s(value: object) -> float:
    """`extend(seconds=)`: more than 0, at most MAX_EXTEND_S seconds."""
    seconds = _seconds("seconds", value)
    if not 0.0 < seconds <= MAX_EXTEND_S:
        raise InvalidArgumentError(
            f"seconds must be more than 0 and at most {MAX_EXTEND_S:.0f} (1 day), got {value!r}"
            " (extend again to hold a lease longer)"
        )
    return seconds


def error_text(value: object) -> str:
    """`nack(error=)`: the text stored as the events' last error."""
    if not isinstance(value, str):
        raise InvalidArgumentError(f"error must be a string, got {type(value).__name__}")
    return value


def dead_flag(value: object, retry_in: float | None) -> bool:
    """`nack(dead=)`: True or False, and not together with an explicit `retry_in`."""
    if not isinstance(value, bool):
        raise InvalidArgumentError(f"dead must be True or False, got {value!r}")
    if value and retry_in is not None:
        raise InvalidArgumentError("nack: give retry_in or dead=True, not both")
    return value
