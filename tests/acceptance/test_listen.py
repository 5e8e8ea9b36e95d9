"""`eventqueue listen`: real listener processes against a real SSE server, and the command
in-process (click's CliRunner) on JSON-lines files and stdin.

Subprocesses are fresh interpreters (`python -m eventqueue`), stopped with SIGTERM after a
handshake they print (the handlers announce each fsynced record), never after a sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import listen_handlers
import pytest
from click.testing import CliRunner, Result

from eventqueue.tools import cli
from eventqueue.tools.sse_server import SSEServer

HERE = Path(__file__).resolve().parent
PACKAGE_ROOT = HERE.parents[1]
DEADLINE_S = 60  # a bound on every wait: a broken listener fails the test instead of hanging


def order(n: int, name: str = "order_created") -> dict[str, Any]:
    return {"event_type": "order", "event_name": name, "aggregate_id": n, "attributes": {}}


def with_duplicates(numbers: range) -> list[dict[str, Any]]:
    """Each event once, and every third one twice (the second sending is a duplicate)."""
    stream: list[dict[str, Any]] = []
    for n in numbers:
        stream += [order(n)] * (2 if n % 3 == 0 else 1)
    return stream


def sql(db: Path, statement: str) -> list[Any]:
    with contextlib.closing(sqlite3.connect(db)) as connection:
        return connection.execute(statement).fetchall()


# --- real listener processes --------------------------------------------------------------------


class Listener:
    """A `python -m eventqueue listen ...` process; its output lines are collected as they come."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.out: list[str] = []
        self.err: list[str] = []
        self._changed = asyncio.Event()
        assert proc.stdout is not None and proc.stderr is not None
        self._pumps = [
            asyncio.create_task(self._pump(proc.stdout, self.out)),
            asyncio.create_task(self._pump(proc.stderr, self.err)),
        ]

    @classmethod
    async def start(cls, *args: str, log: Path) -> Listener:
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(HERE), str(PACKAGE_ROOT)]),
            "LISTEN_LOG": str(log),
            "BATCH_WINDOW_MS": "10",
        }
        proc = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "eventqueue", "listen", *args),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        return cls(proc)

    async def _pump(self, stream: asyncio.StreamReader, lines: list[str]) -> None:
        async for line in stream:
            lines.append(line.decode(errors="replace").rstrip("\n"))
            self._changed.set()
        self._changed.set()

    def handled(self) -> int:
        return sum(int(line.split()[1]) for line in self.out if line.startswith("HANDLED "))

    async def wait_for(self, condition: Callable[[], bool]) -> None:
        async with asyncio.timeout(DEADLINE_S):
            while not condition():
                if self.proc.returncode is not None:
                    raise AssertionError(f"listener exited early: {self.err[-20:]}")
                self._changed.clear()
                await self._changed.wait()

    async def finish(self) -> int:
        """Wait for the exit (and the end of its output); the exit code."""
        async with asyncio.timeout(DEADLINE_S):
            code = await self.proc.wait()
            await asyncio.gather(*self._pumps)
        return code

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
        await self.finish()


@pytest.fixture
async def listeners() -> Any:
    started: list[Listener] = []

    async def start(*args: str, log: Path) -> Listener:
        listener = await Listener.start(*args, log=log)
        started.append(listener)
        return listener

    yield start
    for listener in started:
        await listener.kill()


async def test_a_restarted_listener_process_resumes_and_handles_every_event_once(
    tmp_path: Path, listeners: Any
) -> None:
    db, log = tmp_path / "events.db", tmp_path / "handled.jsonl"
    args = ["--handlers", "listen_handlers:HANDLERS", "--db", str(db)]
    async with SSEServer(with_duplicates(range(1, 41)), disconnect_after=10, retry_ms=5) as server:
        one = await listeners(server.url, *args, log=log)
        await one.wait_for(lambda: one.handled() >= 15)
        one.proc.send_signal(signal.SIGTERM)
        assert await one.finish() == 0, one.err
        [(stored,)] = sql(db, "SELECT position FROM source_positions")
        connections = server.connections
        for event in [*with_duplicates(range(41, 61)), order(5), order(61)]:
            server.add(event)  # more events while no listener runs, one an old one re-sent

        two = await listeners(server.url, *args, log=log)
        await two.wait_for(lambda: one.handled() + two.handled() >= 61)
        two.proc.send_signal(signal.SIGTERM)
        assert await two.finish() == 0, two.err

    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert Counter(r["aggregate_id"] for r in records) == {n: 1 for n in range(1, 62)}
    assert server.last_event_ids_seen[1] == "10"  # the first run resumed after the drop
    assert server.last_event_ids_seen[connections] == stored  # the second after the stored id
    assert any("handled" in line for line in one.out)  # the summary
    assert sql(db, "SELECT DISTINCT status FROM events") == [("done",)]


async def test_a_second_signal_forces_the_stop_and_releases_the_blocked_batch(
    tmp_path: Path, listeners: Any
) -> None:
    db, log, source = tmp_path / "events.db", tmp_path / "handled.jsonl", tmp_path / "in.jsonl"
    source.write_text(
        "".join(json.dumps(e) + "\n" for e in [order(1), order(2), order(3, "stuck")])
    )
    args = [str(source), "--handlers", "listen_handlers:HANDLERS", "--db", str(db)]
    listener = await listeners(*args, "--shutdown-grace", "3600", log=log)
    await listener.wait_for(lambda: "BLOCKED" in listener.out and listener.handled() == 2)

    listener.proc.send_signal(signal.SIGTERM)
    await listener.wait_for(lambda: any("shutting down gracefully" in e for e in listener.err))
    listener.proc.send_signal(signal.SIGTERM)
    assert await listener.finish() == 0  # within DEADLINE_S, not after the hour of grace

    rows = sql(db, "SELECT json_extract(payload, '$.event_name'), status, lease_token FROM events")
    assert sorted(rows) == [
        ("order_created", "done", None),
        ("order_created", "done", None),
        ("stuck", "pending", None),
    ]


async def test_listen_reads_an_untyped_stream_and_counts_skipped_types(
    tmp_path: Path, listeners: Any
) -> None:
    db, log = tmp_path / "events.db", tmp_path / "handled.jsonl"
    async with SSEServer(event="") as server:  # untyped messages, as sse-starlette sends
        server.add_data(json.dumps(order(1)), event="event_deleted")
        server.add_data(json.dumps(order(2)), event="event_deleted")
        server.add_data(json.dumps(order(3)), event="ping")
        for n in (4, 5):
            server.add(order(n))
        listener = await listeners(
            server.url, "--handlers", "listen_handlers:HANDLERS", "--db", str(db), log=log
        )
        await listener.wait_for(lambda: listener.handled() >= 2)
        listener.proc.send_signal(signal.SIGTERM)
        assert await listener.finish() == 0, listener.err

    assert sorted(json.loads(line)["aggregate_id"] for line in log.read_text().splitlines()) == [
        4,
        5,
    ]
    summary = "\n".join(listener.out)
    assert "read 2, accepted 2" in summary
    assert "skipped 3" in summary
    assert "skipped by type: event_deleted 2, ping 1 (read them with --event TYPE)" in summary
    warnings = [line for line in listener.err if "skipping messages of type" in line]
    assert len(warnings) == 2, listener.err


async def test_listen_event_option_chooses_the_types_read(tmp_path: Path, listeners: Any) -> None:
    db, log = tmp_path / "events.db", tmp_path / "handled.jsonl"
    async with SSEServer() as server:
        server.add_data(json.dumps(order(1)), event="order_placed")
        server.add(order(2))  # event_created: not read once --event is given
        server.add_data(json.dumps(order(3)), event="order_paid")
        args = ["--handlers", "listen_handlers:HANDLERS", "--db", str(db)]
        events = ["--event", "order_placed", "--event", "order_paid"]
        listener = await listeners(server.url, *args, *events, log=log)
        await listener.wait_for(lambda: listener.handled() >= 2)
        listener.proc.send_signal(signal.SIGTERM)
        assert await listener.finish() == 0, listener.err

    assert sorted(json.loads(line)["aggregate_id"] for line in log.read_text().splitlines()) == [
        1,
        3,
    ]
    assert "skipped by type: event_created 1" in "\n".join(listener.out)


async def test_listen_stops_with_exit_2_when_the_server_answers_404(
    tmp_path: Path, listeners: Any
) -> None:
    db, log = tmp_path / "events.db", tmp_path / "handled.jsonl"
    async with SSEServer([order(1)], reject_first=1, reject_status=404) as server:
        args = ["--handlers", "listen_handlers:HANDLERS", "--db", str(db)]
        listener = await listeners(server.url, *args, log=log)
        code = await listener.finish()  # by itself: a 404 is not retried

        assert code == 2, listener.err
        assert server.connections == 1
    message = "\n".join(listener.err)
    assert f"Error: {server.url}: the server refused the stream (HTTP 404 Not Found)" in message
    assert "check the URL" in message
    assert "Traceback" not in message


# --- the command in-process ---------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _fresh_records() -> Iterator[None]:
    listen_handlers.HANDLED.clear()
    yield
    listen_handlers.HANDLED.clear()


def listen(*args: str, stdin: str | None = None) -> Result:
    clean: dict[str, str | None] = {"LISTEN_LOG": None, "BATCH_WINDOW_MS": "0"}
    return CliRunner().invoke(cli.main, ["listen", *args], input=stdin, env=clean)


def lines(*events: dict[str, Any] | str) -> str:
    return "".join((e if isinstance(e, str) else json.dumps(e)) + "\n" for e in events)


def test_listen_runs_a_jsonl_file_to_its_end_and_reports_a_bad_line(tmp_path: Path) -> None:
    source, db = tmp_path / "in.jsonl", tmp_path / "events.db"
    source.write_text(lines(order(1), order(2), "{not json", order(2), order(3)))

    result = listen(str(source), "--handlers", "listen_handlers:HANDLERS", "--db", str(db))

    assert result.exit_code == 0, result.output
    assert sorted(r["aggregate_id"] for r in listen_handlers.HANDLED) == [1, 2, 3]
    assert "read 4, accepted 3, duplicates 1" in result.output
    assert "bad input 1" in result.output
    assert "handled 3" in result.output
    assert "stored position 5" in result.output
    assert "NORMAL p50" in result.output
    assert sql(db, "SELECT status, count(*) FROM events GROUP BY status") == [("done", 3)]


def test_listen_again_on_the_same_file_resumes_after_the_stored_line(tmp_path: Path) -> None:
    source, db = tmp_path / "in.jsonl", tmp_path / "events.db"
    source.write_text(lines(order(1), order(2)))
    args = [str(source), "--handlers", "listen_handlers:HANDLERS", "--db", str(db)]
    assert listen(*args).exit_code == 0
    with source.open("a") as f:
        f.write(lines(order(3)))

    result = listen(*args)

    assert result.exit_code == 0, result.output
    assert "read 1, accepted 1, duplicates 0" in result.output
    assert [r["aggregate_id"] for r in listen_handlers.HANDLED] == [1, 2, 3]


def test_listen_with_on_error_stop_ends_at_the_bad_line_with_exit_2(tmp_path: Path) -> None:
    source, db = tmp_path / "in.jsonl", tmp_path / "events.db"
    source.write_text(lines(order(1), order(2), "[1, 2]", order(3)))

    result = listen(
        str(source), "--handlers", "listen_handlers:HANDLERS", "--db", str(db), "--on-error", "stop"
    )

    assert result.exit_code == 2
    assert "line 3" in result.output
    assert sql(db, "SELECT json_extract(payload, '$.aggregate_id') FROM events") == [(1,), (2,)]


def test_listen_reads_stdin_and_does_not_resume_it(tmp_path: Path) -> None:
    db = tmp_path / "events.db"
    args = ["-", "--handlers", "listen_handlers:HANDLERS", "--db", str(db)]
    assert listen(*args, stdin=lines(order(1), order(2))).exit_code == 0

    again = listen(*args, stdin=lines(order(1), order(2)))

    assert again.exit_code == 0, again.output
    assert "read 2, accepted 0, duplicates 2" in again.output  # read again; dedup absorbs it
    assert len(listen_handlers.HANDLED) == 2


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("listen_handlers", "give --handlers as module:attr"),
        ("no_such_module_here:HANDLERS", "cannot import no_such_module_here"),
        ("listen_handlers:MISSING", "has no attribute 'MISSING'"),
        ("listen_handlers:NOT_A_DICT", "is a list, not a dict"),
        ("listen_handlers:SYNC", "the handler for '*' (not_async) is not async"),
    ],
)
def test_listen_refuses_bad_handlers_with_exit_2(tmp_path: Path, spec: str, message: str) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text(lines(order(1)))

    result = listen(str(source), "--handlers", spec, "--db", str(tmp_path / "events.db"))

    assert result.exit_code == 2
    assert message in result.output
    assert not (tmp_path / "events.db").exists()  # refused before anything was opened


def test_listen_refuses_event_types_for_a_jsonl_source(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text(lines(order(1)))

    db = tmp_path / "events.db"
    result = listen(
        str(source), "--handlers", "listen_handlers:HANDLERS", "--db", str(db), "--event", "x"
    )

    assert result.exit_code == 2
    assert "--event applies to an SSE URL" in result.output


def test_listen_refuses_a_source_that_is_neither_url_nor_file(tmp_path: Path) -> None:
    result = listen(str(tmp_path / "missing.jsonl"), "--handlers", "listen_handlers:HANDLERS")

    assert result.exit_code == 2
    assert "is not an http(s) URL, an existing file, or - for stdin" in result.output
