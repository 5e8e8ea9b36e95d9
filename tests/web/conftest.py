"""The dashboard's fixtures: a busy queue database on each backend, and `eventqueue web`
running on it as a real subprocess on 127.0.0.1 (its address read from its first line)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pgtest
import pytest

from eventqueue import EventQueue

DEAD_ERROR = "boom: the payment service said 503"


async def fill(location: str, spill_dir: str) -> None:
    """Pending, claimed, done and dead events and a duplicate, as a busy listener leaves them."""
    async with EventQueue.open(
        location, batch_window_ms=0, max_attempts=1, spill_dir=spill_dir
    ) as q:
        await q.put_many(
            [
                {"event_name": f"job_{i % 3}", "aggregate_id": f"agg-{i}", "event_id": f"e-{i}"}
                for i in range(40)
            ]
        )
        await q.put({"event_name": "payment_failed", "aggregate_id": 1})  # CRITICAL
        await q.put({"event_name": "job_0", "aggregate_id": "agg-0", "event_id": "e-0"})
        for finish in ("ack", "nack", None):
            batch = await q.claim()
            assert batch is not None
            if finish == "ack":
                await q.ack(batch)
            elif finish == "nack":
                await q.nack(batch, DEAD_ERROR)


@dataclass(frozen=True)
class Database:
    backend: str
    location: str
    spill_dir: str

    @property
    def env(self) -> dict[str, str]:
        """The environment a command on this database runs with (its spill folder)."""
        return {**os.environ, "EVENT_SPILL_DIR": self.spill_dir}


@pytest.fixture(params=["sqlite", "postgresql"])
def busy_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A filled database of each backend in turn."""
    spill_dir = str(tmp_path / "spill")
    if request.param == "sqlite":
        location = str(tmp_path / "events.db")
        asyncio.run(fill(location, spill_dir))
        yield Database("sqlite", location, spill_dir)
        return
    with pgtest.fresh_schema(pgtest.require_pg()) as url:
        pgtest.run_sync(lambda: fill(url, spill_dir))
        yield Database("postgresql", url, spill_dir)


@dataclass
class Served:
    url: str
    process: subprocess.Popen[str]


def start_web(db: Database, *extra: str) -> Served:
    """`eventqueue web --db LOCATION --port 0 ...`, once it listens."""
    process = subprocess.Popen(
        [sys.executable, "-m", "eventqueue", "web", "--db", db.location, "--port", "0", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=db.env,
    )
    assert process.stdout is not None
    line = process.stdout.readline().strip()  # printed after the socket listens
    if not line.startswith("http://"):
        process.kill()
        _, err = process.communicate()
        raise AssertionError(f"eventqueue web did not start: {line!r} {err}")
    return Served(line, process)


@pytest.fixture
def web() -> Iterator[Callable[..., Served]]:
    """Start `eventqueue web` (any number of times); every one is stopped at teardown."""
    started: list[Served] = []

    def start(db: Database, *extra: str) -> Served:
        served = start_web(db, *extra)
        started.append(served)
        return served

    yield start
    for served in started:
        served.process.terminate()
        served.process.communicate(timeout=30)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Without a server, one summary line for all the PostgreSQL tests (pgtest.fold_skip)."""
    outcome = yield
    pgtest.fold_skip(outcome.get_result())  # type: ignore[attr-defined]
