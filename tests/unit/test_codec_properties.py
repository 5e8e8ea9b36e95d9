"""Property-based bad input for the codec: any event shape is encoded exactly or refused cleanly.

An independent oracle (`expected_valid`) says which events the contract accepts; the codec must
agree with it: accepted events round-trip exactly (tuples become lists), refused ones raise
InvalidEventError and nothing else. Generated malformed values are always refused.
"""

from __future__ import annotations

import decimal
import json
import random
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventqueue.core.codec import HASHED_FIELDS, content_hash, decode_payload, encode_event
from eventqueue.core.errors import InvalidEventError

MAX_BYTES = 2048
MAX_DEPTH = 6
INT64 = (-(2**63), 2**63 - 1)
PROPERTY = settings(
    max_examples=200,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
RESERVED = ("event_type", "event_name", "aggregate_id", "attributes", "event_id", "timestamp")

# --- strategies -----------------------------------------------------------------------------

texts = st.text(max_size=12) | st.sampled_from(["", "\x00", "a\x00b", "é", "🎉", "\u2028", "\\"])
scalars = (
    st.none()
    | st.booleans()
    | st.integers(*INT64)
    | st.sampled_from([*INT64, 0, -1, 2**53 + 1])
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from([-0.0, 5e-324, 1.7976931348623157e308])
    | texts
)
json_like = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(texts, inner, max_size=4)
    ),
    max_leaves=24,
)
# Top-level shapes: the reserved fields with any JSON-like value (so sometimes the wrong type),
# plus arbitrary other keys.
events = st.dictionaries(st.sampled_from(RESERVED) | texts, json_like, max_size=7)
plausible_events = st.fixed_dictionaries(
    {
        "event_type": st.sampled_from(["entity_event", "workflow_event"]),
        "event_name": texts,
        "aggregate_id": texts | st.integers(*INT64),
        "attributes": st.dictionaries(texts, json_like, max_size=5),
    },
    optional={"event_id": json_like, "timestamp": texts},
)


class Opaque:
    """Not JSON."""


def too_deep(levels: int) -> Any:
    value: Any = 0
    for i in range(levels):
        value = [value] if i % 2 else {"d": value}
    return value


bad_values = st.one_of(
    st.sampled_from([float("nan"), float("inf"), float("-inf"), -float("nan")]),
    st.binary(max_size=4),
    st.binary(max_size=4).map(bytearray),
    st.frozensets(st.integers(0, 3), max_size=2),
    st.sets(st.integers(0, 3), max_size=2),
    st.decimals(allow_nan=True, allow_infinity=True),
    st.complex_numbers(allow_nan=False, max_magnitude=10),
    st.integers(min_value=2**63, max_value=2**80),
    st.integers(max_value=-(2**63) - 1, min_value=-(2**80)),
    st.sampled_from([2**63, -(2**63) - 1, 10**5000, -(10**400)]),
    st.sampled_from(["\ud800", "a\udfffb", "\udc80x", "\ud83d"]),
    st.builds(Opaque),
    st.integers(MAX_DEPTH + 1, 300).map(too_deep),
    st.integers(MAX_BYTES, MAX_BYTES * 4).map(lambda n: "x" * n),
)
bad_keys = st.one_of(
    st.integers(),
    st.none(),
    st.floats(allow_nan=False),
    st.tuples(st.integers()),
    st.sampled_from(["\ud800", "k\udfff", 10**5000]),
    st.builds(Opaque),
)


# --- the oracle -----------------------------------------------------------------------------


def plain(value: Any) -> Any:
    """What the event should decode to: tuples are lists, everything else as it was."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _valid_value(value: Any, depth: int) -> bool:
    if value is None or isinstance(value, bool):
        return True
    if isinstance(value, int):
        return INT64[0] <= value <= INT64[1]
    if isinstance(value, float):
        return value == value and abs(value) != float("inf")
    if isinstance(value, str):
        return _encodable(value)
    if isinstance(value, dict | list | tuple) and depth >= MAX_DEPTH:
        return False  # a container at depth MAX_DEPTH is one level too many
    if isinstance(value, dict):
        return all(
            isinstance(k, str) and _encodable(k) and _valid_value(v, depth + 1)
            for k, v in value.items()
        )
    if isinstance(value, list | tuple):
        return all(_valid_value(v, depth + 1) for v in value)
    return False


def _valid_fields(event: dict[str, Any]) -> bool:
    if any(isinstance(k, str) and k not in RESERVED for k in event):
        return False  # only the plan's fields (a non-text key is refused by the value walk)
    for name in ("event_type", "event_name"):
        if event.get(name) is not None and not isinstance(event[name], str):
            return False
    aggregate = event.get("aggregate_id")
    if aggregate is not None and (
        isinstance(aggregate, bool) or not isinstance(aggregate, str | int)
    ):
        return False
    return event.get("attributes") is None or isinstance(event["attributes"], dict)


def expected_valid(event: Any) -> bool:
    """The contract, written independently of the codec."""
    if not isinstance(event, dict) or not _valid_fields(event) or not _valid_value(event, 0):
        return False
    text = json.dumps(plain(event), ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return len(text.encode("utf-8")) <= MAX_BYTES


def encode(event: Any) -> Any:
    return encode_event(event, max_bytes=MAX_BYTES, max_depth=MAX_DEPTH)


def shuffled(value: Any, rnd: random.Random) -> Any:
    """The same value with the keys of every object in a random order."""
    if isinstance(value, dict):
        keys = list(value)
        rnd.shuffle(keys)
        return {k: shuffled(value[k], rnd) for k in keys}
    if isinstance(value, list):
        return [shuffled(v, rnd) for v in value]
    return value


_NO_KEY = object()


def inject(
    event: dict[str, Any], rnd: random.Random, *, value: Any = None, key: Any = _NO_KEY
) -> None:
    """Put a bad value (or a bad key) somewhere inside the event's attributes."""
    target: Any = event.setdefault("attributes", {})
    while True:
        children = [
            c
            for c in (target.values() if isinstance(target, dict) else target)
            if isinstance(c, dict | list)
        ]
        if not children or rnd.random() < 0.4:
            break
        target = rnd.choice(children)
    if isinstance(target, list):
        target.insert(rnd.randint(0, len(target)), value if key is _NO_KEY else {key: 1})
    elif key is not _NO_KEY:
        target[key] = 1
    else:
        target[f"bad{rnd.randint(0, 9)}"] = value


# --- properties -----------------------------------------------------------------------------


@PROPERTY
@given(event=events)
def test_any_shape_is_refused_or_round_trips_exactly(event: dict[str, Any]) -> None:
    valid = expected_valid(event)
    try:
        encoded = encode(event)
    except InvalidEventError as exc:
        assert not valid, f"a valid event was refused: {exc}"
        assert str(exc)
        return
    assert valid, "an invalid event was accepted"
    assert decode_payload(encoded.payload_json) == plain(event)
    # What is stored is strict, encodable JSON.
    json.loads(encoded.payload_json, parse_constant=_refuse_constant)
    encoded.payload_json.encode("utf-8")


@PROPERTY
@given(event=plausible_events)
def test_plausible_events_are_accepted_exactly_when_the_oracle_says(event: dict[str, Any]) -> None:
    try:
        encoded = encode(event)
    except InvalidEventError:
        assert not expected_valid(event)
        return
    assert expected_valid(event)
    assert decode_payload(encoded.payload_json) == plain(event)


@PROPERTY
@given(event=plausible_events, rnd=st.randoms(use_true_random=False))
def test_key_order_never_changes_the_hash_or_the_stored_text(
    event: dict[str, Any], rnd: random.Random
) -> None:
    event = plain(event)
    if not expected_valid(event):
        return
    first, second = encode(event), encode(shuffled(event, rnd))
    assert second.content_hash == first.content_hash
    assert second.payload_json == first.payload_json


@PROPERTY
@given(event=plausible_events, event_id=json_like, timestamp=json_like)
def test_event_id_and_timestamp_never_change_the_hash(
    event: dict[str, Any], event_id: Any, timestamp: Any
) -> None:
    changed = {**event, "event_id": event_id, "timestamp": timestamp}
    if expected_valid(event) and expected_valid(changed):
        assert encode(changed).content_hash == encode(event).content_hash


@PROPERTY
@given(event=plausible_events, name=texts.filter(lambda t: t not in RESERVED), value=json_like)
def test_any_other_top_level_field_is_refused_by_name(
    event: dict[str, Any], name: str, value: Any
) -> None:
    # Unhashed, it would make two events that differ only there duplicates of each other.
    try:
        encode({**event, name: value})
    except InvalidEventError as exc:
        assert "unknown top-level field" in str(exc) or not expected_valid(event)
        return
    raise AssertionError(f"accepted the top-level field {name!r}")


@PROPERTY
@given(first=plausible_events, second=plausible_events)
def test_different_hashed_content_has_different_hashes(
    first: dict[str, Any], second: dict[str, Any]
) -> None:
    def hashed(e: dict[str, Any]) -> str:
        part = {name: e.get(name) for name in HASHED_FIELDS}
        part["attributes"] = e.get("attributes") or {}
        return json.dumps(plain(part), sort_keys=True, ensure_ascii=False)

    if expected_valid(first) and expected_valid(second) and hashed(first) != hashed(second):
        assert content_hash(first) != content_hash(second)


@PROPERTY
@given(event=plausible_events, bad=bad_values, rnd=st.randoms(use_true_random=False))
def test_a_generated_malformed_value_anywhere_is_refused(
    event: dict[str, Any], bad: Any, rnd: random.Random
) -> None:
    event = plain(event)
    inject(event, rnd, value=bad)
    try:
        encode(event)
    except InvalidEventError as exc:
        assert str(exc)
        return
    raise AssertionError(f"accepted a malformed value {type(bad).__name__}")


@PROPERTY
@given(event=plausible_events, key=bad_keys, rnd=st.randoms(use_true_random=False))
def test_a_generated_malformed_key_anywhere_is_refused(
    event: dict[str, Any], key: Any, rnd: random.Random
) -> None:
    event = plain(event)
    inject(event, rnd, key=key)
    try:
        encode(event)
    except InvalidEventError:
        return
    raise AssertionError(f"accepted a malformed key {type(key).__name__}")


@PROPERTY
@given(
    field=st.sampled_from(["event_type", "event_name", "aggregate_id", "attributes"]),
    value=st.one_of(
        st.floats(),
        st.booleans(),
        st.lists(st.integers(), max_size=2),
        st.binary(max_size=2),
        st.decimals(allow_nan=False),
    ),
)
def test_a_reserved_field_of_the_wrong_type_is_refused(field: str, value: Any) -> None:
    event: dict[str, Any] = {"event_type": "t", "event_name": "n", field: value}
    try:
        encode(event)
    except InvalidEventError:
        return
    raise AssertionError(f"accepted {field}={value!r}")


def test_decimal_that_equals_an_int_is_still_refused() -> None:
    # Decimal("1") == 1, yet json.dumps cannot encode it: it must be refused, not half-stored.
    try:
        encode({"attributes": {"x": decimal.Decimal("1")}})
    except InvalidEventError:
        return
    raise AssertionError("accepted a Decimal")


def _refuse_constant(name: str) -> Any:
    raise AssertionError(f"{name} in canonical JSON")
