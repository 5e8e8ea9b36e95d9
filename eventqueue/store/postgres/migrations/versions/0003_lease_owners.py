"""owners and events.lease_holder: leases name the queue holding them, so the leases of a queue
whose process or host is gone go back at once instead of at their expiry.

The same revision number as the SQLite tree's 0003. A nullable column without a default:
PostgreSQL adds it without rewriting the table. Idempotent, so a rerun after a failure is safe.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE IF NOT EXISTS owners (
            owner text NOT NULL,
            host text NOT NULL,
            pid bigint NOT NULL,
            pid_space text NOT NULL,
            process_start bigint,
            started_at double precision NOT NULL,
            heartbeat_at double precision NOT NULL,
            heartbeat_s double precision NOT NULL,
            CONSTRAINT pk_owners PRIMARY KEY (owner)
        )
        """
    )
    op.execute("ALTER TABLE events ADD COLUMN IF NOT EXISTS lease_holder text")


def downgrade() -> None:
    op.execute("ALTER TABLE events DROP COLUMN IF EXISTS lease_holder")
    op.execute("DROP TABLE IF EXISTS owners")
