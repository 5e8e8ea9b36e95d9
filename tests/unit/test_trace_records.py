"""Spill records with and without a trace context (issue 13): records written by earlier
versions (5 fields) still decode, and an untraced record is still written in that form."""

from __future__ import annotations

import json

import pytest

from eventqueue.core.records import NewEvent

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_a_record_written_by_an_earlier_version_decodes_without_a_trace_context() -> None:
    old = json.dumps(['{"event_name":"x"}', 2, "x-handler", "ab" * 32, 1700000000.5]).encode()

    found = NewEvent.from_bytes(old)

    assert found == NewEvent('{"event_name":"x"}', 2, "x-handler", "ab" * 32, 1700000000.5)
    assert found.trace_context is None


def test_an_untraced_record_keeps_the_five_field_form() -> None:
    row = NewEvent('{"event_name":"x"}', 2, "x-handler", "ab" * 32, 1700000000.5)

    assert len(json.loads(row.to_bytes())) == 5
    assert NewEvent.from_bytes(row.to_bytes()) == row


@pytest.mark.parametrize("carried", [TRACEPARENT, f"{TRACEPARENT} vendor=abc,other=x y"])
def test_a_traced_record_round_trips_its_trace_context(carried: str) -> None:
    row = NewEvent('{"event_name":"é"}', 4, "é-handler", "cd" * 32, 1.25, carried)

    assert len(json.loads(row.to_bytes())) == 6
    assert NewEvent.from_bytes(row.to_bytes()) == row


def test_a_record_with_too_few_fields_is_refused() -> None:
    with pytest.raises(ValueError):
        NewEvent.from_bytes(json.dumps(["{}", 2, "k", "h"]).encode())
