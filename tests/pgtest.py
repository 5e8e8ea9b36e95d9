"""PostgreSQL for the tests: where it is, whether it answers, and a fresh schema per test.

EVENTQUEUE_TEST_PG_URL names the server (default: the project machines' local one). When it
does not answer within 2 s, every PostgreSQL test is skipped with one line saying how to run
them. Each test gets its own schema (CREATE SCHEMA eq_t_<random>), selected by libpq's
`options=-csearch_path=...` in the URL, and dropped afterwards: tests are isolated and leave
nothing behind, and creating a schema costs milliseconds where a database costs much more.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import secrets
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar
from urllib.parse import quote, unquote

import pytest

URL_VARIABLE = "EVENTQUEUE_TEST_PG_URL"
DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"
CONNECT_TIMEOUT_S = 2.0
SCHEMA_PREFIX = "eq_t_"
T = TypeVar("T")


def pg_url() -> str:
    """The server the PostgreSQL tests use."""
    return os.environ.get(URL_VARIABLE) or DEFAULT_URL


def run_sync(make: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to completion on its own loop in a thread (usable inside async tests)."""
    result: list[Any] = []

    def target() -> None:
        try:
            result.append((True, asyncio.run(make())))  # type: ignore[arg-type]
        except BaseException as exc:
            result.append((False, exc))

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    ok, value = result[0]
    if not ok:
        raise value
    return value  # type: ignore[no-any-return]


@functools.cache
def unreachable_reason(url: str) -> str | None:
    """None when `url` answers within 2 s; else the one-line reason to skip."""
    import asyncpg

    async def probe() -> None:
        connection = await asyncpg.connect(url, timeout=CONNECT_TIMEOUT_S)
        await connection.close()

    try:
        run_sync(lambda: asyncio.wait_for(probe(), CONNECT_TIMEOUT_S + 0.5))
    except Exception:
        return (
            f"PostgreSQL not reachable at {url}: set {URL_VARIABLE} to a DSN to run the "
            "PostgreSQL tests"
        )
    return None


def fold_skip(report: pytest.TestReport) -> None:
    """Report every "not reachable" skip at this one place, so `-ra` folds them into one line.

    (pytest points a skip raised in a fixture at each test; conftests call this from their
    pytest_runtest_makereport hook wrapper.)
    """
    longrepr = report.longrepr
    if (
        report.skipped
        and isinstance(longrepr, tuple)
        and "PostgreSQL not reachable" in str(longrepr[2])
    ):
        report.longrepr = (__file__, _SKIP_LINE, longrepr[2])


def require_pg() -> str:
    """The server's URL, or skip the calling test with the one-line reason."""
    url = pg_url()
    reason = unreachable_reason(url)
    if reason is not None:
        pytest.skip(reason)  # reported at _SKIP_LINE
    return url


def with_schema(url: str, schema: str) -> str:
    """`url` with eventqueue (and everything else) in `schema` (libpq's options parameter)."""
    joiner = "&" if "?" in url else "?"
    return f"{url}{joiner}options={quote(f'-csearch_path={schema}', safe='')}"


async def execute(url: str, statement: str, *args: Any) -> list[Any]:
    """Run one statement on its own connection; its rows."""
    import asyncpg

    connection = await asyncpg.connect(url, timeout=CONNECT_TIMEOUT_S)
    try:
        return list(await connection.fetch(statement, *args))
    finally:
        await connection.close()


def new_schema_name() -> str:
    """A schema name no other test uses."""
    return f"{SCHEMA_PREFIX}{secrets.token_hex(6)}"


async def drop_schema_of(url: str) -> None:
    """Drop the test schema that `url` (made by `with_schema`) selects, with all in it."""
    schema = unquote(url.rsplit("search_path%3D", 1)[1])
    if not schema.startswith(SCHEMA_PREFIX):
        raise ValueError(f"not a test schema: {schema!r}")
    base = url.rsplit("?options=", 1)[0].rsplit("&options=", 1)[0]
    await execute(base, f"DROP SCHEMA IF EXISTS {schema} CASCADE")


@contextlib.contextmanager
def fresh_schema(url: str) -> Iterator[str]:
    """A new empty schema for one test: its URL; dropped with everything in it afterwards."""
    schema = new_schema_name()
    run_sync(lambda: execute(url, f"CREATE SCHEMA {schema}"))
    try:
        yield with_schema(url, schema)
    finally:
        run_sync(lambda: execute(url, f"DROP SCHEMA {schema} CASCADE"))


# Where require_pg calls pytest.skip: the one location every such skip is reported at.
_SKIP_LINE = require_pg.__code__.co_firstlineno + 5
