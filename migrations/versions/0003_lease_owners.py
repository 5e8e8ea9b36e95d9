"""owners and events.lease_holder: leases name the queue holding them, so the leases of a queue
whose process is gone go back at once instead of at their expiry.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlite3

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def _has_column() -> bool:
    columns = sa.inspect(op.get_bind()).get_columns("events")
    return any(column["name"] == "lease_holder" for column in columns)


def upgrade() -> None:
    # Idempotent: a run killed between two steps and the version stamp is simply run again.
    op.create_table(
        "owners",
        sa.Column("owner", sa.Text(), nullable=False),
        sa.Column("host", sa.Text(), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("pid_space", sa.Text(), nullable=False),
        sa.Column("process_start", sa.Integer(), nullable=True),
        sa.Column("started_at", sa.Float(), nullable=False),
        sa.Column("heartbeat_at", sa.Float(), nullable=False),
        sa.Column("heartbeat_s", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("owner", name=op.f("pk_owners")),
        if_not_exists=True,
    )
    if _has_column():
        return
    # A nullable column with no default: added in place (ALTER TABLE ... ADD COLUMN), without
    # rebuilding the table, so the upgrade is instant however many events it holds.
    with op.batch_alter_table("events") as batch:
        batch.add_column(sa.Column("lease_holder", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_table("owners", if_exists=True)
    if not _has_column():
        return
    if sqlite3.sqlite_version_info >= (3, 35, 0):
        # Dropped in place: no table rebuild, and the views over `events` stay valid.
        op.execute("ALTER TABLE events DROP COLUMN lease_holder")
        return
    # Older SQLite: batch mode rebuilds the table. Its final RENAME fails while views name
    # `events`, and its copy of an index loses a DESC column: views and indexes are set aside
    # and made again exactly as they were (as in 0002).
    found = op.get_bind().exec_driver_sql(
        "SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL AND "
        "((type = 'index' AND tbl_name = 'events') OR (type = 'view' AND sql LIKE '%events%'))"
    )
    saved = list(found)
    for kind, name, _ in saved:
        op.execute(f"DROP {kind.upper()} {name}")
    with op.batch_alter_table("events", recreate="always") as batch:
        batch.drop_column("lease_holder")
    for _, _, sql in saved:
        op.execute(sql)
