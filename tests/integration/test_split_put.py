"""A large group commit ends early, at the end of a put about every 64 rows, when a CRITICAL
put waits for the connection; the rest follows in the next transaction. Each part stores the
stream positions of the puts it completes, so a crash in between loses and repeats nothing."""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from typing import Any

import pytest
from conftest import START, OpenQueue, event

from eventqueue.core.models import Priority, PutStatus
from eventqueue.store.sqlite.bodies import stop_cuts
from eventqueue.store.sqlite.rounds import Rank


def waiting_always(store: Any, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Make the store's connection report a CRITICAL put waiting at every check; the checks."""
    asked: list[int] = []

    def critical_waiting() -> bool:
        asked.append(1)
        return True

    monkeypatch.setattr(store._conn, "critical_waiting", critical_waiting)
    return asked


def test_cuts_fall_at_whole_puts_about_64_rows_apart() -> None:
    assert stop_cuts(range(1, 201), 200) == [64, 128, 192]  # single puts
    assert stop_cuts(range(100, 1001, 100), 1000) == list(range(100, 1000, 100))
    assert stop_cuts([1000], 1000) == []  # one put is never cut
    assert stop_cuts([30, 1000], 1000) == [30]
    assert stop_cuts([64], 200) == [64]


async def test_a_split_put_stores_its_first_part_with_that_parts_position(
    open_queue: OpenQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    q = await open_queue()
    rows = [q.prepare(event(aggregate_id=f"a{i}")) for i in range(200)]
    waiting_always(q.store, monkeypatch)

    commit = await q.store.put(
        rows,
        now=START,
        dedup_ttl_s=300.0,
        source_positions={"sse": "200"},
        split=[(64, {"sse": "64"}), (200, {"sse": "200"})],
    )

    assert [status for status, _ in commit.outcome] == [PutStatus.ACCEPTED] * 64
    assert commit.waiting is None
    assert await q.store.waiting_count() == 64
    assert await q.store.source_position("sse") == "64"  # not past what is stored


async def test_a_put_that_is_not_split_ignores_waiting_critical_puts(
    open_queue: OpenQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    q = await open_queue()
    rows = [q.prepare(event(aggregate_id=f"a{i}")) for i in range(200)]
    asked = waiting_always(q.store, monkeypatch)

    commit = await q.store.put(rows, now=START, dedup_ttl_s=300.0, source_positions={"sse": "9"})

    assert len(commit.outcome) == 200 and not asked
    assert await q.store.source_position("sse") == "9"


@pytest.mark.parametrize("dedup", [True, False])
async def test_the_writer_commits_a_split_group_in_parts_with_exact_positions(
    open_queue: OpenQueue, monkeypatch: pytest.MonkeyPatch, dedup: bool
) -> None:
    q = await open_queue(commit_max_events=1000, enable_dedup=dedup)
    stored: list[str | None] = []
    real_put = q.store.put

    async def put(*args: Any, **kwargs: Any) -> Any:
        commit = await real_put(*args, **kwargs)
        stored.append(await q.store.source_position("sse"))  # after each part
        return commit

    monkeypatch.setattr(q.store, "put", put)
    asked = waiting_always(q.store, monkeypatch)

    results = await asyncio.gather(
        *(q.put(event(aggregate_id=f"a{i}"), source="sse", position=str(i)) for i in range(300))
    )

    assert len(asked) >= 4  # 300 one-event puts in parts of 64: it really was split
    assert [r.status for r in results] == [PutStatus.ACCEPTED] * 300
    ids = [r.id for r in results]
    assert ids == sorted(set(ids))  # put order across the parts
    # Each part stored the position of the last put it completed, ending with the last one.
    assert stored[:4] == ["63", "127", "191", "255"] and stored[-1] == "299"


async def test_a_critical_put_commits_between_the_parts_of_a_large_group(
    open_queue: OpenQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    q = await open_queue(commit_max_events=1000)
    connection = q.store._conn
    real = connection.critical_waiting
    at_first_check, go_on = threading.Event(), threading.Event()

    def critical_waiting() -> bool:  # on the connection thread, between two parts
        if not at_first_check.is_set():
            at_first_check.set()
            go_on.wait(10)  # handshake: the test queues a real CRITICAL put meanwhile
        return real()

    queued = asyncio.Event()

    class Announcing(deque[Any]):
        def append(self, request: Any) -> None:
            super().append(request)
            queued.set()  # the CRITICAL put joined the round engine's queue

    monkeypatch.setattr(connection, "critical_waiting", critical_waiting)
    connection.engine._queues[Rank.CRITICAL] = Announcing()  # the queue is new and empty
    group = asyncio.gather(*(q.put(event(aggregate_id=f"a{i}")) for i in range(300)))
    assert await asyncio.to_thread(at_first_check.wait, 10)
    critical = asyncio.ensure_future(q.put(event("payment_failed"), priority=Priority.CRITICAL))
    await asyncio.wait_for(queued.wait(), 10)
    assert real()  # the CRITICAL put now waits for the round in progress
    go_on.set()

    results, urgent = await group, await critical

    ids = [r.id for r in results]
    assert ids[63] < urgent.id < ids[64]  # stored after the first 64, before the rest
    assert [r.status for r in results] == [PutStatus.ACCEPTED] * 300
