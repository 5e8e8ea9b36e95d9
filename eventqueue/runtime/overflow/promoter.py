"""Overflow: which puts enter the table, spilling the rest to disk, and promoting them back.

EVENT_QUEUE_SIZE bounds the scheduling set (pending + claimed rows). A non-CRITICAL event that
finds it full, finds the writer behind, or finds the database locked is appended to the spill
log (spill.py) instead of being dropped or making the stream wait. As consumers free room,
spilled events are promoted into the table, highest priority and oldest first; the spill
position is committed in the same transaction as the promoted rows, so a crash at any point
neither loses nor doubles an event.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from eventqueue.core.config import Config
from eventqueue.core.errors import SpillError, StorageError, StoreBusyError
from eventqueue.core.models import Priority, PutStatus
from eventqueue.core.records import NewEvent, PutCommit
from eventqueue.runtime.faults import crash_point
from eventqueue.runtime.metrics import Metrics
from eventqueue.runtime.overflow.log import (
    SpillLog,
    SpillPosition,
    SpillRecord,
    SpillStats,
    has_segments,
    inspect,
)
from eventqueue.store.base import Store

log = logging.getLogger("eventqueue.overflow")

Outcome = tuple[PutStatus, int | None]
SPILLED: Outcome = (PutStatus.SPILLED, None)
_SLOTS = 64
# How often a running queue looks for spill folders left behind by processes that are gone.
_ADOPT_EVERY_S = 10.0


@dataclass(slots=True)
class _Log:
    """A spill folder this process holds the lock of: its own, or one it adopted."""

    spill: SpillLog
    directory: str
    name: str  # the key of its promotion positions in the database
    lock_fd: int
    positions: dict[int, SpillPosition]  # promoted (and committed) up to here, per priority

    def close(self) -> None:
        self.spill.close()
        os.close(self.lock_fd)


class Overflow:
    """Admission, spill and promotion for one queue."""

    def __init__(
        self,
        own: _Log,
        store: Store,
        config: Config,
        metrics: Metrics,
        clock: Callable[[], float],
    ) -> None:
        self.spill = own.spill
        self.name = own.name
        self._own = own
        # Folders left by processes that are gone (each appends only to its own): promoted
        # from here, never appended to, closed and unlocked once drained.
        self._adopted: list[_Log] = []
        self._next_adoption = 0.0
        self._store = store
        self._config = config
        self._metrics = metrics
        self._clock = clock
        self._wanted = asyncio.Event()
        self._stopping = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self.on_promote: list[Callable[[], None]] = []
        # Held while the table's room is counted and filled (by a put group or a promotion),
        # so the two never fill the same room twice.
        self.admission = asyncio.Lock()
        # Told pending + claimed after every promotion (the writer's admission count).
        self.on_scheduled: Callable[[int], None] = lambda _n: None

    @classmethod
    async def open(
        cls, store: Store, config: Config, metrics: Metrics, clock: Callable[[], float]
    ) -> Overflow:
        """Lock and recover the spill directory; promotion resumes where the database says.

        Spill folders of the same database that no live process holds are adopted too.
        """
        directory, lock_fd = await asyncio.to_thread(_lock_spill, config)
        own = await _recover(store, config, directory, lock_fd)
        overflow = cls(own, store, config, metrics, clock)
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
        for directory in await asyncio.to_thread(_orphans, self._config, self._held()):
            try:
                lock_fd = await asyncio.to_thread(_try_lock, directory)
                if lock_fd is None:
                    continue  # its owner is alive (or another process adopted it first)
                held = await _recover(self._store, self._config, directory, lock_fd)
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

    def _logs(self) -> list[_Log]:
        return [self._own, *self._adopted]

    def wake(self) -> None:
        """Room may have freed, or something was spilled: look at promotion again."""
        self._wanted.set()

    # --- admission ------------------------------------------------------------------------

    def split(self, rows: Sequence[NewEvent], scheduled: int) -> tuple[list[int], list[int]]:
        """Indexes of rows the table takes now, and of rows to spill.

        CRITICAL is always admitted. Others are admitted while there is room and nothing of the
        same or higher priority waits in the spill (which would otherwise be overtaken).
        """
        room = self._config.queue_size - scheduled
        admitted: list[int] = []
        spilled: list[int] = []
        for index, row in enumerate(rows):
            if row.priority == Priority.CRITICAL:
                admitted.append(index)
            elif room > 0 and not self._waiting_at_or_above(row.priority):
                admitted.append(index)
                room -= 1
            else:
                spilled.append(index)
        return admitted, spilled

    def _waiting_at_or_above(self, priority: int) -> bool:
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
            by_priority.setdefault(row.priority, []).append(row.to_bytes())
        for priority in sorted(by_priority, reverse=True):
            await asyncio.to_thread(self.spill.append, priority, by_priority[priority])
            crash_point("mid_spill")
        crash_point("after_spill")
        # Not counted here: each put counts its own outcome ("spilled") when it returns.
        self.wake()

    async def spill_commit(
        self, rows: Sequence[NewEvent], _positions: dict[str, str | None]
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
        async with self.admission:
            scheduled = await self._store.scheduled_count()
            if scheduled > self._config.queue_size // 2:  # the low-water mark
                return 0
            limit = min(self._config.queue_size - scheduled, self._config.commit_max_events)
            records, reached = await asyncio.to_thread(_read, held, limit)
            if not records:
                return 0
            commit = await self._promote(held, records, reached)
            self.on_scheduled(commit.scheduled)
        crash_point("mid_promotion")
        for priority, position in reached.items():
            held.positions[priority] = position
            await asyncio.to_thread(held.spill.release, priority, position)
        if held is not self._own and not held.spill.total_pending():
            self._adopted.remove(held)
            held.close()  # drained: unlock it for whichever process needs a folder next
        self._count(commit.outcome)
        for callback in self.on_promote:
            callback()
        return len(records)

    async def _promote(
        self, held: _Log, records: list[SpillRecord], reached: dict[int, SpillPosition]
    ) -> PutCommit:
        rows = [NewEvent.from_bytes(record.data) for record in records]
        ttl = self._config.dedup_ttl_s if self._config.enable_dedup else None
        try:
            # fail_fast: waiting for another connection's write lock here would hold this
            # process's store, and with it every put that should be spilling meanwhile.
            return await self._store.put(
                rows,
                now=self._clock(),
                dedup_ttl_s=ttl,
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

    def _next_log(self) -> _Log | None:
        """The held log whose best waiting event has the highest priority (own log on ties)."""
        best: tuple[int, _Log] | None = None
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
        return _describe(_combine([held.spill.stats() for held in self._logs()]), self._clock())


async def _recover(store: Store, config: Config, directory: str, lock_fd: int) -> _Log:
    """Open a locked spill folder at the positions its promotions committed."""
    name = spill_log_name(config.db_path, directory)
    try:
        saved = await store.spill_positions(name)
        committed = {p: SpillPosition(*pos) for p, pos in saved.items()}
        spill = await asyncio.to_thread(SpillLog.open, directory, committed=committed)
    except BaseException:
        os.close(lock_fd)
        raise
    if spill.stats().quarantined_records:
        log.warning(
            "spill log %s: %d damaged record(s) quarantined",
            directory,
            spill.stats().quarantined_records,
        )
    return _Log(spill, directory, name, lock_fd, dict(committed))


def _read(held: _Log, limit: int) -> tuple[list[SpillRecord], dict[int, SpillPosition]]:
    records: list[SpillRecord] = []
    reached: dict[int, SpillPosition] = {}
    for priority in sorted(Priority, reverse=True):
        if len(records) >= limit:
            break
        start = held.positions.get(priority, SpillPosition(0, 0))
        found = held.spill.read(priority, start, limit - len(records))
        if found:
            records.extend(found)
            reached[priority] = found[-1].next
    return records, reached


def _combine(parts: list[SpillStats]) -> SpillStats:
    records: dict[int, int] = {}
    for part in parts:
        for priority, n in part.records.items():
            records[priority] = records.get(priority, 0) + n
    oldest = [p.oldest_spilled_at for p in parts if p.oldest_spilled_at is not None]
    return SpillStats(
        records=records,
        bytes_on_disk=sum(p.bytes_on_disk for p in parts),
        oldest_spilled_at=min(oldest, default=None),
        quarantined_records=sum(p.quarantined_records for p in parts),
        quarantined_bytes=sum(p.quarantined_bytes for p in parts),
    )


def inspect_spills(
    config: Config, positions: Callable[[str], Mapping[int, tuple[int, int]]]
) -> dict[str, Any]:
    """Read-only statistics over every spill folder of a database (safe while queues run).

    `positions(name)` gives how far the folder keyed `name` was promoted (from the database).
    """
    folders = [d for d in _candidate_directories(config) if os.path.isdir(d)]
    parts = []
    for directory in folders:
        saved = positions(spill_log_name(config.db_path, directory))
        parts.append(inspect(directory, {p: SpillPosition(*pos) for p, pos in saved.items()}))
    return {"directories": folders, **_describe(_combine(parts), time.time())}


def _candidate_directories(config: Config) -> list[str]:
    extra = [config.spill_dir] if config.spill_dir else []
    return [*extra, *_slot_directories(config)]


def _describe(st: SpillStats, now: float) -> dict[str, Any]:
    oldest = st.oldest_spilled_at
    return {
        "pending": {p.name: st.records.get(p, 0) for p in sorted(Priority, reverse=True)},
        "total": sum(st.records.values()),
        "bytes_on_disk": st.bytes_on_disk,
        "oldest_spilled_age_s": None if oldest is None else round(max(0.0, now - oldest), 3),
        "quarantined_records": st.quarantined_records,
        "quarantined_bytes": st.quarantined_bytes,
    }


def spill_log_name(db_path: str, directory: str) -> str:
    """The key of a spill log's promotion positions: its folder relative to the database's."""
    base = os.path.dirname(os.path.abspath(db_path))
    return os.path.relpath(os.path.abspath(directory), base)


def _lock_spill(config: Config) -> tuple[str, int]:
    """Lock a spill folder for this process: EVENT_SPILL_DIR, or the first free default slot.

    A spill log has one owner. Several processes on one database (producers, consumers) each
    take the first free folder of `<db>.spill`, `<db>.spill-2`, ... A restarted process
    takes its old slot again when it is free, and so promotes what it left there.
    """
    if config.spill_dir:
        fd = _try_lock(config.spill_dir)
        if fd is None:
            raise SpillError(
                f"spill folder {config.spill_dir} (EVENT_SPILL_DIR) is in use by another process"
            )
        return config.spill_dir, fd
    for directory in _slot_directories(config):
        fd = _try_lock(directory)
        if fd is not None:
            return directory, fd
    raise SpillError(
        f"all {_SLOTS} spill folders of {config.db_path} are in use by other processes"
    )


def _slot_directories(config: Config) -> list[str]:
    return [f"{config.db_path}.spill" + ("" if s == 1 else f"-{s}") for s in range(1, _SLOTS + 1)]


def _orphans(config: Config, held: set[str]) -> list[str]:
    """Default spill folders of the database holding segments, other than those held here."""
    return [
        directory
        for directory in _slot_directories(config)
        if os.path.abspath(directory) not in held and has_segments(directory)
    ]


def _try_lock(directory: str) -> int | None:
    os.makedirs(directory, exist_ok=True)
    fd = os.open(os.path.join(directory, "lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd
