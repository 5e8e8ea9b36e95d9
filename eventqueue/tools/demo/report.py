"""The demo's report for people: counts, batches, latency, checks, and where to look next."""

from __future__ import annotations

from typing import Any

import click
from rich.console import Console
from rich.table import Table


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
    console.print(
        f"stream: {stream['connections']} connections (the first dropped after "
        f"{stream['dropped_after']} events); Last-Event-ID per connection: {resumed}\n"
    )
    console.print(_batch_table(report["batches"]), _latency_table(report["latency_ms"]))
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
    table = Table("priority", "deliveries", "p50 ms", "p99 ms", "max ms", show_edge=False)
    table.title = "latency, receipt to handler"
    table.caption = "first deliveries only: a retry's wait would measure its back-off"
    for name, row in latency.items():
        cells = ("-" if row[k] is None else f"{row[k]:.1f}" for k in ("p50_ms", "p99_ms", "max_ms"))
        table.add_row(name, str(row["n"]), *cells)
    return table
