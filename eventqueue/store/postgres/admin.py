"""What only the PostgreSQL backend has: vacuum, backup (pg_dump's job) and the read-only SQL
console. Each call opens one connection, works briefly and closes it.

The console runs one statement in a READ ONLY transaction (writes, DDL, nextval, NOTIFY and
row locks are refused by the server itself), bounded by a statement timeout, under the
predefined role pg_read_all_data when the connecting role may take it (so a superuser's
session loses its server-file and admin functions), and only statements that start as a query
does. For untrusted hands, give `eventqueue sql` a URL whose role has SELECT and nothing else.
"""

from __future__ import annotations

import asyncio
import datetime
import decimal
import math
import re
import shlex
import uuid
from typing import Any, TypedDict
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import asyncpg

from eventqueue.core.config import Config
from eventqueue.core.errors import QueryError, SchemaError
from eventqueue.core.records import schema_problem
from eventqueue.store.postgres.connection import connect, display_name
from eventqueue.store.postgres.errors import storage_error
from eventqueue.store.postgres.schema_state import read_status
from eventqueue.store.postgres.urls import url_schema

STATEMENT_TIMEOUT_MS = 60_000
# A query starts with one of these; anything else is refused before it reaches the server.
_QUERY_WORDS = frozenset({"select", "with", "values", "table", "show", "explain"})
# Functions that reach outside the database or change the session's role or settings, refused
# by name (the read-only transaction already refuses every write).
_DENIED = re.compile(
    r"\b(set_config|pg_read_file|pg_read_binary_file|pg_ls_\w+|pg_stat_file|lo_\w+|dblink\w*"
    r"|pg_terminate_backend|pg_cancel_backend|pg_reload_conf|pg_rotate_logfile|pg_promote"
    r"|query_to_xml\w*|pg_switch_wal|pg_create_\w+|pg_drop_\w+)\b|\bu&",
    re.IGNORECASE,
)
_TABLES = ("events", "source_positions", "spill_positions", "counters", "settings")


class VacuumResult(TypedDict):
    vacuumed: list[str]
    freed_pages: int
    checkpoint_busy: bool
    wal_frames: int
    checkpointed_frames: int


class SqlResult(TypedDict):
    columns: list[str]
    rows: list[list[Any]]
    truncated: bool


def vacuum(config: Config) -> VacuumResult:
    """VACUUM (ANALYZE) eventqueue's tables (autovacuum does this too; this does it now)."""

    async def run() -> VacuumResult:
        connection = await _open(config)
        try:
            for table in _TABLES:
                await connection.execute(f"VACUUM (ANALYZE) {table}")
        except asyncpg.PostgresError as exc:
            raise storage_error(display_name(config.db_path), exc) from exc
        finally:
            await connection.close()
        # The SQLite-only fields stay zero: PostgreSQL has no WAL checkpoint to report here.
        return VacuumResult(
            vacuumed=list(_TABLES),
            freed_pages=0,
            checkpoint_busy=False,
            wal_frames=0,
            checkpointed_frames=0,
        )

    return asyncio.run(run())


def compact(config: Config) -> int:
    """Nothing to hand back after a purge: autovacuum reuses the space (0 pages)."""
    return 0


class BackupAdvice(TypedDict):
    source: str
    path: str
    copied: bool
    command: str


def backup(config: Config, destination: str, *, force: bool = False) -> BackupAdvice:
    """Nothing copied: the pg_dump command that backs the schema up (a server database is
    pg_dump's job, with the server's own consistency and credentials); `copied` says so."""
    return BackupAdvice(
        source=display_name(config.db_path),
        path=destination,
        copied=False,
        command=pg_dump_command(config.db_path, destination),
    )


def pg_dump_command(dsn: str, destination: str) -> str:
    """The pg_dump command line that backs up eventqueue's schema of `dsn` to `destination`."""
    schema = url_schema(dsn)
    parts = urlsplit(dsn)
    # pg_dump reads libpq's URL: eventqueue's schema= is not one of its parameters, and the
    # schema is given as --schema instead of a search_path.
    query = [(k, v) for k, v in parse_qsl(parts.query) if k not in ("options", "schema")]
    url = urlunsplit(parts._replace(query=urlencode(query, quote_via=quote)))
    if parts.password is not None:
        url = display_name(url).replace(":***@", "@")  # give the password through PGPASSWORD
    words = ["pg_dump", "--format=custom", f"--file={destination}"]
    if schema:
        words.append(f"--schema={schema}")
    return " ".join(shlex.quote(w) for w in [*words, url])


def sql(config: Config, query: str, *, max_rows: int = 1000) -> SqlResult:
    """Run one read-only statement; anything else is refused (nothing is changed)."""
    _check_query(query)
    return asyncio.run(_run_sql(config, query, max_rows))


def _check_query(query: str) -> None:
    words = re.findall(r"[A-Za-z_]+", query.lstrip(" \t\r\n("))
    first = words[0].lower() if words else ""
    if first not in _QUERY_WORDS:
        raise QueryError(
            f"refused: {first.upper() or 'an empty statement'} is not allowed; `eventqueue sql` "
            "runs one read-only query (SELECT, WITH, VALUES, TABLE, SHOW or EXPLAIN); nothing "
            "was run"
        )
    denied = _DENIED.search(query)
    if denied:
        raise QueryError(
            f"refused: {denied[0]} is not allowed in `eventqueue sql` (it reaches outside the "
            "database or changes the session); nothing was run"
        )


async def _run_sql(config: Config, query: str, max_rows: int) -> SqlResult:
    connection = await _open(
        config,
        default_transaction_read_only="on",
        statement_timeout=f"{STATEMENT_TIMEOUT_MS}ms",
    )
    try:
        async with connection.transaction(isolation="repeatable_read", readonly=True):
            await _drop_privileges(connection)
            statement = await connection.prepare(query)
            cursor = await statement.cursor()
            rows = await cursor.fetch(max_rows + 1)
            columns = [attribute.name for attribute in statement.get_attributes()]
    except asyncpg.PostgresError as exc:
        raise _query_error(exc) from exc
    finally:
        await connection.close()
    cells = [[_cell(v) for v in row] for row in rows[:max_rows]]
    return SqlResult(columns=columns, rows=cells, truncated=len(rows) > max_rows)


async def _drop_privileges(connection: asyncpg.Connection) -> None:
    # A superuser (or a member) reads as pg_read_all_data: every table, no admin functions.
    if await connection.fetchval("SELECT pg_has_role(current_user, 'pg_read_all_data', 'MEMBER')"):
        await connection.execute("SET LOCAL ROLE pg_read_all_data")


def _query_error(exc: asyncpg.PostgresError) -> QueryError:
    state = getattr(exc, "sqlstate", "") or ""
    if state in ("25006", "42501") or "multiple commands" in str(exc):
        return QueryError(
            f"refused: {exc}; `eventqueue sql` runs one read-only query; nothing was changed"
        )
    if state == "57014":
        return QueryError(f"query cancelled after {STATEMENT_TIMEOUT_MS // 1000} s: {exc}")
    return QueryError(f"query failed: {exc}")


async def _open(config: Config, **settings: str) -> asyncpg.Connection:
    status = await read_status(config.db_path, timeout_s=config.busy_timeout_ms / 1000.0)
    if status["state"] != "current":
        raise SchemaError(schema_problem(status))
    return await connect(config.db_path, timeout_s=config.busy_timeout_ms / 1000.0, **settings)


def _cell(value: Any) -> Any:
    """A JSON-ready cell."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, decimal.Decimal):
        return float(value) if value.is_finite() else str(value)
    if isinstance(value, datetime.date | datetime.time | datetime.timedelta | uuid.UUID):
        return str(value)
    if isinstance(value, list | tuple):
        return [_cell(v) for v in value]
    if isinstance(value, asyncpg.Record):
        return [_cell(v) for v in value.values()]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


__all__ = ["backup", "compact", "pg_dump_command", "sql", "vacuum"]
