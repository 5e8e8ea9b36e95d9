"""The bench's output: a table for people, the settings line, and the rows as a JSON list."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from eventqueue.tools.bench.rows import Row

_SHARED = ("durability", "journal_mode", "synchronous", "max_batch_size", "batch_window_ms")


def report(rows: list[Row], json_path: str | None, *, console: Console | None = None) -> None:
    """The table for people (and settings); `json_path` gets the rows as a JSON list."""
    if console is None:
        console = Console(highlight=False)
        if not console.is_terminal:
            console = Console(highlight=False, width=160)  # not 80 columns in a log or a pipe
    console.print(_table(rows))
    console.print(_settings_line(rows), soft_wrap=True)
    if json_path is not None:
        Path(json_path).write_text(json.dumps(rows, indent=2, allow_nan=False) + "\n")


def _table(rows: list[Row]) -> Table:
    table = Table("scenario", "events/s", "baseline/s", "ratio", "figures", "target", "met")
    for row in rows:
        if not row.get("available", True):
            table.add_row(row["scenario"], "", "", "", row["note"], "", "")
            continue
        table.add_row(
            row["scenario"],
            _num(row.get("events_per_s")),
            _num(row.get("baseline_events_per_s")),
            f"{row['ratio']:.2f}x" if "ratio" in row else "",
            _figures(row),
            row.get("target", ""),
            {True: "yes", False: "NO", None: ""}[row.get("met")],
        )
    return table


def _settings_line(rows: list[Row]) -> str:
    common: dict[str, Any] = next((r["settings"] for r in rows if "settings" in r), {})
    if any(r.get("backend") == "postgresql" for r in rows):
        return _server_line(rows, common)
    return (
        "settings: "
        + ", ".join(f"{k}={common[k]}" for k in _SHARED if k in common)
        + f"; PRAGMAs on both sides: {'; '.join(common.get('pragmas', []))}"
    )


def _server_line(rows: list[Row], common: dict[str, Any]) -> str:
    """PostgreSQL: no PRAGMAs; the server settings the queue and the baseline share."""
    server: dict[str, Any] = next(
        (r["settings"]["server"] for r in rows if "server" in r.get("settings", {})), {}
    )
    shown = ", ".join(f"{k}={v}" for k, v in server.items()) or "not read (no baseline ran)"
    return (
        "settings: backend=postgresql (scratch schemas, dropped afterwards), "
        + ", ".join(f"{k}={common[k]}" for k in _SHARED[3:] if k in common)
        + f"; server settings on both sides: {shown}"
    )


def _num(value: Any) -> str:
    return "" if value is None else f"{value:,.0f}"


def _figures(row: Row) -> str:
    parts: list[str] = []
    if row.get("p99_ms") is not None:
        parts.append(f"p50 {row['p50_ms']:.2f} ms, p99 {row['p99_ms']:.2f} ms")
    if "baseline_single_row_events_per_s" in row:
        parts.append(f"baseline one row per tx {row['baseline_single_row_events_per_s']:,.0f}/s")
    if "fused_events_per_s" in row:
        parts.append(f"fused {row['fused_events_per_s']:,.0f}/s")
    if "vs_2k" in row:
        parts.append(f"{row['vs_2k']:.2f}x the 2k rate")
    rss = [(k, v) for k, v in row.items() if k.startswith("rss_mb_") and k != "rss_mb_start"]
    if rss:
        parts.append(", ".join(f"{k[len('rss_mb_') :]} {v:.0f} MB" for k, v in rss))
        parts.append(f"peak {row['peak_rss_mb']:.0f} MB")
    if "hosts" in row:  # the hosts scenario
        shares = "/".join(f"{share:.0%}" for share in row["share"])
        parts.append(
            f"{row['hosts']} hosts, shares {shares}, CRITICAL p99 {row['critical_p99_ms'] or 0:.1f} ms, "
            f"lost {row['lost']}, twice {row['handled_twice_at_attempt_1']}"
        )
        if "vs_one_host" in row:
            parts.append(f"{row['vs_one_host']:.2f}x one host")
    if "avg_batch_size" in row:
        parts.append(f"avg batch {row['avg_batch_size']}")
    if "events_claimed" in row:
        parts.append(f"{row['events_claimed']} events in {row['seconds']} s")
    if "put_cost_ratio" in row:  # coalesce: handler calls with and without, put cost
        plain, merged = row["plain"], row["coalescing"]
        parts.append(f"handler calls {merged['handler_calls']:,} vs {plain['handler_calls']:,}")
        parts.append(f"put {row['put_cost_ratio']:.2f}x a plain put")
    return "; ".join(parts)
