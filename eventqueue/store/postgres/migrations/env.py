"""Alembic environment for eventqueue on PostgreSQL: its own version table, one transaction.

eventqueue runs these through store/postgres/migrations.py, which hands over a connection that
already holds the migration lock; `alembic` on the command line is not needed.
"""

from __future__ import annotations

from typing import Any

from alembic import context

from eventqueue.store.postgres.migrator import VERSION_TABLE
from eventqueue.store.postgres.schema import metadata

config = context.config


def _include_object(
    obj: object, name: str | None, type_: str, reflected: bool, compare_to: object
) -> bool:
    # Share a database with a host application: never touch tables eventqueue does not own.
    return not (type_ == "table" and reflected and compare_to is None)


def _run(connection: Any) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        include_object=_include_object,
        transaction_per_migration=False,  # PostgreSQL DDL is transactional: all or nothing
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("eventqueue migrations run online only: `eventqueue migrate --db URL`")
connection = config.attributes.get("connection")
if connection is None:
    raise SystemExit("eventqueue migrations run through `eventqueue migrate --db URL`")
_run(connection)
