"""Every statement the PostgreSQL backend runs, named, in one place (procrastinate's
queries.sql, as Python constants). Only store.py, migrator.py and admin.py execute them.

Statements are written with `:name` parameters and compiled once, at import, to asyncpg's
`$n` form (`Query`). Lists travel as one array parameter each (`unnest`), so a statement's
text and its server-side prepared plan never depend on the number of events.

Claims use `FOR UPDATE SKIP LOCKED` (as River's JobGetAvailable and procrastinate's
fetch_job do): concurrent claimers on any host never wait for each other and never lease the
same row; a row another claimer committed meanwhile is re-checked against the WHERE clause
(status = 'pending') and dropped. Readiness is decided without aggregating the pending rows:
a loose index scan of the partial index ix_events_pending finds the batch keys with pending
work, and a few index probes per key decide it (see _READY), so a claim costs the same at a
backlog of 2k and of 1M.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

CRITICAL = 4
HIGH = 3
TOP_AGED_PRIORITY = 3  # aging lifts an event at most to HIGH, never to CRITICAL
# Marks a stored text that needed escaping (see store.encode_text): PostgreSQL text cannot
# hold NUL. Lease tokens are built in SQL from the stored batch key, so SQL knows the mark.
TEXT_MARK = "\x01"

_PARAM = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")


@dataclass(frozen=True, slots=True)
class Query:
    """One named statement: asyncpg SQL text and the names of its `$n` parameters in order."""

    name: str
    sql: str
    params: tuple[str, ...]

    @classmethod
    def of(cls, name: str, text: str) -> Query:
        order: list[str] = []

        def number(match: re.Match[str]) -> str:
            if match[1] not in order:
                order.append(match[1])
            return f"${order.index(match[1]) + 1}"

        return cls(name, _PARAM.sub(number, text), tuple(order))

    def args(self, **values: Any) -> list[Any]:
        """Positional arguments from named values; a missing or unknown name is a bug."""
        unknown = set(values) - set(self.params)
        if unknown:
            raise TypeError(f"{self.name}: unknown parameters {sorted(unknown)}")
        return [values[n] for n in self.params]


def _available(alias: str) -> str:
    # Claimable now: its retry time has come, or it never had one (a put sets available_at to
    # received_at). A retry time further ahead than any back-off can be means the wall clock
    # stepped back since the nack: due now, rather than hours late.
    return (
        f"({alias}.available_at <= :now::float8 OR {alias}.available_at = {alias}.received_at"
        f" OR {alias}.available_at > :now::float8 + :retry_horizon::float8)"
    )


_LEASE_CLEARED = (
    "lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL, batch_id = NULL,"
    " lease_holder = NULL"
)
_EVENT_COLUMNS = (
    "id, payload, priority, content_hash, batch_key, attempts, received_at, trace_context,"
    " ordering_key, superseded"
)

# --- put --------------------------------------------------------------------------------------

_ROWS = """
    unnest(:payloads::text[], :priorities::int[], :keys::text[], :hashes::text[],
           :received::float8[], :copies::int[], :traces::text[], :orderings::text[],
           :coalesce_keys::text[])
        WITH ORDINALITY
        AS r(payload, priority, batch_key, content_hash, received_at, copies, trace_context,
             ordering_key, coalesce_key, n)
"""

# Distinct hashes only (the caller folds repeats into `copies`): ON CONFLICT DO UPDATE may not
# touch one row twice in a statement. Rows are inserted in hash order, so two hosts putting
# overlapping sets wait on each other's unique-index entries in one order (never a deadlock);
# ids are drawn beforehand in arrival order, so id still breaks received_at ties FIFO.
# RETURNING (xmax = 0) is true exactly for the rows inserted (not updated on conflict).
_PUT_DEDUP = """
    WITH ids AS MATERIALIZED (
        SELECT nextval(pg_get_serial_sequence('events', 'id')) AS id, g AS n
        FROM generate_series(1, cardinality(:hashes::text[])) AS g
    )
    INSERT INTO events AS e (id, payload, priority, batch_key, content_hash, dedup_key, status,
                             received_at, available_at, duplicates, trace_context, ordering_key,
                             coalesce_key)
    SELECT ids.id, r.payload, r.priority, r.batch_key, r.content_hash, r.content_hash,
           'pending', r.received_at, r.received_at, r.copies - 1, r.trace_context, r.ordering_key,
           r.coalesce_key
    FROM {rows} JOIN ids USING (n)
    ORDER BY r.content_hash
    ON CONFLICT (dedup_key) DO UPDATE SET duplicates = e.duplicates + EXCLUDED.duplicates + 1
        {slide}
    RETURNING e.id, e.content_hash, (e.xmax = 0) AS inserted
"""
PUT_DEDUP = Query.of("put_dedup", _PUT_DEDUP.format(rows=_ROWS, slide=""))
# A sliding window: the suppressed repeat restarts its original's window from its own arrival.
PUT_DEDUP_SLIDING = Query.of(
    "put_dedup_sliding",
    _PUT_DEDUP.format(
        rows=_ROWS,
        slide=", dedup_at = greatest(coalesce(e.dedup_at, e.received_at), EXCLUDED.received_at)",
    ),
)

PUT_PLAIN = Query.of(
    "put_plain",
    f"""
    INSERT INTO events (payload, priority, batch_key, content_hash, status, received_at,
                        available_at, duplicates, trace_context, ordering_key, coalesce_key)
    SELECT r.payload, r.priority, r.batch_key, r.content_hash, 'pending', r.received_at,
           r.received_at, r.copies - 1, r.trace_context, r.ordering_key, r.coalesce_key
    FROM {_ROWS}
    ORDER BY r.n
    RETURNING id
    """,
)

# Originals received more than the dedup window apart from the repeat of their content give
# up their key, so the repeat is new. Measured between the two receipt times (`received`: of
# the first row of each hash), not at the put's `now`: a repeat spilled inside the window stays
# a duplicate however late it is promoted. In either direction: a repeat received before its
# original (another process's put committed first, or the wall clock stepped back) is a
# duplicate within the window, and beyond it the window ends rather than lasting as long as
# the step back.
RELEASE_DEDUP = Query.of(
    "release_dedup",
    """
    UPDATE events SET dedup_key = NULL
    FROM unnest(:hashes::text[], :received::float8[]) AS r(content_hash, received_at)
    WHERE events.dedup_key = r.content_hash
      AND abs(coalesce(events.dedup_at, events.received_at) - r.received_at) > :ttl::float8
    """,
)

# The events that wait (pending, back-off included), the set EVENT_QUEUE_SIZE bounds: what a
# consumer holds has left the queue, so held claims never make new events spill.
# Bounded: counting stops at :cap (EVENT_QUEUE_SIZE + 1, "full"), so a count reads at most
# that many entries of ix_events_pending however large the backlog grew (spill promotion and
# other hosts can leave more waiting than the bound).
_WAITING = """
    SELECT count(*) FROM (SELECT 1 FROM events WHERE status = 'pending' LIMIT :cap::bigint) AS w
"""
COUNT_WAITING = Query.of("count_waiting", _WAITING)

COUNT_UNFINISHED = Query.of(
    "count_unfinished",
    """
    SELECT (SELECT count(*) FROM events WHERE status = 'pending')
         + (SELECT count(*) FROM events WHERE status = 'held')
         + (SELECT count(*) FROM events WHERE status = 'claimed')
    """,
)

# The end of a put in one statement (one round trip instead of up to five): its stream and
# spill positions, the duplicates counter, the NOTIFY, and the bounded waiting count. Empty
# arrays write nothing. The counter row is shared by every writer on every host: touched last,
# its lock is held only until the COMMIT that follows.
PUT_FINISH = Query.of(
    "put_finish",
    f"""
    WITH sources AS (
        INSERT INTO source_positions (source, position, updated_at)
        SELECT s, p, :now::float8 FROM unnest(:sources::text[], :positions::text[]) AS u(s, p)
        ON CONFLICT (source) DO UPDATE
            SET position = EXCLUDED.position, updated_at = EXCLUDED.updated_at
    ),
    spills AS (
        INSERT INTO spill_positions (log, priority, segment, "offset")
        SELECT :log::text, p, s, o
        FROM unnest(:priorities::int[], :segments::bigint[], :offsets::bigint[]) AS u(p, s, o)
        ON CONFLICT (log, priority) DO UPDATE
            SET segment = EXCLUDED.segment, "offset" = EXCLUDED."offset"
    ),
    counted AS (
        INSERT INTO counters AS c (name, value)
        SELECT 'duplicates_suppressed', :duplicates::bigint WHERE :duplicates::bigint > 0
        ON CONFLICT (name) DO UPDATE SET value = c.value + EXCLUDED.value
    ),
    notified AS (
        SELECT pg_notify(:channel::text, :payload::text) WHERE :notify::boolean
    )
    SELECT (SELECT count(*) FROM notified) AS notified,
           CASE WHEN :count::boolean THEN ({_WAITING}) END AS waiting
    """,
)

SELECT_SOURCE_POSITION = Query.of(
    "select_source_position",
    "SELECT position FROM source_positions WHERE source = :source::text",
)

SELECT_SPILL_POSITIONS = Query.of(
    "select_spill_positions",
    'SELECT priority, segment, "offset" FROM spill_positions WHERE log = :log::text',
)

# --- claim ------------------------------------------------------------------------------------

PRIORITIES = (4, 3, 2, 1)


def _first_received(priority: int, key: str, order: str) -> str:
    # One index descent into ix_events_pending (batch_key, priority DESC, received_at, id,
    # available_at): with key and priority fixed the index is in received_at order, so the
    # first claimable entry is that priority's oldest (or, walked backward, newest) event.
    return f"""(SELECT e.received_at FROM events e
         WHERE e.status = 'pending' AND e.batch_key = {key}.batch_key AND e.priority = {priority}
           AND {_available("e")}
         ORDER BY e.received_at {order} LIMIT 1)"""


_OLDEST_PER_PRIORITY = ",\n".join(f"{_first_received(p, 'k', 'ASC')} AS p{p}" for p in PRIORITIES)
_TOP = "CASE " + " ".join(f"WHEN p{p} IS NOT NULL THEN {p}" for p in PRIORITIES) + " END"
_OLDEST = "least(" + ", ".join(f"p{p}" for p in PRIORITIES) + ")"
_NEWEST = "greatest(" + ", ".join(_first_received(p, "keyed", "DESC") for p in PRIORITIES) + ")"
# The key's MAX_BATCH_SIZE-th claimable event exists: a walk of at most MAX_BATCH_SIZE entries.
_FULL = f"""EXISTS (SELECT 1 FROM events e
         WHERE e.status = 'pending' AND e.batch_key = keyed.batch_key AND {_available("e")}
         ORDER BY e.priority DESC, e.received_at, e.id
         OFFSET :max_batch::int - 1 LIMIT 1)"""
# A key whose oldest waited the window (or with batching off) is ready whatever else holds, and
# then leases every priority: its full-batch and clock probes are skipped (CASE runs one branch).
_WAITED = "(oldest <= :window_start::float8 OR :no_batching::boolean)"

# Readiness without aggregation: the cost depends on the number of batch keys with pending
# work and on MAX_BATCH_SIZE, never on the backlog. `pending_keys` is a loose index scan of
# ix_events_pending (a recursive CTE, one index descent per distinct key); `firsts` probes
# each key's oldest claimable event per priority (four descents), which gives its top priority
# (the highest with one) and its oldest; `summary` adds, only for keys still inside their
# window, whether a full batch waits and whether an event was received after `now`. A key whose
# pending events all wait for a retry has no top and is not ready.
# Ready: a full batch, the oldest waited the window (the shorter HIGH window when the key holds
# a HIGH event), a CRITICAL event (never waits), batching
# off, or an event received after `now` (the clock stepped back: do not wait for it). Effective
# priority: the top priority raised one level per aging period the oldest waited, capped at
# HIGH; CRITICAL stays CRITICAL. min_priority: a key ready only because of CRITICAL events
# leases just those; the rest keep filling their batch.
_FIRSTS = f"""
    RECURSIVE pending_keys(batch_key) AS (
        (SELECT batch_key FROM events WHERE status = 'pending' ORDER BY batch_key LIMIT 1)
        UNION ALL
        SELECT (SELECT e.batch_key FROM events e
                WHERE e.status = 'pending' AND e.batch_key > pk.batch_key
                ORDER BY e.batch_key LIMIT 1)
        FROM pending_keys pk WHERE pk.batch_key IS NOT NULL
    ),
    firsts AS MATERIALIZED (
        SELECT k.batch_key, {_OLDEST_PER_PRIORITY}
        FROM pending_keys k WHERE k.batch_key IS NOT NULL
    )
"""
_READY = f"""{_FIRSTS},
    keyed AS MATERIALIZED (
        SELECT batch_key, {_TOP} AS top, {_OLDEST} AS oldest FROM firsts
    ),
    summary AS MATERIALIZED (
        SELECT batch_key, top, oldest,
               CASE WHEN {_WAITED} THEN false ELSE {_FULL} END AS full_batch,
               CASE WHEN {_WAITED} THEN false ELSE {_NEWEST} > :now::float8 END AS from_future
        FROM keyed WHERE top IS NOT NULL
    ),
    ready AS (
        SELECT batch_key, oldest, top,
               CASE WHEN top = {CRITICAL} THEN {CRITICAL}
                    ELSE least(top + floor(greatest(0.0, :now::float8 - oldest)
                                           / :aging_s::float8), {TOP_AGED_PRIORITY})::int
               END AS effective,
               CASE WHEN top = {CRITICAL} AND NOT full_batch
                         AND oldest > :window_start::float8 AND NOT from_future
                         AND NOT :no_batching::boolean
                    THEN {CRITICAL}
                    WHEN batch_key = ANY(:critical_only::text[]) THEN {CRITICAL}
                    ELSE 0
               END AS min_priority
        FROM summary
        -- A key at its limit is not ready (critical_only: but for its CRITICAL events).
        WHERE batch_key <> ALL(:blocked::text[])
          AND (top = {CRITICAL} OR batch_key <> ALL(:critical_only::text[]))
          AND (full_batch OR oldest <= :window_start::float8 OR from_future
               OR (top >= {HIGH} AND oldest <= :high_window_start::float8)
               OR top = {CRITICAL} OR :no_batching::boolean)
          AND top >= :min_priority::int  -- a claim for CRITICAL work only
    )
"""

# The best `batches` ready keys, each with its rank in claim order (the claim returns it: a
# claim of several batches needs no second pass over readiness to order them), and per key its
# next batch in claim order.
_PICK = f"""
    SELECT p.id, k.rank FROM (
        SELECT ready.*, row_number() OVER (ORDER BY effective DESC, oldest) AS rank
        FROM ready ORDER BY effective DESC, oldest LIMIT :batches::int
    ) k
    CROSS JOIN LATERAL (
        SELECT e.id FROM events e
        WHERE e.status = 'pending' AND e.batch_key = k.batch_key AND {_available("e")}
          AND e.priority >= k.min_priority AND e.priority >= :min_priority::int
        ORDER BY e.priority DESC, e.received_at, e.id
        LIMIT :limit::int
        {{lock}}
    ) p
"""


def _fenced_text(column: str) -> str:
    # `:prefix:<key>`, escaped as store.encode_text escapes the whole text: when the stored
    # key carries the mark, the mark moves to the front (the prefix holds neither NUL nor it).
    return (
        f"CASE WHEN left(batch_key, 1) = chr({ord(TEXT_MARK)})"
        f" THEN chr({ord(TEXT_MARK)}) || :{column}::text || ':' || substr(batch_key, 2)"
        f" ELSE :{column}::text || ':' || batch_key END"
    )


# Each batch's lease token and batch id are `token:key` and `batch_id:key`: every batch is
# fenced on its own (records.assemble_batches builds the same in Python).
_LEASE_SET = f"""status = 'claimed', lease_owner = :owner::text,
        lease_holder = :holder::text,
        lease_token = {_fenced_text("token")},
        lease_expires_at = :expires::float8,
        batch_id = {_fenced_text("batch_id")},
        attempts = attempts + 1"""

CLAIM = Query.of(
    "claim",
    f"""
    WITH {_READY}, picked AS ({_PICK.format(lock="FOR UPDATE SKIP LOCKED")})
    UPDATE events SET {_LEASE_SET}
    FROM picked WHERE events.id = picked.id
    RETURNING events.id, payload, priority, content_hash, batch_key, attempts, received_at,
        trace_context, ordering_key, superseded, picked.rank
    """,
)

# Finished batches acked and the next ones leased in one statement (a dispatcher's claim: one
# round trip, no BEGIN or COMMIT of its own). All or nothing: the acked rows still held under
# their tokens are locked first (in id order); unless every one asked for is among them,
# nothing is acked and nothing leased (`acks_held` false: the caller raises LeaseLostError).
# Always one row at least: a claim that leased nothing returns one row of NULLs with the flag.
CLAIM_ACKING = Query.of(
    "claim_acking",
    f"""
    WITH {_READY},
    acking AS MATERIALIZED (
        SELECT e.id FROM events e
        JOIN unnest(:ack_ids::bigint[], :ack_tokens::text[]) AS p(id, token)
            ON e.id = p.id AND e.lease_token = p.token
        WHERE e.status = 'claimed'
        ORDER BY e.id FOR UPDATE OF e
    ),
    held AS MATERIALIZED (
        SELECT count(*) AS n, count(*) = cardinality(:ack_ids::bigint[]) AS ok FROM acking
    ),
    acked AS (
        UPDATE events SET status = 'done', finished_at = :now::float8, last_error = NULL,
            {_LEASE_CLEARED}
        WHERE id IN (SELECT id FROM acking) AND (SELECT ok FROM held)
        RETURNING 1
    ),
    picked AS ({_PICK.format(lock="FOR UPDATE SKIP LOCKED")}),
    claimed AS (
        UPDATE events SET {_LEASE_SET}
        FROM picked WHERE events.id = picked.id AND (SELECT ok FROM held)
        RETURNING events.id, payload, priority, content_hash, batch_key, attempts,
            received_at, trace_context, ordering_key, superseded, picked.rank
    )
    SELECT c.*, (SELECT ok FROM held) AS acks_held, (SELECT n FROM held) AS acks_held_n
    FROM (SELECT 1) AS one LEFT JOIN claimed c ON true
    """,
)

# The hand-off: a put leases the CRITICAL events it just inserted, in its own transaction.
LEASE_IDS = Query.of(
    "lease_ids",
    f"""
    UPDATE events SET {_LEASE_SET}
    WHERE id = ANY(:ids::bigint[]) AND status = 'pending'
    RETURNING events.id, payload, priority, content_hash, batch_key, attempts, received_at,
        trace_context, ordering_key, superseded
    """,
)

# What the next claim of `batches` batches would lease (the same selection, nothing locked).
PEEK_KEYS = Query.of(
    "peek_keys",
    f"""
    WITH {_READY}
    SELECT batch_key, effective, oldest, top FROM ready
    ORDER BY effective DESC, oldest LIMIT :batches::int
    """,
)

PEEK_EVENTS = Query.of(
    "peek_events",
    f"""
    WITH {_READY}
    SELECT {_EVENT_COLUMNS} FROM events
    WHERE id IN (SELECT picked.id FROM ({_PICK.format(lock="")}) picked)
    ORDER BY batch_key, priority DESC, received_at, id
    """,
)

COUNT_READY_KEYS = Query.of("count_ready_keys", f"WITH {_READY} SELECT count(*) FROM ready")

# Expired leases back to pending, or dead when their attempts are used up. SKIP LOCKED: a row
# locked right now is being acked, extended or expired by someone else. A lease further ahead
# than any can run means the clock stepped back since the claim: expired now.
EXPIRE_LEASES = Query.of(
    "expire_leases",
    f"""
    UPDATE events e SET
        status = CASE WHEN e.attempts >= :max_attempts::int THEN 'dead' ELSE 'pending' END,
        last_error = CASE WHEN e.attempts >= :max_attempts::int
                          THEN coalesce(e.last_error, 'lease expired') ELSE e.last_error END,
        finished_at = CASE WHEN e.attempts >= :max_attempts::int THEN :now::float8 END,
        {_LEASE_CLEARED}
    WHERE e.id IN (
        SELECT id FROM events
        WHERE status = 'claimed'
          AND (lease_expires_at <= :now::float8
               OR lease_expires_at > :now::float8 + :lease_horizon::float8)
        FOR UPDATE SKIP LOCKED
    )
    RETURNING e.status
    """,
)

# --- settle: every statement is fenced by the lease token; RETURNING counts what changed -------

ACK_PAIRS = Query.of(
    "ack_pairs",
    f"""
    UPDATE events e SET status = 'done', finished_at = :now::float8, last_error = NULL,
        {_LEASE_CLEARED}
    FROM unnest(:ids::bigint[], :tokens::text[]) AS p(id, token)
    WHERE e.id = p.id AND e.status = 'claimed' AND e.lease_token = p.token
    RETURNING e.id
    """,
)


def _fenced(assignments: str) -> str:
    # All or nothing in one statement (an ack runs without BEGIN and COMMIT round trips): the
    # rows still held under the token are locked first (in id order: two settles never
    # deadlock), and changed only when every one asked for is among them. Returns how many
    # were held and how many changed (0, or all).
    return f"""
    WITH held AS MATERIALIZED (
        SELECT id FROM events
        WHERE id = ANY(:ids::bigint[]) AND status = 'claimed' AND lease_token = :token::text
        ORDER BY id FOR UPDATE
    ),
    changed AS (
        UPDATE events SET {assignments}
        WHERE id IN (SELECT id FROM held)
          AND (SELECT count(*) FROM held) = cardinality(:ids::bigint[])
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM held) AS held, (SELECT count(*) FROM changed) AS changed
    """


ACK = Query.of(
    "ack",
    _fenced(f"status = 'done', finished_at = :now::float8, last_error = NULL, {_LEASE_CLEARED}"),
)
EXTEND = Query.of("extend", _fenced("lease_expires_at = :expires::float8"))
# Back to pending, or dead when the attempts are used up (as an expired lease is).
RELEASE = Query.of(
    "release",
    _fenced(
        f"""status = CASE WHEN attempts >= :max_attempts::int THEN 'dead' ELSE 'pending' END,
        last_error = CASE WHEN attempts >= :max_attempts::int
                          THEN coalesce(last_error, 'released unhandled at its last attempt')
                          ELSE last_error END,
        finished_at = CASE WHEN attempts >= :max_attempts::int THEN :now::float8 END,
        {_LEASE_CLEARED}"""
    ),
)
# A lease no handler received (a hand-off or claim nobody took): its attempt is undone.
GIVE_BACK = Query.of(
    "give_back", _fenced(f"status = 'pending', attempts = attempts - 1, {_LEASE_CLEARED}")
)

# [id, retry_at or NULL]: pending at retry_at, or dead (NULL) keeping the error.
NACK = Query.of(
    "nack",
    f"""
    UPDATE events e SET
        status = CASE WHEN i.retry_at IS NULL THEN 'dead' ELSE 'pending' END,
        available_at = coalesce(i.retry_at, e.available_at),
        finished_at = CASE WHEN i.retry_at IS NULL THEN :now::float8 END,
        last_error = :error::text,
        {_LEASE_CLEARED}
    FROM unnest(:ids::bigint[], :retry_at::float8[]) AS i(id, retry_at)
    WHERE e.id = i.id AND e.status = 'claimed' AND e.lease_token = :token::text
    RETURNING e.id
    """,
)

# Like readiness, without reading the backlog: the oldest claimable events come from the keys'
# per-priority probes (`firsts`), the next retry from ix_events_retrying (revision 0004: only
# events waiting for a retry), the next lease expiry from ix_events_claimed.
NEXT_WAKEUP = Query.of(
    "next_wakeup",
    f"""
    WITH {_FIRSTS}
    SELECT
        (SELECT min(least(p4, p3, p2, p1)) FROM firsts) AS oldest_pending_at,
        (SELECT min(available_at) FROM events
         WHERE status = 'pending' AND available_at <> received_at
           AND available_at > :now::float8) AS next_retry_at,
        (SELECT min(lease_expires_at) FROM events WHERE status = 'claimed')
            AS next_lease_expiry_at,
        (SELECT min(least(p4, p3)) FROM firsts) AS oldest_high_pending_at
    """.replace(":retry_horizon::float8", "'Infinity'::float8"),
)

# --- inspection and repair ------------------------------------------------------------------

COUNT_BY_STATUS = Query.of(
    "count_by_status",
    "SELECT status, priority, count(*) FROM events GROUP BY status, priority",
)
SELECT_COUNTERS = Query.of("select_counters", "SELECT name, value FROM counters")
OLDEST_PENDING = Query.of(
    "oldest_pending", "SELECT min(received_at) FROM events WHERE status = 'pending'"
)
SELECT_EVENT = Query.of("select_event", "SELECT * FROM events WHERE id = :id::bigint")
SELECT_DEAD = Query.of(
    "select_dead",
    """
    SELECT * FROM events WHERE status = 'dead'
    ORDER BY finished_at DESC, id DESC LIMIT :limit::int
    """,
)
SELECT_STATUSES = Query.of(
    "select_statuses", "SELECT id, status FROM events WHERE id = ANY(:ids::bigint[])"
)
_REQUEUE = """
    UPDATE events SET status = 'pending', attempts = 0, available_at = :now::float8,
        finished_at = NULL
    WHERE status = 'dead'
"""
REQUEUE_IDS = Query.of("requeue_ids", _REQUEUE + " AND id = ANY(:ids::bigint[])")
REQUEUE_ALL = Query.of("requeue_all", _REQUEUE)
# A done event whose dedup window is open (key held, received between :since and :now) is
# kept: deleting it would make a re-put of its content new again. Received "in the future"
# means the wall clock stepped back: its window has ended (as for RELEASE_DEDUP).
_DEDUP_WINDOW_OPEN = """
    (dedup_key IS NOT NULL AND coalesce(dedup_at, received_at) >= :since::float8
     AND coalesce(dedup_at, received_at) <= :now::float8)
"""
# SKIP LOCKED: purges on several hosts at once take different chunks instead of queueing.
PURGE_DONE = Query.of(
    "purge_done",
    f"""
    DELETE FROM events WHERE id IN (
        SELECT id FROM events WHERE status = 'done' AND finished_at < :cutoff::float8
          AND NOT {_DEDUP_WINDOW_OPEN}
        ORDER BY finished_at LIMIT :chunk::int FOR UPDATE SKIP LOCKED
    )
    """,
)
COUNT_KEPT_FOR_DEDUP = Query.of(
    "count_kept_for_dedup",
    f"""
    SELECT count(*) FROM events WHERE status = 'done' AND finished_at < :cutoff::float8
      AND {_DEDUP_WINDOW_OPEN}
    """,
)
SAVE_SETTINGS = Query.of(
    "save_settings",
    """
    INSERT INTO settings (name, value)
    SELECT n, v FROM unnest(:names::text[], :values::text[]) AS u(n, v)
    ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value
    """,
)
SELECT_SETTINGS = Query.of("select_settings", "SELECT name, value FROM settings")

# --- lease owners ------------------------------------------------------------------------------

SAVE_OWNER = Query.of(
    "save_owner",
    """
    INSERT INTO owners (owner, host, pid, pid_space, process_start, started_at, heartbeat_at,
                        heartbeat_s)
    VALUES (:owner::text, :host::text, :pid::bigint, :pid_space::text, :process_start::bigint,
            :started_at::float8, :heartbeat_at::float8, :heartbeat_s::float8)
    ON CONFLICT (owner) DO UPDATE
        SET heartbeat_at = EXCLUDED.heartbeat_at, heartbeat_s = EXCLUDED.heartbeat_s
    """,
)

DELETE_OWNER = Query.of("delete_owner", "DELETE FROM owners WHERE owner = :owner::text")

SELECT_OWNERS = Query.of(
    "select_owners",
    """
    SELECT o.owner, o.host, o.pid, o.pid_space, o.process_start, o.started_at, o.heartbeat_at,
           o.heartbeat_s, coalesce(h.leases, 0)
    FROM owners o LEFT JOIN (
        SELECT lease_holder, count(*) AS leases FROM events
        WHERE status = 'claimed' AND lease_holder IS NOT NULL GROUP BY lease_holder
    ) h ON h.lease_holder = o.owner
    ORDER BY o.started_at, o.owner
    """,
)

# The gone owners' rows deleted and their leases released in one statement, as an expiry
# releases (pending, or dead once attempts are used up). An owner judged by its heartbeat is
# deleted only if it is still stale: a refresh committed meanwhile keeps it (under READ
# COMMITTED the DELETE re-checks the row it waited for). Leases are not SKIP LOCKED: a row
# being acked right now is waited for, then left alone (no longer claimed).
RELEASE_OWNERS = Query.of(
    "release_owners",
    f"""
    WITH gone AS (
        DELETE FROM owners
        WHERE owner = ANY(:dead::text[])
           OR (owner = ANY(:silent::text[])
               AND heartbeat_at < :now::float8 - :stale::float8 * heartbeat_s)
        RETURNING owner
    )
    UPDATE events e SET
        status = CASE WHEN e.attempts >= :max_attempts::int THEN 'dead' ELSE 'pending' END,
        last_error = CASE WHEN e.attempts >= :max_attempts::int
                          THEN coalesce(e.last_error, 'lease owner gone') ELSE e.last_error END,
        finished_at = CASE WHEN e.attempts >= :max_attempts::int THEN :now::float8 END,
        {_LEASE_CLEARED}
    WHERE e.status = 'claimed' AND e.lease_holder IN (SELECT owner FROM gone)
    RETURNING e.status
    """,
)

# --- schema, locks, notifications -------------------------------------------------------------

SCHEMA_STATE = Query.of(
    "schema_state",
    """
    SELECT current_schema() AS schema,
           to_regclass(quote_ident(current_schema()) || '.eventqueue_alembic_version')
               IS NOT NULL AS has_version_table,
           to_regclass(quote_ident(current_schema()) || '.events') IS NOT NULL AS has_events
    """,
)
VERSION_NUM = Query.of("version_num", "SELECT version_num FROM eventqueue_alembic_version")
# One migration at a time per schema, on every host (released at commit).
MIGRATION_LOCK = Query.of(
    "migration_lock",
    "SELECT pg_advisory_xact_lock(hashtext('eventqueue migrate ' || current_schema()))",
)
CURRENT_SCHEMA = Query.of("current_schema", "SELECT current_schema()")
NOTIFY = Query.of("notify", "SELECT pg_notify(:channel::text, :payload::text)")
# fail_fast puts: a lock held elsewhere fails after EVENT_SPILL_AFTER_MS instead of waiting.
LOCK_TIMEOUT = Query.of("lock_timeout", "SELECT set_config('lock_timeout', :timeout::text, true)")


def all_queries() -> Mapping[str, Query]:
    """Every named statement (tests prepare them all against a real server)."""
    return {q.name: q for q in globals().values() if isinstance(q, Query)}


# --- key limits -------------------------------------------------------------------------------

# Batches leased now, per batch key (claimed rows only: a handful, never the backlog).
IN_FLIGHT = Query.of(
    "in_flight",
    """
    SELECT batch_key, count(DISTINCT batch_id) FROM events WHERE status = 'claimed'
    GROUP BY batch_key
    """,
)

IN_FLIGHT_OF = Query.of(
    "in_flight_of",
    """
    SELECT batch_key, count(DISTINCT batch_id) FROM events
    WHERE status = 'claimed' AND batch_key = ANY(:keys::text[])
    GROUP BY batch_key
    """,
)

# Keys whose bucket holds less than one token now (ix_key_limits_ready_at).
EMPTY_BUCKETS = Query.of(
    "empty_buckets",
    "SELECT batch_key, ready_at FROM key_limits WHERE ready_at > :now::float8",
)

# Lock the rows of `keys` (made if missing), in key order so two claimers never wait on each
# other in opposite orders; the keys in `held` count one claim held back. Under these locks a
# claim recounts its keys' leased batches and buckets: the limits hold across hosts.
LOCK_KEYS = Query.of(
    "lock_keys",
    """
    INSERT INTO key_limits AS l (batch_key, held_back)
    SELECT k, CASE WHEN k = ANY(:held::text[]) THEN 1 ELSE 0 END
    FROM unnest(:keys::text[]) AS k ORDER BY k
    ON CONFLICT (batch_key) DO UPDATE SET held_back = l.held_back + EXCLUDED.held_back
    RETURNING l.batch_key, l.tokens, l.refilled_at
    """,
)

SAVE_BUCKET = Query.of(
    "save_bucket",
    """
    UPDATE key_limits SET tokens = :tokens::float8, refilled_at = :now::float8,
        ready_at = :ready_at::float8
    WHERE batch_key = :key::text
    """,
)

# Which of `keys` have pending events (one index probe each).
PENDING_KEYS_AMONG = Query.of(
    "pending_keys_among",
    """
    SELECT k FROM unnest(:keys::text[]) AS k
    WHERE EXISTS (SELECT 1 FROM events e WHERE e.status = 'pending' AND e.batch_key = k)
    """,
)

SELECT_KEY_LIMITS = Query.of(
    "select_key_limits",
    "SELECT batch_key, held_back, tokens, refilled_at FROM key_limits ORDER BY batch_key",
)


# --- coalescing (core/coalesce.py plans; store/postgres/coalescing.py runs these) ------------

# Per (batch key, coalesce key) lock, taken in sorted order before the put inserts: two puts of
# one key (on any host) run one after the other, so the second sees the first's event and
# folds into it instead of leaving two pending events of one key.
LOCK_COALESCE_KEYS = Query.of(
    "lock_coalesce_keys",
    """
    SELECT count(pg_advisory_xact_lock(k))
    FROM unnest(:locks::bigint[]) WITH ORDINALITY AS u(k, n)
    """,
)
# Event `e` is the last unfinished event of its ordering group (or has none): no pending, held
# or claimed event of the group after it in group order (received_at, id); ix_events_ordering.
# A coalescing put folds only into such an event (core/coalesce.route).
_LAST = """(e.ordering_key IS NULL OR NOT EXISTS (
        SELECT 1 FROM events l
        WHERE l.ordering_key = e.ordering_key AND l.status IN ('pending', 'held', 'claimed')
          AND (l.received_at, l.id) > (e.received_at, e.id)))"""

# What a coalescing put must know before it writes, in one round trip: the live holders of
# its content hashes (with when their window runs from: the caller releases closed ones), the
# replaced versions of those hashes, and the pending, never delivered events of its coalesce
# keys (through ix_events_coalesce; filtered by batch key by the caller).
SELECT_COALESCE_STATE = Query.of(
    "select_coalesce_state",
    f"""
    SELECT 'live', id, batch_key, coalesce_key, priority, received_at, dedup_key,
           coalesce(dedup_at, received_at), NULL::text, NULL::boolean
    FROM events WHERE dedup_key = ANY(:hashes::text[])
    UNION ALL
    SELECT 'retired', event_id, NULL, NULL, NULL, NULL, dedup_key, dedup_at, NULL, NULL
    FROM superseded_keys WHERE dedup_key = ANY(:hashes::text[])
    UNION ALL
    SELECT 'target', e.id, e.batch_key, e.coalesce_key, e.priority, e.received_at, e.dedup_key,
           coalesce(e.dedup_at, e.received_at), e.ordering_key, {_LAST}
    FROM events e
    WHERE e.status IN ('pending', 'held') AND e.coalesce_key IS NOT NULL
      AND e.coalesce_key = ANY(:keys::text[]) AND e.attempts = 0
    ORDER BY 1, 2
    """,
)
SLIDE_SUPERSEDED_KEYS = Query.of(
    "slide_superseded_keys",
    """
    UPDATE superseded_keys s SET dedup_at = greatest(s.dedup_at, u.at)
    FROM unnest(:keys::text[], :ats::float8[]) AS u(k, at) WHERE s.dedup_key = u.k
    """,
)
# Repeats found before the insert, one row per event (`ats`: a sliding window's restart, or
# NULL).
ADD_DUPLICATES = Query.of(
    "add_duplicates",
    """
    UPDATE events e SET duplicates = e.duplicates + u.n,
        dedup_at = CASE WHEN u.at IS NULL THEN e.dedup_at
                        ELSE greatest(coalesce(e.dedup_at, e.received_at), u.at) END
    FROM unnest(:ids::bigint[], :ns::int[], :ats::float8[]) AS u(id, n, at) WHERE e.id = u.id
    """,
)
# The surviving event takes the latest version, in one round trip with what goes with it: the
# replaced versions' dedup keys (`retired_*`) and the `superseded` counter. A claimed event, or
# one delivered before (attempts > 0), is never changed, nor one that is no longer its ordering
# group's last: RETURNING says which targets took it (another host may have claimed one, or put
# a later event of its group, since the read); only their keys are retired and counted.
APPLY_MERGES = Query.of(
    "apply_merges",
    f"""
    WITH merged AS (
        UPDATE events e SET payload = u.payload, content_hash = u.hash,
            priority = greatest(e.priority, u.priority), dedup_key = u.dedup_key,
            dedup_at = u.dedup_at, trace_context = u.trace, superseded = e.superseded + u.n,
            available_at = coalesce(u.available, e.available_at)
        FROM unnest(:ids::bigint[], :payloads::text[], :hashes::text[], :priorities::int[],
                    :dedup_keys::text[], :dedup_ats::float8[], :traces::text[], :ns::int[],
                    :availables::float8[])
            AS u(id, payload, hash, priority, dedup_key, dedup_at, trace, n, available)
        WHERE e.id = u.id AND e.status IN ('pending', 'held') AND e.attempts = 0
          AND {_LAST}
        RETURNING e.id, u.n
    ),
    retired AS (
        INSERT INTO superseded_keys (dedup_key, event_id, dedup_at)
        SELECT DISTINCT ON (k) k, id, at
        FROM unnest(:retired_keys::text[], :retired_ids::bigint[], :retired_ats::float8[])
            AS r(k, id, at)
        WHERE id IN (SELECT id FROM merged)
        ORDER BY k, at DESC
        ON CONFLICT (dedup_key) DO UPDATE
            SET event_id = EXCLUDED.event_id, dedup_at = EXCLUDED.dedup_at
    ),
    counted AS (
        INSERT INTO counters AS c (name, value)
        SELECT 'superseded', sum(n) FROM merged HAVING sum(n) > 0
        ON CONFLICT (name) DO UPDATE SET value = c.value + EXCLUDED.value
    )
    SELECT id FROM merged
    """,
)
SET_AVAILABLE = Query.of(
    "set_available",
    """
    UPDATE events e SET available_at = u.at
    FROM unnest(:ids::bigint[], :ats::float8[]) AS u(id, at) WHERE e.id = u.id
    """,
)
PRUNE_SUPERSEDED_KEYS = Query.of(
    "prune_superseded_keys", "DELETE FROM superseded_keys WHERE dedup_at < :since::float8"
)
