"""The power-loss filesystem itself: it forgets exactly what was not made durable."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from pathlib import Path

import pytest

from .mount import PowerLossMount, skip_unless_available
from .process import Process

skip_unless_available()

BLOCK = bytes(range(256)) * 16  # 4096 bytes no two neighbours alike, so a prefix is recognisable


def write(path: Path, data: bytes, offset: int = 0, *, sync: bool = False) -> None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.pwrite(fd, data, offset)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def durable_file(power: PowerLossMount, name: str, data: bytes) -> Path:
    """A file whose contents and name are both durable."""
    path = power.path(name)
    write(path, data, sync=True)
    fsync_dir(power.mountpoint)
    return path


def test_a_write_not_fsynced_is_gone_after_a_cut(power: PowerLossMount) -> None:
    path = durable_file(power, "f", b"durable")
    write(path, b" and lost", offset=7)
    assert path.read_bytes() == b"durable and lost"  # the page cache view, before the cut
    power.cut("drop")
    assert path.read_bytes() == b"durable"


def test_an_fsynced_write_is_kept(power: PowerLossMount) -> None:
    path = durable_file(power, "f", b"0123456789")
    write(path, b"abc", offset=3, sync=True)
    write(path, b"XYZ", offset=20)  # not synced: the size it adds goes too
    for mode, seed in [("drop", 0), ("torn-byte", 1), ("torn-sector", 2), ("reorder", 3)]:
        power.cut(mode, seed)
        assert path.read_bytes()[:10] == b"012abc6789", mode


@pytest.mark.parametrize("seed", range(8))
def test_a_torn_write_leaves_a_prefix(power: PowerLossMount, seed: int) -> None:
    path = durable_file(power, "f", bytes(4096))
    write(path, BLOCK[:3000], offset=100)
    report = power.cut("torn-byte", seed)["files"]["/f"]
    kept = report["torn"]["kept_bytes"]
    assert 0 < kept < 3000
    assert path.read_bytes() == bytes(100) + BLOCK[:kept] + bytes(4096 - 100 - kept)


@pytest.mark.parametrize("seed", range(4))
def test_a_sector_torn_write_ends_on_a_sector_boundary(power: PowerLossMount, seed: int) -> None:
    path = durable_file(power, "f", b"")
    write(path, BLOCK[:3000], offset=100)  # extends the file: the torn size is the kept prefix
    report = power.cut("torn-sector", seed)["files"]["/f"]
    kept = report["torn"]["kept_bytes"]
    assert (100 + kept) % 512 == 0 and 0 < kept < 3000
    assert path.read_bytes() == bytes(100) + BLOCK[:kept]


def test_a_created_file_vanishes_without_a_directory_fsync(power: PowerLossMount) -> None:
    lost, kept = power.path("lost"), power.path("kept")
    write(kept, b"fsynced, and its name too", sync=True)
    fsync_dir(power.mountpoint)
    write(lost, b"fsynced, but its name was not", sync=True)
    (power.mountpoint / "later").mkdir()
    power.cut("drop")
    assert not lost.exists() and not power.path("later").exists()
    assert kept.read_bytes() == b"fsynced, and its name too"


def test_an_unlink_or_rename_without_a_directory_fsync_is_undone(power: PowerLossMount) -> None:
    a = durable_file(power, "a", b"A")
    b = durable_file(power, "b", b"B")
    write(a, b"A, not synced", sync=False)
    a.unlink()
    b.rename(power.path("c"))
    power.cut("drop")
    assert a.read_bytes() == b"A"  # back, with its durable contents
    assert b.read_bytes() == b"B" and not power.path("c").exists()
    b.rename(power.path("c"))
    fsync_dir(power.mountpoint)
    power.cut("drop")
    assert not b.exists() and power.path("c").read_bytes() == b"B"


def test_reorder_keeps_any_subset_of_the_unsynced_writes(power: PowerLossMount) -> None:
    path = durable_file(power, "f", bytes(8 * 512))
    for block in range(8):
        write(path, bytes([block + 1]) * 512, offset=block * 512)
    report = power.cut("reorder", 5)["files"]["/f"]
    data = path.read_bytes()
    kept = [block for block in range(8) if data[block * 512] == block + 1]
    assert all(
        data[b * 512 : (b + 1) * 512] in (bytes(512), bytes([b + 1]) * 512) for b in range(8)
    )
    assert len(kept) == report["kept_ops"] and 0 < len(kept) < 8, report


WRITER = """
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND)
print("WORKER_READY", flush=True)
sys.stdin.readline()
for i in range(10):
    os.write(fd, f"record {i:04d}\\n".encode() * 8)
    os.fsync(fd)
print("finished", flush=True)
"""


@pytest.mark.parametrize("mode", ["drop", "torn-byte"])
def test_an_armed_cut_kills_the_writer_at_its_nth_write(power: PowerLossMount, mode: str) -> None:
    path = durable_file(power, "log", b"")
    writer = Process(["-c", WRITER, str(path)], dict(os.environ))
    try:
        assert writer.next_line(_deadline()) == ("out", "WORKER_READY")
        power.arm(op="write", match="/log$", n=5, pid=writer.proc.pid, mode=mode, seed=3)
        writer.send("go")
        assert writer.reap(timeout_s=30) == -9
    finally:
        writer.kill()
    assert power.status()["dead"]
    with pytest.raises(OSError):
        path.read_bytes()  # the power is off until the test turns it back on
    power.revive()
    data = path.read_bytes()
    records = b"".join(f"record {i:04d}\n".encode() * 8 for i in range(5))
    assert data.startswith(records[: 4 * 96])  # the four fsynced appends
    if mode == "drop":
        assert len(data) == 4 * 96
    else:  # the fifth, torn: a strict prefix of it
        assert 4 * 96 < len(data) < 5 * 96 and records.startswith(data)


SQLITE = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("PRAGMA journal_mode=WAL")
db.execute("PRAGMA synchronous=FULL")
db.execute("CREATE TABLE t (x)")
for i in range(20):
    db.execute("INSERT INTO t VALUES (?)", (i,))
db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: commits are not fsynced
for i in range(20, 40):
    db.execute("INSERT INTO t VALUES (?)", (i,))
print(db.execute("SELECT count(*) FROM t").fetchone()[0], flush=True)
sys.stdin.readline()
"""


@pytest.mark.parametrize("mode", ["drop", "torn-sector"])
def test_sqlite_in_wal_mode_keeps_fsynced_commits(power: PowerLossMount, mode: str) -> None:
    """20 commits fsynced (synchronous=FULL), 20 not (NORMAL): a cut keeps the first 20 and,
    when it lets some unsynced writes through, a prefix of the rest; never a torn database."""
    db = power.path("t.db")
    writer = Process(["-c", SQLITE, str(db)], dict(os.environ))
    try:
        assert writer.next_line(_deadline()) == ("out", "40")
    finally:
        writer.kill()  # killed with its connection open: no checkpoint, no clean close
        writer.reap()
    report = power.cut(mode, 1)
    assert report["files"]["/t.db-wal"]["pending_ops"] > 0
    with contextlib.closing(sqlite3.connect(db)) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        count, top = connection.execute("SELECT count(*), max(x) FROM t").fetchone()
    assert top == count - 1 and (count == 20 if mode == "drop" else 20 <= count < 40)


def test_the_mount_is_gone_after_close(tmp_path: Path) -> None:
    mount = PowerLossMount(tmp_path / "fs")
    mount.close()
    assert mount.proc.returncode is not None
    assert not os.path.ismount(mount.mountpoint)
    assert str(mount.mountpoint) not in Path("/proc/mounts").read_text()


def _deadline(seconds: float = 30.0) -> float:
    return time.monotonic() + seconds
