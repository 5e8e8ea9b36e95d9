"""Validation, canonical JSON and the content hash: pure, no database."""

from __future__ import annotations

import contextlib
import decimal
import json
import sys
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventqueue.core.codec import content_hash, decode_payload, encode_event
from eventqueue.core.errors import EventQueueError, InvalidEventError

LIMITS = {"max_bytes": 1_048_576, "max_depth": 64}


def encode(value: Any, **limits: int) -> Any:
    return encode_event(value, **{**LIMITS, **limits})


def base(**changes: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event_type": "entity_event",
        "event_name": "order_created",
        "aggregate_id": "order-1",
        "attributes": {"total": 12, "lines": [{"sku": "a", "qty": 1}]},
        "event_id": "e-1",
        "timestamp": "2026-01-01T00:00:00Z",
    }
    event.update(changes)
    return event


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"a": value}
    return value


# --- the content hash ---------------------------------------------------------------------


def test_hash_is_sha256_hex() -> None:
    digest = encode(base()).content_hash
    assert len(digest) == 64
    int(digest, 16)


def test_hash_ignores_key_order_at_every_level() -> None:
    shuffled = {
        "timestamp": "2026-01-01T00:00:00Z",
        "attributes": {"lines": [{"qty": 1, "sku": "a"}], "total": 12},
        "aggregate_id": "order-1",
        "event_id": "e-1",
        "event_name": "order_created",
        "event_type": "entity_event",
    }
    assert encode(shuffled).content_hash == encode(base()).content_hash


def test_hash_ignores_timestamp() -> None:
    assert (
        encode(base(timestamp="2030-05-05T00:00:00Z")).content_hash == encode(base()).content_hash
    )


def test_hash_ignores_event_id() -> None:
    assert encode(base(event_id="e-999")).content_hash == encode(base()).content_hash


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ({"source": "replay"}, "field 'source'"),
        ({"Attributes": {}}, "field 'Attributes'"),
        ({"payload": 1, "data": 2}, "fields 'data', 'payload'"),
    ],
)
def test_an_unknown_top_level_field_is_refused_naming_it(extra: dict[str, Any], named: str) -> None:
    # Unhashed, it would make two events that differ only there duplicates of each other.
    with pytest.raises(InvalidEventError, match=f"unknown top-level {named}: .* in attributes"):
        encode(base(**extra))


def test_only_the_hashed_fields_event_id_and_timestamp_are_accepted() -> None:
    assert set(encode(base()).payload) == {
        "event_type", "event_name", "aggregate_id", "attributes", "event_id", "timestamp"
    }  # fmt: skip


@pytest.mark.parametrize(
    "event",
    [{}, {"event_name": "job"}, {"event_name": "job", "aggregate_id": None, "attributes": None}],
)
def test_the_plans_optional_fields_may_be_missing_or_null(event: dict[str, Any]) -> None:
    # The plan reads every field with .get() and attributes with a {} default: missing and null
    # hash as null (attributes as {}); a re-sent event is recognised either way.
    complete = {"event_type": None, "event_name": None, "aggregate_id": None, "attributes": {}}
    assert (
        encode(event).content_hash == encode({**complete, **event, "attributes": {}}).content_hash
    )


def test_an_integer_aggregate_id_is_accepted_and_hashed_apart_from_its_text() -> None:
    assert encode(base(aggregate_id=7)).content_hash != encode(base(aggregate_id="7")).content_hash


@pytest.mark.parametrize("value", [1.5, True, [1], {"id": 1}])
def test_an_aggregate_id_neither_text_nor_integer_is_refused(value: Any) -> None:
    with pytest.raises(InvalidEventError, match="aggregate_id must be a string or an integer"):
        encode(base(aggregate_id=value))


@pytest.mark.parametrize(
    "change",
    [
        {"event_type": "other_event"},
        {"event_name": "order_updated"},
        {"aggregate_id": "order-2"},
        {"aggregate_id": 1},
        {"attributes": {"total": 13, "lines": [{"sku": "a", "qty": 1}]}},
        {"attributes": {"total": 12, "lines": [{"sku": "a", "qty": 2}]}},
        {"attributes": {"total": 12, "lines": []}},
    ],
    ids=lambda c: next(iter(c)),
)
def test_hash_depends_on_hashed_fields(change: dict[str, Any]) -> None:
    assert encode(base(**change)).content_hash != encode(base()).content_hash


def test_list_order_in_attributes_matters() -> None:
    one = base(attributes={"tags": ["a", "b"]})
    other = base(attributes={"tags": ["b", "a"]})
    assert encode(one).content_hash != encode(other).content_hash


def test_missing_and_empty_attributes_hash_alike() -> None:
    without = base()
    del without["attributes"]
    assert encode(without).content_hash == encode(base(attributes={})).content_hash


def test_content_hash_function_matches_encode() -> None:
    assert content_hash(base()) == encode(base()).content_hash


# --- canonical JSON -----------------------------------------------------------------------


def test_canonical_json_is_sorted_and_compact() -> None:
    text = encode({"event_name": "n", "attributes": {"b": 1, "a": [1, 2], "c": {"y": 1}}})
    assert text.payload_json == '{"attributes":{"a":[1,2],"b":1,"c":{"y":1}},"event_name":"n"}'


def test_payload_round_trips() -> None:
    event = base(attributes={"f": 1.5, "n": None, "t": True, "u": "ünïcødé ✓", "i": -(2**63)})
    assert decode_payload(encode(event).payload_json) == event


def test_nul_in_a_string_is_accepted_and_round_trips() -> None:
    event = base(attributes={"text": "before\x00after"}, event_name="a\x00b")
    encoded = encode(event)
    assert decode_payload(encoded.payload_json) == event


def test_int64_bounds_are_accepted() -> None:
    event = base(attributes={"max": 2**63 - 1, "min": -(2**63)})
    assert decode_payload(encode(event).payload_json) == event


def test_nesting_up_to_max_depth_is_accepted() -> None:
    # The event is the container at depth 0; nested(n) adds containers at depths 1 .. n.
    encode({"attributes": nested(9)}, max_depth=10)


def test_nesting_one_past_max_depth_is_refused() -> None:
    with pytest.raises(InvalidEventError, match="deeper than 10"):
        encode({"attributes": nested(10)}, max_depth=10)


def test_event_at_the_size_limit_is_accepted() -> None:
    event = {"attributes": {"s": ""}}
    overhead = len(encode(event).payload_json.encode())
    event["attributes"]["s"] = "x" * (200 - overhead)
    assert len(encode(event, max_bytes=200).payload_json.encode()) == 200


def test_decode_payload_refuses_a_non_object() -> None:
    with pytest.raises(InvalidEventError):
        decode_payload("[1, 2]")


# --- every malformed case: InvalidEventError, never a foreign exception --------------------


def nested_list(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def cyclic_dict() -> dict[str, Any]:
    event: dict[str, Any] = {"event_name": "loop"}
    event["attributes"] = {"self": event}
    return event


def cyclic_list() -> dict[str, Any]:
    items: list[Any] = []
    items.append(items)
    return {"attributes": {"items": items}}


class Opaque:
    pass


class BadRepr:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")

    def __hash__(self) -> int:
        return 1


MALFORMED: dict[str, Callable[[], Any]] = {
    "list": lambda: [base()],
    "string": lambda: json.dumps(base()),
    "none": lambda: None,
    "int": lambda: 1,
    "bytes-event": lambda: b"{}",
    "nan": lambda: base(attributes={"x": float("nan")}),
    "inf": lambda: base(attributes={"x": float("inf")}),
    "minus-inf": lambda: base(attributes={"x": float("-inf")}),
    "nan-in-list": lambda: base(attributes={"x": [1.0, float("nan")]}),
    "bytes": lambda: base(attributes={"x": b"raw"}),
    "bytearray": lambda: base(attributes={"x": bytearray(b"raw")}),
    "set": lambda: base(attributes={"x": {1, 2}}),
    "frozenset": lambda: base(attributes={"x": frozenset()}),
    "decimal": lambda: base(attributes={"x": decimal.Decimal("1.1")}),
    "complex": lambda: base(attributes={"x": 1j}),
    "object": lambda: base(attributes={"x": Opaque()}),
    "int-2**63": lambda: base(attributes={"x": 2**63}),
    "int-below-int64": lambda: base(attributes={"x": -(2**63) - 1}),
    "int-5000-digits": lambda: base(attributes={"x": 10**5000}),
    "negative-int-5000-digits": lambda: base(attributes={"x": -(10**5000)}),
    "huge-aggregate-id": lambda: base(aggregate_id=2**64),
    "lone-surrogate-in-value": lambda: base(attributes={"x": "a\ud800b"}),
    "lone-surrogate-in-key": lambda: base(attributes={"\udfff": 1}),
    "lone-surrogate-in-event-name": lambda: base(event_name="\ud83d"),
    "too-deep": lambda: base(attributes=nested(100)),
    "too-deep-list": lambda: base(attributes={"x": nested_list(30)}),
    "cyclic-dict": cyclic_dict,
    "cyclic-list": cyclic_list,
    "oversize": lambda: base(attributes={"blob": "x" * 2_000_000}),
    "event_type-not-str": lambda: base(event_type=5),
    "event_name-not-str": lambda: base(event_name=["a"]),
    "aggregate_id-float": lambda: base(aggregate_id=1.5),
    "aggregate_id-bool": lambda: base(aggregate_id=True),
    "aggregate_id-dict": lambda: base(aggregate_id={"id": 1}),
    "attributes-list": lambda: base(attributes=[1, 2]),
    "attributes-str": lambda: base(attributes="x=1"),
    "int-key": lambda: base(attributes={1: "a"}),
    "none-key": lambda: base(attributes={None: "a"}),
    "tuple-key": lambda: base(attributes={(1, 2): "a"}),
    "huge-int-key": lambda: base(attributes={10**5000: "a"}),
    "key-with-failing-repr": lambda: base(attributes={BadRepr(): "a"}),
    "int-key-at-top-level": lambda: {1: "a"},
}


@pytest.mark.parametrize("make", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_event_raises_invalid_event_error(make: Callable[[], Any]) -> None:
    with pytest.raises(InvalidEventError) as raised:
        encode(make(), max_depth=20)
    assert isinstance(raised.value, EventQueueError)
    assert str(raised.value)


def test_error_names_the_path_of_the_bad_value() -> None:
    with pytest.raises(InvalidEventError, match=r"\$\.attributes\.x"):
        encode(base(attributes={"x": float("nan")}))


def test_oversize_error_names_the_limit() -> None:
    with pytest.raises(InvalidEventError, match="EVENT_MAX_BYTES"):
        encode(base(attributes={"blob": "x" * 300}), max_bytes=256)


def test_too_deep_error_names_the_limit() -> None:
    with pytest.raises(InvalidEventError, match="EVENT_MAX_DEPTH"):
        encode(base(attributes=nested(70)))


def test_deep_event_under_a_deep_caller_stack_is_not_a_recursion_error() -> None:
    # The largest accepted EVENT_MAX_DEPTH, called from far down the stack (a handler inside
    # a dispatcher inside a framework): accepted or InvalidEventError, never RecursionError.
    def call_from_depth(frames: int) -> Any:
        if frames == 0:
            return encode({"attributes": nested(895)}, max_bytes=10_000_000, max_depth=900)
        return call_from_depth(frames - 1)

    with contextlib.suppress(InvalidEventError):
        call_from_depth(sys.getrecursionlimit() // 4)


# --- properties ---------------------------------------------------------------------------

PROPERTY = settings(max_examples=200, database=None, deadline=None)

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
hostile_scalars = (
    json_scalars
    | st.integers()
    | st.floats()
    | st.binary(max_size=4)
    | st.decimals(allow_nan=False)
    | st.frozensets(st.integers(), max_size=2)
    | st.sampled_from(["\ud800", "a\udfffb", "\x00"])
)
hostile_values = st.recursive(
    hostile_scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.text(max_size=4) | st.integers() | st.just("\udc00"), inner, max_size=3
        )
    ),
    max_leaves=15,
)


def reverse_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: reverse_keys(value[k]) for k in reversed(list(value))}
    if isinstance(value, list):
        return [reverse_keys(v) for v in value]
    return value


@PROPERTY
@given(attributes=st.dictionaries(st.text(max_size=8), json_values, max_size=5))
def test_key_order_never_changes_the_hash(attributes: dict[str, Any]) -> None:
    event = base(attributes=attributes)
    assert encode(reverse_keys(event)).content_hash == encode(event).content_hash


@PROPERTY
@given(attributes=st.dictionaries(st.text(max_size=8), json_values, max_size=5))
def test_any_json_value_round_trips(attributes: dict[str, Any]) -> None:
    event = base(attributes=attributes)
    assert decode_payload(encode(event).payload_json) == event


@PROPERTY
@given(attributes=hostile_values)
def test_any_value_is_encoded_or_refused_with_invalid_event_error(attributes: Any) -> None:
    try:
        encoded = encode({"attributes": attributes}, max_bytes=4096, max_depth=8)
    except InvalidEventError:
        return
    # What is accepted is strict JSON (no NaN/Infinity tokens) in encodable UTF-8.
    json.loads(encoded.payload_json, parse_constant=refuse_constant)
    encoded.payload_json.encode("utf-8")


def refuse_constant(name: str) -> Any:
    raise AssertionError(f"{name} in canonical JSON")
