"""The round engine: the only write path of the SQLite store.

Every write is queued as a request (its transaction body, a rank, a future). One task runs
rounds: each takes what is queued at that moment, best rank first (CRITICAL puts with their
hand-off leases, then settles: acks, nacks, releases, extends, give-backs; then the other puts
with their stream positions; then claims; then promotion; then the rest), and runs them in ONE
`BEGIN IMMEDIATE ... COMMIT` as one function on the connection's thread (one hop per round).
Every request runs inside its own SAVEPOINT: its failure (a stale token, an invalid row, a
constraint) rolls back that request alone. The answers are given after COMMIT returns; the next
round starts at once (no timers: one request per round when idle, hundreds under load).

Caps, so that a CRITICAL put waits for at most one short round: CRITICAL requests, when
queued, make a round of their own (answered after their own COMMIT, not after a group commit's
and the claims'); a round takes at most
ROUND_MAX_ROWS rows of puts (a single larger put runs alone, and ends early at a whole put
when a CRITICAL put is queued: the caller puts the rest), and stops taking further requests
once it has run ROUND_MAX_MS while a CRITICAL put waits (those left go first next round).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from eventqueue.core.errors import QueueClosedError, StorageError, StoreBusyError
from eventqueue.core.faults import crash_point
from eventqueue.store.sqlite.errors import is_busy, storage_error

# Rows of puts one round takes (a single put of more runs alone): with ~64 rows per INSERT
# this bounds a round's statement time to a few milliseconds on an ordinary disk.
ROUND_MAX_ROWS = 1024
# A round stops taking further requests after this long when a CRITICAL put is queued.
ROUND_MAX_MS = 4.0
# Loop passes a round lets the ready tasks run before it takes the queue (no timer).
# (Measured in end_to_end: 0 passes 2,709 events/s, 1 pass 2,957, 3 passes 2,966 with rounds of
# p50 2 instead of 1: one is kept. Waiting up to 16 passes for every rank of the last 4 rounds
# to queue again put every group commit into a claim's round, but claims alone still made most
# rounds: commits per 1,000 events 58 either way, 1.03x the wall time, 1.08x the CPU.)
ROUND_GATHER_PASSES = 1
# Rounds remembered for the profile (requests, steps, commit time per round).
PROFILE_ROUNDS = 4096


class Rank(IntEnum):
    """The order of requests in a round (lowest first)."""

    CRITICAL = 0  # puts carrying CRITICAL events (and their hand-off leases)
    SETTLE = 1  # acks, nacks, releases, extends, give-backs
    PUT = 2  # the other puts (group commits) with their stream positions
    CLAIM = 3  # claims for every waiting consumer
    PROMOTE = 4  # a promotion chunk from the spill
    OTHER = 5  # owners, purge, requeue, settings


@dataclass(eq=False, slots=True)
class Request:
    """One queued write: its body (run on the connection's thread inside the round), the
    caller's future, and how long it may wait for another process's write lock."""

    body: Callable[[Any], Any]
    rank: Rank
    rows: int
    fail_fast: bool
    deadline: float
    future: asyncio.Future[Any] = field(repr=False)


@dataclass(slots=True)
class RoundProfile:
    """Per-round figures of the last PROFILE_ROUNDS rounds."""

    requests: deque[int] = field(default_factory=lambda: deque(maxlen=PROFILE_ROUNDS))
    rows: deque[int] = field(default_factory=lambda: deque(maxlen=PROFILE_ROUNDS))
    steps: deque[int] = field(default_factory=lambda: deque(maxlen=PROFILE_ROUNDS))
    commit_ms: deque[float] = field(default_factory=lambda: deque(maxlen=PROFILE_ROUNDS))
    round_ms: deque[float] = field(default_factory=lambda: deque(maxlen=PROFILE_ROUNDS))
    # From handing the round to the connection's thread until it started there: the wait for
    # aiosqlite's queue and for the GIL, which the loop holds while it runs Python.
    thread_wait_ms: deque[float] = field(default_factory=lambda: deque(maxlen=PROFILE_ROUNDS))
    rounds: int = 0
    committed_requests: int = 0

    def record(self, requests: int, rows: int, steps: int, times: tuple[float, ...]) -> None:
        """One round: its requests, rows put, steps; (commit, round, thread wait) seconds."""
        commit_s, round_s, wait_s = times
        self.rounds += 1
        self.committed_requests += requests
        self.requests.append(requests)
        self.rows.append(rows)
        self.steps.append(steps)
        self.commit_ms.append(commit_s * 1000.0)
        self.round_ms.append(round_s * 1000.0)
        self.thread_wait_ms.append(wait_s * 1000.0)

    def summary(self) -> dict[str, float]:
        """p50/p99 of requests, rows, steps, COMMIT, round and thread-wait time per round, and
        the round count."""
        out: dict[str, float] = {"rounds": float(self.rounds)}
        for name, values in (
            ("requests", self.requests),
            ("rows", self.rows),
            ("steps", self.steps),
            ("commit_ms", self.commit_ms),
            ("round_ms", self.round_ms),
            ("thread_wait_ms", self.thread_wait_ms),
        ):
            ordered = sorted(values)
            for label, q in (("p50", 0.50), ("p99", 0.99)):
                out[f"{name}_{label}"] = (
                    float(ordered[min(len(ordered) - 1, int(q * len(ordered)))]) if ordered else 0.0
                )
        return out


class Steps:
    """Counts sqlite3 steps on the thread: statements executed and rows fetched."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0


class _Busy(Exception):
    """BEGIN found the write lock held by another connection."""

    def __init__(self, cause: sqlite3.OperationalError) -> None:
        super().__init__(str(cause))
        self.cause = cause


class _RoundLost(Exception):
    """SQLite rolled the whole transaction back by itself (disk full, I/O error)."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


class RoundEngine:
    """Queues write requests and runs them in rounds, one transaction each."""

    def __init__(
        self,
        path: str,
        on_thread: Callable[..., Any],
        make_tx: Callable[[sqlite3.Connection, Steps], Any],
        before: Callable[[], None],
        after: Callable[[], Any],
        busy_timeout_s: float,
        between: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._path = path
        self._on_thread = on_thread  # async: run fn(sqlite3.Connection, *args) on the thread
        self._make_tx = make_tx
        self._before = before  # file checks before a round (raises StorageError)
        self._after = after  # async: checks and disk relief after a COMMIT
        self._busy_timeout_s = busy_timeout_s
        self._between = between  # async: upkeep after a round's answers (checkpoint catch-up)
        self._queues: list[deque[Request]] = [deque() for _ in Rank]
        self._arrived = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.profile = RoundProfile()
        self.idle = asyncio.Event()  # set while nothing is queued or running
        self.idle.set()

    def critical_waiting(self) -> bool:
        """Whether a CRITICAL put is queued. Read on the connection's thread too: one deque
        length, one atomic read under the GIL."""
        return bool(self._queues[Rank.CRITICAL])

    async def submit(
        self, body: Callable[[Any], Any], *, rank: Rank, rows: int = 0, fail_fast: bool = False
    ) -> Any:
        """Queue `body` for the next round; its result after that round's COMMIT. Shielded: a
        cancelled caller leaves its request to be committed or failed with its round."""
        if self._closed:
            raise QueueClosedError("the queue is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        deadline = time.monotonic() + self._busy_timeout_s
        self._queues[rank].append(Request(body, rank, rows, fail_fast, deadline, future))
        self.idle.clear()
        self._arrived.set()
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._run())
        return await asyncio.shield(future)

    async def close(self) -> None:
        """Refuse new requests; wait for the queued ones to be committed or failed."""
        self._closed = True
        if self._task is not None:
            await asyncio.shield(self._task)

    def queued(self) -> bool:
        """Whether any request waits for a round."""
        return any(self._queues)

    def _take(self) -> list[Request]:
        """The requests of the next round, best rank first, within ROUND_MAX_ROWS rows."""
        taken: list[Request] = []
        rows = 0
        # CRITICAL requests make a round of their own: each is answered after its COMMIT, so
        # sharing a round with claims and group commits would make it wait for them.
        critical = bool(self._queues[Rank.CRITICAL])
        queues = self._queues[: Rank.CRITICAL + 1] if critical else self._queues
        for queue in queues:
            while queue:
                request = queue[0]
                if taken and rows + request.rows > ROUND_MAX_ROWS:
                    return taken
                taken.append(queue.popleft())
                rows += request.rows
        return taken

    def _put_back(self, requests: list[Request]) -> None:
        for request in reversed(requests):
            self._queues[request.rank].appendleft(request)

    async def _run(self) -> None:
        pause = 0.005
        try:
            while self.queued():
                if self._between is not None:
                    await self._between()
                # One pass of the loop before taking: the callers a round just answered (and
                # any other ready task) queue their next requests for this round. No timer.
                for _ in range(ROUND_GATHER_PASSES):
                    await asyncio.sleep(0)
                self._arrived.clear()
                requests = self._take()
                try:
                    self._before()
                except StorageError as exc:
                    _fail(requests, exc)
                    continue
                try:
                    busy = await self._round(requests)
                except BaseException as exc:  # the whole round failed: none of it is stored
                    _fail(requests, exc)
                    if not isinstance(exc, Exception):
                        raise
                    continue
                if not busy:
                    pause = 0.005
                    continue
                # Another connection holds the write lock: fail-fast puts spill, requests past
                # their busy timeout fail; the rest try again after a pause (or on arrival).
                now = time.monotonic()
                waiting = []
                for request in requests:
                    if request.fail_fast or now >= request.deadline:
                        _fail([request], _busy_error(self._path, busy))
                    else:
                        waiting.append(request)
                self._put_back(waiting)
                if waiting:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._arrived.wait(), pause)
                    pause = min(pause * 2, 0.1)
        finally:
            if not self.queued():
                self.idle.set()

    async def _round(self, requests: list[Request]) -> sqlite3.OperationalError | None:
        """One round; None when it ran (answers given), the busy error when BEGIN was refused."""
        started = time.perf_counter()
        steps = Steps()
        retry = any(not r.fail_fast for r in requests)
        try:
            outcome = await self._on_thread(
                _round_on_thread,
                self._make_tx,
                steps,
                requests,
                self.critical_waiting,
                retry,
                time.perf_counter(),
            )
        except _Busy as busy:  # every request is fail-fast: they spill
            raise _busy_error(self._path, busy.cause) from busy.cause
        except _RoundLost as lost:
            raise _as_storage(self._path, lost.cause) from lost.cause
        except sqlite3.Error as exc:
            raise storage_error(self._path, exc) from exc
        if outcome is None:
            return _BUSY_RETRY
        results, commit_s, wait_s = outcome
        await self._after()  # raises StorageError when the file was replaced under the round
        ran = requests[: len(results)]
        self._put_back(requests[len(results) :])
        crash_point("after_round_commit")  # committed, nobody answered yet
        for request, (ok, value) in zip(ran, results, strict=True):
            if request.future.done():
                continue
            if ok:
                request.future.set_result(value)
            else:
                request.future.set_exception(_as_storage(self._path, value))
        rows = sum(request.rows for request in ran)
        times = (commit_s, time.perf_counter() - started, wait_s)
        self.profile.record(len(ran), rows, steps.count, times)
        return None


_BUSY_RETRY = sqlite3.OperationalError("database is locked")


def _busy_error(path: str, cause: BaseException) -> StoreBusyError:
    return StoreBusyError(
        f"database {path} is locked by another connection "
        f"({cause}); retry, or raise EVENT_BUSY_TIMEOUT_MS"
    )


def _as_storage(path: str, exc: BaseException) -> BaseException:
    if isinstance(exc, sqlite3.Error):
        error = storage_error(path, exc)
        error.__cause__ = exc
        return error
    return exc


def _fail(requests: list[Request], exc: BaseException) -> None:
    for request in requests:
        if not request.future.done():
            request.future.set_exception(exc)


def _round_on_thread(
    connection: sqlite3.Connection,
    make_tx: Callable[[sqlite3.Connection, Steps], Any],
    steps: Steps,
    requests: list[Request],
    critical_waiting: Callable[[], bool],
    retry: bool,
    handed: float,
) -> tuple[list[tuple[bool, Any]], float, float] | None:
    """BEGIN IMMEDIATE, each request in its SAVEPOINT, COMMIT; None when busy and `retry`.
    `handed`: when the loop handed the round over (perf_counter), for the thread wait."""
    wait_s = time.perf_counter() - handed
    tx = make_tx(connection, steps)  # every statement through tx: counted as steps
    try:
        tx.run("BEGIN IMMEDIATE")
    except BaseException as exc:
        if connection.in_transaction:  # began, then failed: never leave it open
            with contextlib.suppress(sqlite3.Error):
                connection.execute("ROLLBACK")
        if not isinstance(exc, sqlite3.OperationalError) or not is_busy(exc):
            raise
        if retry:
            return None
        raise _Busy(exc) from exc
    started = time.perf_counter()
    results: list[tuple[bool, Any]] = []
    alone = len(requests) == 1
    try:
        for request in requests:
            late = (time.perf_counter() - started) * 1000.0 >= ROUND_MAX_MS
            if results and late and request.rank != Rank.CRITICAL and critical_waiting():
                break  # the rest go first next round, after the CRITICAL put
            if alone:  # the round's own transaction is the request's: no savepoint needed
                try:
                    results.append((True, request.body(tx)))
                except Exception as exc:
                    if not connection.in_transaction:
                        raise _RoundLost(exc) from exc
                    tx.run("ROLLBACK")
                    return [(False, exc)], 0.0, wait_s
                continue
            tx.run("SAVEPOINT request")
            try:
                value = request.body(tx)
            except Exception as exc:
                if not connection.in_transaction:
                    raise _RoundLost(exc) from exc  # SQLite rolled the whole round back
                tx.run("ROLLBACK TO request")
                tx.run("RELEASE request")
                results.append((False, exc))
                continue
            tx.run("RELEASE request")
            results.append((True, value))
        crash_point("mid_round")  # statements run, no COMMIT
        committing = time.perf_counter()
        tx.run("COMMIT")
        commit_s = time.perf_counter() - committing
    except BaseException:
        # SQLite may already have rolled back by itself (disk full, F14): no blind ROLLBACK.
        if connection.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                connection.execute("ROLLBACK")
        raise
    return results, commit_s, wait_s
