"""Event validation, canonical JSON and the content hash. Pure: no I/O, no clock."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

from eventqueue.core.errors import InvalidEventError

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

# Fields of the content hash (from the plan): never timestamp or event_id, so a re-sent event
# with a new id or clock reading is still recognised as the same content.
HASHED_FIELDS = ("event_type", "event_name", "aggregate_id")
# Every top-level field an event may have: the hashed four and the two that never are. Any
# other is refused: unhashed, it would make two different events duplicates of each other.
EVENT_FIELDS = frozenset({*HASHED_FIELDS, "attributes", "event_id", "timestamp"})

_encoder = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, sort_keys=True, separators=(",", ":"), check_circular=False
)


@dataclass(frozen=True, slots=True)
class EncodedEvent:
    """A validated event: its canonical JSON text and its content hash."""

    payload: dict[str, Any]
    payload_json: str
    content_hash: str


_sha256 = hashlib.sha256
_isfinite = math.isfinite
# The encoder's C core, made once (JSONEncoder.encode makes a new one per call): the same
# settings, so its output is canonical_json's, chunk by chunk.
_dump_str: Any = json.encoder.encode_basestring
_c_make_encoder: Any = getattr(json.encoder, "c_make_encoder", None)
if _c_make_encoder is not None:
    _iterencode: Any = _c_make_encoder(
        None, _encoder.default, _dump_str, None, ":", ",", True, False, False
    )
else:  # pragma: no cover - CPython always has the accelerator
    _iterencode = _encoder.iterencode


def canonical_json(value: Any) -> str:
    """Sorted keys, no whitespace, UTF-8 text; the value must already be validated."""
    return _encoder.encode(value)


def encode_event(event: Any, *, max_bytes: int, max_depth: int) -> EncodedEvent:
    """Validate `event` and return its canonical JSON and content hash, or raise InvalidEventError."""
    if not isinstance(event, dict):
        raise InvalidEventError(
            f"an event must be a JSON object (dict), got {type(event).__name__}"
        )
    _check_fields(event)
    plain = _plain(event, max_depth)
    if not plain:
        # Something unusual (or wrong): the full walk says exactly what, or accepts it.
        _check_value(event, max_depth)
    try:
        text, hashed = _encode_plain(event) if plain else (canonical_json(event), None)
    except RecursionError:
        # The C encoder recurses once per level on the caller's stack: an event within
        # EVENT_MAX_DEPTH can still be too deep for a caller that is itself deep (F15).
        raise InvalidEventError(
            "event is nested too deeply to encode here; lower EVENT_MAX_DEPTH or flatten it"
        ) from None
    try:
        raw = text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidEventError(
            f"event contains text that is not valid Unicode (a lone surrogate at character {exc.start})"
        ) from None
    if len(raw) > max_bytes:
        raise InvalidEventError(
            f"event is {len(raw)} bytes as JSON, over the limit of {max_bytes} (EVENT_MAX_BYTES)"
        )
    # Hashes a part of what was just encoded: valid text, no deeper than the whole.
    if hashed is None:
        return EncodedEvent(event, text, content_hash(event))
    return EncodedEvent(event, text, _sha256(hashed.encode("utf-8")).hexdigest())


def _encode_plain(event: dict[str, Any]) -> tuple[str, str]:
    """canonical_json(event) and the text content_hash(event) hashes, from one encoding of
    each top-level value (the attributes are in both; `_plain` vouched for every type)."""
    parts = {key: _dump(value) for key, value in event.items()}
    text = "{" + ",".join([f"{_dump_str(key)}:{parts[key]}" for key in sorted(parts)]) + "}"
    # The keys of the hashed object in sorted order: aggregate_id, attributes, event_name,
    # event_type; a missing field is null, missing or empty attributes are {}.
    attributes = parts["attributes"] if event.get("attributes") else "{}"
    hashed = (
        f'{{"aggregate_id":{parts.get("aggregate_id", "null")},"attributes":{attributes},'
        f'"event_name":{parts.get("event_name", "null")},'
        f'"event_type":{parts.get("event_type", "null")}}}'
    )
    return text, hashed


def _dump(value: Any) -> str:
    """canonical_json(value) for a value of exact JSON types."""
    if type(value) is str:
        text: str = _dump_str(value)
        return text
    return "".join(_iterencode(value, 0))


def content_hash(event: dict[str, Any]) -> str:
    """SHA-256 hex of canonical JSON over event_type, event_name, aggregate_id and attributes."""
    content = {name: event.get(name) for name in HASHED_FIELDS}
    content["attributes"] = event.get("attributes") or {}
    return _sha256(canonical_json(content).encode("utf-8")).hexdigest()


def decode_payload(text: str) -> dict[str, Any]:
    """The stored JSON text back to the dict that was put."""
    value = json.loads(text)
    if not isinstance(value, dict):
        raise InvalidEventError("stored payload is not a JSON object")
    return value


def _check_fields(event: dict[str, Any]) -> None:
    if not EVENT_FIELDS.issuperset(event):
        _refuse_unknown_fields(event)
    for name in ("event_type", "event_name"):
        value = event.get(name)
        if value is not None and not isinstance(value, str):
            raise InvalidEventError(f"{name} must be a string, got {type(value).__name__}")
    aggregate_id = event.get("aggregate_id")
    if aggregate_id is not None and (
        isinstance(aggregate_id, bool) or not isinstance(aggregate_id, str | int)
    ):
        raise InvalidEventError(
            f"aggregate_id must be a string or an integer, got {type(aggregate_id).__name__}"
        )
    attributes = event.get("attributes")
    if attributes is not None and not isinstance(attributes, dict):
        raise InvalidEventError(
            f"attributes must be a JSON object, got {type(attributes).__name__}"
        )


def _refuse_unknown_fields(event: dict[str, Any]) -> None:
    # Keys that are not text are left to the value walk, which says "not a string".
    unknown = sorted(k for k in event if isinstance(k, str) and k not in EVENT_FIELDS)
    if not unknown:
        return
    shown = ", ".join(_describe(k) for k in unknown[:5]) + (", ..." if len(unknown) > 5 else "")
    raise InvalidEventError(
        f"unknown top-level field{'s' if len(unknown) > 1 else ''} {shown}: an event has only "
        "event_type, event_name, aggregate_id, attributes, event_id and timestamp; put other "
        "data in attributes"
    )


def _plain(root: Any, max_depth: int) -> bool:
    """True when `root` surely passes `_check_value`: exact JSON types only (no subclasses),
    string keys, integers in range, finite floats, containers within `max_depth`.

    The common case, checked cheaply: no paths are built and scalars are never stacked. False
    means "not sure": the caller runs the full walk, which reports the first problem.
    """
    stack: list[tuple[Any, int]] = [(root, 0)]
    while stack:
        container, depth = stack.pop()
        if depth >= max_depth:
            return False
        if type(container) is dict:
            for key in container:
                if type(key) is not str:
                    return False
            values: Any = container.values()
        else:
            values = container
        depth += 1
        for value in values:
            kind = type(value)
            if kind is str or value is None or kind is bool:
                continue
            if kind is int:
                if not INT64_MIN <= value <= INT64_MAX:
                    return False
            elif kind is float:
                if not _isfinite(value):
                    return False
            elif kind is dict or kind is list or kind is tuple:
                stack.append((value, depth))
            else:
                return False
    return True


def _check_value(root: Any, max_depth: int) -> None:
    # Explicit walk instead of trusting json.dumps: it would turn NaN into invalid JSON, int keys
    # into strings, and deep or cyclic values into RecursionError/ValueError (failure mode F15).
    # An explicit stack, not recursion, so the walk itself never hits the recursion limit; still
    # depth-first, so a cycle fails after max_depth steps.
    stack: list[tuple[Any, str, int]] = [(root, "$", 0)]
    while stack:
        value, path, depth = stack.pop()
        if value is None or isinstance(value, bool | str):
            continue
        if isinstance(value, int):
            if not INT64_MIN <= value <= INT64_MAX:
                # Never format a huge value: str() of an int over 4300 digits raises ValueError.
                shown = str(value) if value.bit_length() <= 256 else f"of {value.bit_length()} bits"
                raise InvalidEventError(
                    f"{path}: integer {shown} is outside the signed 64-bit range"
                )
            continue
        if isinstance(value, float):
            if value != value or value in (float("inf"), float("-inf")):
                raise InvalidEventError(
                    f"{path}: {value} is not valid JSON (NaN and Infinity are not)"
                )
            continue
        if depth >= max_depth:
            raise InvalidEventError(
                f"{path}: nesting is deeper than {max_depth} levels (EVENT_MAX_DEPTH), or cyclic"
            )
        if isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str):
                    raise InvalidEventError(f"{path}: object key {_describe(key)} is not a string")
                stack.append((item, f"{path}.{key}", depth + 1))
            continue
        if isinstance(value, list | tuple):
            stack.extend((item, f"{path}[{i}]", depth + 1) for i, item in enumerate(value))
            continue
        raise InvalidEventError(f"{path}: {type(value).__name__} is not JSON-encodable")


def _describe(key: Any) -> str:
    # repr() of a rejected key may itself fail (a huge int, a hostile __repr__).
    try:
        text = repr(key)
    except Exception:
        return f"of type {type(key).__name__}"
    return text if len(text) <= 60 else f"{text[:57]}..."
