"""From an event as given to a row ready to store: validated, canonical, hashed, classified.
Pure: the clock's reading is passed in."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from eventqueue.core.codec import encode_event
from eventqueue.core.config import Config
from eventqueue.core.errors import ConfigError, InvalidEventError
from eventqueue.core.models import Priority
from eventqueue.core.priority import BatchKeyFn, Classifier
from eventqueue.core.records import NewEvent

# `ordered_by`: the event's ordering key (None: unordered), from the event as put.
OrderingFn = Callable[[Mapping[str, Any]], "str | None"]
MAX_ORDERING_KEY_CHARS = 1024
_UNSET: Any = object()


def by_aggregate_id(event: Mapping[str, Any]) -> str | None:
    """`ordered_by="aggregate_id"`: the event's aggregate_id as text (None when absent)."""
    value = event.get("aggregate_id")
    return None if value is None else str(value)


def ordering_fn(ordered_by: str | OrderingFn | None) -> OrderingFn | None:
    """The function behind `ordered_by`: None, "aggregate_id" or a callable."""
    if ordered_by is None or ordered_by == "":
        return None
    if ordered_by == "aggregate_id":
        return by_aggregate_id
    if callable(ordered_by):
        return ordered_by
    raise ConfigError(
        f"ordered_by={ordered_by!r}: None, 'aggregate_id' or a callable (event) -> str | None"
    )


def check_ordering_key(key: Any) -> str | None:
    """An ordering key as stored: a non-empty string without NUL, or None (unordered)."""
    if key is None:
        return None
    if not isinstance(key, str):
        raise InvalidEventError(f"ordering_key must be a string or None, not {type(key).__name__}")
    if not key or "\x00" in key or len(key) > MAX_ORDERING_KEY_CHARS:
        raise InvalidEventError(
            f"ordering_key {key[:40]!r}: 1 .. {MAX_ORDERING_KEY_CHARS} characters, no NUL"
        )
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidEventError("ordering_key holds a lone surrogate") from None
    return key


def prepare_event(
    event: Mapping[str, Any],
    priority: Priority | int | str | None,
    *,
    config: Config,
    classifier: Classifier,
    batch_key_fn: BatchKeyFn,
    now: float,
    index: int | None = None,
    ordering: OrderingFn | None = None,
    ordering_key: Any = _UNSET,
) -> NewEvent:
    """Validate, hash and classify one event (InvalidEventError names what is wrong).

    An explicit `priority` wins over the classifier; `index` names the event in a list. An
    explicit `ordering_key` (even None) wins over the `ordering` function (`ordered_by`).
    """
    try:
        encoded = encode_event(event, max_bytes=config.max_event_bytes, max_depth=config.max_depth)
        if priority is not None:
            chosen = Priority.parse(priority)
        else:
            chosen = classifier(encoded.payload)
            if type(chosen) is not Priority:
                chosen = Priority(chosen)
        key = batch_key_fn(encoded.payload)
        if ordering_key is _UNSET:
            ordering_key = ordering(encoded.payload) if ordering is not None else None
        group = check_ordering_key(ordering_key)
    except InvalidEventError as exc:
        raise InvalidEventError(f"event {index}: {exc}") if index is not None else exc from None
    except ValueError as exc:
        raise InvalidEventError(f"invalid priority: {exc}") from None
    if not isinstance(key, str):
        raise InvalidEventError(f"batch key function returned {type(key).__name__}, not str")
    return NewEvent(
        encoded.payload_json, int(chosen), key, encoded.content_hash, now, ordering_key=group
    )
