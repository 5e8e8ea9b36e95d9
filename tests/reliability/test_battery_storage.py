"""The storage goes away under a running queue: the file deleted, made read-only, the disk full.

Pass: the fault is detected at the next write, within seconds; the caller gets one documented
error (StorageError, or SpillError for the spill log); no put returns success for an event that
is in no database; and once the storage is back, the queue resumes without a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from eventqueue import EventQueue, EventQueueError, SpillError, StorageError
from eventqueue.store.sqlite.connection import Tx

ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def unlink_all(db_path: str) -> None:
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(db_path + suffix)


def any_file(db_path: str) -> bool:
    return any(os.path.exists(db_path + suffix) for suffix in ("", "-wal", "-shm"))


def count_rows(path: str) -> int:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return int(db.execute("SELECT count(*) FROM events").fetchone()[0])


# --- the database file deleted ---------------------------------------------------------------


async def test_deleting_the_database_fails_the_next_write_quickly_and_clearly(
    open_queue, db_path: str
) -> None:
    q = await open_queue(batch_window_ms=0)
    await q.put({"event_name": "before"})
    unlink_all(db_path)

    started = time.monotonic()
    with pytest.raises(StorageError, match="deleted or replaced"):
        await q.put({"event_name": "after"})
    with pytest.raises(StorageError, match="deleted or replaced"):
        await q.claim()
    assert time.monotonic() - started < 2.0
    async with asyncio.timeout(10):
        await q.close()
    assert not any_file(db_path)  # nothing recreated an empty file behind our back


async def test_deleting_only_the_wal_fails_the_next_write(open_queue, db_path: str) -> None:
    # SQLite never deletes the WAL while a connection is open: if it is gone, commits would go
    # to an unlinked file no other connection sees, and a crash would lose them.
    q = await open_queue(batch_window_ms=0)
    await q.put({"event_name": "before"})
    for suffix in ("-wal", "-shm"):
        os.unlink(db_path + suffix)
    with pytest.raises(StorageError, match="deleted or replaced"):
        await q.put({"event_name": "after"})
    async with asyncio.timeout(10):
        await q.close()  # its checkpoint keeps what was committed before
    assert count_rows(db_path) == 1


async def test_a_put_committing_while_the_file_is_deleted_is_not_acknowledged(
    open_queue, db_path: str, monkeypatch
) -> None:
    q = await open_queue(batch_window_ms=0)
    await q.put({"event_name": "before"})
    original = Tx.run

    def delete_before_commit(tx: Tx, sql: str, *args: Any) -> int:
        if sql == "COMMIT":
            unlink_all(db_path)  # between BEGIN (checked) and COMMIT
        return original(tx, sql, *args)

    monkeypatch.setattr(Tx, "run", delete_before_commit)
    with pytest.raises(StorageError, match="deleted or replaced"):
        await q.put({"event_name": "committed into an unlinked file"})


# --- the database made read-only ------------------------------------------------------------


@contextlib.contextmanager
def immutable(*paths: str) -> Iterator[None]:
    """chattr +i: even root cannot write (not the -shm: a write to its mapping would SIGBUS)."""
    if not ROOT or shutil.which("chattr") is None:
        pytest.skip("making a file read-only for root needs root and chattr")
    done: list[str] = []
    try:
        for path in paths:
            result = subprocess.run(["chattr", "+i", path], capture_output=True, text=True)
            if result.returncode != 0:
                pytest.skip(f"chattr +i is not supported here: {result.stderr.strip()}")
            done.append(path)
        yield
    finally:
        for path in done:
            subprocess.run(["chattr", "-i", path], check=True)


async def test_a_read_only_database_fails_puts_clearly_and_resumes(
    open_queue, db_path: str
) -> None:
    q = await open_queue(batch_window_ms=0)
    acknowledged = [(await q.put({"event_name": "before", "aggregate_id": 0})).id]
    refused = 0
    with immutable(db_path, db_path + "-wal"):
        for i in range(1, 4):
            try:
                acknowledged.append((await q.put({"event_name": "ro", "aggregate_id": i})).id)
            except StorageError as exc:
                assert "read-only" in str(exc) or "I/O" in str(exc), exc
                refused += 1
        with pytest.raises(StorageError):
            await q.claim()
    assert refused == 3
    # Writable again: the same queue carries on, and every acknowledged put is delivered.
    acknowledged.append((await q.put({"event_name": "after", "aggregate_id": 9})).id)
    delivered = []
    while (batch := await q.claim()) is not None:
        delivered += batch.ids
        await q.ack(batch)
    assert sorted(delivered) == sorted(acknowledged)


# --- disk full --------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs (root only), unmounted afterwards."""
    if not ROOT:
        pytest.skip("mounting a small tmpfs needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield mount
    finally:
        if subprocess.run(["umount", str(mount)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mount)], check=True)


async def drain(q: EventQueue, expected: int) -> list[str]:
    """Claim and ack until `expected` events came; a storage error is retried, as a consumer would."""
    delivered: list[str] = []
    failures = 0
    async with asyncio.timeout(60):
        while len(delivered) < expected:
            try:
                batch = await q.next_batch(timeout=10)
                assert batch is not None, f"{len(delivered)} of {expected} delivered"
                await q.ack(batch)
            except StorageError:
                failures += 1
                assert failures < 20, "the queue did not resume after space returned"
                continue
            delivered += [e.payload["aggregate_id"] for e in batch.events]
    return delivered


async def test_disk_full_drops_nothing_silently_and_resumes(small_disk: Path, clock) -> None:
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * 1280 * 1024)  # freed later: the space that "returns"
    path = str(small_disk / "events.db")
    blob = "x" * 400
    acknowledged: dict[str, str] = {}  # aggregate id -> put status
    errors: list[EventQueueError] = []
    async with EventQueue.open(
        path, clock=clock, batch_window_ms=0, queue_size=50, commit_max_events=50
    ) as q:
        for i in range(5000):
            event = {"event_name": "job", "aggregate_id": f"e{i}", "attributes": {"b": blob}}
            try:
                acknowledged[f"e{i}"] = (await q.put(event)).status.value
            except EventQueueError as exc:
                errors.append(exc)
                if len(errors) >= 10:
                    break
        assert errors, "the disk never filled"
        assert all(isinstance(e, StorageError | SpillError) for e in errors), errors
        assert all("full" in str(e) or "space" in str(e) for e in errors), errors[:3]

        filler.unlink()
        # Space is back: the same queue takes puts again, and delivers every acknowledged one.
        resumed = await q.put({"event_name": "job", "aggregate_id": "resumed"})
        acknowledged["resumed"] = resumed.status.value
        delivered = await drain(q, len(acknowledged))
        assert sorted(delivered) == sorted(acknowledged), "silently dropped or unexpected events"

        # And it keeps working on the space that returned: many small commits must not let the
        # WAL eat that space again before any checkpoint runs.
        for i in range(300):
            await q.put({"event_name": "after", "aggregate_id": i})
            batch = await q.claim()
            assert batch is not None
            await q.ack(batch)
