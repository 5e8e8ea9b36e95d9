"""The plan's priority rules, batch keys and Priority parsing: pure."""

from __future__ import annotations

import json
from typing import Any

import pytest

from eventqueue.core.models import Priority
from eventqueue.core.priority import batch_key, classify


def ev(name: str = "thing", event_type: str = "entity_event", **attributes: Any) -> dict[str, Any]:
    return {"event_type": event_type, "event_name": name, "attributes": attributes}


def test_priority_values_are_the_plans() -> None:
    assert [p.value for p in (Priority.LOW, Priority.NORMAL, Priority.HIGH, Priority.CRITICAL)] == [
        1,
        2,
        3,
        4,
    ]


@pytest.mark.parametrize(
    "name", ["error", "payment_error", "JOB_FAILED", "ErrorRaised", "build_failed_twice"]
)
def test_error_or_failed_in_the_name_is_critical(name: str) -> None:
    assert classify(ev(name)) is Priority.CRITICAL


def test_workflow_event_type_is_high() -> None:
    assert classify(ev("step_done", event_type="workflow_event")) is Priority.HIGH


def test_command_attribute_is_high() -> None:
    assert classify(ev("step_done", command="restart")) is Priority.HIGH


def test_command_attribute_with_a_falsy_value_is_still_high() -> None:
    assert classify(ev("step_done", command=None)) is Priority.HIGH


@pytest.mark.parametrize("name", ["heartbeat", "metrics", "log"])
def test_housekeeping_names_are_low(name: str) -> None:
    assert classify(ev(name)) is Priority.LOW


@pytest.mark.parametrize("name", ["Heartbeat", "heartbeats", "logs", "login"])
def test_low_names_match_exactly_as_in_the_plan(name: str) -> None:
    assert classify(ev(name)) is Priority.NORMAL


def test_anything_else_is_normal() -> None:
    assert classify(ev("order_created")) is Priority.NORMAL


def test_an_empty_event_is_normal() -> None:
    assert classify({}) is Priority.NORMAL


def test_critical_rule_comes_before_high() -> None:
    assert classify(ev("workflow_failed", event_type="workflow_event")) is Priority.CRITICAL


def test_high_rule_comes_before_low() -> None:
    assert classify(ev("heartbeat", command="ping")) is Priority.HIGH
    assert classify(ev("log", event_type="workflow_event")) is Priority.HIGH


def test_batch_key_is_event_name_handler() -> None:
    assert batch_key(ev("order_created")) == "order_created-handler"


def test_batch_key_of_a_nameless_event() -> None:
    assert batch_key({}) == "-handler"


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (Priority.HIGH, Priority.HIGH),
        (1, Priority.LOW),
        (4, Priority.CRITICAL),
        ("critical", Priority.CRITICAL),
        (" Normal ", Priority.NORMAL),
    ],
)
def test_priority_parse_accepts_members_values_and_names(
    given: Priority | int | str, expected: Priority
) -> None:
    assert Priority.parse(given) is expected


@pytest.mark.parametrize("given", [0, 5, "urgent", True, ""])
def test_priority_parse_refuses_anything_else(given: Any) -> None:
    with pytest.raises(ValueError):
        Priority.parse(given)


def test_a_priority_prints_its_name_and_stays_an_int() -> None:
    p = Priority.CRITICAL

    assert (str(p), f"{p}") == ("CRITICAL", "CRITICAL")
    assert p == 4 and int(p) == 4 and p > Priority.HIGH
    assert json.dumps({"priority": p}) == '{"priority": 4}'
    assert repr(p) == "<Priority.CRITICAL: 4>"
