"""`eventqueue top`: a live view of a queue database, refreshed until Ctrl-C (or N refreshes).

Read-only, from any process: every refresh opens the database, reads in a few short read
transactions (the Inspector's and the read-only SQL console's) and closes it again, so nothing
pins the WAL between refreshes. It shows what the database can tell: depth by priority and by
batch key, rates from the counters between two refreshes, the age of the oldest pending event
per priority, receipt-to-ack latency of recently finished events, dead letters and the spill.
The dispatcher's own receipt-to-handler-start latency lives in its process; its `/metrics`
(`eventqueue_receipt_to_handler_seconds`) has it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from eventqueue.core.config import Config
from eventqueue.core.models import Priority, QueueStats
from eventqueue.core.records import EventBrief
from eventqueue.runtime.metrics import percentile
from eventqueue.tools.inspector import Inspector
from eventqueue.tools.render import size_text

# Pending and claimed rows through their partial indexes (never a scan of finished history),
# dead ones through theirs; done rows are only counted by `stats`.
DEPTH_SQL = """
SELECT 'pending', priority, batch_key, count(*), min(received_at)
  FROM events WHERE status = 'pending' GROUP BY batch_key, priority
UNION ALL
SELECT 'claimed', priority, batch_key, count(*), min(received_at)
  FROM events WHERE status = 'claimed' GROUP BY batch_key, priority
UNION ALL
SELECT 'dead', priority, batch_key, count(*), min(received_at)
  FROM events WHERE status = 'dead' GROUP BY batch_key, priority
"""
# Events acked in the last LATENCY_WINDOW_S, newest first, through ix_events_done.
LATENCY_SQL = """
SELECT priority, finished_at - received_at FROM events
 WHERE status = 'done' AND finished_at >= {since!r} ORDER BY finished_at DESC
"""
MAX_ID_SQL = "SELECT max(id) FROM events"
LATENCY_WINDOW_S = 60.0
LATENCY_SAMPLES = 20_000  # the most recent ones, when more finished in the window
MAX_KEYS_SHOWN = 15
DEAD_SHOWN = 5
DEAD_LINES = 3  # of them, one line each on the screen
PRIORITIES = sorted(Priority, reverse=True)


@dataclass
class Snapshot:
    """One refresh's reading of the database."""

    at: float
    stats: QueueStats
    depth: list[tuple[str, int, str, int, float]]  # status, priority, key, events, oldest_at
    latency: dict[Priority, list[float]]
    dead: list[EventBrief]
    spill: dict[str, Any]
    max_id: int = 0
    latency_truncated: bool = False
    counts: dict[str, int] = field(default_factory=dict)  # status -> events

    @property
    def duplicates(self) -> int:
        return self.stats.duplicates_suppressed


def read_snapshot(inspector: Inspector) -> Snapshot:
    """Read everything one refresh shows, each part in its own short transaction."""
    from eventqueue.runtime.overflow import inspect_spills

    now = time.time()
    stats = inspector.stats(now=now)
    depth = inspector.sql(DEPTH_SQL, max_rows=100_000)["rows"]
    found = inspector.sql(
        LATENCY_SQL.format(since=now - LATENCY_WINDOW_S), max_rows=LATENCY_SAMPLES
    )
    latency: dict[Priority, list[float]] = {p: [] for p in Priority}
    for priority, seconds in found["rows"]:
        latency[Priority(priority)].append(max(0.0, float(seconds)))
    [[max_id]] = inspector.sql(MAX_ID_SQL)["rows"]
    return Snapshot(
        at=now,
        stats=stats,
        depth=[(s, int(p), k, int(n), float(at)) for s, p, k, n, at in depth],
        latency=latency,
        dead=inspector.dead(limit=DEAD_SHOWN),
        spill=inspect_spills(inspector.config, inspector.spill_positions),
        max_id=int(max_id or 0),
        latency_truncated=bool(found["truncated"]),
        counts={status: sum(by.values()) for status, by in stats.counts.items()},
    )


# --- rendering ----------------------------------------------------------------------------------

# Lines the screen uses besides the dead letters and the keys' rows: title, depth-and-latency
# (caption, header, four priorities, total), rates, spill, and the keys' caption and header.
_FIXED_LINES = 1 + 7 + 1 + 1 + 2
SCREEN = (80, 24)  # the smallest terminal the layout is made for: every section fits on it


def render(
    now: Snapshot, before: Snapshot | None, title: str, height: int = SCREEN[1]
) -> RenderableType:
    """The whole screen for one refresh, fitted to `height` lines (the busiest keys last:
    they get the lines left over, so depth, latency, rates, spill and dead letters always show)."""
    dead = _dead(now)
    keys_room = max(1, height - _FIXED_LINES - len(dead))
    return Group(
        _line(title, style="bold"),
        _priorities(now),
        _rates(now, before),
        _spill(now.spill),
        *dead,
        _keys(now, keys_room),
    )


def _line(text: str, style: str = "") -> Text:
    """One screen line: cut with an ellipsis rather than wrapped."""
    return Text(text, style=style, no_wrap=True, overflow="ellipsis")


def _age(oldest_at: float | None, now: float) -> str:
    return "-" if oldest_at is None else _seconds(max(0.0, now - oldest_at))


def _seconds(value: float) -> str:
    if value < 1:
        return f"{value * 1000:.1f} ms"
    return f"{value:.1f} s" if value < 120 else f"{value / 60:.1f} min"


def _compact(*headers: str, caption: str) -> Table:
    table = Table(
        *headers, box=None, padding=(0, 1), pad_edge=False, title=caption,
        title_justify="left", title_style="bold", header_style="underline",
    )  # fmt: skip
    for column in table.columns:
        column.no_wrap = True
        column.overflow = "ellipsis"
    for column in table.columns[1:]:
        column.justify = "right"
    return table


def _priorities(s: Snapshot) -> Table:
    table = _compact(
        "priority", "pending", "claimed", "done", "dead", "oldest", "acked", "p50", "p99",
        caption=f"depth, and receipt to ack of events done in the last {LATENCY_WINDOW_S:.0f} s",
    )  # fmt: skip
    oldest: dict[int, float] = {}
    for status, priority, _, _, at in s.depth:
        if status == "pending":
            oldest[priority] = min(at, oldest.get(priority, at))
    counts = s.stats.counts
    for p in PRIORITIES:
        cells = [str(counts.get(status, {}).get(p.name, 0)) for status in _STATUSES]
        table.add_row(p.name, *cells, _age(oldest.get(int(p)), s.at), *_latency(s.latency[p]))
    totals = [str(s.counts.get(status, 0)) for status in _STATUSES]
    every = [x for samples in s.latency.values() for x in samples]
    oldest_of_all = _age(min(oldest.values(), default=None), s.at)
    table.add_row("total", *totals, oldest_of_all, *_latency(every), style="bold")
    return table


_STATUSES = ("pending", "claimed", "done", "dead")


def _latency(samples: list[float]) -> list[str]:
    """Events acked in the window, p50, p99 (`+` on the count: the most recent ones only)."""
    if not samples:
        return ["0", "-", "-"]
    ordered = sorted(samples)
    shown = f"{len(ordered)}+" if len(ordered) >= LATENCY_SAMPLES else str(len(ordered))
    return [shown, *(_seconds(percentile(ordered, q)) for q in (0.5, 0.99))]


def _keys(s: Snapshot, room: int) -> RenderableType:
    rows: dict[str, dict[str, Any]] = {}
    for status, priority, key, count, at in s.depth:
        row = rows.setdefault(key, {"pending": 0, "claimed": 0, "dead": 0, "top": 0, "at": None})
        row[status] += count
        if status == "pending":
            row["top"] = max(row["top"], priority)
            row["at"] = at if row["at"] is None else min(row["at"], at)
    if not rows:
        return _line("keys: nothing pending, claimed or dead")
    ranked = sorted(rows.items(), key=lambda kv: (-(kv[1]["pending"] + kv[1]["claimed"]), kv[0]))
    shown = min(len(ranked), MAX_KEYS_SHOWN, room)
    table = _compact(
        "batch key", "pending", "claimed", "dead", "top", "oldest",
        caption=f"keys (busiest {shown} of {len(ranked)})",
    )  # fmt: skip
    for key, row in ranked[:shown]:
        top = Priority(row["top"]).name if row["top"] else "-"
        counts = (str(row["pending"]), str(row["claimed"]), str(row["dead"]))
        table.add_row(Text(key), *counts, top, _age(row["at"], s.at))
    return table


def _rates(now: Snapshot, before: Snapshot | None) -> Text:
    if before is None or now.at <= before.at:
        return _line("rates: from the next refresh on")
    elapsed = now.at - before.at
    changes = (
        now.max_id - before.max_id,
        now.counts.get("done", 0) - before.counts.get("done", 0),
        now.counts.get("dead", 0) - before.counts.get("dead", 0),
        now.duplicates - before.duplicates,
    )
    # A purge (or a requeue) between two refreshes makes a count go down: no rate then.
    shown = [f"{n / elapsed:.1f}" if n >= 0 else "-" for n in changes]
    names = ("accepted", "handled", "dead", "duplicates")
    per_second = "  ".join(f"{name} {value}" for name, value in zip(names, shown, strict=True))
    return _line(f"rates/s over the last {elapsed:.1f} s: {per_second}")


def _dead(s: Snapshot) -> list[Text]:
    total = s.counts.get("dead", 0)
    if not total:
        return [_line("dead letters: none")]
    lines = [_line(f"dead letters: {total} (newest {min(len(s.dead), DEAD_LINES)})", "bold")]
    for d in s.dead[:DEAD_LINES]:
        died = str(d.get("died_at") or "")[11:19]  # the time of day of the ISO stamp
        error = str(d.get("last_error") or "").replace("\n", " ")
        lines.append(
            _line(f"  #{d['id']} {d['event_name']}  attempts {d['attempts']}  {died}  {error}")
        )
    return lines


def _spill(spill: dict[str, Any]) -> Text:
    if not spill.get("total") and not spill.get("quarantined_records"):
        return _line(f"spill: empty ({size_text(spill.get('bytes_on_disk', 0))} on disk)")
    pending = ", ".join(f"{name} {n}" for name, n in spill["pending"].items() if n)
    oldest = spill.get("oldest_spilled_age_s")
    parts = [
        f"spill: {spill['total']} events ({pending or 'none'})",
        f"{size_text(spill['bytes_on_disk'])} on disk",
        f"oldest {_seconds(oldest) if oldest is not None else '-'}",
        f"quarantined {spill['quarantined_records']}",
    ]
    return _line(", ".join(parts))


# --- the loop -----------------------------------------------------------------------------------


def run_top(
    db_path: str,
    *,
    interval_s: float,
    iterations: int | None = None,
    console: Console | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Refresh every `interval_s` until Ctrl-C or `iterations` refreshes; returns how many."""
    inspector = Inspector(Config.load(db_path=db_path))
    console = console or Console(highlight=False)
    before: Snapshot | None = None
    done = 0
    with Live(console=console, auto_refresh=False) as live:
        try:
            while iterations is None or done < iterations:
                if done:
                    sleep(interval_s)
                now = read_snapshot(inspector)
                done += 1
                title = (
                    f"eventqueue top  {db_path}  {time.strftime('%H:%M:%S')}  "
                    f"refresh {done} (every {interval_s:g} s; Ctrl-C quits)"
                )
                live.update(render(now, before, title, console.size.height), refresh=True)
                before = now
        except KeyboardInterrupt:
            pass
    return done
