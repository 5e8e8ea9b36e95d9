"""The dashboard's read model: what each page shows, read through the Inspector.

Every call is synchronous and short: the Inspector opens the store read-only (or the guarded
SQL console's read-only connection), reads in one transaction and closes it, so nothing is
held open between requests (failure mode F7). The app runs these calls in worker threads.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from typing import Any

from eventqueue.core.models import Priority
from eventqueue.core.records import EventInfo, RequeueResult, iso
from eventqueue.runtime.metrics import percentile
from eventqueue.store import backend_of
from eventqueue.tools.inspector import Inspector, PurgeResult
from eventqueue.tools.top import Snapshot, read_snapshot
from eventqueue.tools.web import queries
from eventqueue.tools.web.history import History, Sample

PRIORITIES = [p.name for p in sorted(Priority, reverse=True)]
STATUSES = ("pending", "held", "claimed", "done", "dead")
PAGE_SIZE = 50
MAX_KEYS = 50
MAX_GROUP_IDS = 10_000  # a requeue of one error group takes at most this many ids
SQL_MAX_ROWS = 500


class Reads:
    """What the pages read, for one database."""

    def __init__(self, inspector: Inspector, clock: Callable[[], float] = time.time) -> None:
        self.inspector = inspector
        self.clock = clock
        self.history = History()
        self.postgres = backend_of(inspector.config.db_path) == "postgresql"

    # --- overview ---------------------------------------------------------------------------

    def overview(self) -> dict[str, Any]:
        """Depth, keys, latency, spill and the chart series; one reading added to the history."""
        snapshot = read_snapshot(self.inspector)
        latency = _latency(snapshot)
        everything = sorted(s for samples in snapshot.latency.values() for s in samples)
        self.history.add(
            Sample(
                at=snapshot.at,
                pending=snapshot.counts.get("pending", 0),
                claimed=snapshot.counts.get("claimed", 0),
                dead=snapshot.counts.get("dead", 0),
                done=snapshot.counts.get("done", 0),
                max_id=snapshot.max_id,
                p50_s=percentile(everything, 0.5) if everything else None,
                p99_s=percentile(everything, 0.99) if everything else None,
            )
        )
        history = self.history.points()
        return {
            "at": iso(snapshot.at),
            "stats": _stats_json(snapshot),
            "totals": {s: snapshot.counts.get(s, 0) for s in STATUSES},
            "keys": _keys(snapshot),
            "latency": latency,
            "latency_window_s": 60,
            "history": history,
            "rates": {k: history[-1][k] for k in ("accepted_per_s", "handled_per_s")},
        }

    # --- events -----------------------------------------------------------------------------

    def events(self, found: queries.EventFilter) -> dict[str, Any]:
        """A page of the newest events matching the filter, within one window of ids."""
        below = found.before_id if found.before_id is not None else self._max_id() + 1
        sql = queries.events_sql(found, below=below, limit=PAGE_SIZE, postgres=self.postgres)
        result = self.inspector.sql(sql, max_rows=PAGE_SIZE)
        rows = [_row(dict(zip(result["columns"], row, strict=True))) for row in result["rows"]]
        lowest = max(1, below - queries.ID_WINDOW)
        if len(rows) == PAGE_SIZE:
            older: int | None = rows[-1]["id"]
        else:  # this window is exhausted: the next page searches the window below it
            older = lowest if lowest > 1 else None
        return {"rows": rows, "searched": (lowest, below - 1), "older": older}

    def find(self, text: str) -> list[int]:
        """The ids `text` names (an id, a content hash or an event_id), newest first."""
        sql = queries.find_sql(text, below=self._max_id() + 1, postgres=self.postgres)
        result = self.inspector.sql(sql, max_rows=50)
        return sorted({int(row[0]) for row in result["rows"]}, reverse=True)

    def _max_id(self) -> int:
        [[found]] = self.inspector.sql(queries.MAX_ID_SQL)["rows"]
        return int(found or 0)

    def event(self, event_id: int) -> EventInfo | None:
        """One event with every column and its timeline."""
        info = self.inspector.show(event_id)
        if info is not None:
            info["timeline"] = timeline(info)
        return info

    # --- dead letters -----------------------------------------------------------------------

    def dead_groups(self) -> list[dict[str, Any]]:
        """Dead letters grouped by last error, biggest group first."""
        rows = self.inspector.sql(queries.DEAD_GROUPS_SQL, max_rows=1000)["rows"]
        return [
            {"error": e, "events": int(n), "last_died_at": iso(at), "first_id": a, "last_id": b}
            for e, n, at, a, b in rows
        ]

    def dead_ids(self, error: str) -> list[int]:
        """The ids of dead letters whose last error is `error`."""
        sql = queries.dead_ids_sql(error, limit=MAX_GROUP_IDS)
        return [int(row[0]) for row in self.inspector.sql(sql, max_rows=MAX_GROUP_IDS)["rows"]]

    def requeue(self, ids: list[int]) -> RequeueResult:
        """These dead events back to pending (the CLI's `requeue`)."""
        return self.inspector.requeue(ids, now=self.clock())

    def purge(self, older_than_s: float) -> PurgeResult:
        """Done events finished more than `older_than_s` ago deleted (the CLI's `purge`)."""
        now = self.clock()
        return self.inspector.purge(cutoff=now - older_than_s, now=now)

    # --- SQL --------------------------------------------------------------------------------

    def sql(self, query: str) -> dict[str, Any]:
        """One statement through `eventqueue sql`'s guards."""
        return dict(self.inspector.sql(query, max_rows=SQL_MAX_ROWS))


def _stats_json(snapshot: Snapshot) -> dict[str, Any]:
    """The shape `eventqueue stats --json` prints (the spill folder named first)."""
    spill = snapshot.spill
    if spill.get("directories"):
        spill = {"directory": spill["directories"][0], **spill}
        return dataclasses.replace(snapshot.stats, spill=spill).as_dict()
    return snapshot.stats.as_dict()


def _latency(snapshot: Snapshot) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for name in PRIORITIES:
        samples = sorted(snapshot.latency[Priority[name]])
        found[name] = {
            "events": len(samples),
            "p50_s": percentile(samples, 0.5) if samples else None,
            "p99_s": percentile(samples, 0.99) if samples else None,
        }
    return found


def _keys(snapshot: Snapshot) -> list[dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    for status, priority, key, count, at in snapshot.depth:
        row = rows.setdefault(
            key, {"key": key, "pending": 0, "claimed": 0, "dead": 0, "top": 0, "oldest_at": None}
        )
        row[status] += count
        if status == "pending":
            row["top"] = max(row["top"], priority)
            oldest = row["oldest_at"]
            row["oldest_at"] = at if oldest is None else min(oldest, at)
    ranked = sorted(rows.values(), key=lambda r: (-(r["pending"] + r["claimed"]), r["key"]))
    for row in ranked:
        row["top"] = Priority(row["top"]).name if row["top"] else None
        at = row.pop("oldest_at")
        row["oldest_pending_age_s"] = None if at is None else round(snapshot.at - at, 3)
    return ranked[:MAX_KEYS]


def _row(row: dict[str, Any]) -> dict[str, Any]:
    payload = _decoded(row.pop("payload"))
    return {
        **row,
        "priority": Priority(int(row["priority"])).name,
        "event_name": payload.get("event_name") if isinstance(payload, dict) else None,
        "aggregate_id": payload.get("aggregate_id") if isinstance(payload, dict) else None,
        "received_at": iso(row["received_at"]),
        "finished_at": iso(row["finished_at"]),
    }


def _decoded(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def timeline(info: EventInfo) -> list[tuple[str, str]]:
    """What happened to the event, in order: (when, what)."""
    steps = [(str(info["received_at"]), "received")]
    status, attempts = info["status"], int(info["attempts"])
    if attempts:
        steps.append(("", f"claimed {attempts} time(s)"))
    if status == "claimed":
        owner = info.get("lease_owner") or "?"
        steps.append((str(info.get("lease_expires_at")), f"leased by {owner} until this time"))
    elif status == "pending" and attempts:
        steps.append((str(info.get("available_at")), "retry not before this time"))
    elif status == "done":
        steps.append((str(info.get("finished_at")), "acked (done)"))
    elif status == "dead":
        steps.append((str(info.get("finished_at")), "dead: attempts exhausted or given up"))
    return steps
