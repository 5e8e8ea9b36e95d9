"""The overflow spill: an append-only, CRC-framed, fsynced log of opaque bytes per priority.

Knows nothing of SQL. The caller serialises records, promotes them into the database, stores the
position reached in the same transaction, and passes it back as `committed` on open and to
`release` while running.

On disk, one directory holds `p{priority}-{segment:08d}.log` segments and `quarantine.log`;
the record and quarantine-entry formats are in frames.py.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import re
import threading
import time
import warnings
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, ClassVar

from eventqueue.core.errors import SpillError

# Imported by name and called through this module's globals: the fault tests patch
# `_write_all` here (tests/reliability/test_battery_faults.py).
from eventqueue.runtime.overflow.frames import (
    _QHEAD,
    _QMAGIC,
    _copy,
    _count_quarantine,
    _frame,
    _walk,
    _write_all,
    make_dirs_durably,
)

log = logging.getLogger(__name__)

_QUARANTINE = "quarantine.log"
_SEGMENT = re.compile(r"p(-?\d+)-(\d{8,})\.log")
_Ranges = list[tuple[int, int]]


@dataclass(frozen=True, order=True, slots=True)
class SpillPosition:
    """A place in one priority's log: segment number and byte offset within it."""

    START: ClassVar[SpillPosition]

    segment: int
    offset: int


SpillPosition.START = SpillPosition(0, 0)
START = SpillPosition.START


@dataclass(frozen=True, slots=True)
class SpillRecord:
    """One intact record read back from the spill."""

    priority: int
    position: SpillPosition
    next: SpillPosition
    data: bytes
    spilled_at: float


@dataclass(frozen=True, slots=True)
class SpillStats:
    """Counts for metrics: pending records per priority, disk use, age, quarantined damage."""

    records: dict[int, int]
    bytes_on_disk: int
    oldest_spilled_at: float | None
    quarantined_records: int
    quarantined_bytes: int
    # Of bytes_on_disk, those already promoted (committed) but not yet deleted: the part of a
    # segment that still holds waiting records, or what a crash left for the next start.
    promoted_bytes: int = 0


@dataclass(slots=True)
class _Lane:
    released: SpillPosition  # promotion is committed up to here
    pending: int = 0
    head_spilled_at: float | None = None  # spilled_at of the first pending record
    segment: int = 0  # segment being appended to; 0 when none is open
    size: int = 0
    fd: int | None = None
    next_segment: int = 1


class SpillLog:
    """Per-priority append-only segment files; every method is thread-safe."""

    def __init__(
        self, directory: Path, segment_bytes: int, fsync: bool, clock: Callable[[], float]
    ):
        self._dir = directory
        self._segment_bytes = segment_bytes
        self._fsync = fsync
        self._clock = clock
        self._lock = threading.Lock()
        self._lanes: dict[int, _Lane] = {}
        self._quarantined_records = 0
        self._quarantined_bytes = 0
        self._closed = False

    @classmethod
    def open(
        cls,
        directory: str | os.PathLike[str],
        *,
        committed: Mapping[int, SpillPosition] | None = None,
        priorities: Sequence[int] = (4, 3, 2, 1),
        segment_bytes: int = 64 * 1024 * 1024,
        fsync: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> SpillLog:
        """Open (creating) the spill directory and recover every segment; damage never fails it."""
        if segment_bytes <= 0:
            raise ValueError(f"segment_bytes must be positive, got {segment_bytes}")
        spill = cls(Path(directory), segment_bytes, fsync, clock)
        committed = committed or {}
        for priority in (*priorities, *committed):
            spill._lanes[priority] = _Lane(committed.get(priority, START))
        spill._closed = True  # until recovered: no ResourceWarning for a failed open
        with spill._faults("open"):
            make_dirs_durably(spill._dir)
            spill._recover()
        spill._closed = False
        return spill

    def append(self, priority: int, items: Sequence[bytes]) -> list[SpillPosition]:
        """Append `items` durably (fsynced before returning); all or none on failure."""
        with self._lock:
            lane = self._lane(priority)
            spilled_at = self._clock()
            frames = [_frame(bytes(item), spilled_at) for item in items]
            if not frames:
                return []
            before = (lane.segment, lane.size) if lane.fd is not None else None
            created: list[int] = []
            try:
                positions = self._write(priority, lane, frames, created)
            except OSError as exc:
                self._rollback(priority, lane, before, created)
                raise SpillError(
                    f"cannot write {len(frames)} records durably to the spill in {self._dir}: "
                    f"{exc}; free disk space or fix permissions, then retry"
                ) from exc
            if lane.pending == 0:
                lane.head_spilled_at = spilled_at
            lane.pending += len(frames)
            return positions

    def read(self, priority: int, start: SpillPosition, limit: int) -> list[SpillRecord]:
        """Up to `limit` intact records at or after `start` (and the released position)."""
        with self._lock:
            records = self._records(priority, max(start, self._lane(priority).released))
            with self._faults("read"), contextlib.closing(records):
                return list(itertools.islice(records, max(limit, 0)))

    def release(self, priority: int, upto: SpillPosition) -> None:
        """Forget records before `upto` (promoted) and delete segments wholly before it.

        The segment being appended to is closed and deleted too once promoted to its end: a
        drained spill holds no bytes on disk (the next append starts a new segment). Callers
        release only what a committed transaction promoted, so nothing deleted is still needed.
        """
        with self._lock:
            lane = self._lane(priority)
            if upto <= lane.released:
                return  # a repeated or stale release: already accounted for
            with self._faults("read"):
                released, head = self._count_before(priority, lane.released, upto)
            lane.released = upto
            lane.pending = max(0, lane.pending - released)
            lane.head_spilled_at = head
            if lane.fd is not None and upto >= SpillPosition(lane.segment, lane.size):
                with self._faults("close"):
                    self._close_segment(lane)
            self._delete_before(priority, lane, upto)

    def pending(self, priority: int) -> int:
        """Records of `priority` not yet released."""
        with self._lock:
            return self._lane(priority).pending

    def total_pending(self) -> int:
        """Records of every priority not yet released."""
        with self._lock:
            return sum(lane.pending for lane in self._lanes.values())

    def stats(self) -> SpillStats:
        """Pending counts, bytes on disk, the oldest pending record's time and quarantine totals."""
        with self._lock:
            heads = [
                x.head_spilled_at for x in self._lanes.values() if x.head_spilled_at is not None
            ]
            files = [(p, s, path.stat().st_size) for p, s, path in self._segment_files()]
            return SpillStats(
                records={priority: lane.pending for priority, lane in self._lanes.items()},
                bytes_on_disk=sum(size for _, _, size in files),
                oldest_spilled_at=min(heads, default=None),
                quarantined_records=self._quarantined_records,
                quarantined_bytes=self._quarantined_bytes,
                promoted_bytes=sum(
                    _promoted(s, size, self._lanes[p].released if p in self._lanes else START)
                    for p, s, size in files
                ),
            )

    def close(self) -> None:
        """Close open segment files; idempotent."""
        with self._lock:
            self._closed = True
            for lane in self._lanes.values():
                self._close_segment(lane)

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            warnings.warn(f"SpillLog({self._dir}) was never closed", ResourceWarning, stacklevel=1)
            self.close()

    @contextlib.contextmanager
    def _faults(self, action: str) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            raise SpillError(f"cannot {action} the spill in {self._dir}: {exc}") from exc

    def _lane(self, priority: int) -> _Lane:
        if self._closed:
            raise SpillError(f"the spill in {self._dir} is closed")
        lane = self._lanes.get(priority)
        if lane is None:
            raise ValueError(f"priority {priority} is not one of {sorted(self._lanes)}")
        return lane

    def _write(
        self, priority: int, lane: _Lane, frames: list[bytes], created: list[int]
    ) -> list[SpillPosition]:
        positions: list[SpillPosition] = []
        batch: list[bytes] = []
        for frame in frames:
            if lane.fd is None or (lane.size and lane.size + len(frame) > self._segment_bytes):
                self._flush(lane, batch)
                self._rotate(priority, lane, created)
            positions.append(SpillPosition(lane.segment, lane.size))
            batch.append(frame)
            lane.size += len(frame)
        self._flush(lane, batch)
        return positions

    def _flush(self, lane: _Lane, batch: list[bytes]) -> None:
        if lane.fd is not None and batch:
            _write_all(lane.fd, b"".join(batch))
            batch.clear()
            if self._fsync:
                os.fsync(lane.fd)

    def _rotate(self, priority: int, lane: _Lane, created: list[int]) -> None:
        self._close_segment(lane)
        segment, lane.next_segment = lane.next_segment, lane.next_segment + 1
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND
        lane.fd = os.open(self._path(priority, segment), flags, 0o644)
        lane.segment, lane.size = segment, 0
        created.append(segment)
        self._sync_dir()

    def _rollback(
        self, priority: int, lane: _Lane, before: tuple[int, int] | None, created: list[int]
    ) -> None:
        # The current segment is abandoned either way: the next append starts a fresh one, so
        # nothing is ever appended after bytes whose durability is unknown.
        self._close_segment(lane)
        for segment in created:
            with contextlib.suppress(OSError):
                self._path(priority, segment).unlink()
        if before is None:
            return
        path = self._path(priority, before[0])
        try:
            os.truncate(path, before[1])
            with open(path, "rb") as f:
                os.fsync(f.fileno())
        except OSError as exc:
            log.warning("spill %s: could not truncate after a failed append: %s", path, exc)

    def _close_segment(self, lane: _Lane) -> None:
        if lane.fd is not None:
            fd, lane.fd, lane.segment = lane.fd, None, 0
            os.close(fd)

    def _sync_dir(self) -> None:
        if self._fsync:
            fd = os.open(self._dir, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def _path(self, priority: int, segment: int) -> Path:
        return self._dir / f"p{int(priority)}-{segment:08d}.log"  # the value, not a name

    def _segment_files(self, only: int | None = None) -> list[tuple[int, int, Path]]:
        """(priority, segment, path) of every segment file, in append order per priority."""
        try:
            paths = list(self._dir.iterdir())
        except FileNotFoundError:
            return []
        found = []
        for path in paths:
            match = _SEGMENT.fullmatch(path.name)
            if match and (only is None or int(match[1]) == only):
                found.append((int(match[1]), int(match[2]), path))
        return sorted(found)

    def _records(self, priority: int, start: SpillPosition) -> Generator[SpillRecord, None, None]:
        for _, segment, path in self._segment_files(priority):
            if segment < start.segment:
                continue
            try:
                f = path.open("rb")
            except FileNotFoundError:
                continue
            with f:
                offset = start.offset if segment == start.segment else 0
                for span in _walk(f, offset, os.fstat(f.fileno()).st_size):
                    if span.payload is not None:  # damage is skipped; recovery quarantines it
                        position, end = (
                            SpillPosition(segment, span.start),
                            SpillPosition(segment, span.end),
                        )
                        yield SpillRecord(priority, position, end, span.payload, span.spilled_at)

    def _count_before(
        self, priority: int, start: SpillPosition, upto: SpillPosition
    ) -> tuple[int, float | None]:
        """Records from `start` to before `upto`, and the spilled_at of the first one after."""
        count = 0
        with contextlib.closing(self._records(priority, start)) as records:
            for record in records:
                if record.position >= upto:
                    return count, record.spilled_at
                count += 1
        return count, None

    def _delete_before(self, priority: int, lane: _Lane, upto: SpillPosition) -> None:
        for _, segment, path in self._segment_files(priority):
            if segment > upto.segment or (segment == lane.segment and lane.fd is not None):
                continue
            try:
                if segment < upto.segment or path.stat().st_size <= upto.offset:
                    path.unlink()
            except OSError as exc:  # harmless: the next open deletes it as wholly committed
                log.warning("spill %s: could not delete a released segment: %s", path, exc)

    def _recover(self) -> None:
        for path in self._dir.glob("p*.log.tmp"):
            path.unlink()  # an interrupted rewrite; the original segment is still in place
        self._scan_quarantine()
        for priority, segment, path in self._segment_files():
            lane = self._lanes.setdefault(priority, _Lane(START))
            lane.next_segment = max(lane.next_segment, segment + 1)
            self._recover_segment(priority, segment, path, lane)
        for lane in self._lanes.values():
            lane.next_segment = max(lane.next_segment, lane.released.segment + 1)

    def _recover_segment(self, priority: int, segment: int, path: Path, lane: _Lane) -> None:
        # Rule for committed positions: bytes before `committed` were promoted and are never
        # validated, quarantined or moved. Segments wholly before it are deleted; in its own
        # segment the prefix is kept verbatim so the committed offset stays valid, and only
        # records at or after it may shift when damage before them is cut out.
        start = lane.released.offset if segment == lane.released.segment else 0
        damage: _Ranges = []
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            if segment < lane.released.segment or start >= size:
                with contextlib.suppress(OSError):  # wholly promoted (or empty): nothing to keep
                    path.unlink()
                return
            for span in _walk(f, start, size):
                if span.payload is None:
                    damage.append((span.start, span.end))
                    continue
                lane.pending += 1
                if lane.head_spilled_at is None:
                    lane.head_spilled_at = span.spilled_at
            if damage:
                self._repair(priority, segment, f, damage)

    def _repair(self, priority: int, segment: int, f: BinaryIO, damage: _Ranges) -> None:
        # Quarantine first, then cut: a crash in between quarantines the damage twice at worst.
        path, size = Path(f.name), os.fstat(f.fileno()).st_size
        try:
            for start, end in damage:
                log.warning("spill %s: quarantined %d bytes at offset %d", path, end - start, start)
                self._quarantine(priority, segment, f, start, end)
            if damage == [(damage[0][0], size)]:  # a torn or zeroed tail: truncating is atomic
                with path.open("r+b") as out:
                    out.truncate(damage[0][0])
                    self._sync_file(out)
            else:
                self._rewrite(path, f, size, damage)
        except OSError as exc:
            log.warning("spill %s: could not repair (damage will be skipped): %s", path, exc)

    def _rewrite(self, path: Path, f: BinaryIO, size: int, damage: _Ranges) -> None:
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("wb") as out:
            kept = 0
            for start, end in [*damage, (size, size)]:
                _copy(f, out, kept, start)
                kept = end
            self._sync_file(out)
        os.replace(tmp, path)
        self._sync_dir()

    def _quarantine(self, priority: int, segment: int, f: BinaryIO, start: int, end: int) -> None:
        with (self._dir / _QUARANTINE).open("ab") as out:
            out.write(_QHEAD.pack(_QMAGIC, priority, segment, start, end - start))
            _copy(f, out, start, end)
            self._sync_file(out)
        self._quarantined_records += 1
        self._quarantined_bytes += end - start

    def _scan_quarantine(self) -> None:
        path = self._dir / _QUARANTINE
        count, total = _count_quarantine(path)
        self._quarantined_records += count
        self._quarantined_bytes += total
        end = count * _QHEAD.size + total
        if path.exists() and path.stat().st_size > end:
            # A torn entry from a crash while quarantining: drop it.
            log.warning(
                "spill %s: dropped a torn tail of %d bytes", path, path.stat().st_size - end
            )
            os.truncate(path, end)

    def _sync_file(self, f: BinaryIO) -> None:
        f.flush()
        if self._fsync:
            os.fsync(f.fileno())


def inspect(
    directory: str | os.PathLike[str], committed: Mapping[int, SpillPosition] | None = None
) -> SpillStats:
    """Read-only statistics of a spill folder another process may own (for `eventqueue stats`).

    Counts intact records at or after each priority's committed position; repairs nothing.
    """
    root = Path(directory)
    committed = committed or {}
    records: dict[int, int] = {}
    total_bytes = promoted_bytes = 0
    oldest: float | None = None
    try:
        names = sorted(p for p in root.iterdir() if _SEGMENT.fullmatch(p.name))
    except FileNotFoundError:
        names = []
    for path in names:
        match = _SEGMENT.fullmatch(path.name)
        assert match is not None
        priority, segment = int(match[1]), int(match[2])
        start = committed.get(priority, START)
        try:
            with path.open("rb") as f:
                size = os.fstat(f.fileno()).st_size
                total_bytes += size
                promoted_bytes += _promoted(segment, size, start)
                if segment < start.segment:
                    continue
                offset = start.offset if segment == start.segment else 0
                for span in _walk(f, offset, size):
                    if span.payload is not None:
                        records[priority] = records.get(priority, 0) + 1
                        oldest = span.spilled_at if oldest is None else min(oldest, span.spilled_at)
        except FileNotFoundError:
            continue  # promoted and deleted while we looked
    quarantined, quarantined_bytes = _count_quarantine(root / _QUARANTINE)
    return SpillStats(records, total_bytes, oldest, quarantined, quarantined_bytes, promoted_bytes)


def _promoted(segment: int, size: int, committed: SpillPosition) -> int:
    """Bytes of a segment file before the committed position: promoted, deletable."""
    if segment < committed.segment:
        return size
    return min(size, committed.offset) if segment == committed.segment else 0


def has_segments(directory: str | os.PathLike[str]) -> bool:
    """True when the folder holds any segment file (a spill that may still have records)."""
    try:
        return any(_SEGMENT.fullmatch(name) for name in os.listdir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return False
