"""events.trace_context: the W3C trace context of a traced put, carried to its handler's span.

Revision ID: 0002
Revises: 0001
Create Date: 2027-01-15
"""

from __future__ import annotations

import sqlite3

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def _has_column() -> bool:
    columns = sa.inspect(op.get_bind()).get_columns("events")
    return any(column["name"] == "trace_context" for column in columns)


def upgrade() -> None:
    # Idempotent: a run killed after the ALTER and before the version stamp is simply run again.
    if _has_column():
        return
    # A nullable column with no default: SQLite adds it in place (ALTER TABLE ... ADD COLUMN),
    # without rebuilding the table, so the upgrade is instant however many events it holds.
    with op.batch_alter_table("events") as batch:
        batch.add_column(sa.Column("trace_context", sa.Text(), nullable=True))


def downgrade() -> None:
    if not _has_column():
        return
    if sqlite3.sqlite_version_info >= (3, 35, 0):
        # Dropped in place: no table rebuild, and the views over `events` stay valid.
        op.execute("ALTER TABLE events DROP COLUMN trace_context")
        return
    # Older SQLite: batch mode rebuilds the table. Its final RENAME fails while views name
    # `events`, and its copy of an index loses a DESC column: views and indexes are set aside
    # and made again exactly as they were.
    found = op.get_bind().exec_driver_sql(
        "SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL AND "
        "((type = 'index' AND tbl_name = 'events') OR (type = 'view' AND sql LIKE '%events%'))"
    )
    saved = list(found)
    for kind, name, _ in saved:
        op.execute(f"DROP {kind.upper()} {name}")
    with op.batch_alter_table("events", recreate="always") as batch:
        batch.drop_column("trace_context")
    for _, _, sql in saved:
        op.execute(sql)
