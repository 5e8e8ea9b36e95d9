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

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_CHECK = "ALTER TABLE events ADD CONSTRAINT ck_events_status CHECK (status IN ({}))"
_WITH_HELD = "'pending', 'held', 'claimed', 'done', 'dead'"
_WITHOUT_HELD = "'pending', 'claimed', 'done', 'dead'"

# A migration is a frozen snapshot: view and function texts are copied here (from
# eventqueue/store/postgres/schema.py as of this revision), not imported.
VIEWS = {
    "eq_dead_letters": "\n        SELECT id, CASE WHEN strpos(payload, '\\u0000') > 0 THEN NULL ELSE payload::json ->> 'event_name' END AS event_name, CASE priority WHEN 4 THEN 'CRITICAL' WHEN 3 THEN 'HIGH' WHEN 2 THEN 'NORMAL' ELSE 'LOW' END AS priority,\n               attempts, last_error,\n               to_char(to_timestamp(finished_at) AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS')\n                   AS died_at,\n               payload, ordering_key\n        FROM events WHERE status = 'dead'\n    ",
    "eq_ordering_groups": "\n        SELECT ordering_key, count(*) FILTER (WHERE status = 'held') AS held,\n               count(*) FILTER (WHERE status = 'pending') AS pending,\n               count(*) FILTER (WHERE status = 'claimed') AS claimed,\n               round((date_part('epoch', now()) - min(received_at))::numeric, 3) AS oldest_age_s\n        FROM events WHERE ordering_key IS NOT NULL AND status IN ('pending', 'held', 'claimed')\n        GROUP BY ordering_key\n    ",
}
ORDERING_DDL = (
    "\n    CREATE OR REPLACE FUNCTION eq_order_groups() RETURNS trigger LANGUAGE plpgsql AS $fn$\n    DECLARE\n        groups text[];\n    BEGIN\n        IF pg_trigger_depth() > 1 THEN\n            RETURN NULL;  -- this function's own updates\n        END IF;\n        IF TG_OP = 'INSERT' THEN\n            SELECT array_agg(DISTINCT n.ordering_key) INTO groups\n            FROM new_rows n WHERE n.ordering_key IS NOT NULL;\n        ELSE\n            SELECT array_agg(DISTINCT n.ordering_key) INTO groups\n            FROM new_rows n JOIN old_rows o ON o.id = n.id\n            WHERE n.ordering_key IS NOT NULL AND o.status <> n.status\n              AND (n.status IN ('done', 'dead') OR o.status = 'dead');\n        END IF;\n        IF groups IS NULL THEN\n            RETURN NULL;\n        END IF;\n        PERFORM pg_advisory_xact_lock(22, s.stripe) FROM (\n            SELECT DISTINCT hashtext(g) & 63 AS stripe\n            FROM unnest(groups) g ORDER BY 1) s;\n        IF TG_OP = 'UPDATE' THEN\n            UPDATE events d SET last_error = coalesce(d.last_error || '; ', '')\n                                             || 'later events of its ordering key went on'\n            FROM new_rows n JOIN old_rows o ON o.id = n.id\n            WHERE d.id = n.id AND n.status = 'dead' AND o.status <> 'dead'\n              AND n.ordering_key IS NOT NULL\n              AND EXISTS (SELECT 1 FROM events h WHERE h.ordering_key = n.ordering_key\n                          AND h.status IN ('pending', 'held'));\n        END IF;\n        WITH heads AS MATERIALIZED (\n            SELECT g AS key,\n                   EXISTS (SELECT 1 FROM events c\n                           WHERE c.ordering_key = g AND c.status = 'claimed') AS busy,\n                   (SELECT f.id FROM (\n                        (SELECT id, received_at FROM events WHERE ordering_key = g\n                         AND status = 'pending' ORDER BY received_at, id LIMIT 1)\n                        UNION ALL\n                        (SELECT id, received_at FROM events WHERE ordering_key = g\n                         AND status = 'held' ORDER BY received_at, id LIMIT 1)) f\n                    ORDER BY f.received_at, f.id LIMIT 1) AS head\n            FROM unnest(groups) g\n        )\n        -- Two statements, each an index probe per group (one UPDATE with an OR of the two\n        -- conditions was planned as a scan of the table).\n        UPDATE events e SET status = 'held'\n        FROM heads h\n        WHERE e.ordering_key = h.key AND e.status = 'pending'\n          AND (e.id IS DISTINCT FROM h.head OR h.busy);\n        WITH heads AS MATERIALIZED (\n            SELECT g AS key,\n                   EXISTS (SELECT 1 FROM events c\n                           WHERE c.ordering_key = g AND c.status = 'claimed') AS busy,\n                   (SELECT f.id FROM (\n                        (SELECT id, received_at FROM events WHERE ordering_key = g\n                         AND status = 'pending' ORDER BY received_at, id LIMIT 1)\n                        UNION ALL\n                        (SELECT id, received_at FROM events WHERE ordering_key = g\n                         AND status = 'held' ORDER BY received_at, id LIMIT 1)) f\n                    ORDER BY f.received_at, f.id LIMIT 1) AS head\n            FROM unnest(groups) g\n        )\n        UPDATE events e SET status = 'pending'\n        FROM heads h\n        WHERE e.id = h.head AND NOT h.busy AND e.status = 'held';\n        RETURN NULL;\n    END\n    $fn$\n    ",
    "DROP TRIGGER IF EXISTS eq_ordering_put ON events",
    "\n    CREATE TRIGGER eq_ordering_put AFTER INSERT ON events\n    REFERENCING NEW TABLE AS new_rows\n    FOR EACH STATEMENT EXECUTE FUNCTION eq_order_groups()\n    ",
    "DROP TRIGGER IF EXISTS eq_ordering_settle ON events",
    "\n    CREATE TRIGGER eq_ordering_settle AFTER UPDATE ON events\n    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows\n    FOR EACH STATEMENT EXECUTE FUNCTION eq_order_groups()\n    ",
)
_DEAD_LETTERS_0001 = "\n        SELECT id, CASE WHEN strpos(payload, '\\u0000') > 0 THEN NULL ELSE payload::json ->> 'event_name' END AS event_name, CASE priority WHEN 4 THEN 'CRITICAL' WHEN 3 THEN 'HIGH' WHEN 2 THEN 'NORMAL' ELSE 'LOW' END AS priority,\n               attempts, last_error,\n               to_char(to_timestamp(finished_at) AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS')\n                   AS died_at,\n               payload\n        FROM events WHERE status = 'dead'\n    "


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
    op.execute(f"CREATE VIEW eq_dead_letters AS {_DEAD_LETTERS_0001}")
    op.execute("DROP TABLE IF EXISTS key_limits")
    op.execute("DROP INDEX IF EXISTS ix_events_held")
    op.execute("DROP INDEX IF EXISTS ix_events_ordering")
    # Held events lose their group (the column goes): they wait as plain pending events.
    op.execute("UPDATE events SET status = 'pending' WHERE status = 'held'")
    op.execute("ALTER TABLE events DROP CONSTRAINT IF EXISTS ck_events_status")
    op.execute(_CHECK.format(_WITHOUT_HELD))
    op.execute("ALTER TABLE events DROP COLUMN IF EXISTS ordering_key")
