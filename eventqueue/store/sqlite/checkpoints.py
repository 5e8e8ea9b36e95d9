"""Checkpoints off the commit path.

With SQLite's default auto-checkpoint, the COMMIT that takes the WAL past 1,000 pages runs the
checkpoint inside itself, so one round in a few hundred waits for it. The writer therefore runs
with `wal_autocheckpoint=0`, and this second connection, on its own thread, copies the WAL into
the database: PASSIVE (never waits for, never blocks the writer) every CHECKPOINT_ROUNDS
rounds or when the WAL file grew by WAL_CHECKPOINT_BYTES since the last one, and at each pass
of the maintenance task; TRUNCATE at such a pass when no round ran since the previous one
(idle) and the WAL is past WAL_IDLE_TRUNCATE_BYTES. One checkpoint at a time; a busy or failed
one is tried again later (an optimisation: correctness never depends on it). The low-disk rule
(connection.LOW_DISK_BYTES) stays on the writer: TRUNCATE after every round there.

The WAL restarts from its beginning only when a write transaction begins after a checkpoint
that copied every frame. Under constant rounds a PASSIVE checkpoint from this connection never
does (the writer appends frames while it copies), so the WAL grew without end: 600 MB after
300k events of end_to_end, and the process's RSS with it (the wal-index and the checkpoint's
frame iterator grow with the WAL). So after each checkpoint here the writer catches up between
two rounds (`catch_up_due`; not while a CRITICAL put waits): a PASSIVE on its own connection
copies only the frames written since (a few rounds' worth: nothing else writes meanwhile) and
the next round restarts the WAL; the first COMMIT after a restart truncates the file to
journal_size_limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
from concurrent.futures import ThreadPoolExecutor

# ~1,000 pages of 4 KiB: the size at which SQLite's own auto-checkpoint would have run.
WAL_CHECKPOINT_BYTES = 4 * 1024 * 1024
# Rounds between two checkpoints: a round of a few hundred events writes a few pages, so ~1,000
# pages, the size of SQLite's own auto-checkpoint, after a few hundred rounds.
CHECKPOINT_ROUNDS = 256
# When idle, and at least this many rounds after the last checkpoint, a WAL larger than this is checkpointed and truncated (a smaller one is left: an
# idle moment comes after every round at low load, and each would cost a checkpoint).
WAL_IDLE_TRUNCATE_BYTES = 1024 * 1024

log = logging.getLogger(__name__)


class Checkpointer:
    """A second connection on its own thread that checkpoints the writer's WAL."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._wal = path + "-wal"
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="eventqueue-ckpt")
        self._connection: sqlite3.Connection | None = None
        self._running: asyncio.Future[None] | None = None
        self._closed = False
        self._rounds = 0  # rounds since the last checkpoint started
        self._rounds_since_maintain = 0
        self._size_at_last = 0  # the WAL file's size then
        self.checkpoints = 0
        self.catch_ups = 0
        self._behind = False  # a checkpoint finished since the writer last caught up

    def after_round(self) -> None:
        """Called on the loop after each round: start a PASSIVE checkpoint when one is due.

        The WAL file's size says how far it ever grew, not what it holds now (after a complete
        checkpoint the writer starts over at its beginning, overwriting): so a checkpoint is
        due after CHECKPOINT_ROUNDS rounds, or when the file grew past its size at the last
        checkpoint by WAL_CHECKPOINT_BYTES (a burst of large rounds)."""
        self._rounds += 1
        self._rounds_since_maintain += 1
        size = self._wal_size()
        if self._rounds >= CHECKPOINT_ROUNDS or size > self._size_at_last + WAL_CHECKPOINT_BYTES:
            self._start("PASSIVE", size)

    def maintain(self) -> None:
        """The maintenance task's pass: TRUNCATE when no round ran since the last pass (idle)
        and the WAL is past WAL_IDLE_TRUNCATE_BYTES, else PASSIVE. A TRUNCATE holds the writer's
        next BEGIN while it runs, so it never runs while rounds do (measured: a TRUNCATE after
        every idle moment of the engine took critical_latency p99 from ~20 to 76 ms)."""
        idle = self._rounds_since_maintain == 0
        self._rounds_since_maintain = 0
        size = self._wal_size()
        self._start("TRUNCATE" if idle and size > WAL_IDLE_TRUNCATE_BYTES else "PASSIVE", size)

    def catch_up_due(self) -> bool:
        """Whether the writer should run its own PASSIVE checkpoint before the next round: a
        checkpoint here finished since it last asked (reset once asked)."""
        if not self._behind or (self._running is not None and not self._running.done()):
            return False
        self._behind = False
        self.catch_ups += 1
        return True

    def _start(self, mode: str, size: int) -> None:
        if self._closed or (self._running is not None and not self._running.done()):
            return
        self._rounds = 0
        self._size_at_last = size
        loop = asyncio.get_running_loop()
        self._running = loop.run_in_executor(self._thread, self._checkpoint, mode)
        self._running.add_done_callback(_logged)

    async def close(self) -> None:
        """Wait for a checkpoint in progress; close the connection and the thread."""
        self._closed = True
        if self._running is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._running)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._thread, self._close_connection)
        self._thread.shutdown(wait=False)

    def _wal_size(self) -> int:
        try:
            return os.stat(self._wal).st_size
        except OSError:
            return 0

    def _checkpoint(self, mode: str) -> None:
        # On the checkpoint thread only.
        if self._connection is None:
            # busy_timeout 0: a TRUNCATE that finds the writer busy gives up at once (tried
            # again later) rather than holding the writer's next BEGIN.
            self._connection = sqlite3.connect(self._path, isolation_level=None, timeout=0)
        with contextlib.suppress(sqlite3.OperationalError):  # busy: the next round tries again
            sql = f"PRAGMA wal_checkpoint({mode})"
            # fetchall: a statement left half-read would hold a read transaction open.
            busy, log_frames, _copied = self._connection.execute(sql).fetchall()[0]
            self.checkpoints += 1
            # Even a complete one leaves behind the frames rounds appended while it copied
            # (log_frames counts those of its start only): the writer catches up. Not after a
            # busy one (a reader in another process holds the WAL: the writer would wait too).
            self._behind = not busy and log_frames > 0

    def _close_connection(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def _logged(future: asyncio.Future[None]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.warning("WAL checkpoint failed: %s", future.exception())
