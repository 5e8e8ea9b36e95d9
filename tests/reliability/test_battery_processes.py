"""Three producers, three consumers and a CLI reader loop on one database file.

Scored from the workers' logs: lost 0 (every acknowledged put delivered), unexpected 0, no event
under two live leases at once, no "database is locked" reaching a caller, and a small WAL once
everyone has closed. One consumer now and then stalls past its (short) lease, so redelivery
and the fence are exercised under contention too.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from eventqueue import EventQueue
from eventqueue.store.sqlite import migrations

PRODUCERS = 3
CONSUMERS = 3
PER_PRODUCER = 400
LEASE_S = 2.0

# argv: path, name, count, log path. Puts `count` events from 4 concurrent tasks, logs one JSON
# line per acknowledged put, waits until its own spill log is promoted, prints what is left.
PRODUCER = textwrap.dedent(
    """
    import asyncio, contextlib, json, sys, time
    from eventqueue import EventQueue, EventQueueError

    async def main(path, name, count, log_path):
        log = open(log_path, "w")
        async with EventQueue.open(path, batch_window_ms=20, queue_size=300, poll_ms=20) as q:
            async def put_range(start):
                for i in range(start, count, 4):
                    event = {"event_name": f"job{i % 5}", "aggregate_id": f"{name}-{i}",
                             "attributes": {"n": i}}
                    try:
                        result = await q.put(event)
                    except EventQueueError as exc:
                        print(f"CALLER_ERROR put: {type(exc).__name__}: {exc}", file=sys.stderr)
                        continue
                    log.write(json.dumps([f"{name}-{i}", result.status.value, result.id]) + "\\n")
            await asyncio.gather(*(put_range(s) for s in range(4)))
            log.close()
            deadline = time.monotonic() + 60
            while q.overflow.pending() and time.monotonic() < deadline:
                with contextlib.suppress(TimeoutError):  # woken by each promotion
                    await asyncio.wait_for(q.changed_event().wait(), 0.2)
            print(json.dumps({"spill_pending": q.overflow.pending()}), flush=True)

    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]))
    """
)

# argv: path, name, log path, stall every Nth batch (0: never). Claims and acks until stdin
# closes; logs claim / ack / lost lines with the lease of each event.
CONSUMER = textwrap.dedent(
    """
    import asyncio, json, sys, threading, time
    from eventqueue import EventQueue, EventQueueError, LeaseLostError

    async def main(path, name, log_path, stall_every, lease):
        log = open(log_path, "w")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        def watch_stdin():  # a daemon thread: never holds up the exit of a failed worker
            sys.stdin.read()
            loop.call_soon_threadsafe(stop.set)
        threading.Thread(target=watch_stdin, daemon=True).start()
        async with EventQueue.open(path, batch_window_ms=20, lease_s=lease, poll_ms=20,
                                   queue_size=300) as q:
            print("ready", flush=True)
            batches = 0
            while not stop.is_set():
                try:
                    batch = await q.next_batch(name, stop=stop, timeout=0.5)
                except EventQueueError as exc:
                    print(f"CALLER_ERROR claim: {type(exc).__name__}: {exc}", file=sys.stderr)
                    continue
                if batch is None:
                    continue
                batches += 1
                start = batch.lease_expires_at - lease
                for e in batch.events:
                    log.write(json.dumps(["claim", e.id, batch.token, start,
                                          batch.lease_expires_at, e.attempts,
                                          e.payload["aggregate_id"]]) + "\\n")
                if stall_every and batches % stall_every == 0:
                    await asyncio.sleep(lease * 1.5)  # a slow handler: the lease runs out
                try:
                    await q.ack(batch)
                except LeaseLostError:
                    log.write(json.dumps(["lost", batch.ids, batch.token, time.time()]) + "\\n")
                    continue
                except EventQueueError as exc:
                    print(f"CALLER_ERROR ack: {type(exc).__name__}: {exc}", file=sys.stderr)
                    continue
                log.write(json.dumps(["ack", batch.ids, batch.token, time.time()]) + "\\n")
        log.close()

    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5])))
    """
)


class CliLoop:
    """`python -m eventqueue stats --db PATH --json`, run again and again until stopped."""

    def __init__(self, db_path: str) -> None:
        self.db_path = db_path
        self.runs: list[tuple[int, str, str]] = []
        self.wal_max = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> CliLoop:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def _loop(self) -> None:
        command = [sys.executable, "-m", "eventqueue", "stats", "--db", self.db_path, "--json"]
        while not self._stop.is_set():
            done = subprocess.run(command, capture_output=True, text=True, timeout=60)
            self.runs.append((done.returncode, done.stdout, done.stderr))
            with contextlib.suppress(FileNotFoundError):
                self.wal_max = max(self.wal_max, os.path.getsize(self.db_path + "-wal"))


async def create(db_path: str) -> None:
    async with EventQueue.open(db_path):
        pass


def read_log(path: Path) -> list[Any]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_until_all_done(db_path: str, total: int, timeout_s: float) -> None:
    """Poll the database (short read transactions) until every event is done."""
    deadline = time.monotonic() + timeout_s
    done = -1
    while time.monotonic() < deadline:
        with contextlib.closing(sqlite3.connect(db_path, timeout=10)) as db:
            done = db.execute("SELECT count(*) FROM events WHERE status = 'done'").fetchone()[0]
        if done >= total:
            return
        time.sleep(0.1)  # polling a condition, with a deadline
    raise AssertionError(f"only {done} of {total} events done after {timeout_s}s")


def check_leases(claims: list[Any], acked_tokens: set[tuple[int, str]]) -> None:
    """No event under two live leases: a new lease on an id starts after the last one ended."""
    by_id: dict[int, list[Any]] = collections.defaultdict(list)
    for _, event_id, token, start, expires, attempts, _key in claims:
        by_id[event_id].append((start, expires, token, attempts))
    for event_id, leases in by_id.items():
        leases.sort()
        for (_, expires, token, attempts), later in itertools.pairwise(leases):
            assert (event_id, token) not in acked_tokens, (
                f"event {event_id} was claimed again after an ack under {token}"
            )
            assert later[0] >= expires, f"event {event_id}: two live leases {leases}"
            assert later[3] > attempts, f"event {event_id}: a redelivery without attempts > 1"


def test_three_producers_three_consumers_and_a_cli_reader(
    db_path: str, spawn, tmp_path: Path
) -> None:
    # The schema exists before the workers start (several processes creating a new file at
    # once is test_several_processes_creating_a_new_database_at_once).
    asyncio.run(create(db_path))
    consumers = [
        spawn(
            CONSUMER,
            db_path,
            f"c{n}",
            str(tmp_path / f"c{n}.log"),
            "25" if n == 0 else "0",
            str(LEASE_S),
            name=f"consumer{n}",
        )
        for n in range(CONSUMERS)
    ]
    for consumer in consumers:
        assert consumer.expect(timeout=60) == "ready"
    with CliLoop(db_path) as cli:
        producers = [
            spawn(
                PRODUCER,
                db_path,
                f"p{n}",
                str(PER_PRODUCER),
                str(tmp_path / f"p{n}.log"),
                name=f"producer{n}",
            )
            for n in range(PRODUCERS)
        ]
        for producer in producers:
            assert json.loads(producer.expect(timeout=120)) == {"spill_pending": 0}
            assert producer.wait() == 0, producer.stderr()
        wait_until_all_done(db_path, PRODUCERS * PER_PRODUCER, timeout_s=90)
    for consumer in consumers:
        assert consumer.wait() == 0, consumer.stderr()

    # No caller saw an error; in particular no "database is locked".
    workers = producers + consumers
    caller_errors = [
        line for w in workers for line in w.stderr().splitlines() if "CALLER_ERROR" in line
    ]
    assert caller_errors == []
    locked = [line for w in workers for line in w.stderr().splitlines() if "locked" in line.lower()]
    assert locked == []
    assert cli.runs, "the CLI loop never ran"
    for code, stdout, stderr in cli.runs:
        assert code == 0, stderr
        assert "locked" not in stderr.lower()
        json.loads(stdout)

    # Lost 0, unexpected 0: every acknowledged put is a done event, and nothing else is.
    acknowledged = {key for n in range(PRODUCERS) for key, _, _ in read_log(tmp_path / f"p{n}.log")}
    assert len(acknowledged) == PRODUCERS * PER_PRODUCER
    with contextlib.closing(sqlite3.connect(db_path)) as db:
        stored = db.execute(
            "SELECT json_extract(payload, '$.aggregate_id'), status, attempts FROM events"
        ).fetchall()
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    assert sorted(key for key, _, _ in stored) == sorted(acknowledged)
    assert {status for _, status, _ in stored} == {"done"}

    # Leases: claims logged by every consumer, checked for overlap per id.
    entries = [e for n in range(CONSUMERS) for e in read_log(tmp_path / f"c{n}.log")]
    claims = [e for e in entries if e[0] == "claim"]
    acked = {(i, e[2]) for e in entries if e[0] == "ack" for i in e[1]}
    check_leases(claims, acked)
    delivered = {e[6] for e in claims}
    assert delivered == acknowledged
    attempts = {key: a for key, _, a in stored}
    redelivered = collections.Counter(e[6] for e in claims)
    assert all(attempts[key] >= count for key, count in redelivered.items())

    # WAL bounded: after everyone closed, the WAL is gone or truncated.
    wal = Path(db_path + "-wal")
    assert not wal.exists() or wal.stat().st_size == 0, wal.stat().st_size
    assert cli.wal_max < 64 * 1024 * 1024


def test_several_processes_creating_a_new_database_at_once(
    db_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Deterministic interleaving: another process's complete creation lands between this
    # process's two reads.
    has_tables = migrations.has_tables

    def another_process_creates_it_meanwhile(engine: Any) -> bool:
        migrations.upgrade(db_path)
        return has_tables(engine)

    monkeypatch.setattr(migrations, "has_tables", another_process_creates_it_meanwhile)
    migrations.ensure_schema(db_path, 5000, "auto")
