"""Coalescing and the sliding dedup window: events.coalesce_key, events.superseded,
events.dedup_at, the index ix_events_coalesce, the table superseded_keys, and the views with
their new columns (coalesce_key, superseded). On top of 0005 (ordering): the views keep its
ordering_key column, the downgrade restores 0005's views, and ix_events_coalesce covers held
events too (with ordering, a group's last event, a coalescing put's target, is usually held).

The same meaning as the SQLite tree's 0005. Columns without a volatile default: PostgreSQL adds
them without rewriting the table. CREATE INDEX (not CONCURRENTLY: alembic runs each revision in
a transaction) reads the table once. Idempotent, so a rerun after a failure is safe.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06

"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# A migration is a frozen snapshot: the view texts are copied here, not imported.
VIEWS = {
    "eq_overview": "\n        SELECT status, CASE priority WHEN 4 THEN 'CRITICAL' WHEN 3 THEN 'HIGH' WHEN 2 THEN 'NORMAL' ELSE 'LOW' END AS priority, batch_key, count(*) AS events,\n               round((date_part('epoch', now()) - min(received_at))::numeric, 3) AS oldest_age_s,\n               sum(duplicates) AS duplicates, sum(superseded) AS superseded\n        FROM events GROUP BY status, events.priority, batch_key\n    ",
    "eq_ready_batches": "\n        SELECT batch_key, count(*) AS pending, max(priority) AS top_priority,\n               round((date_part('epoch', now()) - min(received_at))::numeric, 3) AS oldest_age_s,\n               (count(*) >= (SELECT value FROM settings WHERE name = 'max_batch_size')::integer\n                OR max(priority) = 4\n                OR (date_part('epoch', now()) - min(received_at)) * 1000.0\n                   >= (SELECT value FROM settings WHERE name = 'batch_window_ms')::double precision\n                OR (SELECT value FROM settings WHERE name = 'enable_batching') = 'false'\n               ) AS ready,\n               count(coalesce_key) AS coalesce_keys, sum(superseded) AS superseded\n        FROM events WHERE status = 'pending' AND available_at <= date_part('epoch', now())\n        GROUP BY batch_key\n    ",
    "eq_dead_letters": "\n        SELECT id, CASE WHEN strpos(payload, '\\u0000') > 0 THEN NULL ELSE payload::json ->> 'event_name' END AS event_name, CASE priority WHEN 4 THEN 'CRITICAL' WHEN 3 THEN 'HIGH' WHEN 2 THEN 'NORMAL' ELSE 'LOW' END AS priority,\n               attempts, last_error,\n               to_char(to_timestamp(finished_at) AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS')\n                   AS died_at,\n               coalesce_key, superseded, payload, ordering_key\n        FROM events WHERE status = 'dead'\n    ",
    "eq_claimed": "\n        SELECT batch_id, lease_owner, batch_key, count(*) AS events,\n               round((min(lease_expires_at) - date_part('epoch', now()))::numeric, 3) AS lease_left_s,\n               max(attempts) AS attempts\n        FROM events WHERE status = 'claimed' GROUP BY batch_id, lease_owner, batch_key\n    ",
}
OLD_VIEWS = {
    "eq_overview": "\n        SELECT status, CASE priority WHEN 4 THEN 'CRITICAL' WHEN 3 THEN 'HIGH' WHEN 2 THEN 'NORMAL' ELSE 'LOW' END AS priority, batch_key, count(*) AS events,\n               round((date_part('epoch', now()) - min(received_at))::numeric, 3) AS oldest_age_s,\n               sum(duplicates) AS duplicates\n        FROM events GROUP BY status, events.priority, batch_key\n    ",
    "eq_ready_batches": "\n        SELECT batch_key, count(*) AS pending, max(priority) AS top_priority,\n               round((date_part('epoch', now()) - min(received_at))::numeric, 3) AS oldest_age_s,\n               (count(*) >= (SELECT value FROM settings WHERE name = 'max_batch_size')::integer\n                OR max(priority) = 4\n                OR (date_part('epoch', now()) - min(received_at)) * 1000.0\n                   >= (SELECT value FROM settings WHERE name = 'batch_window_ms')::double precision\n                OR (SELECT value FROM settings WHERE name = 'enable_batching') = 'false'\n               ) AS ready\n        FROM events WHERE status = 'pending' AND available_at <= date_part('epoch', now())\n        GROUP BY batch_key\n    ",
    "eq_dead_letters": "\n        SELECT id, CASE WHEN strpos(payload, '\\u0000') > 0 THEN NULL ELSE payload::json ->> 'event_name' END AS event_name, CASE priority WHEN 4 THEN 'CRITICAL' WHEN 3 THEN 'HIGH' WHEN 2 THEN 'NORMAL' ELSE 'LOW' END AS priority,\n               attempts, last_error,\n               to_char(to_timestamp(finished_at) AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS')\n                   AS died_at,\n               payload, ordering_key\n        FROM events WHERE status = 'dead'\n    ",
    "eq_claimed": "\n        SELECT batch_id, lease_owner, batch_key, count(*) AS events,\n               round((min(lease_expires_at) - date_part('epoch', now()))::numeric, 3) AS lease_left_s,\n               max(attempts) AS attempts\n        FROM events WHERE status = 'claimed' GROUP BY batch_id, lease_owner, batch_key\n    ",
}


def _set_views(views: dict[str, str]) -> None:
    for name, body in views.items():
        # Dropped first: CREATE OR REPLACE VIEW cannot insert columns before existing ones.
        op.execute(f"DROP VIEW IF EXISTS {name}")
        op.execute(f"CREATE VIEW {name} AS {body}")


def upgrade() -> None:
    op.execute("ALTER TABLE events ADD COLUMN IF NOT EXISTS coalesce_key text")
    op.execute("ALTER TABLE events ADD COLUMN IF NOT EXISTS superseded integer DEFAULT 0 NOT NULL")
    op.execute("ALTER TABLE events ADD COLUMN IF NOT EXISTS dedup_at double precision")
    op.execute(
        "CREATE INDEX IF NOT EXISTS ix_events_coalesce ON events (coalesce_key, batch_key)"
        " WHERE status IN ('pending', 'held') AND coalesce_key IS NOT NULL"
    )
    op.execute(
        "CREATE TABLE IF NOT EXISTS superseded_keys (dedup_key text NOT NULL, event_id bigint"
        " NOT NULL, dedup_at double precision NOT NULL,"
        " CONSTRAINT pk_superseded_keys PRIMARY KEY (dedup_key))"
    )
    _set_views(VIEWS)


def downgrade() -> None:
    for name in VIEWS:
        op.execute(f"DROP VIEW IF EXISTS {name}")
    op.execute("DROP INDEX IF EXISTS ix_events_coalesce")
    op.execute("DROP TABLE IF EXISTS superseded_keys")
    for column in ("coalesce_key", "superseded", "dedup_at"):
        op.execute(f"ALTER TABLE events DROP COLUMN IF EXISTS {column}")
    _set_views(OLD_VIEWS)
