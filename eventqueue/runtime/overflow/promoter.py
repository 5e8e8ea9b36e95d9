"""Overflow: the spill side of admission, and promotion back into the table.

Events that Admission cannot put into the table now are appended to this process's spill log
(log.py) instead of being dropped or making the stream wait. As soon as there is room (a claim took
waiting events, or another process did), spilled events are promoted into the table,
highest priority and oldest first, each keeping the time it was received (its dedup window
is measured from then, however late it is promoted); the spill position is
committed in the same transaction as the promoted rows, so a crash at any point neither loses
nor doubles an event. Which folders are spilled into and adopted: folders.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

from eventqueue.core.coalesce import debounce_of, sliding
from eventqueue.core.config import Config
from eventqueue.core.errors import SpillError, StorageError, StoreBusyError
from eventqueue.core.faults import crash_point
from eventqueue.core.models import Priority, PutStatus
from eventqueue.core.records import NewEvent, PutCommit, SplitPoint, accepted
from eventqueue.core.rules import dedup_ttl_s
from eventqueue.runtime.metrics import Metrics
from eventqueue.runtime.overflow.folders import (
    SpillFolder,
    combine,
    describe,
    lock_spill,
    orphans,
    recover,
    try_lock,
)
from eventqueue.runtime.overflow.log import SpillPosition, SpillRecord
from eventqueue.runtime.wakeup import Changes, Room
from eventqueue.store.base import Store

# Events per promotion transaction at most: a chunk holds the connection ~2 ms, so a CRITICAL
# put never waits long behind one (group commits may be larger: they end early for it).
PROMOTION_CHUNK_EVENTS = 100

log = logging.getLogger(__name__)

Outcome = tuple[PutStatus, int | None]
SPILLED: Outcome = (PutStatus.SPILLED, None)
_SLOTS = 64
# How often a running queue looks for spill folders left behind by processes that are gone.
_ADOPT_EVERY_S = 10.0


class Overflow:
    """Admission, spill and promotion for one queue."""

    def __init__(
        self,
        own: SpillFolder,
        store: Store,
        room: Room,
        changes: Changes,
        config: Config,
        metrics: Metrics,
        clock: Callable[[], float],
    ) -> None:
        self.spill = own.spill
        self.name = own.name  # this process's writer identity (see folders.py)
        self.directory = own.directory
        self._own = own
        # Folders left by processes that are gone (each appends only to its own): promoted
        # from here, never appended to, closed and unlocked once drained.
        self._adopted: list[SpillFolder] = []
        self._next_adoption = 0.0
        self._store = store
        self._config = config
        self._metrics = metrics
        self._clock = clock
        self._ttl_s = dedup_ttl_s(config)
        self._sliding = sliding(config)
        self._debounce = debounce_of(config)
        self._wanted = asyncio.Event()
        self._stopping = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._room = room
        self._changes = changes
        # An ack or a release may have freed room (looked up at each call: tests replace it).
        changes.listen(lambda: self.wake())

    @classmethod
    async def open(
        cls,
        store: Store,
        room: Room,
        changes: Changes,
        config: Config,
        metrics: Metrics,
        clock: Callable[[], float],
    ) -> Overflow:
        """Lock and recover the spill directory; promotion resumes where the database says.

        Spill folders of the same database that no live process holds are adopted too.
        """
        directory, lock_fd = await asyncio.to_thread(lock_spill, config)
        own = await recover(store, config, directory, lock_fd)
        overflow = cls(own, store, room, changes, config, metrics, clock)
        try:
            await overflow._adopt()
        except BaseException:
            overflow._close_logs()
            raise
        return overflow

    def start(self) -> None:
        """Start promoting (recovered records first)."""
        self._task = asyncio.create_task(self._promote_loop(), name="eventqueue-promoter")
        self.wake()

    async def close(self) -> None:
        """Stop promoting and close the spill log (what is spilled stays for the next start)."""
        self._closing = True
        self._stopping.set()
        self._wanted.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._close_logs()

    def _close_logs(self) -> None:
        for held in [*self._adopted, self._own]:
            held.close()
        self._adopted.clear()

    async def _adopt(self) -> None:
        """Lock and recover every default spill folder of this database that no process holds."""
        self._next_adoption = time.monotonic() + _ADOPT_EVERY_S
        for directory in await asyncio.to_thread(orphans, self._config, self._held()):
            try:
                lock_fd = await asyncio.to_thread(try_lock, directory)
                if lock_fd is None:
                    continue  # its owner is alive (or another process adopted it first)
                held = await recover(self._store, self._config, directory, lock_fd)
            except (OSError, SpillError) as exc:  # never a reason to stop this queue
                log.warning("cannot adopt spill folder %s (will retry): %s", directory, exc)
                continue
            if held.spill.total_pending():
                log.warning(
                    "adopted spill folder %s (%d events) left by a process that is gone",
                    directory,
                    held.spill.total_pending(),
                )
                self._adopted.append(held)
            else:
                held.close()  # nothing waits there (recovery deleted what was promoted)
        self.wake()

    def _held(self) -> set[str]:
        return {os.path.abspath(held.directory) for held in self._logs()}

    def _logs(self) -> list[SpillFolder]:
        return [self._own, *self._adopted]

    def wake(self) -> None:
        """Room may have freed, or something was spilled: look at promotion again."""
        self._wanted.set()

    # --- spill --------------------------------------------------------------------------------

    def waiting_at_or_above(self, priority: int) -> bool:
        """Whether spilled events of `priority` or higher wait (a new one must not overtake)."""
        return any(
            held.spill.pending(p) for held in self._logs() for p in Priority if p >= priority
        )

    def pending(self) -> int:
        """Events waiting in the spill log (and in folders adopted from processes that are gone)."""
        return sum(held.spill.total_pending() for held in self._logs())

    async def append(self, rows: Sequence[NewEvent]) -> None:
        """Write rows to the spill log durably (fsynced) before returning."""
        by_priority: dict[int, list[bytes]] = {}
        for row in rows:
            # Ordered events all go to one log (LOW, promoted last, each record keeping its own
            # priority), so they come back in arrival order: a group's order survives the
            # spill, whatever the priorities inside it.
            log = Priority.LOW if row.ordering_key is not None else row.priority
            by_priority.setdefault(log, []).append(row.to_bytes())
        for priority in sorted(by_priority, reverse=True):
            await asyncio.to_thread(self.spill.append, priority, by_priority[priority])
            crash_point("mid_spill")
        crash_point("after_spill")
        # Not counted here: each put counts its own outcome ("spilled") when it returns.
        self.wake()

    async def spill_commit(
        self, rows: Sequence[NewEvent], _points: list[SplitPoint]
    ) -> list[Outcome]:
        """A commit function for a spill-only writer (puts that found the intake full)."""
        await self.append(rows)
        return [SPILLED] * len(rows)

    # --- promotion ------------------------------------------------------------------------

    async def _promote_loop(self) -> None:
        poll_s = self._config.poll_ms / 1000.0
        busy = False
        while not self._closing:
            if busy:
                # The write lock is held elsewhere: back off a poll interval whatever spills
                # meanwhile (each attempt holds this process's store for up to spill_after_ms).
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), poll_s)
            else:
                # Acks in other processes free room too: look again after a poll interval.
                with contextlib.suppress(TimeoutError):
                    idle_s = poll_s if self.pending() else _ADOPT_EVERY_S
                    await asyncio.wait_for(self._wanted.wait(), idle_s)
            self._wanted.clear()
            busy = False
            try:
                if time.monotonic() >= self._next_adoption and not self._closing:
                    await self._adopt()
                while not self._closing and await self.promote_once():
                    pass
            except StoreBusyError:
                busy = True  # expected while another connection writes; promotion resumes after
            except (StorageError, SpillError) as exc:
                log.error("promotion from the spill log failed (retrying): %s", exc)

    async def promote_once(self) -> int:
        """Move one chunk of spilled events into the table if there is room; return how many."""
        held = self._next_log()
        if held is None:
            return 0
        async with self._room.lock:
            # No low-water mark: a spilled event waits for room, never for the queue to drain
            # (held claims do not count, so an idle consumer always gets it).
            waiting = await self._store.waiting_count()
            if waiting >= self._config.queue_size:
                return 0
            limit = min(
                self._config.queue_size - waiting,
                self._config.commit_max_events,
                PROMOTION_CHUNK_EVENTS,
            )
            records = await asyncio.to_thread(_read, held, limit)
            if not records:
                return 0
            rows, reached = _within_windows(records, self._ttl_s)
            commit = await self._promote(held, rows, reached)
            self._room.committed(commit.waiting, accepted(commit.outcome), self._clock())
        crash_point("mid_promotion")
        for priority, position in reached.items():
            held.positions[priority] = position
            await asyncio.to_thread(held.spill.release, priority, position)
        if held is not self._own and not held.spill.total_pending():
            self._adopted.remove(held)
            held.close()  # drained: unlock it for whichever process needs a folder next
        self._count(commit.outcome)
        self._changes.notify()
        return len(rows)

    async def _promote(
        self, held: SpillFolder, rows: list[NewEvent], reached: dict[int, SpillPosition]
    ) -> PutCommit:
        try:
            # `now` is the promotion time; the dedup window of each row is measured from its
            # own received_at, kept in the spill record.
            # fail_fast: waiting for another connection's write lock here would hold this
            # process's store, and with it every put that should be spilling meanwhile.
            return await self._store.put(
                rows,
                now=self._clock(),
                dedup_ttl_s=self._ttl_s,
                sliding=self._sliding,
                debounce=self._debounce,
                spill_positions=(
                    held.name,
                    {p: (pos.segment, pos.offset) for p, pos in reached.items()},
                ),
                fail_fast=True,
            )
        except BaseException:
            # The commit may have happened even though the call failed (F2): the database,
            # not memory, says how far promotion got, so nothing is promoted twice.
            with contextlib.suppress(StorageError):
                saved = await self._store.spill_positions(held.name)
                for priority, (segment, offset) in saved.items():
                    held.positions[priority] = SpillPosition(segment, offset)
            raise

    def _next_log(self) -> SpillFolder | None:
        """The held log whose best waiting event has the highest priority (own log on ties)."""
        best: tuple[int, SpillFolder] | None = None
        for held in self._logs():
            top = next((p for p in sorted(Priority, reverse=True) if held.spill.pending(p)), 0)
            if top and (best is None or top > best[0]):
                best = (top, held)
        return None if best is None else best[1]

    def _count(self, outcome: list[tuple[PutStatus, int]]) -> None:
        self._metrics.count("promoted", len(outcome))
        duplicates = sum(1 for status, _ in outcome if status is PutStatus.DUPLICATE)
        if duplicates:
            self._metrics.count("duplicate", duplicates)

    def stats(self) -> dict[str, Any]:
        """Spilled events by priority, bytes on disk, oldest spilled age, quarantined records."""
        return describe(combine([held.spill.stats() for held in self._logs()]), self._clock())


def _read(held: SpillFolder, limit: int) -> list[SpillRecord]:
    """Up to `limit` records not promoted yet, highest priority first, oldest first in each."""
    records: list[SpillRecord] = []
    for priority in sorted(Priority, reverse=True):
        if len(records) >= limit:
            break
        start = held.positions.get(priority, SpillPosition(0, 0))
        records.extend(held.spill.read(priority, start, limit - len(records)))
    return records


def _within_windows(
    records: list[SpillRecord], ttl_s: float | None
) -> tuple[list[NewEvent], dict[int, SpillPosition]]:
    """The events of `records` that one put may take, and per priority the spill position after
    the last of them.

    A put folds the repeats of one content into its first row, judged once at that row's
    receipt time. A repeat received more than the dedup window apart from that row must be
    judged on its own (it may be new again): the chunk ends before it, and leads the next one.
    """
    rows: list[NewEvent] = []
    reached: dict[int, SpillPosition] = {}
    first: dict[str, float] = {}
    for record in records:
        row = NewEvent.from_bytes(record.data)
        since = first.setdefault(row.content_hash, row.received_at)
        if ttl_s is not None and abs(row.received_at - since) > ttl_s:
            break
        rows.append(row)
        reached[record.priority] = record.next
    return rows, reached
