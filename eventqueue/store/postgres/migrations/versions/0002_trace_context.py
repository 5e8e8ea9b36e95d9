"""events.trace_context: the W3C trace context of a traced put, carried to its handler's span.

The same revision number as the SQLite tree's 0002. A nullable column without a default:
PostgreSQL adds it without rewriting the table. Idempotent, so a rerun after a failure is safe.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE events ADD COLUMN IF NOT EXISTS trace_context text")


def downgrade() -> None:
    op.execute("ALTER TABLE events DROP COLUMN IF EXISTS trace_context")
