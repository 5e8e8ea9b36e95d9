"""Initial schema on PostgreSQL: events, positions, counters, settings, debugging views.

The same revision number as the SQLite tree's 0001: one schema version, one dialect each.

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# A migration is a frozen snapshot: the view texts are copied here, not imported.
_NOW = "date_part('epoch', now())"
_PRIORITY_NAME = (
    "CASE priority WHEN 4 THEN 'CRITICAL' WHEN 3 THEN 'HIGH' WHEN 2 THEN 'NORMAL' ELSE 'LOW' END"
)
_EVENT_NAME = (
    "CASE WHEN strpos(payload, '\\u0000') > 0 THEN NULL ELSE payload::json ->> 'event_name' END"
)
VIEWS = {
    "eq_overview": f"""
        SELECT status, {_PRIORITY_NAME} AS priority, batch_key, count(*) AS events,
               round(({_NOW} - min(received_at))::numeric, 3) AS oldest_age_s,
               sum(duplicates) AS duplicates
        FROM events GROUP BY status, events.priority, batch_key
    """,
    "eq_ready_batches": f"""
        SELECT batch_key, count(*) AS pending, max(priority) AS top_priority,
               round(({_NOW} - min(received_at))::numeric, 3) AS oldest_age_s,
               (count(*) >= (SELECT value FROM settings WHERE name = 'max_batch_size')::integer
                OR max(priority) = 4
                OR ({_NOW} - min(received_at)) * 1000.0
                   >= (SELECT value FROM settings WHERE name = 'batch_window_ms')::double precision
                OR (SELECT value FROM settings WHERE name = 'enable_batching') = 'false'
               ) AS ready
        FROM events WHERE status = 'pending' AND available_at <= {_NOW}
        GROUP BY batch_key
    """,
    "eq_dead_letters": f"""
        SELECT id, {_EVENT_NAME} AS event_name, {_PRIORITY_NAME} AS priority,
               attempts, last_error,
               to_char(to_timestamp(finished_at) AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS')
                   AS died_at,
               payload
        FROM events WHERE status = 'dead'
    """,
    "eq_claimed": f"""
        SELECT batch_id, lease_owner, batch_key, count(*) AS events,
               round((min(lease_expires_at) - {_NOW})::numeric, 3) AS lease_left_s,
               max(attempts) AS attempts
        FROM events WHERE status = 'claimed' GROUP BY batch_id, lease_owner, batch_key
    """,
}


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("batch_key", sa.Text(), nullable=False),
        sa.Column("content_hash", sa.Text(), nullable=False),
        sa.Column("dedup_key", sa.Text(), nullable=True),
        sa.Column("status", sa.Text(), server_default="pending", nullable=False),
        sa.Column("received_at", sa.Float(), nullable=False),
        sa.Column("available_at", sa.Float(), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("lease_owner", sa.Text(), nullable=True),
        sa.Column("lease_token", sa.Text(), nullable=True),
        sa.Column("lease_expires_at", sa.Float(), nullable=True),
        sa.Column("batch_id", sa.Text(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("duplicates", sa.Integer(), server_default="0", nullable=False),
        sa.Column("finished_at", sa.Float(), nullable=True),
        sa.CheckConstraint(
            "status IN ('pending', 'claimed', 'done', 'dead')", name=op.f("ck_events_status")
        ),
        sa.CheckConstraint("priority BETWEEN 1 AND 4", name=op.f("ck_events_priority")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_events")),
        sa.UniqueConstraint("dedup_key", name=op.f("uq_events_dedup_key")),
    )
    op.create_index(
        "ix_events_pending",
        "events",
        ["batch_key", sa.text("priority DESC"), "received_at", "id", "available_at"],
        postgresql_where=sa.text("status = 'pending'"),
    )
    op.create_index(
        "ix_events_claimed",
        "events",
        ["lease_expires_at"],
        postgresql_where=sa.text("status = 'claimed'"),
    )
    for name, status in (("ix_events_done", "done"), ("ix_events_dead", "dead")):
        op.create_index(
            name, "events", ["finished_at"], postgresql_where=sa.text(f"status = '{status}'")
        )
    op.create_table(
        "source_positions",
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("position", sa.Text(), nullable=True),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("source", name=op.f("pk_source_positions")),
    )
    op.create_table(
        "spill_positions",
        sa.Column("log", sa.Text(), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("segment", sa.BigInteger(), nullable=False),
        sa.Column("offset", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("log", "priority", name=op.f("pk_spill_positions")),
    )
    op.create_table(
        "counters",
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("value", sa.BigInteger(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_counters")),
    )
    op.create_table(
        "settings",
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_settings")),
    )
    for name, body in VIEWS.items():
        op.execute(f"CREATE VIEW {name} AS {body}")


def downgrade() -> None:
    for name in VIEWS:
        op.execute(f"DROP VIEW IF EXISTS {name}")
    for table in ("settings", "counters", "spill_positions", "source_positions", "events"):
        op.drop_table(table, if_exists=True)
