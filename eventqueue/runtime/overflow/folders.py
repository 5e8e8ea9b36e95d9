"""Spill folders: which folder a process spills into, whose it is, and how it is recovered.

Each process appends to a folder of its own (EVENT_SPILL_DIR, or the first free slot
`<database>.spill`, `.spill-2`, ...), held by an flock for as long as it runs. A folder's
promotion positions are stored in the database under the folder's **writer identity**: a name
made once (host and a random id), written durably into the folder, and kept for its life. Two
hosts sharing one database therefore never share a key, whatever their folder paths are.
Folders of processes that are gone are adopted by a live one and promoted.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from eventqueue.core.config import Config
from eventqueue.core.errors import SpillError
from eventqueue.core.models import Priority
from eventqueue.runtime.overflow.frames import make_dirs_durably
from eventqueue.runtime.overflow.log import (
    SpillLog,
    SpillPosition,
    SpillStats,
    has_segments,
    inspect,
)
from eventqueue.store.base import Store

log = logging.getLogger(__name__)

_SLOTS = 64
IDENTITY_FILE = "writer-id"


@dataclass(slots=True)
class SpillFolder:
    """A spill folder this process holds the lock of: its own, or one it adopted."""

    spill: SpillLog
    directory: str
    name: str  # its writer identity: the key of its promotion positions in the database
    lock_fd: int
    positions: dict[int, SpillPosition]  # promoted (and committed) up to here, per priority

    def close(self) -> None:
        self.spill.close()
        os.close(self.lock_fd)


async def recover(store: Store, config: Config, directory: str, lock_fd: int) -> SpillFolder:
    """Open a locked spill folder at the positions its promotions committed."""
    try:
        name = await asyncio.to_thread(writer_identity, directory, config.db_path)
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
    return SpillFolder(spill, directory, name, lock_fd, dict(committed))


def writer_identity(directory: str, db_path: str) -> str:
    """The folder's writer identity, made and stored durably on first use (blocking)."""
    found = _stored_identity(directory)
    if found is not None:
        return found
    if has_legacy_positions(directory):
        # Spilled by an eventqueue that keyed folders by their path: keep that key, so the
        # positions already committed under it still apply.
        identity = legacy_name(db_path, directory)
    else:
        identity = f"{socket.gethostname()}/{uuid.uuid4().hex}"
    _store_identity(directory, identity)
    return identity


def read_identity(directory: str, db_path: str) -> str:
    """The folder's writer identity without creating it (for read-only inspection)."""
    return _stored_identity(directory) or legacy_name(db_path, directory)


def legacy_name(db_path: str, directory: str) -> str:
    """The key folders had before writer identities: the folder relative to the database's."""
    base = os.path.dirname(os.path.abspath(db_path))
    return os.path.relpath(os.path.abspath(directory), base)


def has_legacy_positions(directory: str) -> bool:
    """Whether the folder holds spill segments written before it had an identity."""
    return has_segments(directory)


def _stored_identity(directory: str) -> str | None:
    try:
        with open(os.path.join(directory, IDENTITY_FILE), encoding="utf-8") as f:
            text = f.read().strip()
    except FileNotFoundError:
        return None
    if not text:
        return None  # a torn first write: made again
    return text


def _store_identity(directory: str, identity: str) -> None:
    # Written to a temporary file, fsynced, renamed into place and the folder fsynced: the
    # identity is either absent or whole, never torn, and survives power loss.
    path = os.path.join(directory, IDENTITY_FILE)
    temp = f"{path}.tmp"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, identity.encode("utf-8") + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temp, path)
    folder = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def lock_spill(config: Config) -> tuple[str, int]:
    """Lock a spill folder for this process: EVENT_SPILL_DIR, or the first free default slot.

    A spill log has one owner. Several processes on one database (producers, consumers) each
    take the first free folder of `<db>.spill`, `<db>.spill-2`, ... A restarted process
    takes its old slot again when it is free, and so promotes what it left there.
    """
    if config.spill_dir:
        fd = try_lock(config.spill_dir)
        if fd is None:
            raise SpillError(
                f"spill folder {config.spill_dir} (EVENT_SPILL_DIR) is in use by another process"
            )
        return config.spill_dir, fd
    for directory in slot_directories(config):
        fd = try_lock(directory)
        if fd is not None:
            return directory, fd
    raise SpillError(
        f"all {_SLOTS} spill folders of {config.db_path} are in use by other processes"
    )


def slot_directories(config: Config) -> list[str]:
    stem = f"{config.spill_base}.spill"
    return [stem + ("" if s == 1 else f"-{s}") for s in range(1, _SLOTS + 1)]


def orphans(config: Config, held: set[str]) -> list[str]:
    """Default spill folders of the database holding segments, other than those held here."""
    return [
        directory
        for directory in slot_directories(config)
        if os.path.abspath(directory) not in held and has_segments(directory)
    ]


def try_lock(directory: str) -> int | None:
    make_dirs_durably(directory)
    fd = os.open(os.path.join(directory, "lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def combine(parts: list[SpillStats]) -> SpillStats:
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
        promoted_bytes=sum(p.promoted_bytes for p in parts),
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
        saved = positions(read_identity(directory, config.db_path))
        parts.append(inspect(directory, {p: SpillPosition(*pos) for p, pos in saved.items()}))
    return {"directories": folders, **describe(combine(parts), time.time())}


def _candidate_directories(config: Config) -> list[str]:
    extra = [config.spill_dir] if config.spill_dir else []
    return [*extra, *slot_directories(config)]


def describe(st: SpillStats, now: float) -> dict[str, Any]:
    oldest = st.oldest_spilled_at
    return {
        "pending": {p.name: st.records.get(p, 0) for p in sorted(Priority, reverse=True)},
        "total": sum(st.records.values()),
        "bytes_on_disk": st.bytes_on_disk,
        "oldest_spilled_age_s": None if oldest is None else round(max(0.0, now - oldest), 3),
        "quarantined_records": st.quarantined_records,
        "quarantined_bytes": st.quarantined_bytes,
        "promoted_bytes": st.promoted_bytes,  # of bytes_on_disk: promoted, not yet deleted
    }
