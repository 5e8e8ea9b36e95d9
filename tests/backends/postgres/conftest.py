"""Fixtures for the PostgreSQL backend's own tests: skipped with one line without a server."""

from __future__ import annotations

from collections.abc import Iterator

import pgtest
import pytest
from pgtest import fresh_schema, require_pg


@pytest.fixture(scope="session")
def pg_server() -> str:
    """The server's URL (the session is skipped, in one line, when it does not answer)."""
    return require_pg()


@pytest.fixture
def pg_db(pg_server: str) -> Iterator[str]:
    """A URL on a fresh, empty schema of its own, dropped after the test."""
    with fresh_schema(pg_server) as url:
        yield url


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Without a server, one summary line for all the PostgreSQL tests (pgtest.fold_skip)."""
    outcome = yield
    pgtest.fold_skip(outcome.get_result())  # type: ignore[attr-defined]
