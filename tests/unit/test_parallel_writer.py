"""GroupCommitWriter with several group commits in flight (a pooled store, PostgreSQL): a group
starts beside one still committing, and a group storing a stream position waits for every
earlier group to land (a position never commits ahead of an event it covers), and so does a
group carrying ordering or coalesce keys (a group's head, latest wins)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence

import pytest
from contract.conftest import make_event

from eventqueue.core.models import PutStatus
from eventqueue.core.records import NewEvent, SplitPoint
from eventqueue.runtime.writer import GroupCommitWriter, IntakeEntry


class _Commits:
    """A commit function whose calls wait until released, each announcing its start."""

    def __init__(self) -> None:
        self.started: list[asyncio.Future[None]] = []
        self.release: list[asyncio.Event] = []
        self.calls: list[int] = []  # number of the call per start, in order

    def prepare(self, n: int) -> None:
        loop = asyncio.get_running_loop()
        self.started = [loop.create_future() for _ in range(n)]
        self.release = [asyncio.Event() for _ in range(n)]

    async def __call__(
        self, rows: Sequence[NewEvent], _points: list[SplitPoint]
    ) -> list[tuple[PutStatus, int | None]]:
        call = len(self.calls)
        self.calls.append(call)
        self.started[call].set_result(None)
        await self.release[call].wait()
        return [(PutStatus.ACCEPTED, i) for i in range(len(rows))]


def _entry(source: str | None = None) -> IntakeEntry:
    future: asyncio.Future[list[tuple[PutStatus, int | None]]] = (
        asyncio.get_running_loop().create_future()
    )
    return IntakeEntry([], future, source, None if source is None else "p1")


async def test_a_second_group_commits_while_the_first_is_in_flight() -> None:
    commits = _Commits()
    commits.prepare(2)
    writer = GroupCommitWriter(commits, max_events=100, intake_size=100, parallel=2)
    writer.start()
    first, second = _entry(), _entry()
    writer.submit(first)
    await commits.started[0]
    writer.submit(second)

    # Without parallel commits the second waits for the first: a failure, not a hang.
    await asyncio.wait_for(commits.started[1], 30)
    assert not first.future.done()
    commits.release[1].set()
    assert await second.future == []
    commits.release[0].set()
    await first.future
    await writer.close()


async def _waits_for_the_earlier_group(later: IntakeEntry) -> None:
    """`later`, submitted while an earlier group commits, starts only once that one landed."""
    commits = _Commits()
    commits.prepare(2)
    writer = GroupCommitWriter(commits, max_events=100, intake_size=100, parallel=2)
    writer.start()
    first = _entry()
    writer.submit(first)
    await commits.started[0]
    writer.submit(later)
    for _ in range(20):  # the writer has every chance to start it: it must not
        await asyncio.sleep(0)
    assert not commits.started[1].done()

    commits.release[0].set()
    await first.future
    await commits.started[1]
    commits.release[1].set()
    await later.future
    await writer.close()


async def test_a_group_with_a_stream_position_waits_for_earlier_groups() -> None:
    await _waits_for_the_earlier_group(_entry(source="stream"))


@pytest.mark.parametrize("key", ["ordering_key", "coalesce_key"])
async def test_a_group_with_ordering_or_coalesce_keys_waits_for_earlier_groups(key: str) -> None:
    keyed = _entry()
    keyed.rows.append(dataclasses.replace(make_event("order_updated"), **{key: "order-7"}))
    await _waits_for_the_earlier_group(keyed)
