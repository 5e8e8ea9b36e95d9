"""`eventqueue bench --tiny --db postgresql://...`: every scenario runs on scratch schemas of the
server, against raw asyncpg, and leaves no schema behind. Speed is never asserted here."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from pgtest import execute, run_sync

WITH_BASELINE = {"put", "put_many", "claim_ack_2k", "claim_ack_20k"}
SANE_LIMIT_S = 300.0


def positive(row: dict[str, Any], field: str) -> float:
    value = row.get(field)
    assert isinstance(value, int | float) and not isinstance(value, bool), (field, row)
    assert math.isfinite(value) and value > 0, (field, row)
    return float(value)


def bench_schemas(url: str) -> set[str]:
    rows = run_sync(lambda: execute(url, "SELECT nspname FROM pg_namespace"))
    return {r[0] for r in rows if r[0].startswith("eqbench_")}


def test_tiny_bench_runs_every_scenario_on_postgresql(pg_server: str, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENT_")}
    before = bench_schemas(pg_server)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "eventqueue",
            "bench",
            "--tiny",
            "--db",
            pg_server,
            "--json",
            str(out),
        ],
        env={**env, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=SANE_LIMIT_S,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert bench_schemas(pg_server) == before, "scratch schemas left behind"
    assert "backend=postgresql" in done.stdout and "synchronous_commit=" in done.stdout

    rows: list[dict[str, Any]] = json.loads(out.read_text())
    by_name = {row["scenario"]: row for row in rows}
    assert set(by_name) >= WITH_BASELINE | {"end_to_end", "critical_latency", "memory", "hosts"}
    for row in rows:
        assert row["backend"] == "postgresql" and row["mode"] == "tiny"
        assert row["available"], row
        settings = row["settings"]
        assert settings["pragmas"] == settings["journal_mode"] == settings["synchronous"] == "n/a"
        if row["scenario"] in WITH_BASELINE:
            rate, base = positive(row, "events_per_s"), positive(row, "baseline_events_per_s")
            assert math.isclose(positive(row, "ratio"), rate / base, rel_tol=0.01), row
            assert settings["server"]["synchronous_commit"], row
    for name in ("put", "put_many"):
        positive(by_name[name], "baseline_single_row_events_per_s")
    for name in ("claim_ack_2k", "claim_ack_20k"):
        assert by_name[name]["events_claimed"] > 0 and by_name[name]["baseline_events_claimed"] > 0
    latency = by_name["critical_latency"]
    assert 0 < latency["criticals_handled"] <= latency["criticals"]
    assert positive(latency, "p50_ms") <= positive(latency, "p99_ms")
    assert by_name["end_to_end"]["processed"] > 0
    # hosts: 1, 2 and 4 listener processes on one schema; every distinct event handled, none
    # handled twice outside a lease expiry, and every host took a share.
    hosts = [row for row in rows if row["scenario"] == "hosts"]
    assert [row["hosts"] for row in hosts] == [1, 2, 4]
    for row in hosts:
        assert row["lost"] == 0 and row["handled_twice_at_attempt_1"] == 0, row
        assert len(row["share"]) == row["hosts"] and positive(row, "events_per_s"), row
