"""The spill log on real files: round trips, rotation, release, recovery from damage, faults."""

from __future__ import annotations

import itertools
import os
import struct
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from eventqueue.core.errors import SpillError
from eventqueue.runtime.overflow.log import (
    START,
    SpillLog,
    SpillPosition,
    SpillRecord,
    inspect,
)
from eventqueue.tools.render import on_disk_text

HEAD = 20  # magic + u32 length + f64 spilled_at + u32 crc


class Clock:
    """A wall clock that moves one second per reading."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


OpenSpill = Callable[..., SpillLog]


@pytest.fixture
def open_spill(tmp_path: Path) -> Iterator[OpenSpill]:
    opened: list[SpillLog] = []

    def _open(directory: Path | None = None, **kwargs: Any) -> SpillLog:
        kwargs.setdefault("clock", Clock())
        spill = SpillLog.open(directory or tmp_path / "spill", **kwargs)
        opened.append(spill)
        return spill

    yield _open
    for spill in opened:
        spill.close()


def payloads(n: int, prefix: str = "event") -> list[bytes]:
    return [f"{prefix}-{i:03d}".encode() for i in range(n)]


def read_all(spill: SpillLog, priority: int, start: SpillPosition = START) -> list[SpillRecord]:
    return spill.read(priority, start, 1_000_000)


def segments(directory: Path, priority: int = 4) -> list[Path]:
    return sorted(directory.glob(f"p{priority}-*.log"))


def build_one_segment(open_spill: OpenSpill, directory: Path, n: int) -> list[SpillRecord]:
    spill = open_spill(directory)
    for item in payloads(n):
        spill.append(4, [item])
    records = read_all(spill, 4)
    spill.close()
    assert len(segments(directory)) == 1
    return records


def reopen_records(open_spill: OpenSpill, directory: Path) -> tuple[SpillLog, list[bytes]]:
    spill = open_spill(directory)
    return spill, [r.data for r in read_all(spill, 4)]


# -- round trips, rotation, release ----------------------------------------------------------


def test_round_trip_across_priorities_and_segments(open_spill: OpenSpill, tmp_path: Path) -> None:
    spill = open_spill(segment_bytes=64)
    written = {p: payloads(7, f"p{p}") for p in (4, 3, 2, 1)}
    positions = {
        p: spill.append(p, items[:3]) + spill.append(p, items[3:]) for p, items in written.items()
    }
    for priority, items in written.items():
        records = read_all(spill, priority)
        assert [r.data for r in records] == items
        assert [r.position for r in records] == positions[priority]
        assert all(r.priority == priority for r in records)
        for a, b in itertools.pairwise(records):
            assert a.next == b.position or (b.position == SpillPosition(a.next.segment + 1, 0))
        assert len(segments(tmp_path / "spill", priority)) > 2
    assert spill.total_pending() == 28


def test_read_in_pages_crosses_segments(open_spill: OpenSpill) -> None:
    spill = open_spill(segment_bytes=50)
    items = payloads(9)
    spill.append(3, items)
    seen: list[bytes] = []
    start = START
    while page := spill.read(3, start, 2):
        seen += [r.data for r in page]
        start = page[-1].next
    assert seen == items
    assert spill.read(3, START, 0) == []


def test_release_counts_down_and_deletes_old_segments(
    open_spill: OpenSpill, tmp_path: Path
) -> None:
    spill = open_spill(segment_bytes=64)
    spill.append(4, payloads(10))
    records = read_all(spill, 4)
    before = spill.stats().bytes_on_disk
    spill.release(4, records[4].next)
    assert spill.pending(4) == 5
    assert read_all(spill, 4)[0].data == records[5].data
    assert spill.stats().oldest_spilled_at == records[5].spilled_at
    assert spill.stats().bytes_on_disk < before
    remaining = {int(p.name[3:11]) for p in segments(tmp_path / "spill")}
    assert min(remaining) >= records[4].next.segment
    spill.release(4, records[-1].next)
    assert spill.pending(4) == 0
    assert spill.stats().oldest_spilled_at is None
    # promoted to its end, the segment being appended to goes too: nothing left on disk
    assert segments(tmp_path / "spill") == []
    assert spill.stats().bytes_on_disk == 0


def test_a_drained_spill_keeps_working_and_reopens_at_the_committed_position(
    open_spill: OpenSpill, tmp_path: Path
) -> None:
    spill = open_spill()
    spill.append(4, payloads(3))
    first = read_all(spill, 4)
    spill.release(4, first[1].next)
    assert len(segments(tmp_path / "spill")) == 1  # a record still waits in it

    spill.release(4, first[-1].next)
    assert segments(tmp_path / "spill") == []
    spill.append(4, [b"after"])
    assert [r.data for r in read_all(spill, 4)] == [b"after"]
    assert read_all(spill, 4)[0].position.segment == first[-1].position.segment + 1
    spill.close()

    reopened = open_spill(committed={4: first[-1].next})
    assert [r.data for r in read_all(reopened, 4)] == [b"after"]
    assert reopened.pending(4) == 1


def test_promoted_bytes_left_on_disk_are_reported_apart(
    open_spill: OpenSpill, tmp_path: Path
) -> None:
    # A crash between the promotion's commit and the delete leaves a promoted segment behind.
    spill = open_spill()
    spill.append(4, payloads(4))
    records = read_all(spill, 4)
    spill.release(4, records[1].next)  # half promoted: the segment stays for the rest
    live = spill.stats()
    assert live.promoted_bytes == records[1].next.offset < live.bytes_on_disk
    spill.close()

    left = inspect(tmp_path / "spill", {4: records[-1].next})  # the crash: all committed

    assert left.records == {} and left.bytes_on_disk > 0
    assert left.promoted_bytes == left.bytes_on_disk
    shown = on_disk_text({"bytes_on_disk": 2_900_000, "promoted_bytes": 2_900_000})
    assert shown == "2.9 MB (2.9 MB of it already promoted, to be deleted)"
    assert on_disk_text({"bytes_on_disk": 0, "promoted_bytes": 0}) == "0 B"


def test_release_again_or_backwards_is_a_no_op(open_spill: OpenSpill) -> None:
    spill = open_spill()
    spill.append(4, payloads(5))
    records = read_all(spill, 4)
    spill.release(4, records[2].next)
    spill.release(4, records[2].next)
    spill.release(4, records[0].next)
    assert spill.pending(4) == 2
    assert [r.data for r in spill.read(4, START, 10)] == [b"event-003", b"event-004"]


def test_stats(open_spill: OpenSpill, tmp_path: Path) -> None:
    spill = open_spill()
    spill.append(2, [b"a", b"bb"])
    spill.append(4, [b"c"])
    stats = spill.stats()
    assert stats.records == {4: 1, 3: 0, 2: 2, 1: 0}
    assert stats.bytes_on_disk == 3 * HEAD + 4
    assert stats.oldest_spilled_at == 1_001.0
    assert (stats.quarantined_records, stats.quarantined_bytes) == (0, 0)


def test_concurrent_appends_from_threads(open_spill: OpenSpill) -> None:
    spill = open_spill(segment_bytes=256, fsync=False)
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda t: spill.append(1, payloads(50, f"t{t}")), range(8)))
    data = [r.data for r in read_all(spill, 1)]
    assert sorted(data) == sorted(d for t in range(8) for d in payloads(50, f"t{t}"))
    assert spill.pending(1) == 400


def test_unknown_priority_and_closed_log(open_spill: OpenSpill) -> None:
    spill = open_spill(priorities=(1,))
    with pytest.raises(ValueError, match="priority 9"):
        spill.append(9, [b"x"])
    spill.close()
    with pytest.raises(SpillError, match="closed"):
        spill.append(1, [b"x"])


# -- reopen -----------------------------------------------------------------------------------


def test_reopen_with_committed_counts_only_what_follows(
    open_spill: OpenSpill, tmp_path: Path
) -> None:
    directory = tmp_path / "spill"
    spill = open_spill(directory, segment_bytes=64)
    spill.append(4, payloads(10))
    spill.append(1, payloads(3))
    records = read_all(spill, 4)
    spill.close()
    committed = {4: records[3].next, 1: START}
    spill = open_spill(directory, committed=committed, segment_bytes=64)
    assert spill.pending(4) == 6
    assert spill.pending(1) == 3
    assert [r.data for r in read_all(spill, 4)] == [r.data for r in records[4:]]
    assert all(p.name >= f"p4-{records[3].next.segment:08d}" for p in segments(directory))
    new = spill.append(4, [b"later"])
    assert new[0] > records[-1].position
    assert spill.stats().oldest_spilled_at == records[4].spilled_at


def test_reopen_after_everything_was_promoted(open_spill: OpenSpill, tmp_path: Path) -> None:
    directory = tmp_path / "spill"
    spill = open_spill(directory)
    spill.append(4, payloads(3))
    end = read_all(spill, 4)[-1].next
    spill.close()
    spill = open_spill(directory, committed={4: end})
    assert spill.total_pending() == 0
    assert segments(directory) == []
    assert spill.append(4, [b"x"])[0] > end  # never reuses a committed segment number


def test_committed_segment_number_beyond_any_file(open_spill: OpenSpill) -> None:
    assert SpillPosition.START == START == SpillPosition(0, 0)
    spill = open_spill(committed={4: SpillPosition(7, 100)})
    assert spill.append(4, [b"x"]) == [SpillPosition(8, 0)]


# -- damage -----------------------------------------------------------------------------------


def test_truncation_at_every_byte_of_the_last_two_records(
    open_spill: OpenSpill, tmp_path: Path
) -> None:
    records = build_one_segment(open_spill, tmp_path / "original", 5)
    original = segments(tmp_path / "original")[0].read_bytes()
    boundaries = {r.next.offset for r in records} | {0}
    for cut in range(records[-2].position.offset, len(original) + 1):
        directory = tmp_path / f"cut{cut}"
        directory.mkdir()
        (directory / "p4-00000001.log").write_bytes(original[:cut])
        spill, data = reopen_records(open_spill, directory)
        expected = [r.data for r in records if r.next.offset <= cut]
        assert data == expected, cut
        assert spill.pending(4) == len(expected)
        quarantined = spill.stats().quarantined_records
        assert quarantined == 0 if cut in boundaries else quarantined == 1, cut
        spill.close()


@pytest.mark.parametrize("part", ["header", "payload"])
def test_bit_flips_in_a_middle_record(open_spill: OpenSpill, tmp_path: Path, part: str) -> None:
    records = build_one_segment(open_spill, tmp_path / "original", 5)
    original = segments(tmp_path / "original")[0].read_bytes()
    middle = records[2]
    start = middle.position.offset + (0 if part == "header" else HEAD)
    stop = middle.position.offset + HEAD if part == "header" else middle.next.offset
    for bit in range((stop - start) * 8):
        damaged = bytearray(original)
        damaged[start + bit // 8] ^= 1 << (bit % 8)
        directory = tmp_path / f"flip{bit}"
        directory.mkdir()
        (directory / "p4-00000001.log").write_bytes(bytes(damaged))
        spill, data = reopen_records(open_spill, directory)
        assert data == [r.data for r in records if r is not middle], bit
        stats = spill.stats()
        assert stats.quarantined_records == 1
        assert stats.quarantined_bytes == middle.next.offset - middle.position.offset
        spill.close()


def test_zero_filled_tail(open_spill: OpenSpill, tmp_path: Path) -> None:
    directory = tmp_path / "spill"
    records = build_one_segment(open_spill, directory, 4)
    path = segments(directory)[0]
    size = path.stat().st_size
    with path.open("ab") as f:
        f.write(bytes(4096))
    spill, data = reopen_records(open_spill, directory)
    assert data == [r.data for r in records]
    assert (spill.stats().quarantined_records, spill.stats().quarantined_bytes) == (1, 4096)
    assert path.stat().st_size == size


def test_empty_segment_file(open_spill: OpenSpill, tmp_path: Path) -> None:
    directory = tmp_path / "spill"
    directory.mkdir()
    (directory / "p4-00000001.log").write_bytes(b"")
    spill = open_spill(directory)
    assert spill.total_pending() == 0
    assert spill.stats().quarantined_records == 0
    assert spill.append(4, [b"x"]) == [SpillPosition(2, 0)]


def test_missing_directory_is_created(open_spill: OpenSpill, tmp_path: Path) -> None:
    spill = open_spill(tmp_path / "a" / "b")
    assert spill.total_pending() == 0
    assert (tmp_path / "a" / "b").is_dir()


def test_reopening_does_not_quarantine_again(open_spill: OpenSpill, tmp_path: Path) -> None:
    directory = tmp_path / "spill"
    records = build_one_segment(open_spill, directory, 5)
    path = segments(directory)[0]
    damaged = bytearray(path.read_bytes())
    damaged[records[1].position.offset + HEAD] ^= 0xFF
    path.write_bytes(bytes(damaged) + b"\0" * 100)
    expected = [r.data for r in records if r is not records[1]]
    for _ in range(3):
        spill, data = reopen_records(open_spill, directory)
        assert data == expected
        assert spill.pending(4) == 4
        assert spill.stats().quarantined_records == 2
        spill.close()


def test_damage_before_committed_is_left_alone(open_spill: OpenSpill, tmp_path: Path) -> None:
    directory = tmp_path / "spill"
    records = build_one_segment(open_spill, directory, 6)
    path = segments(directory)[0]
    damaged = bytearray(path.read_bytes())
    damaged[records[0].position.offset + HEAD] ^= 1  # promoted already: not examined
    damaged[records[4].position.offset + HEAD] ^= 1  # pending: quarantined, later ones kept
    path.write_bytes(bytes(damaged))
    committed = records[2].next
    spill = open_spill(directory, committed={4: committed})
    assert [r.data for r in read_all(spill, 4, committed)] == [b"event-003", b"event-005"]
    assert read_all(spill, 4, committed)[0].position == committed  # the prefix kept its offsets
    assert spill.pending(4) == 2
    assert spill.stats().quarantined_records == 1


def test_quarantine_file_records_where_damage_came_from(
    open_spill: OpenSpill, tmp_path: Path
) -> None:
    directory = tmp_path / "spill"
    records = build_one_segment(open_spill, directory, 3)
    path = segments(directory)[0]
    path.write_bytes(path.read_bytes()[:-2])
    open_spill(directory).close()
    entry = (directory / "quarantine.log").read_bytes()
    magic, priority, segment, offset, length = struct.unpack_from("<4siQQQ", entry)
    assert (magic, priority, segment, offset) == (b"EQQ1", 4, 1, records[2].position.offset)
    assert length == len(entry) - 32


# -- faults -----------------------------------------------------------------------------------


def failing_fsync(monkeypatch: pytest.MonkeyPatch, fail_on: int) -> None:
    real, calls = os.fsync, [0]

    def fsync(fd: int) -> None:
        calls[0] += 1
        if calls[0] == fail_on:
            raise OSError(5, "injected fsync failure")
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def test_failed_append_raises_and_leaves_no_partial_record(
    open_spill: OpenSpill, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "spill"
    spill = open_spill(directory)
    spill.append(4, [b"kept"])
    size = segments(directory)[0].stat().st_size
    failing_fsync(monkeypatch, 1)
    with pytest.raises(SpillError) as raised:
        spill.append(4, [b"lost-1", b"lost-2"])
    assert isinstance(raised.value.__cause__, OSError)
    assert segments(directory)[0].stat().st_size == size
    assert spill.pending(4) == 1
    assert [r.data for r in read_all(spill, 4)] == [b"kept"]
    spill.append(4, [b"after"])
    spill.close()
    monkeypatch.undo()
    spill, data = reopen_records(open_spill, directory)
    assert data == [b"kept", b"after"]
    assert spill.stats().quarantined_records == 0


@pytest.mark.parametrize("fail_on", range(1, 9))
def test_fsync_failure_at_every_step_of_a_rotating_append(
    open_spill: OpenSpill, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail_on: int
) -> None:
    directory = tmp_path / "spill"
    spill = open_spill(directory, segment_bytes=64)
    spill.append(4, [b"kept"])
    batch = payloads(6)
    failing_fsync(monkeypatch, fail_on)
    try:
        spill.append(4, batch)
        succeeded = True
    except SpillError:
        succeeded = False
    assert succeeded == (fail_on == 8)  # 7 fsyncs: 4 segment files, 3 directory entries
    expected = [b"kept", *batch] if succeeded else [b"kept"]
    assert [r.data for r in read_all(spill, 4)] == expected
    assert spill.pending(4) == len(expected)
    spill.close()
    monkeypatch.undo()
    spill, data = reopen_records(open_spill, directory)
    assert data == expected
    assert spill.stats().quarantined_records == 0


def test_frame_layout_is_documented(open_spill: OpenSpill, tmp_path: Path) -> None:
    directory = tmp_path / "spill"
    open_spill(directory, clock=lambda: 12.5).append(4, [b"abc"])
    raw = segments(directory)[0].read_bytes()
    magic, length, spilled_at, crc = struct.unpack_from("<4sIdI", raw)
    assert (magic, length, spilled_at, raw[HEAD:]) == (b"EQS1", 3, 12.5, b"abc")
    assert crc == zlib.crc32(b"abc", zlib.crc32(raw[4:16]))


def test_torn_quarantine_tail_and_stale_rewrite_are_dropped(
    open_spill: OpenSpill, tmp_path: Path
) -> None:
    directory = tmp_path / "spill"
    build_one_segment(open_spill, directory, 2)
    path = segments(directory)[0]
    path.write_bytes(path.read_bytes() + b"junk")
    open_spill(directory).close()
    quarantine = directory / "quarantine.log"
    size = quarantine.stat().st_size
    quarantine.write_bytes(quarantine.read_bytes() + b"EQQ1torn")
    (directory / "p4-00000001.log.tmp").write_bytes(b"half a rewrite")
    spill = open_spill(directory)
    assert (spill.stats().quarantined_records, spill.stats().quarantined_bytes) == (1, 4)
    assert quarantine.stat().st_size == size
    assert not (directory / "p4-00000001.log.tmp").exists()
    assert spill.pending(4) == 2
