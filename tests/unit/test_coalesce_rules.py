"""core/coalesce.py: keys, debounce times, routing and the fold plan, spill records (pure)."""

from __future__ import annotations

import pytest

from eventqueue.core.coalesce import (
    Candidate,
    Debounce,
    by_aggregate_id,
    coalesce_function,
    folding,
    key_for,
    route,
)
from eventqueue.core.errors import ConfigError, InvalidEventError
from eventqueue.core.models import Priority
from eventqueue.core.records import NewEvent


def row(h: str, key: str | None = "o1", *, at: float = 0.0, priority: int = 2) -> NewEvent:
    return NewEvent("{}", priority, "u-handler", h, at, None, key)


def test_aggregate_keys_keep_numbers_and_strings_apart() -> None:
    assert by_aggregate_id({"aggregate_id": 7}) != by_aggregate_id({"aggregate_id": "7"})
    assert by_aggregate_id({}) is None


def test_coalesce_by_accepts_none_aggregate_id_or_a_callable() -> None:
    assert coalesce_function(None) is None and coalesce_function("none") is None
    assert coalesce_function("aggregate_id") is by_aggregate_id
    with pytest.raises(ConfigError, match="coalesce_by='order'"):
        coalesce_function("order")


def test_critical_rows_get_no_key_and_bad_keys_are_refused() -> None:
    critical = row("h", None, priority=int(Priority.CRITICAL))
    assert key_for(critical, {}, None, "o1").coalesce_key is None
    with pytest.raises(InvalidEventError, match=r"1 \.\. 1024 characters"):
        key_for(row("h", None), {}, None, "")


def test_debounce_waits_for_quiet_but_never_past_its_maximum() -> None:
    assert Debounce(10.0).ready_at(0.0, 8.0) == 18.0
    assert Debounce(10.0, 25.0).ready_at(0.0, 24.0) == 25.0


def test_a_spill_record_keeps_the_coalesce_key() -> None:
    keyed = row("h", "o1", at=1.5)
    assert NewEvent.from_bytes(keyed.to_bytes()) == keyed
    assert NewEvent.from_bytes(row("h", None).to_bytes()).coalesce_key is None


def test_route_duplicates_first_then_folds_into_the_stored_target() -> None:
    target = Candidate(5, "u-handler", "o1", 2, 0.0, "h0", 0.0)
    rows = [row("h1"), row("h1"), row("h2"), row("live"), row("x", "o2"), row("y", "o2")]

    found = route(rows, live={"live": 9}, retired={}, targets={("u-handler", "o1"): target})

    assert found.inserts == [4]
    assert found.duplicates == {1: ("id", 5), 3: ("id", 9)}
    assert found.folds == {("id", 5): [0, 2], ("row", 4): [5]}


def test_folding_takes_the_latest_version_and_retires_the_replaced_keys() -> None:
    target = Candidate(5, "u-handler", "o1", 2, 0.0, "h0", 0.0)
    rows = [row("h1", at=1.0), row("h2", at=2.0, priority=3)]
    routing = route(rows, live={}, retired={}, targets={("u-handler", "o1"): target})

    found = folding(rows, routing, {}, {("u-handler", "o1"): target}, dedup=True, debounce=None)

    (merge,) = found.merges
    assert (merge.target, merge.row.content_hash, merge.superseded) == (5, "h2", 2)
    assert (merge.priority, merge.raised, merge.dedup_at) == (3, True, 2.0)
    assert found.retired == [("h0", 5, 0.0), ("h1", 5, 1.0)]
