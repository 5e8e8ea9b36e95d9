"""From an event as given to a row ready to store: validated, canonical, hashed, classified.
Pure: the clock's reading is passed in."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from eventqueue.core.codec import encode_event
from eventqueue.core.config import Config
from eventqueue.core.errors import InvalidEventError
from eventqueue.core.models import Priority
from eventqueue.core.priority import BatchKeyFn, Classifier
from eventqueue.core.records import NewEvent


def prepare_event(
    event: Mapping[str, Any],
    priority: Priority | int | str | None,
    *,
    config: Config,
    classifier: Classifier,
    batch_key_fn: BatchKeyFn,
    now: float,
    index: int | None = None,
) -> NewEvent:
    """Validate, hash and classify one event (InvalidEventError names what is wrong).

    An explicit `priority` wins over the classifier; `index` names the event in a list.
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
    except InvalidEventError as exc:
        raise InvalidEventError(f"event {index}: {exc}") if index is not None else exc from None
    except ValueError as exc:
        raise InvalidEventError(f"invalid priority: {exc}") from None
    if not isinstance(key, str):
        raise InvalidEventError(f"batch key function returned {type(key).__name__}, not str")
    return NewEvent(encoded.payload_json, int(chosen), key, encoded.content_hash, now)
