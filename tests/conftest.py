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

START = 1_700_000_000.0  # a realistic unix time, so the SQL views show sensible ages


class FakeClock:
    """A wall clock that only moves when told to: `clock.advance(seconds)`."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


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
