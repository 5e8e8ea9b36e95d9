"""A large group commit ends early, between its INSERT statements, when a CRITICAL put waits
for the connection; the rest follows in the next transaction with the stream positions."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import START, OpenQueue, event

from eventqueue.core.models import PutStatus


def waiting_always(store: Any, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Make the store's connection report a CRITICAL put waiting at every check; the checks."""
    asked: list[int] = []

    def urgent_waiting() -> bool:
        asked.append(1)
        return True

    monkeypatch.setattr(store._conn, "urgent_waiting", urgent_waiting)
    return asked


async def test_a_split_put_commits_its_first_statement_and_no_positions(
    open_queue: OpenQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    q = await open_queue()
    rows = [q.prepare(event(aggregate_id=f"a{i}")) for i in range(200)]
    waiting_always(q.store, monkeypatch)

    commit = await q.store.put(
        rows, now=START, dedup_ttl_s=300.0, source_positions={"sse": "200"}, split=True
    )

    assert [status for status, _ in commit.outcome] == [PutStatus.ACCEPTED] * 64
    assert commit.scheduled is None
    assert await q.store.scheduled_count() == 64
    assert await q.store.source_position("sse") is None  # only with the last part


async def test_a_put_that_is_not_split_ignores_waiting_critical_puts(
    open_queue: OpenQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    q = await open_queue()
    rows = [q.prepare(event(aggregate_id=f"a{i}")) for i in range(200)]
    asked = waiting_always(q.store, monkeypatch)

    commit = await q.store.put(rows, now=START, dedup_ttl_s=300.0, source_positions={"sse": "9"})

    assert len(commit.outcome) == 200 and not asked
    assert await q.store.source_position("sse") == "9"


async def test_the_writer_commits_the_rest_of_a_split_group_with_its_position(
    open_queue: OpenQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    q = await open_queue(commit_max_events=1000)
    events = [event(aggregate_id=f"a{i}") for i in range(300)] + [event(aggregate_id="a7")]
    asked = waiting_always(q.store, monkeypatch)

    results = await q.put_many(events, source="sse", position="301")

    assert len(asked) >= 4  # 300 rows in parts of 64: it really was split
    statuses = [r.status for r in results]
    assert statuses == [PutStatus.ACCEPTED] * 300 + [PutStatus.DUPLICATE]
    ids = [r.id for r in results[:300]]
    assert ids == sorted(set(ids))  # put order across the parts
    assert results[300].id == results[7].id  # a repeat of an event of an earlier part
    assert await q.store.source_position("sse") == "301"
    assert await q.store.scheduled_count() == 300


async def test_without_dedup_a_group_is_never_split(
    open_queue: OpenQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A crash between two parts would have the stream send the first part again; only dedup
    # makes that harmless, so without it the group commits whole.
    q = await open_queue(commit_max_events=1000, enable_dedup=False)
    asked = waiting_always(q.store, monkeypatch)

    results = await q.put_many(
        [event(aggregate_id=f"a{i}") for i in range(300)], source="s", position="300"
    )

    assert not asked
    assert [r.status for r in results] == [PutStatus.ACCEPTED] * 300
    assert await q.store.source_position("s") == "300"
