"""The store contract: one `store` fixture per backend, and builders for what the store takes.

Every test in tests/contract/ talks to `eventqueue.store.base.Store` only, so a new backend
passes the suite unchanged. To add one, add ONE entry to `BACKENDS`: an async factory that
returns the `Config` of a fresh, empty database (or calls `unreachable(...)` to skip every
test of that backend with one clear line), and an async cleanup for it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import pgtest
import pytest

from eventqueue.core.config import Config
from eventqueue.core.models import Batch, Priority
from eventqueue.core.prepare import prepare_event
from eventqueue.core.priority import batch_key, classify
from eventqueue.core.records import NewEvent
from eventqueue.core.rules import ClaimRules, rules_from_config
from eventqueue.runtime.queue import EventQueue
from eventqueue.store import open_store
from eventqueue.store.base import Store

START = 1_700_000_000.0  # a realistic unix time; tests move it by passing a larger `now`


# Known store bug, shared by the tests that expose it (xfail strict: they flip when it is fixed).
# --- backends ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Backend:
    """How to give one test a fresh, empty database of this backend, and clean it up."""

    # (tmp_path) -> the Config of a new database; may call `unreachable` to skip.
    create: Callable[[Path], Awaitable[Config]]
    # Drop whatever `create` made (a no-op for files in tmp_path).
    cleanup: Callable[[Config], Awaitable[None]]


def unreachable(backend: str, why: str) -> NoReturn:
    """Skip every test of `backend` with one line (for a server that is not configured/up).

    Hook for server backends, e.g. in a PostgreSQL factory:
        url = os.environ.get("EVENT_TEST_PG_URL") or unreachable("postgresql", "EVENT_TEST_PG_URL not set")
    """
    pytest.skip(f"{backend} backend unreachable: {why}")


async def _sqlite_database(tmp_path: Path) -> Config:
    return Config(db_path=str(tmp_path / "events.db"))


async def _nothing_to_drop(config: Config) -> None:
    """The database lives in tmp_path, which pytest removes."""


async def _postgresql_database(tmp_path: Path) -> Config:
    """A fresh schema on EVENTQUEUE_TEST_PG_URL (skipped, in one line, when unreachable)."""
    url = pgtest.require_pg()
    schema = pgtest.new_schema_name()
    await pgtest.execute(url, f"CREATE SCHEMA {schema}")
    return Config(db_path=pgtest.with_schema(url, schema), spill_dir=str(tmp_path / "spill"))


async def _drop_postgresql_schema(config: Config) -> None:
    await pgtest.drop_schema_of(config.db_path)


BACKENDS: dict[str, Backend] = {
    "sqlite": Backend(create=_sqlite_database, cleanup=_nothing_to_drop),
    "postgresql": Backend(create=_postgresql_database, cleanup=_drop_postgresql_schema),
}


@pytest.fixture(params=list(BACKENDS))
async def backend_config(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Config]:
    """The Config of a fresh, empty database of each backend in turn."""
    backend = BACKENDS[request.param]
    config = await backend.create(tmp_path)
    yield config
    await backend.cleanup(config)


OpenStore = Callable[[], Awaitable[Store]]


@pytest.fixture
async def open_another(backend_config: Config) -> AsyncIterator[OpenStore]:
    """Open (another) store on the same database; every one is closed at teardown."""
    opened: list[Store] = []

    async def _open() -> Store:
        store = await open_store(backend_config, migrate=True)
        opened.append(store)
        return store

    yield _open
    for store in opened:
        await store.close()


@pytest.fixture
async def store(open_another: OpenStore) -> Store:
    """A store on a fresh, empty database of the backend under test."""
    return await open_another()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Without a server, one summary line for all the PostgreSQL tests (pgtest.fold_skip)."""
    outcome = yield
    pgtest.fold_skip(outcome.get_result())  # type: ignore[attr-defined]


# --- builders ---------------------------------------------------------------------------------

_LIMITS = Config()


def make_event(
    name: str = "thing",
    *,
    at: float = START,
    priority: Priority | int | str | None = None,
    aggregate_id: str = "a1",
    event_type: str = "entity_event",
    **attributes: Any,
) -> NewEvent:
    """A NewEvent as `EventQueue.prepare` builds it: canonical JSON, content hash, priority
    (the plan's classifier unless given), batch key `<name>-handler`, received `at`."""
    event = {
        "event_type": event_type,
        "event_name": name,
        "aggregate_id": aggregate_id,
        "attributes": attributes,
    }
    return prepare_event(
        event, priority, config=_LIMITS, classifier=classify, batch_key_fn=batch_key, now=at
    )


def many(name: str, n: int, *, at: float = START, **kwargs: Any) -> list[NewEvent]:
    """`n` distinct events of one batch key (they differ in attribute `i`)."""
    return [make_event(name, at=at, i=i, **kwargs) for i in range(n)]


def claim_rules(**overrides: Any) -> ClaimRules:
    """The default queue's claim rules (Config defaults), with `overrides`."""
    return dataclasses.replace(rules_from_config(Config()), **overrides)


# Immediate readiness: no batch window.
NOW_RULES = claim_rules(window_s=0.0)


async def put(
    store: Store, rows: Sequence[NewEvent], *, now: float = START, dedup_ttl_s: float | None = 300.0
) -> list[int]:
    """Put `rows` (with dedup by default) and return their ids, in order."""
    commit = await store.put(rows, now=now, dedup_ttl_s=dedup_ttl_s)
    return [event_id for _, event_id in commit.outcome]


async def claim(
    store: Store,
    *,
    now: float = START,
    rules: ClaimRules = NOW_RULES,
    batches: int = 1,
    consumer: str = "worker-1",
    token: str = "t1",
    **kwargs: Any,
) -> list[Batch]:
    """Claim with test defaults (immediate readiness, one batch)."""
    return await store.claim(
        now=now,
        consumer=consumer,
        token=token,
        batch_id=f"b-{token}",
        rules=rules,
        batches=batches,
        **kwargs,
    )


async def claim_one(store: Store, **kwargs: Any) -> Batch:
    """Claim exactly one batch (fails if none is ready)."""
    found = await claim(store, **kwargs)
    assert len(found) == 1, f"expected one ready batch, got {len(found)}"
    return found[0]


async def drain(
    store: Store, *, now: float = START, rules: ClaimRules = NOW_RULES
) -> list[list[int]]:
    """Claim and ack one batch at a time until nothing is ready: the ids of each, in order."""
    order = []
    for n in range(1000):
        found = await claim(store, now=now, rules=rules, token=f"drain-{n}")
        if not found:
            return order
        (batch,) = found
        order.append(batch.ids)
        await store.ack(batch.token, batch.ids, now=now)
    raise AssertionError("drain did not finish")


@pytest.fixture
async def queue(backend_config: Config) -> AsyncIterator[EventQueue]:
    """An EventQueue on a fresh database of the backend under test, ready at once (no batch
    window), for what the queue's own calls promise on every backend."""
    config = backend_config.replace(batch_window_ms=0, max_attempts=3)
    async with EventQueue.open(config=config, migrate=True) as opened:
        yield opened


async def snapshot(store: Store, ids: Sequence[int]) -> list[dict[str, Any] | None]:
    """Every column of these events, to prove that a refused call changed nothing."""
    return [await store.show(event_id) for event_id in ids]


async def status_of(store: Store, event_id: int) -> str:
    info = await store.show(event_id)
    assert info is not None, f"event {event_id} is missing"
    return str(info["status"])


__all__ = [
    "BACKENDS",
    "NOW_RULES",
    "START",
    "Backend",
    "OpenStore",
    "claim",
    "claim_one",
    "claim_rules",
    "drain",
    "make_event",
    "many",
    "put",
    "snapshot",
    "status_of",
    "unreachable",
]
