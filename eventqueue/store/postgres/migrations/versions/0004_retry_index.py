"""ix_events_retrying: the events waiting for a retry, by when they come due, so the idle wait
(next_wakeup) no longer reads every pending row at a large backlog.

PostgreSQL only (the SQLite tree has no 0004 of this meaning). A partial index holding only
nacked events still waiting: small, and untouched by puts, claims and acks of other events.
CREATE INDEX (not CONCURRENTLY: alembic runs each revision in a transaction) blocks writes to
`events` while it reads the table once. Idempotent, so a rerun after a failure is safe.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "CREATE INDEX IF NOT EXISTS ix_events_retrying ON events (available_at)"
        " WHERE status = 'pending' AND available_at <> received_at"
    )


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS ix_events_retrying")
