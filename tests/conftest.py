"""Shared fixtures: an injected clock, queues on real files in tmp_path, plain sqlite3 access."""

from __future__ import annotations

import contextlib
import importlib.util
import sqlite3
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

# A source checkout that was not `pip install -e`'d still tests itself.
if importlib.util.find_spec("eventqueue") is None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eventqueue import EventQueue
from eventqueue.core.config import SETTINGS

START = 1_700_000_000.0  # a realistic unix time, so the SQL views show sensible ages


class FakeClock:
    """A wall clock that only moves when told to: `clock.advance(seconds)`."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings exported in the developer's shell must not change what the tests see."""
    for setting in SETTINGS:
        monkeypatch.delenv(setting.env, raising=False)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    return str(tmp_path / "events.db")


OpenQueue = Callable[..., Awaitable[EventQueue]]


@pytest.fixture
async def open_queue(db_path: str, clock: FakeClock) -> AsyncIterator[OpenQueue]:
    """Open EventQueues on `db_path` with the fake clock; every one is closed at teardown."""
    opened: list[EventQueue] = []

    async def _open(path: str | None = None, **settings: Any) -> EventQueue:
        settings.setdefault("clock", clock)
        queue = await EventQueue.open(path or db_path, **settings)
        opened.append(queue)
        return queue

    yield _open
    for queue in opened:
        await queue.close()


Query = Callable[..., list[tuple[Any, ...]]]


@pytest.fixture
def query(db_path: str) -> Query:
    """Run one SQL statement on the database file with plain sqlite3, commit, return all rows."""

    def _query(sql: str, params: tuple[Any, ...] = (), *, path: str | None = None) -> list[Any]:
        with contextlib.closing(sqlite3.connect(path or db_path)) as connection:
            rows = connection.execute(sql, params).fetchall()
            connection.commit()
            return rows

    return _query


def event(
    name: str = "thing",
    aggregate_id: str | int = "a1",
    attributes: dict[str, Any] | None = None,
    event_type: str = "entity_event",
    **extra: Any,
) -> dict[str, Any]:
    """An event shaped like the plan's: type, name, aggregate id, attributes."""
    return {
        "event_type": event_type,
        "event_name": name,
        "aggregate_id": aggregate_id,
        "attributes": {} if attributes is None else attributes,
        **extra,
    }


@pytest.fixture
def make_event() -> Callable[..., dict[str, Any]]:
    return event


# --- subprocess workers (reliability battery) -----------------------------------------------


class Worker:
    """A fresh Python interpreter running `script`: stdout lines are queued, stderr goes to a file.

    A fresh interpreter, never a fork: a SQLite connection must not cross fork() (F12).
    """

    def __init__(self, script: str, args: list[str], stderr_path: Path) -> None:
        import os
        import queue as queue_module
        import subprocess
        import threading

        package_root = str(Path(__file__).resolve().parents[1])
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                filter(None, [package_root, os.environ.get("PYTHONPATH")])
            ),
        }
        self.stderr_path = stderr_path
        # A silent worker is asked for its stacks (SIGUSR1) before the test fails.
        prelude = (
            "import faulthandler, signal\nfaulthandler.register(signal.SIGUSR1, all_threads=True)\n"
        )
        with open(stderr_path, "w") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", prelude + script, *args],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                env=env,
            )
        self.lines: queue_module.Queue[str | None] = queue_module.Queue()
        self._pump = threading.Thread(target=self._read, daemon=True)
        self._pump.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def expect(self, timeout: float = 30.0) -> str:
        """The next stdout line (a handshake); fails if the worker exits or stays silent."""
        import queue as queue_module

        try:
            line = self.lines.get(timeout=timeout)
        except queue_module.Empty:
            import signal
            import time

            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGUSR1)
                time.sleep(1)  # diagnostics only: let faulthandler write the stacks
            raise AssertionError(
                f"worker {self.pid} silent for {timeout}s: {self.stderr()}"
            ) from None
        if line is None:
            raise AssertionError(f"worker {self.pid} exited: {self.stderr()}")
        return line

    def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def wait(self, timeout: float = 60.0) -> int:
        """Close stdin (the worker's cue to stop, where it listens) and wait for the exit."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            with contextlib.suppress(BrokenPipeError):
                self.proc.stdin.close()
        code = self.proc.wait(timeout=timeout)
        self._pump.join(timeout=10)
        return code

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stop(self) -> None:
        """Kill (if still running) and release the pipes."""
        import signal

        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGCONT)
                self.proc.kill()
        with contextlib.suppress(Exception):
            self.wait(timeout=30)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                with contextlib.suppress(Exception):
                    pipe.close()


@pytest.fixture
def spawn(tmp_path: Path) -> Any:
    """Start Worker subprocesses; every one is killed (if alive) and reaped at teardown."""
    workers: list[Worker] = []

    def _spawn(script: str, *args: str, name: str = "worker") -> Worker:
        worker = Worker(script, list(args), tmp_path / f"{name}-{len(workers)}.stderr")
        workers.append(worker)
        return worker

    yield _spawn
    for worker in workers:
        worker.stop()
