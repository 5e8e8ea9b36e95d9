"""The power-loss battery: run the worker on the power-loss mount, cut the power, reopen, score.

A run is a fresh interpreter (`[sys.executable, worker.py, ...]`, never a fork, F12). The power
is cut in one of two ways, neither after a sleep:

- at a named crash point: eventqueue prints `EVENTQUEUE_CRASH_POINT <name>` to stderr and halts;
  the battery SIGKILLs the worker, reaps it, then tells the filesystem to cut;
- at the n-th write or fsync of a file: the filesystem itself SIGKILLs the worker, cuts, and
  fails every later operation until the battery has reaped the worker and revives it.

After each cut the database is copied from the backing folder and `PRAGMA integrity_check` runs on
the copy (the mount itself is left as the power cut left it). The score reads the logs the worker
fsyncs on the real disk, in the manner of Jepsen: lost, unexpected, duplicated.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reliability.workload import digest, payload, put_order

from .mount import PowerLossMount
from .process import Process

HERE = Path(__file__).resolve().parent
WORKER = HERE / "worker.py"
REPO = HERE.parents[1]
WAL = "/events.db-wal"

# A short lease brings back a batch claimed by a killed worker within seconds; attempts and the
# dedup window are generous so neither a dead letter nor an expired key hides a duplicate. A small
# queue (50 waiting events) makes a few hundred events spill and promote.
BASE_SETTINGS = {
    "EVENT_LEASE_SECONDS": "1",
    "EVENT_MAX_ATTEMPTS": "1000",
    "DEDUP_TTL_SECONDS": "86400",
    "BATCH_WINDOW_MS": "0",
    "EVENT_POLL_MS": "50",
    "EVENT_QUEUE_SIZE": "50",
}


class BatteryError(AssertionError):
    """A run misbehaved on its own: it hung, or failed without a cut."""


@dataclass
class Cut:
    """One power cut and what the battery saw right after it."""

    scenario: str
    report: dict[str, Any]
    integrity: list[str]

    @property
    def at(self) -> float:
        return float(self.report["at"])

    @property
    def wal_synced_at(self) -> float:
        """The last durable point of the database: when the last fsync of its WAL began."""
        return float(self.report.get("synced_at", {}).get(WAL, float("-inf")))


@dataclass
class Run:
    """One worker run: how it ended, the cut that ended it (if any), its produced.log span."""

    scenario: str
    returncode: int
    stdout: str
    stderr: str
    log_span: tuple[int, int]
    cut: Cut | None = None

    @property
    def result(self) -> dict[str, Any]:
        """The worker's closing JSON line (a run that finished by itself)."""
        return dict(json.loads(self.stdout.strip().splitlines()[-1]))


def child_env(settings: Mapping[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EVENTQUEUE_CRASH", "EVENT_"))}
    # The repository (eventqueue) and tests/ (the workload shared with the kill -9 battery).
    paths = [str(REPO), str(REPO / "tests"), env.get("PYTHONPATH")]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, paths))
    env.update(settings)
    return env


def integrity_of_copy(backing: Path, name: str = "events.db") -> list[str]:
    """`PRAGMA integrity_check` of a copy of the database and its WAL, as the cut left them."""
    if not (backing / name).exists():
        return ["ok"]  # nothing durable yet: the database was never created for good
    with tempfile.TemporaryDirectory() as scratch:
        for suffix in ("", "-wal"):
            if (backing / (name + suffix)).exists():
                shutil.copyfile(backing / (name + suffix), Path(scratch) / (name + suffix))
        with contextlib.closing(sqlite3.connect(Path(scratch) / name)) as db:
            return [row[0] for row in db.execute("PRAGMA integrity_check")]


class Battery:
    """One database on a power-loss mount, driven by worker runs that may end in a power cut."""

    def __init__(
        self,
        mount: PowerLossMount,
        logs: Path,
        *,
        durability: str,
        unique: int,
        seed: int = 0,
        settings: Mapping[str, str] | None = None,
        chunk: int = 100,
        timeout_s: float = 60.0,
    ) -> None:
        self.mount, self.logs = mount, logs
        self.logs.mkdir(parents=True, exist_ok=True)
        self.durability = durability
        self.unique, self.seed, self.chunk, self.timeout_s = unique, seed, chunk, timeout_s
        self.order = put_order(unique, 0.05, seed)
        self.settings = {**BASE_SETTINGS, "EVENT_DURABILITY": durability, **(settings or {})}
        self.attempted = 0
        self.runs: list[Run] = []

    @property
    def db(self) -> Path:
        return self.mount.path("events.db")

    @property
    def cuts(self) -> list[Cut]:
        return [run.cut for run in self.runs if run.cut is not None]

    def _argv(self, limit: int) -> list[str]:
        return [
            str(WORKER),
            f"--db={self.db}",
            f"--logs={self.logs}",
            f"--unique={self.unique}",
            f"--seed={self.seed}",
            f"--limit={limit}",
            f"--chunk={self.chunk}",
        ]

    def run(
        self,
        *,
        limit: int | None = None,
        crash_at: str | None = None,
        crash_after: int = 1,
        trigger: Mapping[str, Any] | None = None,
        mode: str = "drop",
        cut_seed: int = 0,
        settings: Mapping[str, str] | None = None,
    ) -> Run:
        """One worker run over ops below `limit`, cut at `crash_at` (its `crash_after`-th pass)
        or by `trigger` ({op, match, n}) if it gets there; else it must finish cleanly.
        `settings`: EVENT_* variables for this run only."""
        limit = len(self.order) if limit is None else min(limit, len(self.order))
        self.attempted = max(self.attempted, limit)
        env = child_env({**self.settings, **(settings or {})})
        if crash_at is not None:
            env |= {"EVENTQUEUE_CRASH_AT": crash_at, "EVENTQUEUE_CRASH_AFTER": str(crash_after)}
        start = self._log_size()
        worker = Process(self._argv(limit), env)
        deadline = time.monotonic() + self.timeout_s
        try:
            self._expect_ready(worker, deadline)
            if trigger is not None:
                self.mount.arm(pid=worker.proc.pid, mode=mode, seed=cut_seed, **trigger)
            worker.send("go")
            crashed = worker.await_crash(deadline)
        except BaseException:
            worker.kill()
            worker.reap()
            raise
        returncode = worker.reap()
        scenario = self._scenario(crash_at, crash_after, trigger, mode)
        run = Run(scenario, returncode, worker.out(), worker.err(), (start, 0))
        if crashed:
            run.cut = self._cut_now(scenario, mode, cut_seed)
        elif trigger is not None:
            run.cut = self._triggered(scenario)
        run.log_span = (start, self._log_size())
        self.runs.append(run)
        if run.cut is None and returncode != 0:
            raise BatteryError(f"worker exited with {returncode}:\n{run.stderr}")
        return run

    def finish(self) -> Run:
        """A clean run over every op: puts what was never acknowledged and drains the queue."""
        return self.run()

    def _expect_ready(self, worker: Process, deadline: float) -> None:
        while True:
            stream, line = worker.next_line(deadline)
            if line is None and stream == "out":
                raise BatteryError(f"worker exited before it was ready:\n{worker.err()}")
            if stream == "out" and line == "WORKER_READY":
                return

    def _cut_now(self, scenario: str, mode: str, seed: int) -> Cut:
        report = self.mount.cut(mode=mode, seed=seed)
        return Cut(scenario, report, integrity_of_copy(self.mount.backing))

    def _triggered(self, scenario: str) -> Cut | None:
        state = self.mount.disarm()
        if not state["fired"]:
            return None
        report = self.mount.status()["last_cut"]
        cut = Cut(scenario, report, integrity_of_copy(self.mount.backing))
        self.mount.revive()
        return cut

    @staticmethod
    def _scenario(
        crash_at: str | None, after: int, trigger: Mapping[str, Any] | None, mode: str
    ) -> str:
        if crash_at is not None:
            return f"{crash_at}#{after} {mode}"
        if trigger is not None:
            return f"{trigger['op']}#{trigger['n']} {trigger['match']} {mode}"
        return "clean"

    def _log_size(self) -> int:
        path = self.logs / "produced.log"
        return path.stat().st_size if path.exists() else 0

    def score(self) -> Score:
        return score(self)


@dataclass
class Score:
    """Jepsen-style counts over the logs, with each loss placed against its run's cut."""

    attempted: int = 0
    acknowledged: int = 0
    delivered: int = 0
    duplicated: int = 0
    lost: list[int] = field(default_factory=list)
    lost_after_durable_point: list[int] = field(default_factory=list)  # allowed with `normal`
    unexpected: list[str] = field(default_factory=list)
    bad_duplicates: list[str] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)

    @property
    def lost_before_durable_point(self) -> list[int]:
        allowed = set(self.lost_after_durable_point)
        return [e for e in self.lost if e not in allowed]

    def line(self) -> str:
        return (
            f"acknowledged={self.acknowledged} delivered={self.delivered} lost={len(self.lost)} "
            f"(after the last durable point: {len(self.lost_after_durable_point)}) "
            f"unexpected={len(self.unexpected)} duplicated={self.duplicated} "
            f"(not explained by attempts>1: {len(self.bad_duplicates)}) puts={dict(self.statuses)}"
        )


def _lines(path: Path, start: int = 0, end: int | None = None) -> list[list[str]]:
    if not path.exists():
        return []
    data = path.read_bytes()[start:end].decode()
    return [line.split() for line in data.split("\n")[:-1] if line]


def score(battery: Battery) -> Score:
    """Score the battery's logs: every acknowledged event delivered (or, with `normal`, lost
    only when its put returned after the last durable point before the cut that ended its run)."""
    result = Score()
    universe = set(battery.order[: battery.attempted])
    result.attempted = len(universe)
    first_ack: dict[int, tuple[float, str, Run]] = {}
    produced = battery.logs / "produced.log"
    for run in battery.runs:
        for op, event_id, status, at in _lines(produced, *run.log_span):
            eid = int(event_id)
            if battery.order[int(op)] != eid:
                result.unexpected.append(f"producer log names op {op} as event {eid}")
            result.statuses[status] += 1
            first_ack.setdefault(eid, (float(at), status, run))
    result.acknowledged = len(first_ack)
    seen: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for event_id, row, attempts, fingerprint in _lines(battery.logs / "consumed.log"):
        eid = int(event_id)
        if eid not in universe:
            result.unexpected.append(f"event {eid} delivered (row {row}) but never put")
        elif fingerprint != digest(payload(eid)):
            result.unexpected.append(f"event {eid} delivered (row {row}) with other content")
        seen[eid].append((int(row), int(attempts)))
    result.delivered = len(seen)
    result.lost = sorted(set(first_ack) - set(seen))
    for eid in result.lost:
        at, status, run = first_ack[eid]
        cut = run.cut
        if cut is not None and status != "spilled" and at > cut.wal_synced_at:
            result.lost_after_durable_point.append(eid)
    for eid, deliveries in seen.items():
        result.duplicated += len(deliveries) - 1
        rows = {row for row, _ in deliveries}
        attempts = [a for _, a in deliveries]
        if len(rows) > 1:
            result.bad_duplicates.append(f"event {eid} stored as rows {sorted(rows)}")
        elif len(set(attempts)) != len(attempts):
            result.bad_duplicates.append(
                f"event {eid} (row {rows}) delivered at attempts {attempts}"
            )
    return result
