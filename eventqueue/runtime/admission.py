"""Admission: the put path from validated rows to a durable outcome.

A put is submitted to the group-commit writer, or, when the writer is behind, straight to the
spill (never waiting). The writer's commit admits what fits among the waiting events
(EVENT_QUEUE_SIZE bounds pending, not claimed; CRITICAL always fits) and spills the rest durably first, then commits the
admitted rows with the stream positions that are safe to record. A busy database spills the
whole group instead of making the stream wait. Nothing is dropped.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import time
from collections.abc import Callable, Sequence

from eventqueue.core.coalesce import debounce_of, sliding
from eventqueue.core.config import Config
from eventqueue.core.errors import StoreBusyError
from eventqueue.core.faults import crash_point
from eventqueue.core.models import Batch, Priority
from eventqueue.core.records import NewEvent, PutCommit, SplitPoint, accepted
from eventqueue.core.rules import dedup_ttl_s
from eventqueue.runtime.handoff import Handoff
from eventqueue.runtime.metrics import Metrics
from eventqueue.runtime.overflow import SPILLED, Outcome, Overflow
from eventqueue.runtime.wakeup import Changes, Room
from eventqueue.runtime.writer import GroupCommitWriter, IntakeEntry
from eventqueue.store.base import Store

_CRITICAL = int(Priority.CRITICAL)
# Group commits in flight at once on a store with a pool of connections.
_POOLED_WRITERS = 2
log = logging.getLogger(__name__)


class Admission:
    """Puts in, outcomes out: group commit, admission to the table, spill when it cannot."""

    def __init__(
        self,
        store: Store,
        overflow: Overflow,
        room: Room,
        changes: Changes,
        handoff: Handoff,
        config: Config,
        clock: Callable[[], float],
        *,
        metrics: Metrics | None = None,
    ) -> None:
        self._metrics = metrics  # its sink, when one is attached, gets each commit's duration
        self._store = store
        self._handoff = handoff
        self._overflow = overflow
        self._room = room
        self._changes = changes
        self._config = config
        self._clock = clock
        self._ttl_s = dedup_ttl_s(config)
        self._sliding = sliding(config)
        self._debounce = debounce_of(config)
        # A stream position commits only when every earlier put is durable: a put still being
        # spilled must not be passed by a later one's position (a crash would skip it). The
        # position then simply commits with a later group.
        self._tickets = 0
        self._spilling: set[int] = set()
        # A pool of connections (PostgreSQL) takes several group commits at once; each admits
        # under the room lock, reserves its room, and commits outside the lock.
        self._parallel = not store.capabilities.single_connection
        self.writer = GroupCommitWriter(
            self._commit,
            max_events=config.commit_max_events,
            intake_size=config.intake_size,
            on_commit=changes.notify,
            may_record=lambda e: not any(t < e.ticket for t in self._spilling),
            parallel=_POOLED_WRITERS if self._parallel else 1,
        )
        # CRITICAL puts without a stream position take a lane of their own: they never wait
        # for a group of other puts to gather or commit, only for the connection (where the
        # store lets them go first). Taking them early moves no position past anything.
        self.urgent = GroupCommitWriter(
            self._commit_urgent,
            max_events=config.commit_max_events,
            intake_size=2**62,
            on_commit=changes.notify,
            # One shared connection: after a CRITICAL commit, let the claim that it woke in first.
            yield_after_commit=store.capabilities.single_connection,
            name="eventqueue-urgent-writer",
        )
        # Puts that find the intake full go to the spill log, gathered into one fsync.
        self._spiller = GroupCommitWriter(
            overflow.spill_commit, max_events=config.commit_max_events, intake_size=2**62
        )

    def start(self) -> None:
        """Start the writer tasks."""
        self.writer.start()
        self.urgent.start()
        self._spiller.start()

    async def close(self) -> None:
        """Commit (or spill) everything submitted, then stop."""
        await self.urgent.close()
        await self.writer.close()
        await self._spiller.close()

    @property
    def queued(self) -> int:
        """Events submitted and not yet committed or spilled."""
        return self.writer.queued + self.urgent.queued + self._spiller.queued

    async def put(
        self, rows: list[NewEvent], source: str | None, position: str | None
    ) -> list[Outcome]:
        """Commit `rows` (or spill them durably); (status, id) per row, in order."""
        future: asyncio.Future[list[Outcome]] = asyncio.get_running_loop().create_future()
        self._tickets += 1
        if len(rows) == 1:  # the common case, without a generator
            critical = rows[0].priority == _CRITICAL
        else:
            critical = any(row.priority == _CRITICAL for row in rows)
        entry = IntakeEntry(rows, future, source, position, ticket=self._tickets)
        urgent = critical and source is None and all(row.priority == _CRITICAL for row in rows)
        # Ordered events keep the writer's FIFO (the urgent lane would pass an earlier event
        # of their group that waits in the intake; inside a group, order beats priority).
        if urgent and all(row.ordering_key is None for row in rows):
            self.urgent.submit(entry)
        elif self.writer.has_room(len(rows)) or critical:
            self.writer.submit(entry)  # CRITICAL is always admitted, even past the intake bound
        else:
            self._spiller.submit(entry)  # the writer is behind: spill rather than wait
            self._spilling.add(entry.ticket)
            future.add_done_callback(lambda _f: self._spilling.discard(entry.ticket))
        return await future

    async def _commit(self, rows: Sequence[NewEvent], points: list[SplitPoint]) -> list[Outcome]:
        """The writer's commit: admit what fits, spill the rest durably first, then commit."""
        async with self._room.lock:
            admitted, spilled = self.split(rows)
            if spilled:
                # Durable before the transaction that records the stream position past them.
                await self._overflow.append([rows[i] for i in spilled])
            # The points counted in admitted rows: a put's spilled rows are already durable.
            chosen_points = [(bisect.bisect_left(admitted, end), at) for end, at in points]
            chosen = [rows[i] for i in admitted]
            if not self._parallel:
                results = await self._commit_admitted(chosen, chosen_points)
            else:
                self._room.reserved += len(chosen)
        if self._parallel:
            try:
                results = await self._commit_admitted(chosen, chosen_points)
            finally:
                self._room.reserved -= len(chosen)
        outcome: list[Outcome] = [SPILLED] * len(rows)
        for index, result in zip(admitted, results, strict=True):
            outcome[index] = result
        return outcome

    async def _commit_admitted(
        self, chosen: list[NewEvent], points: list[SplitPoint]
    ) -> list[Outcome]:
        """Commit `chosen`: in one transaction, or in several when the store ends one early, at
        the end of a put, to let a CRITICAL put have the connection. Each stores the stream
        positions of the puts it completes, so none passes an event not yet stored, and a
        crash in between resumes the stream right after the last whole put stored. Called
        under the room lock (or with its room reserved)."""
        results: list[Outcome] = []
        positions = points[-1][1] if points else {}
        while True:
            done = len(results)
            rest = chosen[done:]
            now = self._clock()
            critical = any(row.priority == _CRITICAL for row in rest)
            sink = None if self._metrics is None else self._metrics.sink
            started = time.perf_counter() if sink is not None else 0.0
            try:
                commit = await self._store.put(
                    rest,
                    now=now,
                    dedup_ttl_s=self._ttl_s,
                    sliding=self._sliding,
                    debounce=self._debounce,
                    source_positions=positions,
                    fail_fast=True,
                    lease=self._handoff.lease(now) if critical else None,
                    count_waiting=self._room.worth_counting(len(rest), now),
                    split=[(end - done, at) for end, at in points if end > done],
                )
            except StoreBusyError:
                # Another connection holds the write lock: spill instead of making the stream wait.
                await self._overflow.append(rest)
                return results + [SPILLED] * len(rest)
            self._room.committed(commit.waiting, _left_waiting(commit), now)
            if sink is not None:
                sink.commit(time.perf_counter() - started, len(commit.outcome))
            self._committed(commit)
            results += commit.outcome
            if len(results) == len(chosen):
                return results

    async def _commit_urgent(
        self, rows: Sequence[NewEvent], _points: list[SplitPoint]
    ) -> list[Outcome]:
        """The urgent lane's commit: CRITICAL rows only, always admitted, handed over at once."""
        now = self._clock()
        try:
            commit = await self._store.put(
                rows,
                now=now,
                dedup_ttl_s=self._ttl_s,
                sliding=self._sliding,
                debounce=self._debounce,
                fail_fast=True,
                lease=self._handoff.lease(now),
                count_waiting=False,  # CRITICAL needs no room; nothing extra before its commit
            )
        except StoreBusyError:
            await self._overflow.append(rows)  # durable now; promoted first (highest priority)
            return [SPILLED] * len(rows)
        # Not under the room lock: a concurrent group commit may overwrite the estimate with its
        # own count; the next count corrects it.
        self._room.committed(None, _left_waiting(commit), now)
        self._committed(commit)
        return list(commit.outcome)

    def _committed(self, commit: PutCommit) -> None:
        crash_point("after_commit")
        if commit.claimed:
            crash_point("mid_handoff")  # leased and committed, not yet with its consumer
            for batch in self._handoff.deliver(commit.claimed):
                self.give_back(batch)

    def give_back(self, batch: Batch) -> None:
        """A CRITICAL batch leased for a consumer that no longer takes it: pending again now,
        rather than after its lease (in the background; a failure is logged, the lease ends it).
        No handler saw it, so the attempt its lease counted is undone: counted, a CRITICAL retry
        given back at its last attempt would be claimed past EVENT_MAX_ATTEMPTS."""
        task = asyncio.create_task(self._store.give_back(batch.token, batch.ids))
        task.add_done_callback(lambda done: self._given_back(done, len(batch)))

    def _given_back(self, task: asyncio.Task[None], events: int) -> None:
        if task.cancelled():
            return
        if (error := task.exception()) is not None:
            # Not lost: the batch is a committed claimed row, pending again once its lease ends.
            log.warning("giving back a batch failed (its lease will): %s", error)
        else:
            self._room.returned(events)  # pending again: they wait once more
            self._changes.notify()

    def split(self, rows: Sequence[NewEvent]) -> tuple[list[int], list[int]]:
        """Indexes of rows the table takes now, and of rows to spill.

        CRITICAL is always admitted. Others are admitted while there is room and nothing of the
        same or higher priority waits in the spill (which would otherwise be overtaken).
        """
        room = self._room.free
        if not self._overflow.pending() and not self._spilling and len(rows) <= room:
            return list(range(len(rows))), []  # the common case, without a look per row
        admitted: list[int] = []
        spilled: list[int] = []
        for index, row in enumerate(rows):
            if row.ordering_key is not None and (spilled or self._behind_spill((row,))):
                # An ordered event never passes the spill: an earlier event of its group may
                # wait there (order beats priority, CRITICAL included). Spilled into one log
                # in arrival order (Overflow.append), it is promoted in its group's order.
                spilled.append(index)
            elif row.priority == _CRITICAL:
                admitted.append(index)
            elif room > 0 and not self._overflow.waiting_at_or_above(row.priority):
                admitted.append(index)
                room -= 1
            else:
                spilled.append(index)
        return admitted, spilled

    def _behind_spill(self, rows: Sequence[NewEvent]) -> bool:
        """Whether ordered `rows` must follow the spill: something waits in it, or is being
        spilled."""
        if all(row.ordering_key is None for row in rows):
            return False
        return bool(self._overflow.pending() or self._spilling)


def _left_waiting(commit: PutCommit) -> int:
    """Events a put left waiting: those it accepted, less the CRITICAL ones it handed over
    (claimed in the same transaction, they never waited)."""
    return accepted(commit.outcome) - sum(len(batch) for batch in commit.claimed)
