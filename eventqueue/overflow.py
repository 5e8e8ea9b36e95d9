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
import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from eventqueue.config import Config
from eventqueue.errors import SpillError, StorageError
from eventqueue.faults import crash_point
from eventqueue.metrics import Metrics
from eventqueue.models import Priority, PutStatus
from eventqueue.spill import SpillLog, SpillPosition, SpillStats, inspect
from eventqueue.store.sqlite import NewEvent, SQLiteStore

log = logging.getLogger("eventqueue.overflow")

Outcome = tuple[PutStatus, int | None]
SPILLED: Outcome = (PutStatus.SPILLED, None)
_SLOTS = 64


class Overflow:
    """Admission, spill and promotion for one queue."""

    def __init__(
        self,
        spill: SpillLog,
        name: str,
        lock_fd: int,
        store: SQLiteStore,
        config: Config,
        metrics: Metrics,
        clock: Callable[[], float],
        positions: dict[int, SpillPosition],
    ) -> None:
        self.spill = spill
        self.name = name
        self._lock_fd = lock_fd
        self._store = store
        self._config = config
        self._metrics = metrics
        self._clock = clock
        self._positions = positions
        self._wanted = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self.on_promote: list[Callable[[], None]] = []

    @classmethod
    async def open(
        cls, store: SQLiteStore, config: Config, metrics: Metrics, clock: Callable[[], float]
    ) -> Overflow:
        """Lock and recover the spill directory; promotion resumes where the database says."""
        directory, lock_fd = await asyncio.to_thread(_lock_spill, config)
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
        return cls(spill, name, lock_fd, store, config, metrics, clock, dict(committed))

    def start(self) -> None:
        """Start promoting (recovered records first)."""
        self._task = asyncio.create_task(self._promote_loop(), name="eventqueue-promoter")
        self.wake()

    async def close(self) -> None:
        """Stop promoting and close the spill log (what is spilled stays for the next start)."""
        self._closing = True
        self._wanted.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.spill.close()
        os.close(self._lock_fd)

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
        return any(self.spill.pending(p) for p in Priority if p >= priority)

    def pending(self) -> int:
        """Events waiting in the spill log."""
        return self.spill.total_pending()

    async def append(self, rows: Sequence[NewEvent]) -> None:
        """Write rows to the spill log durably (fsynced) before returning."""
        by_priority: dict[int, list[bytes]] = {}
        for row in rows:
            by_priority.setdefault(row.priority, []).append(_encode(row))
        for priority in sorted(by_priority, reverse=True):
            await asyncio.to_thread(self.spill.append, priority, by_priority[priority])
            crash_point("mid_spill")
        crash_point("after_spill")
        self._metrics.count("spilled", len(rows))
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
        while not self._closing:
            # Acks in other processes free room too: look again after a poll interval.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wanted.wait(), poll_s if self.pending() else None)
            self._wanted.clear()
            try:
                while not self._closing and await self.promote_once():
                    pass
            except (StorageError, SpillError) as exc:
                log.error("promotion from the spill log failed (retrying): %s", exc)

    async def promote_once(self) -> int:
        """Move one chunk of spilled events into the table if there is room; return how many."""
        if not self.pending():
            return 0
        scheduled = await self._store.scheduled_count()
        low_water = self._config.queue_size // 2
        if scheduled > low_water:
            return 0
        limit = min(self._config.queue_size - scheduled, self._config.commit_max_events)
        records, reached = await asyncio.to_thread(self._read, limit)
        if not records:
            return 0
        rows = [_decode(record.data) for record in records]
        ttl = self._config.dedup_ttl_s if self._config.enable_dedup else None
        commit = await self._store.put(
            rows,
            now=self._clock(),
            dedup_ttl_s=ttl,
            spill_positions=(
                self.name,
                {p: (pos.segment, pos.offset) for p, pos in reached.items()},
            ),
        )
        crash_point("mid_promotion")
        for priority, position in reached.items():
            self._positions[priority] = position
            await asyncio.to_thread(self.spill.release, priority, position)
        self._count(commit.outcome)
        for callback in self.on_promote:
            callback()
        return len(rows)

    def _read(self, limit: int) -> tuple[list[Any], dict[int, SpillPosition]]:
        records: list[Any] = []
        reached: dict[int, SpillPosition] = {}
        for priority in sorted(Priority, reverse=True):
            if len(records) >= limit:
                break
            start = self._positions.get(priority, SpillPosition(0, 0))
            found = self.spill.read(priority, start, limit - len(records))
            if found:
                records.extend(found)
                reached[priority] = found[-1].next
        return records, reached

    def _count(self, outcome: list[tuple[PutStatus, int]]) -> None:
        self._metrics.count("promoted", len(outcome))
        duplicates = sum(1 for status, _ in outcome if status is PutStatus.DUPLICATE)
        if duplicates:
            self._metrics.count("duplicate", duplicates)

    def stats(self) -> dict[str, Any]:
        """Spilled events by priority, bytes on disk, oldest spilled age, quarantined records."""
        return _describe(self.spill.stats(), self._clock())


def inspect_spill(directory: str, committed: Mapping[int, tuple[int, int]]) -> dict[str, Any]:
    """Read-only spill statistics (safe while the owning queue runs), as `stats` shows them."""
    positions = {p: SpillPosition(*pos) for p, pos in committed.items()}
    return _describe(inspect(directory, positions), time.time())


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


def _encode(row: NewEvent) -> bytes:
    fields = [row.payload_json, row.priority, row.batch_key, row.content_hash, row.received_at]
    return json.dumps(fields, ensure_ascii=False).encode("utf-8")


def _decode(data: bytes) -> NewEvent:
    payload_json, priority, batch_key, content_hash, received_at = json.loads(data)
    return NewEvent(payload_json, int(priority), batch_key, content_hash, float(received_at))


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
    for slot in range(1, _SLOTS + 1):
        directory = f"{config.db_path}.spill" + ("" if slot == 1 else f"-{slot}")
        fd = _try_lock(directory)
        if fd is not None:
            return directory, fd
    raise SpillError(
        f"all {_SLOTS} spill folders of {config.db_path} are in use by other processes"
    )


def _try_lock(directory: str) -> int | None:
    os.makedirs(directory, exist_ok=True)
    fd = os.open(os.path.join(directory, "lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd
