"""Coalescing and the sliding dedup window: events.coalesce_key, events.superseded,
events.dedup_at, the index ix_events_coalesce, the table superseded_keys, and the views with
their new columns (coalesce_key, superseded). On top of 0004 (ordering): the views keep its
ordering_key column, the downgrade restores 0004's views, and ix_events_coalesce covers held
events too (with ordering, a group's last event, a coalescing put's target, is usually held).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06

"""

from __future__ import annotations

import sqlite3

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_COLUMNS = ("coalesce_key", "superseded", "dedup_at")

# A migration is a frozen snapshot: the view texts are copied here, not imported.
VIEWS = {
    "eq_overview": "\n        SELECT status, CASE priority WHEN 4 THEN 'CRITICAL' WHEN 3 THEN 'HIGH' WHEN 2 THEN 'NORMAL' ELSE 'LOW' END AS priority, batch_key, count(*) AS events,\n               round((julianday('now') - 2440587.5) * 86400.0 - min(received_at), 3) AS oldest_age_s,\n               sum(duplicates) AS duplicates, sum(superseded) AS superseded\n        FROM events GROUP BY status, events.priority, batch_key\n    ",
    "eq_ready_batches": "\n        SELECT batch_key, count(*) AS pending, max(priority) AS top_priority,\n               round((julianday('now') - 2440587.5) * 86400.0 - min(received_at), 3) AS oldest_age_s,\n               (count(*) >= CAST((SELECT value FROM settings WHERE name = 'max_batch_size') AS INTEGER)\n                OR max(priority) = 4\n                OR ((julianday('now') - 2440587.5) * 86400.0 - min(received_at)) * 1000.0\n                   >= CAST((SELECT value FROM settings WHERE name = 'batch_window_ms') AS REAL)\n                OR (SELECT value FROM settings WHERE name = 'enable_batching') = 'false'\n               ) AS ready,\n               count(coalesce_key) AS coalesce_keys, sum(superseded) AS superseded\n        FROM events WHERE status = 'pending' AND available_at <= (julianday('now') - 2440587.5) * 86400.0\n        GROUP BY batch_key\n    ",
    "eq_dead_letters": "\n        SELECT id, json_extract(payload, '$.event_name') AS event_name, CASE priority WHEN 4 THEN 'CRITICAL' WHEN 3 THEN 'HIGH' WHEN 2 THEN 'NORMAL' ELSE 'LOW' END AS priority,\n               attempts, last_error, datetime(finished_at, 'unixepoch') AS died_at,\n               coalesce_key, superseded, payload, ordering_key\n        FROM events WHERE status = 'dead'\n    ",
    "eq_claimed": "\n        SELECT batch_id, lease_owner, batch_key, count(*) AS events,\n               round(min(lease_expires_at) - (julianday('now') - 2440587.5) * 86400.0, 3) AS lease_left_s, max(attempts) AS attempts\n        FROM events WHERE status = 'claimed' GROUP BY batch_id, lease_owner, batch_key\n    ",
}
OLD_VIEWS = {
    "eq_overview": "\n        SELECT status, CASE priority WHEN 4 THEN 'CRITICAL' WHEN 3 THEN 'HIGH' WHEN 2 THEN 'NORMAL' ELSE 'LOW' END AS priority, batch_key, count(*) AS events,\n               round((julianday('now') - 2440587.5) * 86400.0 - min(received_at), 3) AS oldest_age_s,\n               sum(duplicates) AS duplicates\n        FROM events GROUP BY status, events.priority, batch_key\n    ",
    "eq_ready_batches": "\n        SELECT batch_key, count(*) AS pending, max(priority) AS top_priority,\n               round((julianday('now') - 2440587.5) * 86400.0 - min(received_at), 3) AS oldest_age_s,\n               (count(*) >= CAST((SELECT value FROM settings WHERE name = 'max_batch_size') AS INTEGER)\n                OR max(priority) = 4\n                OR ((julianday('now') - 2440587.5) * 86400.0 - min(received_at)) * 1000.0\n                   >= CAST((SELECT value FROM settings WHERE name = 'batch_window_ms') AS REAL)\n                OR (SELECT value FROM settings WHERE name = 'enable_batching') = 'false'\n               ) AS ready\n        FROM events WHERE status = 'pending' AND available_at <= (julianday('now') - 2440587.5) * 86400.0\n        GROUP BY batch_key\n    ",
    "eq_dead_letters": "\n        SELECT id, json_extract(payload, '$.event_name') AS event_name, CASE priority WHEN 4 THEN 'CRITICAL' WHEN 3 THEN 'HIGH' WHEN 2 THEN 'NORMAL' ELSE 'LOW' END AS priority,\n               attempts, last_error, datetime(finished_at, 'unixepoch') AS died_at, payload,\n               ordering_key\n        FROM events WHERE status = 'dead'\n    ",
    "eq_claimed": "\n        SELECT batch_id, lease_owner, batch_key, count(*) AS events,\n               round(min(lease_expires_at) - (julianday('now') - 2440587.5) * 86400.0, 3) AS lease_left_s, max(attempts) AS attempts\n        FROM events WHERE status = 'claimed' GROUP BY batch_id, lease_owner, batch_key\n    ",
    # Unchanged by this revision, but it reads `events`: a rebuild of the table (below) must
    # not find it in place.
    "eq_ordering_groups": "\n        SELECT ordering_key, sum(status = 'held') AS held, sum(status = 'pending') AS pending,\n               sum(status = 'claimed') AS claimed,\n               round((julianday('now') - 2440587.5) * 86400.0 - min(received_at), 3) AS oldest_age_s\n        FROM events WHERE ordering_key IS NOT NULL AND status IN ('pending', 'held', 'claimed')\n        GROUP BY ordering_key\n    ",
}


def _columns() -> set[str]:
    return {c["name"] for c in sa.inspect(op.get_bind()).get_columns("events")}


def _set_views(views: dict[str, str]) -> None:
    for name, body in views.items():
        op.execute(f"DROP VIEW IF EXISTS {name}")
        op.execute(f"CREATE VIEW {name} AS {body}")


def upgrade() -> None:
    # Idempotent: a run killed between two steps and the version stamp is simply run again.
    # Columns added in place (ALTER TABLE ... ADD COLUMN): instant however many events exist.
    found = _columns()
    if "coalesce_key" not in found:
        op.execute("ALTER TABLE events ADD COLUMN coalesce_key TEXT")
    if "superseded" not in found:
        op.execute("ALTER TABLE events ADD COLUMN superseded INTEGER DEFAULT '0' NOT NULL")
    if "dedup_at" not in found:
        op.execute("ALTER TABLE events ADD COLUMN dedup_at FLOAT")
    op.execute(
        "CREATE INDEX IF NOT EXISTS ix_events_coalesce ON events (coalesce_key, batch_key)"
        " WHERE status IN ('pending', 'held') AND coalesce_key IS NOT NULL"
    )
    op.execute(
        "CREATE TABLE IF NOT EXISTS superseded_keys (dedup_key TEXT NOT NULL, event_id INTEGER"
        " NOT NULL, dedup_at FLOAT NOT NULL, CONSTRAINT pk_superseded_keys PRIMARY KEY (dedup_key))"
    )
    _set_views(VIEWS)


def downgrade() -> None:
    for name in OLD_VIEWS:
        op.execute(f"DROP VIEW IF EXISTS {name}")
    op.execute("DROP INDEX IF EXISTS ix_events_coalesce")
    op.execute("DROP TABLE IF EXISTS superseded_keys")
    found = [column for column in _COLUMNS if column in _columns()]
    if sqlite3.sqlite_version_info >= (3, 35, 0):
        # Dropped in place: no table rebuild.
        for column in found:
            op.execute(f"ALTER TABLE events DROP COLUMN {column}")
    elif found:
        # Older SQLite: batch mode rebuilds the table; its copy of an index loses a DESC
        # column, and the ordering triggers (0004) go with the old table, so indexes and
        # triggers are set aside and made again exactly as they were (as in 0003).
        saved = list(
            op.get_bind().exec_driver_sql(
                "SELECT type, name, sql FROM sqlite_master WHERE type IN ('index', 'trigger')"
                " AND tbl_name = 'events' AND sql IS NOT NULL"
            )
        )
        for kind, name, _ in saved:
            op.execute(f"DROP {kind.upper()} {name}")
        with op.batch_alter_table("events", recreate="always") as batch:
            for column in found:
                batch.drop_column(column)
        for _, _, sql in saved:
            op.execute(sql)
    _set_views(OLD_VIEWS)
