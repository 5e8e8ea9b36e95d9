"""What the `eventqueue` commands print: JSON for scripts, rich tables and sentences for people.

Pure presentation: each function takes the dict a command already built and returns (or
prints) its rendering; nothing here reads the database.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable, Iterable
from typing import Any

import click
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from eventqueue.core.models import Priority
from eventqueue.core.records import Refusal, SchemaStatus


def emit(data: Any, as_json: bool, render: Callable[[Any], RenderableType]) -> None:
    """JSON for scripts, or a rich rendering for people."""
    if as_json:
        click.echo(json.dumps(data, indent=2, ensure_ascii=False))
        return
    rendered = render(data)
    if isinstance(rendered, str):
        click.echo(rendered)  # a sentence: never wrapped or read as markup
    else:
        Console(highlight=False).print(rendered)


def watch_json(
    read: Callable[[], dict[str, Any]], seconds: float, sleep: Callable[[float], None]
) -> None:
    """One JSON line per refresh until Ctrl-C."""
    try:
        while True:
            click.echo(json.dumps(read()))
            sleep(seconds)
    except KeyboardInterrupt:
        pass


def watch_live(
    read: Callable[[], dict[str, Any]], seconds: float, sleep: Callable[[float], None]
) -> None:
    """A live table, re-read (a fresh short transaction) every `seconds` until Ctrl-C."""
    with Live(console=Console(highlight=False), auto_refresh=False) as live:
        try:
            while True:
                live.update(render_stats(read()), refresh=True)
                sleep(seconds)
        except KeyboardInterrupt:
            pass


# --- one function per command -------------------------------------------------------------------


def render_migrated(db: str, previous: str | None, current: str) -> str:
    """`migrate`: what the upgrade did."""
    if previous == current:
        return f"{db}: schema already at head ({current})"
    return f"{db}: schema upgraded from {previous or 'nothing'} to {current}"


def render_schema(status: SchemaStatus) -> str:
    """`migrate --check`: the revision against head, and the command that fixes it."""
    fix = f"run `eventqueue migrate --db {shlex.quote(status['db'])}`"
    verdict = {
        "current": "up to date",
        "behind": f"behind: {fix}",
        "missing": f"no database yet: {fix} to create it",
    }.get(status["state"], status["state"])
    return f"{status['db']}: schema {status['current'] or 'none'}, head {status['head']}: {verdict}"


def render_stats(data: dict[str, Any]) -> RenderableType:
    """`stats`: counts by status × priority, then the summary and the spill."""
    counts: dict[str, dict[str, int]] = data["counts"]
    priorities = by_priority(next(iter(counts.values()), {}))
    table = Table("status", *priorities, "total", title="events")
    for column in table.columns[1:]:
        column.justify = "right"
    for status, row in counts.items():
        values = [row.get(p, 0) for p in priorities]
        table.add_row(status, *map(str, values), str(sum(values)))
    oldest = data["oldest_pending_age_s"]
    summary = pairs(
        {
            "oldest pending": "none" if oldest is None else f"{oldest:.3f} s",
            "ready batches": data["ready_batches"],
            "duplicates suppressed": data["duplicates_suppressed"],
            "superseded (coalesced)": data.get("superseded", 0),
        }
    )
    parts: list[RenderableType] = [table, summary]
    if data["spill"]:
        parts += [Text("spill", style="bold"), pairs(spill_lines(data["spill"]))]
    if data.get("key_limits"):
        parts.append(render_key_limits(data["key_limits"]))
    if data.get("owners"):
        parts.append(render_owners(data["owners"]))
    return Group(*parts)


def render_key_limits(uses: dict[str, dict[str, Any]]) -> RenderableType:
    """The key limits section of `stats`: per limited key, batches leased, claims held back."""
    table = Table("batch key", "in flight", "claims held back", "tokens", title="key limits")
    for key, use in uses.items():
        tokens = use.get("tokens")
        table.add_row(
            Text(key),
            str(use["in_flight"]),
            str(use["held_back"]),
            "-" if tokens is None else f"{tokens:.1f}",
        )
    return table


def render_owners(owners: list[dict[str, Any]]) -> RenderableType:
    """The owners section of `stats`: every live queue and the leases it holds."""
    columns = ("owner", "host", "pid", "started at", "heartbeat age (s)", "leases")
    table = Table(*columns, title="live owners")
    for o in owners:
        table.add_row(
            Text(o["owner"]),
            Text(o["host"]),
            str(o["pid"]),
            o["started_at"] or "-",
            f"{o['heartbeat_age_s']:.3f}",
            str(o["leases"]),
        )
    return table


def by_priority(names: Iterable[str]) -> list[str]:
    """Priority names CRITICAL first, as `top` and the demo show them (others after)."""
    order = {p.name: -int(p) for p in Priority}
    return sorted(names, key=lambda name: order.get(name, 0))


def spill_lines(spill: dict[str, Any]) -> dict[str, str]:
    """The spill section of `stats` in words (the JSON keeps its field names)."""
    folders = spill.get("directories") or [spill.get("directory", "")]
    shown = folders[0] + (f" (and {len(folders) - 1} more)" if len(folders) > 1 else "")
    pending = spill.get("pending", {})
    each = ", ".join(f"{name} {pending[name]}" for name in by_priority(pending))
    oldest = spill.get("oldest_spilled_age_s")
    return {
        "folder": shown,
        "waiting": f"{spill.get('total', 0)} events ({each})" if each else "0 events",
        "oldest spilled": "none" if oldest is None else f"{oldest:.3f} s ago",
        "on disk": on_disk_text(spill),
        "quarantined": f"{spill.get('quarantined_records', 0)} records "
        f"({size_text(spill.get('quarantined_bytes', 0))})",
    }


def on_disk_text(spill: dict[str, Any]) -> str:
    """Bytes on disk, and how much of it is promoted already (deleted at the next start)."""
    text = size_text(spill.get("bytes_on_disk", 0))
    promoted = spill.get("promoted_bytes", 0)
    if promoted:
        text += f" ({size_text(promoted)} of it already promoted, to be deleted)"
    return text


def size_text(n: int) -> str:
    """Bytes for people: 0 B, 812 B, 2.9 MB (powers of 1000)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def render_peek(data: dict[str, Any]) -> RenderableType:
    """`peek`: the next batches in claim order."""
    if not data["batches"]:
        return "nothing is ready to claim"
    table = Table("#", "batch key", "priority", "events", "ids", "oldest age (s)")
    for n, batch in enumerate(data["batches"], 1):
        ids = [str(e["id"]) for e in batch["events"]]
        shown = ", ".join(ids[:8]) + (" …" if len(ids) > 8 else "")
        table.add_row(
            str(n),
            Text(batch["key"]),
            batch["priority"],
            str(len(ids)),
            shown,
            f"{batch['oldest_age_s']:.3f}",
        )
    return table


def render_event(info: dict[str, Any]) -> RenderableType:
    """`show`: every column of one event, then its payload."""
    fields = {k: v for k, v in info.items() if k != "payload"}
    payload = json.dumps(info["payload"], indent=2, ensure_ascii=False)
    return Group(pairs(fields), Text("payload", style="bold"), Text(payload))


def render_dead(data: dict[str, Any]) -> RenderableType:
    """`dead`: one row per dead letter, with its last error."""
    if not data["dead"]:
        return "no dead letters"
    table = Table("id", "event", "priority", "attempts", "died at", "last error")
    for d in data["dead"]:
        table.add_row(
            str(d["id"]),
            Text(d["event_name"]),
            d["priority"],
            str(d["attempts"]),
            d["died_at"] or "",
            Text(d["last_error"] or ""),
        )
    return table


def refusal_message(refused: list[Refusal]) -> str:
    """`requeue`: why nothing was requeued."""
    reasons = [
        f"event {r['id']} does not exist"
        if r["status"] == "missing"
        else f"event {r['id']} is {r['status']}"
        for r in refused
    ]
    return f"nothing requeued: only dead events can be requeued, and {'; '.join(reasons)}"


def render_vacuum(result: dict[str, Any]) -> str:
    """`vacuum`: pages freed and how far the WAL checkpoint got (tables vacuumed on PostgreSQL)."""
    if "vacuumed" in result:
        return f"vacuumed and analysed {', '.join(result['vacuumed'])}"
    text = (
        f"freed {result['freed_pages']} page(s); WAL checkpoint: "
        f"{result['checkpointed_frames']} of {result['wal_frames']} frame(s)"
    )
    if result["checkpoint_busy"]:
        text += " (incomplete: a reader or writer holds the WAL; retry when it is done)"
    return text


def render_rows(result: dict[str, Any]) -> RenderableType:
    """`sql`: the result set as a table, NULL shown dim."""
    caption = f"first {len(result['rows'])} rows" if result["truncated"] else None
    table = Table(*result["columns"], caption=caption)
    for row in result["rows"]:
        table.add_row(*(Text("NULL", style="dim") if v is None else Text(str(v)) for v in row))
    return table


def pairs(values: dict[str, Any]) -> Table:
    """A two-column grid of name and value (None shown empty)."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    for name, value in values.items():
        grid.add_row(name, Text("" if value is None else str(value)))
    return grid
