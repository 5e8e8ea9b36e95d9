"""The crash harness: run eventqueue in a real subprocess, SIGKILL it at a handshake, restart it,
and score lost / unexpected / duplicated from the logs its producer and consumer fsync.

A process is always a fresh interpreter (`[sys.executable, script, ...]`), never a fork (F12).
With EVENTQUEUE_CRASH_AT=<point> (EVENTQUEUE_CRASH_AFTER=<n>: the n-th pass) eventqueue prints
`EVENTQUEUE_CRASH_POINT <point>` to stderr and halts; the harness reads stderr with a deadline
(no sleeps), kills the process as soon as the line arrives, and the next run starts clean.

Scoring follows RELIABILITY.md: lost (acknowledged to the producer, never delivered) = 0,
unexpected (delivered, never put, or with other content) = 0, and a repeated delivery only with
attempts > 1 on one stored row; afterwards nothing is pending, claimed, dead or spilled, and
`PRAGMA integrity_check` is ok.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import eventqueue
from eventqueue.runtime.overflow.folders import read_identity
from eventqueue.runtime.overflow.log import SpillPosition, inspect

from .workload import digest, payload, priority_of, put_order

CRASH_LINE = "EVENTQUEUE_CRASH_POINT"
WORKER = Path(__file__).with_name("crash_worker.py")
RUNTIME_POINTS = (
    "after_commit",
    "after_claim",
    "mid_spill",
    "after_spill",
    "mid_promotion",
    "mid_handoff",
    "mid_round",
    "after_round_commit",
)

# Settings every crash run uses unless a test overrides them. A short lease: a batch claimed by
# a killed process comes back within seconds. Attempts and the dedup window are generous, so
# neither a dead letter nor an expired dedup key can hide or excuse a duplicate.
BASE_SETTINGS = {
    "EVENT_LEASE_SECONDS": "2",
    "EVENT_MAX_ATTEMPTS": "1000",
    "DEDUP_TTL_SECONDS": "86400",
    "BATCH_WINDOW_MS": "0",
    "EVENT_POLL_MS": "50",
    "EVENT_DURABILITY": "normal",  # the contract for a process crash; power loss is not tested
}


class HarnessError(AssertionError):
    """A run did not behave: it hung past its deadline, or failed on its own."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one subprocess run ended."""

    crashed_at: str | None  # the crash point it was killed at; None: it exited by itself
    returncode: int
    stdout: str
    stderr: str
    seconds: float


def child_env(settings: Mapping[str, str]) -> dict[str, str]:
    """The parent's environment without crash variables, with eventqueue importable."""
    package_root = str(Path(eventqueue.__file__).resolve().parent.parent)
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTQUEUE_CRASH")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    env.update(settings)
    return env


def run_killable(
    argv: Sequence[str],
    *,
    settings: Mapping[str, str] | None = None,
    crash_at: str | None = None,
    crash_after: int = 1,
    timeout_s: float = 120.0,
) -> Outcome:
    """Run `[sys.executable, *argv]`; SIGKILL it the moment it reports reaching `crash_at`.

    Returns when the process was killed at its handshake or exited by itself; raises
    HarnessError (after killing it) when neither happens within `timeout_s`.
    """
    env = child_env(settings or {})
    if crash_at is not None:
        env["EVENTQUEUE_CRASH_AT"] = crash_at
        env["EVENTQUEUE_CRASH_AFTER"] = str(crash_after)
    started = time.monotonic()
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(
            [sys.executable, *argv],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.PIPE,
            env=env,
        )
        stderr = _StderrReader(proc)
        try:
            crashed = stderr.await_handshake(started + timeout_s)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            returncode = proc.wait()
            stderr.join()
        out.seek(0)
        stdout = out.read().decode(errors="replace")
    return Outcome(crashed, returncode, stdout, stderr.text(), time.monotonic() - started)


class _StderrReader:
    """A thread turns the child's stderr into a queue of lines, so each wait has a deadline."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self._proc = proc
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._seen: list[str] = []
        self._thread = threading.Thread(target=self._pump, name=f"stderr-{proc.pid}", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        assert self._proc.stderr is not None
        with self._proc.stderr:
            for raw in self._proc.stderr:
                text = raw.decode(errors="replace")
                self._seen.append(text)
                self._lines.put(text)
        self._lines.put(None)

    def await_handshake(self, deadline: float) -> str | None:
        """The crash point the child reported (after killing it), or None once it exits."""
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self._proc.send_signal(signal.SIGKILL)
                raise HarnessError(
                    f"pid {self._proc.pid} neither reached its crash point nor exited in time; "
                    f"stderr:\n{self.text()[-4000:]}"
                ) from None
            if line is None:
                return None  # stderr closed: the process is exiting by itself
            if line.startswith(CRASH_LINE):
                self._proc.send_signal(signal.SIGKILL)  # at once: nothing after the point runs
                return line.split()[1]

    def join(self) -> None:
        self._thread.join()

    def text(self) -> str:
        return "".join(self._seen)


# --- scoring --------------------------------------------------------------------------------


@dataclass
class Score:
    """Jepsen-style counts over the producer and consumer logs."""

    attempted: int = 0  # distinct event ids the producer may have put
    acknowledged: int = 0  # distinct event ids whose put returned
    delivered: int = 0  # distinct event ids handled
    deliveries: int = 0  # handled lines in the consumer log
    duplicated: int = 0  # deliveries beyond the first of each event id
    lost: list[int] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    bad_duplicates: list[str] = field(default_factory=list)
    critical_spilled: int = 0
    put_statuses: Counter[str] = field(default_factory=Counter)

    @property
    def ok(self) -> bool:
        return not (self.lost or self.unexpected or self.bad_duplicates)

    def line(self) -> str:
        """One line for reports and assertion messages."""
        return (
            f"acknowledged={self.acknowledged} delivered={self.delivered} "
            f"lost={len(self.lost)} unexpected={len(self.unexpected)} "
            f"duplicated={self.duplicated} (not explained by attempts>1: "
            f"{len(self.bad_duplicates)}) critical_spilled={self.critical_spilled} "
            f"puts={dict(self.put_statuses)}"
        )


def score(logs: Path, order: Sequence[int], attempted_ops: int) -> Score:
    """Score the logs in `logs` against the put order (ops below `attempted_ops` were tried)."""
    result = Score()
    universe = set(order[:attempted_ops])
    result.attempted = len(universe)
    acknowledged: set[int] = set()
    for op, event_id, status in _rows(logs / "produced.log", 3):
        if int(op) >= attempted_ops or order[int(op)] != int(event_id):
            result.unexpected.append(f"producer log names op {op} as event {event_id}")
            continue
        acknowledged.add(int(event_id))
        result.put_statuses[status] += 1
        if status == "spilled" and priority_of(int(event_id)) == 4:
            result.critical_spilled += 1
    result.acknowledged = len(acknowledged)
    seen: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for event_id, row, attempts, fingerprint in _rows(logs / "consumed.log", 4):
        eid = int(event_id)
        result.deliveries += 1
        if eid not in universe:
            result.unexpected.append(f"event {eid} delivered (row {row}) but never put")
        elif fingerprint != digest(payload(eid)):
            result.unexpected.append(f"event {eid} delivered (row {row}) with other content")
        seen[eid].append((int(row), int(attempts)))
    result.delivered = len(seen)
    result.lost = sorted(acknowledged - set(seen))
    for eid, deliveries in seen.items():
        result.duplicated += len(deliveries) - 1
        rows = {row for row, _ in deliveries}
        attempts = [a for _, a in deliveries]
        if len(rows) > 1:
            result.bad_duplicates.append(f"event {eid} stored as rows {sorted(rows)}")
        elif len(set(attempts)) != len(attempts) or min(attempts) < 1:
            result.bad_duplicates.append(
                f"event {eid} (row {rows}) delivered at attempts {attempts}"
            )
    return result


def _rows(path: Path, width: int) -> list[list[str]]:
    if not path.exists():
        return []
    text = path.read_bytes().decode()
    complete = text.split("\n")[:-1]  # a line without its newline was never acted on
    rows = [line.split() for line in complete if line]
    bad = [r for r in rows if len(r) != width]
    if bad:
        raise HarnessError(f"{path} has malformed lines: {bad[:3]}")
    return rows


def order_breaks(db: Path, logs: Path) -> tuple[list[str], int]:
    """Per ordering group: was it handled in its order, (received_at, id) as stored? The
    consumers log each event before acking it, and a group's next event is leased only after
    that ack, so the log's order is the handling order across consumers and runs."""
    handled = [int(row) for _, row, _, _ in _rows(logs / "consumed.log", 4)]
    times: Counter[int] = Counter(handled)
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as connection:
        rows = connection.execute(
            "SELECT ordering_key, id FROM events WHERE ordering_key IS NOT NULL"
            " ORDER BY ordering_key, received_at, id"
        ).fetchall()
    expected: dict[str, list[int]] = {}
    for group, row_id in rows:
        expected.setdefault(group, []).append(row_id)
    position = {row: i for i, row in enumerate(handled)}
    broken, checked = [], 0
    for group, ids in expected.items():
        if any(times[i] != 1 for i in ids):
            continue
        checked += 1
        if [position[i] for i in ids] != sorted(position[i] for i in ids):
            broken.append(group)
    return broken, checked


@dataclass(frozen=True)
class FinalState:
    """The database and spill folders after the last run."""

    integrity: list[str]
    counts: dict[str, int]
    spill_pending: int
    quarantined: int
    segment_files: int
    # (id, attempts) of dead letters with more attempts than EVENT_MAX_ATTEMPTS: never any.
    dead_past_max: list[tuple[int, int]] = field(default_factory=list)

    @property
    def scheduled(self) -> int:
        return self.counts.get("pending", 0) + self.counts.get("claimed", 0)

    def line(self) -> str:
        return (
            f"integrity={self.integrity} counts={self.counts} spill_pending={self.spill_pending} "
            f"quarantined={self.quarantined} segment_files={self.segment_files} "
            f"dead_past_max={self.dead_past_max[:5]}"
        )


# (id, attempts) of every dead letter with attempts > ? (EVENT_MAX_ATTEMPTS): the contract
# allows none (a dead letter is an event whose attempts were used up, never exceeded).
DEAD_PAST_MAX_ATTEMPTS = (
    "SELECT id, attempts FROM events WHERE status = 'dead' AND attempts > ? ORDER BY id"
)


def dead_past_max_attempts(
    connection: sqlite3.Connection, max_attempts: int
) -> list[tuple[int, int]]:
    """Dead letters with more attempts than `max_attempts` (see DEAD_PAST_MAX_ATTEMPTS)."""
    found = connection.execute(DEAD_PAST_MAX_ATTEMPTS, (max_attempts,))
    return [(int(i), int(a)) for i, a in found]


def final_state(db: Path, *, max_attempts: int) -> FinalState:
    """Read the database with plain sqlite3 and every spill folder of it, read-only."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as connection:
        integrity = [row[0] for row in connection.execute("PRAGMA integrity_check")]
        counts = dict(connection.execute("SELECT status, count(*) FROM events GROUP BY status"))
        past_max = dead_past_max_attempts(connection, max_attempts)
        saved = connection.execute("SELECT log, priority, segment, offset FROM spill_positions")
        positions: dict[str, dict[int, SpillPosition]] = defaultdict(dict)
        for log, priority, segment, offset in saved:
            positions[log][priority] = SpillPosition(segment, offset)
    pending = quarantined = files = 0
    for folder in sorted(db.parent.glob(f"{db.name}.spill*")):
        name = read_identity(str(folder), str(db))
        stats = inspect(folder, positions.get(name, {}))
        pending += sum(stats.records.values())
        quarantined += stats.quarantined_records
        files += len(list(folder.glob("p*.log")))
    return FinalState(integrity, counts, pending, quarantined, files, past_max)


# --- the producer + consumer worker ---------------------------------------------------------


class CrashHarness:
    """One database and its logs, driven by crash_worker.py runs that may be killed."""

    def __init__(
        self,
        root: Path,
        *,
        unique: int,
        dup_share: float = 0.05,
        seed: int = 0,
        settings: Mapping[str, str] | None = None,
        chunk: int = 250,
        consumers: int = 2,
        retry: bool = True,
        timeout_s: float = 120.0,
        groups: int = 0,
    ) -> None:
        self.root = root
        self.db = root / "events.db"
        self.logs = root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.unique, self.dup_share, self.seed = unique, dup_share, seed
        self.order = put_order(unique, dup_share, seed)
        self.settings = {**BASE_SETTINGS, **(settings or {})}
        self.chunk, self.consumers, self.timeout_s = chunk, consumers, timeout_s
        # retry=False: a restart never puts an attempted op again; then an op cut off by a kill
        # may never be stored, so only acknowledged ops must be delivered.
        self.retry = retry
        self.groups = groups  # ordering groups the worker puts events in (0: unordered)
        self.attempted_ops = 0  # the highest op limit any run was given
        self.runs: list[Outcome] = []

    def run(
        self, *, crash_at: str | None = None, crash_after: int = 1, limit: int | None = None
    ) -> Outcome:
        """One worker run; killed at `crash_at` if it gets there, else it must exit cleanly."""
        limit = len(self.order) if limit is None else min(limit, len(self.order))
        self.attempted_ops = max(self.attempted_ops, limit)
        argv = [
            str(WORKER),
            f"--db={self.db}",
            f"--logs={self.logs}",
            f"--unique={self.unique}",
            f"--dup-share={self.dup_share}",
            f"--seed={self.seed}",
            f"--limit={limit}",
            f"--chunk={self.chunk}",
            f"--consumers={self.consumers}",
            f"--groups={self.groups}",
            *([] if self.retry else ["--no-retry"]),
        ]
        outcome = run_killable(
            argv,
            settings=self.settings,
            crash_at=crash_at,
            crash_after=crash_after,
            timeout_s=self.timeout_s,
        )
        self.runs.append(outcome)
        if outcome.crashed_at is None and outcome.returncode != 0:
            raise HarnessError(
                f"worker exited with {outcome.returncode}; stderr:\n{outcome.stderr[-4000:]}"
            )
        return outcome

    def crash(self, point: str, *, after: int = 1, limit: int | None = None) -> Outcome:
        """A run that must be killed at `point` (its `after`-th pass)."""
        outcome = self.run(crash_at=point, crash_after=after, limit=limit)
        if outcome.crashed_at != point:
            raise HarnessError(f"the worker finished without reaching {point} (pass {after})")
        return outcome

    def finish(self) -> Outcome:
        """A clean run over every op: puts what was never acknowledged (never attempted, with
        retry off) and drains the queue."""
        return self.run()

    def score(self) -> Score:
        return score(self.logs, self.order, self.attempted_ops)

    def order_breaks(self) -> tuple[list[str], int]:
        """Groups handled out of order, and how many groups were checked (those whose events
        were each handled once: a redelivery after a kill may repeat an event anywhere)."""
        return order_breaks(self.db, self.logs)

    def final_state(self) -> FinalState:
        return final_state(self.db, max_attempts=int(self.settings["EVENT_MAX_ATTEMPTS"]))

    def assert_contract(self) -> tuple[Score, FinalState]:
        """Everything RELIABILITY.md promises after the last run; returns what it measured."""
        result, state = self.score(), self.final_state()
        report = f"{result.line()}\n{state.line()}"
        assert result.lost == [], f"lost events {result.lost[:20]}\n{report}"
        assert result.unexpected == [], f"{result.unexpected[:20]}\n{report}"
        assert result.bad_duplicates == [], f"{result.bad_duplicates[:20]}\n{report}"
        if self.retry:  # the last run put every op again until acknowledged
            assert result.acknowledged == result.attempted == result.delivered, report
        assert state.integrity == ["ok"], report
        assert state.dead_past_max == [], report
        assert state.scheduled == 0 and state.counts.get("dead", 0) == 0, report
        assert state.spill_pending == 0, report
        return result, state
