"""Alembic environment for eventqueue: its own version table, batch mode, no autobegin surprises."""

from __future__ import annotations

import os

from alembic import context

from eventqueue.store.sqlite.migrations import VERSION_TABLE
from eventqueue.store.sqlite.pragmas import make_migration_engine
from eventqueue.store.sqlite.schema import metadata

config = context.config


def _include_object(
    obj: object, name: str | None, type_: str, reflected: bool, compare_to: object
) -> bool:
    # Share a database with a host application: never touch tables eventqueue does not own.
    return not (type_ == "table" and reflected and compare_to is None)


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is None:
        url = config.get_main_option("sqlalchemy.url") or ""
        path = os.environ.get("EVENT_DB_PATH") or url.removeprefix("sqlite:///")
        engine = make_migration_engine(path, busy_timeout_ms=5000)
        with engine.connect() as connection:
            _run(connection)
        engine.dispose()
    else:
        _run(connection)


def _run(connection: object) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        render_as_batch=True,  # SQLite cannot ALTER most things; batch mode rebuilds tables (F9)
        include_object=_include_object,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("eventqueue migrations run online only: `eventqueue migrate --db PATH`")
run_migrations_online()
