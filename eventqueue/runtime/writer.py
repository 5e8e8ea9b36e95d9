"""The group-commit writer: concurrent puts gathered into one transaction by one task."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from eventqueue.core.models import PutStatus
from eventqueue.core.records import NewEvent, SplitPoint

log = logging.getLogger(__name__)
# Loop turns the writer waits after a commit with `yield_after_commit` (the claimer, woken by
# the commit, needs a few to reach the connection first).
_YIELDS_AFTER_COMMIT = 4

# Commits rows; returns (status, id) per row in order. Raises on a fault. The points say where
# each put of the group ends and the stream positions safe to store from there on; the last
# point's positions go with the whole group.
CommitFn = Callable[
    [Sequence[NewEvent], list[SplitPoint]], Awaitable[list[tuple[PutStatus, int | None]]]
]


@dataclass(slots=True)
class IntakeEntry:
    """One `put` or `put_many` waiting for the writer."""

    rows: list[NewEvent]
    future: asyncio.Future[list[tuple[PutStatus, int | None]]]
    source: str | None = None
    position: str | None = None
    ticket: int = 0  # submission order across the writer and the spill writer
    size: int = field(init=False)

    def __post_init__(self) -> None:
        self.size = len(self.rows)


class GroupCommitWriter:
    """Takes whatever puts are waiting (up to `max_events`) and commits them together.

    There is no fixed delay: while one commit is in flight the next group gathers, so the
    group size follows the load: one event per commit when idle, hundreds under a burst.
    """

    def __init__(
        self,
        commit: CommitFn,
        *,
        max_events: int,
        intake_size: int,
        on_commit: Callable[[], None] = lambda: None,
        may_record: Callable[[IntakeEntry], bool] = lambda _entry: True,
        yield_after_commit: bool = False,
        parallel: int = 1,
        name: str = "eventqueue-writer",
    ) -> None:
        self._commit = commit
        self._on_commit = on_commit
        # Whether an entry's stream position may be committed now (see Admission).
        self._may_record = may_record
        self._yield_after_commit = yield_after_commit
        self._name = name
        self._max_events = max_events
        self._capacity = intake_size
        self._entries: deque[IntakeEntry] = deque()
        self._open = 0  # entries submitted and not yet committed (or failed)
        self._settled = asyncio.Event()
        self._settled.set()
        self._queued = 0
        self._has_work = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        # Group commits in flight at once (a pool of connections); a group that stores stream
        # positions starts only when every earlier group has landed, so a position never
        # commits ahead of an event it covers.
        self._slots = asyncio.Semaphore(parallel)
        self._parallel = parallel
        self._flying: set[asyncio.Task[None]] = set()

    @property
    def queued(self) -> int:
        """Rows waiting for the writer."""
        return self._queued

    def has_room(self, rows: int) -> bool:
        """True when `rows` more fit in the intake."""
        return self._queued + rows <= self._capacity or self._queued == 0

    def start(self) -> None:
        """Start the writer task."""
        self._task = asyncio.create_task(self._run(), name=self._name)

    def submit(self, entry: IntakeEntry) -> None:
        """Queue an entry (the caller checked room or chose to exceed it)."""
        self._entries.append(entry)
        self._open += 1
        self._settled.clear()
        self._queued += entry.size
        self._has_work.set()

    @property
    def open(self) -> int:
        """Entries submitted and not yet committed (or failed)."""
        return self._open

    async def settled(self) -> None:
        """Wait until every entry submitted so far is committed (or has failed)."""
        while self._open:
            await self._settled.wait()

    async def close(self) -> None:
        """Commit everything queued, then stop the task."""
        self._stopping = True
        self._has_work.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while self._flying:
            await asyncio.wait(set(self._flying))

    async def _run(self) -> None:
        while True:
            if not self._entries:
                if self._stopping:
                    return
                self._has_work.clear()
                await self._has_work.wait()
                continue
            if self._parallel > 1:
                await self._slots.acquire()  # first: the group gathers while all are busy
                await self._launch(self._take_group())
                continue
            group = self._take_group()
            await self._commit_group(group)
            if self._yield_after_commit and not self._entries:
                # Let the consumers' claim, woken by this commit, reach the connection before
                # the next group does: the CRITICAL event just stored is what it will lease.
                for _ in range(_YIELDS_AFTER_COMMIT):
                    await asyncio.sleep(0)

    async def _launch(self, group: list[IntakeEntry]) -> None:
        """Start `group`'s commit beside those in flight (its slot taken); a group that must
        land after every earlier one (`_in_turn`) once they have."""
        if any(_in_turn(entry) for entry in group):
            while self._flying:
                await asyncio.wait(set(self._flying))
        task = asyncio.create_task(self._commit_group(group), name=f"{self._name}-group")
        self._flying.add(task)
        task.add_done_callback(self._landed)

    def _landed(self, task: asyncio.Task[None]) -> None:
        self._flying.discard(task)
        self._slots.release()
        if not task.cancelled():
            task.exception()  # _commit_entries hands every fault to the puts' futures

    def _take_group(self) -> list[IntakeEntry]:
        group: list[IntakeEntry] = []
        rows = 0
        while self._entries and (not group or rows + self._entries[0].size <= self._max_events):
            entry = self._entries.popleft()
            group.append(entry)
            rows += entry.size
        self._queued -= rows
        return group

    async def _commit_group(self, group: list[IntakeEntry]) -> None:
        try:
            await self._commit_entries(group)
        finally:
            self._open -= len(group)
            if not self._open:
                self._settled.set()

    async def _commit_entries(self, group: list[IntakeEntry]) -> None:
        rows: list[NewEvent] = []
        points: list[SplitPoint] = []
        reached: dict[str, str | None] = {}
        for entry in group:
            rows += entry.rows
            if entry.source is not None and self._may_record(entry):
                reached = {**reached, entry.source: entry.position}
            points.append((len(rows), reached))
        try:
            results = await self._commit(rows, points)
        except Exception as exc:  # every waiting put gets the fault; the writer keeps going
            log.warning("group commit of %d events failed: %s", len(rows), exc)
            for entry in group:
                if not entry.future.done():
                    entry.future.set_exception(exc)
            return
        offset = 0
        for entry in group:
            if not entry.future.done():
                entry.future.set_result(results[offset : offset + entry.size])
            offset += entry.size
        self._on_commit()


def _in_turn(entry: IntakeEntry) -> bool:
    """Whether an entry may commit only after every earlier group has: a stream position must
    never commit ahead of an event it covers; an ordered event must not become its group's head
    before an earlier event of the group still in flight is stored; and a coalescing version
    must not land before an older one in flight, which would then fold over it (latest wins
    would become last committed wins)."""
    return entry.source is not None or any(
        row.ordering_key is not None or row.coalesce_key is not None for row in entry.rows
    )
