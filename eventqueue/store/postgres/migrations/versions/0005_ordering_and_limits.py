"""Ordering groups and key limits: events.ordering_key, the status 'held', the statement
triggers that keep one event per group leasable, and the key_limits table.

The same meaning as the SQLite tree's 0004. The column is added without a rewrite; the
status CHECK is replaced by one that also allows 'held' (one read of the table to validate
it); the two indexes are built with a plain CREATE INDEX (alembic runs each revision in a
transaction), blocking writes to `events` while they read it: on a large table, migrate at a
quiet moment. Idempotent, so a rerun after a failure is safe.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06
"""

from __future__ import annotations

from alembic import op

from eventqueue.store.postgres.schema import ORDERING_DDL, VIEWS

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_CHECK = "ALTER TABLE events ADD CONSTRAINT ck_events_status CHECK (status IN ({}))"
_WITH_HELD = "'pending', 'held', 'claimed', 'done', 'dead'"
_WITHOUT_HELD = "'pending', 'claimed', 'done', 'dead'"


def upgrade() -> None:
    op.execute("ALTER TABLE events ADD COLUMN IF NOT EXISTS ordering_key text")
    op.execute("ALTER TABLE events DROP CONSTRAINT IF EXISTS ck_events_status")
    op.execute(_CHECK.format(_WITH_HELD))
    op.execute(
        "CREATE INDEX IF NOT EXISTS ix_events_ordering ON events"
        " (ordering_key, status, received_at, id) WHERE ordering_key IS NOT NULL"
    )
    op.execute("CREATE INDEX IF NOT EXISTS ix_events_held ON events (id) WHERE status = 'held'")
    op.execute(
        """
        CREATE TABLE IF NOT EXISTS key_limits (
            batch_key text NOT NULL,
            tokens double precision,
            refilled_at double precision,
            ready_at double precision,
            held_back bigint DEFAULT '0' NOT NULL,
            CONSTRAINT pk_key_limits PRIMARY KEY (batch_key)
        )
        """
    )
    op.execute("CREATE INDEX IF NOT EXISTS ix_key_limits_ready_at ON key_limits (ready_at)")
    for ddl in ORDERING_DDL:
        op.execute(ddl)
    for name in ("eq_dead_letters", "eq_ordering_groups"):
        op.execute(f"DROP VIEW IF EXISTS {name}")
        op.execute(f"CREATE VIEW {name} AS {VIEWS[name]}")


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS eq_ordering_put ON events")
    op.execute("DROP TRIGGER IF EXISTS eq_ordering_settle ON events")
    op.execute("DROP FUNCTION IF EXISTS eq_order_groups()")
    op.execute("DROP VIEW IF EXISTS eq_ordering_groups")
    op.execute("DROP VIEW IF EXISTS eq_dead_letters")
    op.execute(
        "CREATE VIEW eq_dead_letters AS SELECT id, CASE WHEN strpos(payload, '\\u0000') > 0 "
        "THEN NULL ELSE payload::json ->> 'event_name' END AS event_name, CASE priority "
        "WHEN 4 THEN 'CRITICAL' WHEN 3 THEN 'HIGH' WHEN 2 THEN 'NORMAL' ELSE 'LOW' END AS "
        "priority, attempts, last_error, to_char(to_timestamp(finished_at) AT TIME ZONE 'UTC', "
        "'YYYY-MM-DD HH24:MI:SS') AS died_at, payload FROM events WHERE status = 'dead'"
    )
    op.execute("DROP TABLE IF EXISTS key_limits")
    op.execute("DROP INDEX IF EXISTS ix_events_held")
    op.execute("DROP INDEX IF EXISTS ix_events_ordering")
    # Held events lose their group (the column goes): they wait as plain pending events.
    op.execute("UPDATE events SET status = 'pending' WHERE status = 'held'")
    op.execute("ALTER TABLE events DROP CONSTRAINT IF EXISTS ck_events_status")
    op.execute(_CHECK.format(_WITHOUT_HELD))
    op.execute("ALTER TABLE events DROP COLUMN IF EXISTS ordering_key")
