"""The demo's report for people: counts, batches, latency, checks, and where to look next."""

from __future__ import annotations

from typing import Any

import click
from rich.console import Console
from rich.table import Table

# The plan: a CRITICAL event reaches its handler within 10 ms (p99, receipt to handler start).
CRITICAL_TARGET_P99_MS = 10.0


def print_report(report: dict[str, Any]) -> None:
    """The report for people: counts, batches, latency, checks, and where to look next."""
    console = Console(highlight=False, soft_wrap=True)
    state = (
        "finished"
        if report["finished"]
        else "stopped at the deadline (raise --seconds)"
        if report["stopped_by"] == "deadline"
        else "interrupted"
    )
    console.print(f"\n[bold]eventqueue demo[/bold] {state} in {report['seconds']:.1f}s")
    stream = report["stream"]
    resumed = ", ".join(str(i or "-") for i in stream["last_event_ids"])
    console.print(_pairs(report["events"]))
    superseded = report["events"].get("superseded", 0)
    if superseded:
        console.print(
            f"coalescing saved {superseded} handler calls: {superseded} order_updated versions "
            "were folded into a pending event of their order (latest wins)"
        )
    console.print(
        f"stream: {stream['connections']} connections (the first dropped after "
        f"{stream['dropped_after']} events); Last-Event-ID per connection: {resumed}\n"
    )
    console.print(_batch_table(report["batches"]), _latency_table(report["latency_ms"]))
    if "critical_target" in report:
        console.print(_target_line(report["critical_target"]))
    for check in report["checks"]:
        mark = "[green]ok[/green]  " if check["ok"] else "[red]FAIL[/red]"
        console.print(f"{mark} {check['name']}: {check['detail']}")
    click.echo(f"\ndatabase: {report['database']}\nlook inside:")
    for query in report["queries"]:
        click.echo(f"  {query['command']}")
    if "cleanup" in report:
        click.echo(f"the demo's schema is kept; drop it with:\n  {report['cleanup']}")


def _pairs(values: dict[str, Any]) -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column(justify="right")
    for name, value in values.items():
        table.add_row(name.replace("_", " "), str(value))
    return table


def _batch_table(batches: dict[str, Any]) -> Table:
    table = Table("batch key", "batches", "avg size", show_edge=False)
    for key, row in batches["batches_by_key"].items():
        table.add_row(key, str(row["batches"]), str(row["avg_size"]))
    table.add_row("all", str(batches["batches"]), str(batches["avg_batch_size"]), style="bold")
    return table


def _latency_table(latency: dict[str, dict[str, Any]]) -> Table:
    table = Table("priority", "n", "p50 ms", "p99 ms", "max ms", "plan", show_edge=False)
    table.title = "latency, receipt to handler"
    table.caption = (
        "n: first deliveries, the sample of each percentile (a retry would measure its back-off)"
    )
    for name, row in latency.items():
        cells = ("-" if row[k] is None else f"{row[k]:.1f}" for k in ("p50_ms", "p99_ms", "max_ms"))
        target = f"p99 <= {CRITICAL_TARGET_P99_MS:g}" if name == "CRITICAL" else ""
        table.add_row(name, str(row["n"]), *cells, target)
    return table


def _target_line(target: dict[str, Any]) -> str:
    """The plan's CRITICAL target against the measured p99, with its sample size."""
    goal = f"the plan's target: CRITICAL p99 <= {target['p99_ms']:g} ms (receipt to handler)"
    if target["met"] is None:
        return f"{goal}: no CRITICAL event was delivered"
    verdict = "[green]met[/green]" if target["met"] else "[red]missed[/red]"
    return f"{goal}: {verdict}, p99 {target['measured_p99_ms']:.1f} ms over n={target['n']}"
