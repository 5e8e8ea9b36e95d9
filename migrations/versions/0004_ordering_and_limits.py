"""Ordering groups and key limits: events.ordering_key, the status 'held', the triggers that
keep one event per group leasable, and the key_limits table (token buckets, claims held back).

Instant however many events the table holds: the column is added in place, and the status
CHECK gains 'held' by rewriting the table's stored definition (SQLite's documented procedure
for loosening a CHECK constraint: every stored row satisfies the looser one, so nothing on
disk changes; sqlite.org/lang_altertable.html, "other kinds of table schema changes").
Idempotent: a run killed between two steps is simply run again.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_OLD_CHECK = "status IN ('pending', 'claimed', 'done', 'dead')"
_NEW_CHECK = "status IN ('pending', 'held', 'claimed', 'done', 'dead')"
_NEW_VIEWS = ("eq_dead_letters", "eq_ordering_groups")

# A migration is a frozen snapshot: view and trigger texts are copied here (from
# eventqueue/store/sqlite/schema.py as of this revision), not imported.
VIEWS = {
    "eq_dead_letters": "\n        SELECT id, json_extract(payload, '$.event_name') AS event_name, CASE priority WHEN 4 THEN 'CRITICAL' WHEN 3 THEN 'HIGH' WHEN 2 THEN 'NORMAL' ELSE 'LOW' END AS priority,\n               attempts, last_error, datetime(finished_at, 'unixepoch') AS died_at, payload,\n               ordering_key\n        FROM events WHERE status = 'dead'\n    ",
    "eq_ordering_groups": "\n        SELECT ordering_key, sum(status = 'held') AS held, sum(status = 'pending') AS pending,\n               sum(status = 'claimed') AS claimed,\n               round((julianday('now') - 2440587.5) * 86400.0 - min(received_at), 3) AS oldest_age_s\n        FROM events WHERE ordering_key IS NOT NULL AND status IN ('pending', 'held', 'claimed')\n        GROUP BY ordering_key\n    ",
}
TRIGGERS = {
    "eq_ordering_put": "\n        CREATE TRIGGER IF NOT EXISTS eq_ordering_put AFTER INSERT ON events\n        WHEN NEW.ordering_key IS NOT NULL\n        BEGIN \n    UPDATE events SET status = CASE WHEN id = (SELECT id FROM (\n        SELECT * FROM (SELECT id, received_at FROM events WHERE ordering_key = NEW.ordering_key\n                       AND status = 'pending' ORDER BY received_at, id LIMIT 1)\n        UNION ALL\n        SELECT * FROM (SELECT id, received_at FROM events WHERE ordering_key = NEW.ordering_key\n                       AND status = 'held' ORDER BY received_at, id LIMIT 1))\n    ORDER BY received_at, id LIMIT 1) AND NOT EXISTS (SELECT 1 FROM events WHERE ordering_key = NEW.ordering_key AND status = 'claimed')\n                                    THEN 'pending' ELSE 'held' END\n    WHERE (ordering_key = NEW.ordering_key AND status = 'pending') OR id = (SELECT id FROM (\n        SELECT * FROM (SELECT id, received_at FROM events WHERE ordering_key = NEW.ordering_key\n                       AND status = 'pending' ORDER BY received_at, id LIMIT 1)\n        UNION ALL\n        SELECT * FROM (SELECT id, received_at FROM events WHERE ordering_key = NEW.ordering_key\n                       AND status = 'held' ORDER BY received_at, id LIMIT 1))\n    ORDER BY received_at, id LIMIT 1);\n END\n    ",
    "eq_ordering_settle": "\n        CREATE TRIGGER IF NOT EXISTS eq_ordering_settle AFTER UPDATE OF status ON events\n        WHEN NEW.ordering_key IS NOT NULL AND OLD.status <> NEW.status\n             AND (NEW.status IN ('done', 'dead') OR OLD.status = 'dead')\n        BEGIN\n            UPDATE events SET last_error = coalesce(last_error || '; ', '')\n                                           || 'later events of its ordering key went on'\n            WHERE id = NEW.id AND NEW.status = 'dead'\n              AND (EXISTS (SELECT 1 FROM events WHERE ordering_key = NEW.ordering_key\n                           AND status = 'held')\n                   OR EXISTS (SELECT 1 FROM events WHERE ordering_key = NEW.ordering_key\n                              AND status = 'pending'));\n            \n    UPDATE events SET status = CASE WHEN id = (SELECT id FROM (\n        SELECT * FROM (SELECT id, received_at FROM events WHERE ordering_key = NEW.ordering_key\n                       AND status = 'pending' ORDER BY received_at, id LIMIT 1)\n        UNION ALL\n        SELECT * FROM (SELECT id, received_at FROM events WHERE ordering_key = NEW.ordering_key\n                       AND status = 'held' ORDER BY received_at, id LIMIT 1))\n    ORDER BY received_at, id LIMIT 1) AND NOT EXISTS (SELECT 1 FROM events WHERE ordering_key = NEW.ordering_key AND status = 'claimed')\n                                    THEN 'pending' ELSE 'held' END\n    WHERE (ordering_key = NEW.ordering_key AND status = 'pending') OR id = (SELECT id FROM (\n        SELECT * FROM (SELECT id, received_at FROM events WHERE ordering_key = NEW.ordering_key\n                       AND status = 'pending' ORDER BY received_at, id LIMIT 1)\n        UNION ALL\n        SELECT * FROM (SELECT id, received_at FROM events WHERE ordering_key = NEW.ordering_key\n                       AND status = 'held' ORDER BY received_at, id LIMIT 1))\n    ORDER BY received_at, id LIMIT 1);\n\n        END\n    ",
}
_DEAD_LETTERS_0001 = "\n        SELECT id, json_extract(payload, '$.event_name') AS event_name, CASE priority WHEN 4 THEN 'CRITICAL' WHEN 3 THEN 'HIGH' WHEN 2 THEN 'NORMAL' ELSE 'LOW' END AS priority,\n               attempts, last_error, datetime(finished_at, 'unixepoch') AS died_at, payload\n        FROM events WHERE status = 'dead'\n    "


def _has_column() -> bool:
    columns = sa.inspect(op.get_bind()).get_columns("events")
    return any(column["name"] == "ordering_key" for column in columns)


def _set_check(old: str, new: str) -> None:
    bind = op.get_bind()
    sql = bind.exec_driver_sql("SELECT sql FROM sqlite_master WHERE name = 'events'").scalar()
    if sql is None or old not in sql:
        return  # already done (or a table this revision does not know: left alone)
    version = bind.exec_driver_sql("PRAGMA schema_version").scalar()
    bind.exec_driver_sql("PRAGMA writable_schema = ON")
    try:
        bind.exec_driver_sql(
            "UPDATE sqlite_master SET sql = ? WHERE type = 'table' AND name = 'events'",
            (sql.replace(old, new),),
        )
        # Other connections re-read the schema once its version moves.
        bind.exec_driver_sql(f"PRAGMA schema_version = {int(version) + 1}")
    finally:
        bind.exec_driver_sql("PRAGMA writable_schema = OFF")


def upgrade() -> None:
    if not _has_column():
        with op.batch_alter_table("events") as batch:
            batch.add_column(sa.Column("ordering_key", sa.Text(), nullable=True))
    _set_check(_OLD_CHECK, _NEW_CHECK)
    op.execute(
        "CREATE INDEX IF NOT EXISTS ix_events_ordering ON events "
        "(ordering_key, status, received_at, id) WHERE ordering_key IS NOT NULL"
    )
    op.execute("CREATE INDEX IF NOT EXISTS ix_events_held ON events (id) WHERE status = 'held'")
    op.create_table(
        "key_limits",
        sa.Column("batch_key", sa.Text(), nullable=False),
        sa.Column("tokens", sa.Float(), nullable=True),
        sa.Column("refilled_at", sa.Float(), nullable=True),
        sa.Column("ready_at", sa.Float(), nullable=True),
        sa.Column("held_back", sa.Integer(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("batch_key", name=op.f("pk_key_limits")),
        if_not_exists=True,
    )
    op.execute("CREATE INDEX IF NOT EXISTS ix_key_limits_ready_at ON key_limits (ready_at)")
    for ddl in TRIGGERS.values():
        op.execute(ddl)
    for name in _NEW_VIEWS:
        op.execute(f"DROP VIEW IF EXISTS {name}")
        op.execute(f"CREATE VIEW {name} AS {VIEWS[name]}")


def downgrade() -> None:
    for name in TRIGGERS:
        op.execute(f"DROP TRIGGER IF EXISTS {name}")
    op.execute("DROP VIEW IF EXISTS eq_ordering_groups")
    op.execute("DROP VIEW IF EXISTS eq_dead_letters")
    op.execute(f"CREATE VIEW eq_dead_letters AS {_DEAD_LETTERS_0001}")
    op.drop_table("key_limits", if_exists=True)
    op.execute("DROP INDEX IF EXISTS ix_events_ordering")
    op.execute("DROP INDEX IF EXISTS ix_events_held")
    # Held events lose their group (the column goes): they wait as plain pending events.
    op.execute("UPDATE events SET status = 'pending' WHERE status = 'held'")
    _set_check(_NEW_CHECK, _OLD_CHECK)
    if _has_column():
        op.execute("ALTER TABLE events DROP COLUMN ordering_key")
