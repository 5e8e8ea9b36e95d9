"""`eventqueue top` (issue 13): a few refreshes on a real database, through the command, then
the checks that it is read-only and holds nothing open between refreshes."""

from __future__ import annotations

import asyncio
import contextlib
import io
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from rich.console import Console

from eventqueue import EventQueue
from eventqueue.tools import cli
from eventqueue.tools.top import run_top


async def fill(path: str) -> None:
    """Pending, claimed, done, dead and spilled events, as a busy listener leaves them."""
    async with EventQueue.open(path, batch_window_ms=0, max_attempts=1, queue_size=30) as q:
        await q.put_many([{"event_name": f"job_{i % 3}", "aggregate_id": i} for i in range(40)])
        await q.put({"event_name": "payment_failed", "aggregate_id": 1})  # CRITICAL
        await q.put({"event_name": "job_0", "aggregate_id": 0})  # a duplicate
        for finish in ("ack", "nack", None):
            batch = await q.claim()
            assert batch is not None
            if finish == "ack":
                await q.ack(batch)
            elif finish == "nack":
                await q.nack(batch, "boom: the handler failed")


@pytest.fixture
def busy_db(tmp_path: Path) -> str:
    path = str(tmp_path / "events.db")
    asyncio.run(fill(path))
    return path


def checksum(path: str) -> Any:
    with contextlib.closing(sqlite3.connect(path)) as connection:
        return connection.execute("SELECT * FROM events ORDER BY id").fetchall()


def test_top_refreshes_three_times_and_exits_cleanly(busy_db: str) -> None:
    before = checksum(busy_db)

    result = CliRunner().invoke(
        cli.main,
        ["top", "--db", busy_db, "--iterations", "3", "--interval", "0.1"],
        env={"COLUMNS": "160"},  # rich's width when not on a terminal
    )

    assert result.exit_code == 0, result.output
    out = result.output
    assert "refresh 3 (every 0.1 s" in out
    for section in (
        "depth",
        "keys (busiest",
        "rates",
        "receipt to ack",
        "dead letters: ",
        "spill:",
    ):
        assert section in out, section
    assert "job_1-handler" in out and "CRITICAL" in out
    assert "boom: the handler failed" in out
    assert "over the last" in out  # rates from the second refresh on
    assert checksum(busy_db) == before  # read-only


def test_top_holds_no_transaction_between_refreshes(busy_db: str) -> None:
    checkpoints: list[tuple[int, int, int]] = []

    def between_refreshes(seconds: float) -> None:
        # A write, then a full checkpoint: it completes only if no reader still holds a
        # snapshot from before the write (a pinned WAL).
        with contextlib.closing(sqlite3.connect(busy_db, timeout=0)) as connection:
            connection.execute("INSERT OR REPLACE INTO settings VALUES ('top_test', ?)", (seconds,))
            connection.commit()
            checkpoints.append(connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone())

    screen = Console(file=io.StringIO(), width=140)
    refreshes = run_top(
        busy_db, interval_s=0.1, iterations=3, console=screen, sleep=between_refreshes
    )

    assert refreshes == 3
    assert len(checkpoints) == 2
    assert all(busy == 0 and log == done for busy, log, done in checkpoints), checkpoints
    assert "refresh 3" in screen.file.getvalue()  # type: ignore[attr-defined]


async def fill_many_keys(path: str) -> None:
    """Forty busy keys and a dead letter with a long error, on top of `fill`."""
    await fill(path)
    async with EventQueue.open(path, batch_window_ms=0, max_attempts=1) as q:
        await q.put_many([{"event_name": f"key_{k:02d}", "aggregate_id": k} for k in range(40)])
        await q.put({"event_name": "order_placed", "aggregate_id": "x"})
        batch = await q.claim()
        assert batch is not None
        await q.nack(batch, "a very long error message " * 10)


def test_top_fits_an_80_by_24_terminal_with_every_section(tmp_path: Path) -> None:
    path = str(tmp_path / "events.db")
    asyncio.run(fill_many_keys(path))
    screen = Console(file=io.StringIO(), width=80, height=24)

    run_top(path, interval_s=0.1, iterations=2, console=screen, sleep=lambda _: None)

    lines = screen.file.getvalue().splitlines()  # type: ignore[attr-defined]
    assert len(lines) <= 24, "\n".join(lines)
    assert all(len(line) <= 80 for line in lines)
    text = "\n".join(lines)
    for shown in (
        "CRITICAL", "LOW", "total",  # depth by priority
        "p50", "p99", "acked",  # latency
        "rates/s over the last",
        "dead letters: ", "a very long error message",
        "spill: ",
        "keys (busiest",
    ):  # fmt: skip
        assert shown in text, shown


def test_top_on_a_missing_database_says_so(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli.main, ["top", "--db", str(tmp_path / "nope.db"), "--iterations", "1"]
    )

    assert result.exit_code == 2
    assert "nope.db" in result.output
