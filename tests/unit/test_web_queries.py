"""The dashboard's statement text (issue 25): values become checked literals, lists and
searches stay inside one window of ids, and the chart history computes rates."""

from __future__ import annotations

import sqlite3

import pytest

from eventqueue.tools.web import queries as Q
from eventqueue.tools.web.history import History, Sample


def test_text_is_quoted_and_a_quote_cannot_end_the_literal() -> None:
    hostile = "x' OR 1=1 --"
    sql = Q.events_sql(Q.EventFilter(batch_key=hostile), below=10, limit=5, postgres=False)

    assert "batch_key = 'x'' OR 1=1 --'" in sql
    with sqlite3.connect(":memory:") as db:
        assert db.execute(f"SELECT {Q.literal(hostile)}").fetchone() == (hostile,)


def test_nul_and_booleans_are_refused() -> None:
    with pytest.raises(ValueError, match="NUL"):
        Q.literal("a\x00b")
    with pytest.raises(TypeError):
        Q.literal(True)


def test_a_bad_status_is_named() -> None:
    with pytest.raises(ValueError, match="lost"):
        Q.events_sql(Q.EventFilter(status="lost"), below=10, limit=5, postgres=False)


def test_lists_and_searches_stay_in_one_window_of_ids() -> None:
    below = 1_000_001
    low = below - Q.ID_WINDOW
    listed = Q.events_sql(Q.EventFilter(aggregate="a"), below=below, limit=50, postgres=True)
    by_event_id = Q.find_sql("e-1", below=below, postgres=False)
    by_hash = Q.find_sql("ab" * 32, below=below, postgres=False)

    for sql in (listed, by_event_id, by_hash):
        assert f"id >= {low} AND id < {below}" in sql
    assert "payload::json ->> 'aggregate_id'" in listed
    assert "json_extract(payload, '$.event_id')" in by_event_id
    assert "dedup_key = " in by_hash  # anywhere while its dedup window is open
    assert Q.find_sql("42", below=below, postgres=False).endswith("WHERE id = 42")


def sample(at: float, done: int, max_id: int) -> Sample:
    return Sample(at, pending=1, claimed=0, dead=0, done=done, max_id=max_id, p50_s=0.1, p99_s=1)


def test_history_rates_between_readings_and_its_window() -> None:
    history = History(window_s=60)
    history.add(sample(1000.0, done=0, max_id=10))
    history.add(sample(1000.5, done=99, max_id=99))  # under a second later: not kept
    history.add(sample(1002.0, done=10, max_id=30))
    history.add(sample(1004.0, done=4, max_id=30))  # a purge: done went down, no rate

    points = history.points()
    assert [p["at"] for p in points] == [1000.0, 1002.0, 1004.0]
    assert points[0]["accepted_per_s"] is None
    assert (points[1]["accepted_per_s"], points[1]["handled_per_s"]) == (10.0, 5.0)
    assert (points[2]["accepted_per_s"], points[2]["handled_per_s"]) == (0.0, None)

    history.add(sample(1063.0, done=4, max_id=30))  # 1000 and 1002 now older than 60 s
    assert [p["at"] for p in history.points()] == [1004.0, 1063.0]
