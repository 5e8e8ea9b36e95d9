"""`eventqueue listen --metrics-port/--tracing` (issue 13), in-process with click's CliRunner."""

from __future__ import annotations

import contextlib
import json
import socket
import sqlite3
from pathlib import Path

import telemetry_handlers
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from eventqueue.tools import cli


def free_port() -> int:
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def jsonl(path: Path, count: int) -> None:
    events = [{"event_name": "order_created", "aggregate_id": n} for n in range(count)]
    path.write_text("".join(json.dumps(e) + "\n" for e in events))


def test_listen_serves_metrics_while_it_runs(tmp_path: Path) -> None:
    source, db = tmp_path / "in.jsonl", tmp_path / "events.db"
    jsonl(source, 5)
    port = free_port()
    telemetry_handlers.SCRAPED.clear()

    result = CliRunner().invoke(
        cli.main,
        ["listen", str(source), "--handlers", "telemetry_handlers:HANDLERS", "--db", str(db),
         "--metrics-port", str(port)],
        env={"EQ_TEST_METRICS_PORT": str(port), "BATCH_WINDOW_MS": "0"},
    )  # fmt: skip

    assert result.exit_code == 0, result.output
    [text] = telemetry_handlers.SCRAPED
    names = {family.name for family in text_string_to_metric_families(text)}
    assert {"eventqueue_events_put", "eventqueue_events", "eventqueue_batch_size_events"} <= names
    assert "handled 5" in result.output


def test_listen_with_tracing_and_no_sdk_runs_and_stores_no_context(tmp_path: Path) -> None:
    # No SDK configured: the global provider makes no-op spans, whose context is invalid.
    source, db = tmp_path / "in.jsonl", tmp_path / "events.db"
    jsonl(source, 3)

    result = CliRunner().invoke(
        cli.main,
        ["listen", str(source), "--handlers", "listen_handlers:HANDLERS", "--db", str(db),
         "--tracing"],
        env={"LISTEN_LOG": None, "BATCH_WINDOW_MS": "0"},
    )  # fmt: skip

    assert result.exit_code == 0, result.output
    with contextlib.closing(sqlite3.connect(db)) as connection:
        rows = connection.execute("SELECT status, trace_context FROM events").fetchall()
    assert rows == [("done", None)] * 3


def test_bench_telemetry_measures_the_scenarios_both_ways(tmp_path: Path) -> None:
    rows_path = tmp_path / "bench.json"

    result = CliRunner().invoke(
        cli.main,
        ["bench", "--tiny", "--only", "put", "--telemetry", "metrics", "--json", str(rows_path)],
    )

    assert result.exit_code == 0, result.output
    names = [row["scenario"] for row in json.loads(rows_path.read_text())]
    assert names == ["put", "put_many", "put +metrics", "put_many +metrics"]
    assert "telemetry overhead (Prometheus exporter), put: " in result.output
