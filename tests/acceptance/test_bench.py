"""`eventqueue bench --quick` completes and reports sane figures. Speed is never asserted here:
the figures are reported by the command, not judged by tests."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REQUIRED = {
    "put",
    "claim_ack_2k",
    "claim_ack_20k",
    "end_to_end",
    "claim_loop",
    "critical_latency",
    "critical_latency_busy",
    "critical_latency_saturated",
    "spill_put",
    "promote",
    "memory",
}
WITH_BASELINE = {"put", "put_many", "claim_ack_2k", "claim_ack_20k"}
# Bounds that only catch a broken run (an hour-long run, a figure in the wrong unit), never speed.
SANE_LIMIT_S = 600.0
SANE_RSS_MB = 64_000.0


def positive(row: dict[str, Any], field: str) -> float:
    value = row.get(field)
    assert isinstance(value, int | float) and not isinstance(value, bool), (field, row)
    assert math.isfinite(value) and value > 0, (field, row)
    return float(value)


def test_quick_bench_completes_with_sane_figures(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENT_")}
    done = subprocess.run(
        [sys.executable, "-m", "eventqueue", "bench", "--quick", "--json", str(out)],
        env={**env, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=SANE_LIMIT_S,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]

    rows: list[dict[str, Any]] = json.loads(out.read_text())
    by_name = {row["scenario"]: row for row in rows}
    assert len(by_name) == len(rows), "one row per scenario"
    assert set(by_name) >= REQUIRED, sorted(set(by_name))
    assert "claim_ack_1m" not in by_name, "the 1,000,000 backlog is for the full run only"
    for name in by_name:
        assert name in done.stdout, f"{name} missing from the printed table"

    for row in rows:
        assert row["mode"] == "quick"
        assert row["backend"] == "sqlite"  # the default, without --db
        if not row["available"]:
            assert row["scenario"] in {"spill_put", "promote"}, row
            assert row["note"], row
            continue
        settings = row["settings"]
        assert settings["durability"] in {"full", "normal"}
        assert any("journal_mode=WAL" in p for p in settings["pragmas"])
        assert settings["journal_mode"] == "wal"
        assert settings["synchronous"] in {"FULL", "NORMAL"}
        if not row["scenario"].startswith("critical_latency") and row["scenario"] != "memory":
            positive(row, "events_per_s")
        if row["scenario"] in WITH_BASELINE:
            rate, base = positive(row, "events_per_s"), positive(row, "baseline_events_per_s")
            assert math.isclose(positive(row, "ratio"), rate / base, rel_tol=0.01), row
        if row["scenario"].startswith("claim_ack_"):
            assert row["events_claimed"] > 0 and row["baseline_events_claimed"] > 0
            if "fused_events_per_s" in row:
                positive(row, "fused_events_per_s")

    for name in ("critical_latency", "critical_latency_busy", "critical_latency_saturated"):
        latency = by_name[name]
        p50, p99 = positive(latency, "p50_ms"), positive(latency, "p99_ms")
        assert p50 <= p99 < SANE_LIMIT_S * 1000
        assert 0 < latency["criticals_handled"] <= latency["criticals"]
        assert 0 < positive(latency, "fsync_p50_ms") <= positive(latency, "fsync_p99_ms")

    saturated = by_name["critical_latency_saturated"]
    offered = positive(saturated, "offered_per_s")
    # 1.5 x the end_to_end rate of the same run: the source offers more than the store takes.
    assert math.isclose(offered, 1.5 * by_name["end_to_end"]["events_per_s"], rel_tol=0.01)
    assert isinstance(saturated["stream_blocked"], bool)
    assert saturated["unaccounted"] == 0, saturated

    memory = by_name["memory"]
    for field in ("rss_mb_20k", "rss_mb_100k", "peak_rss_mb"):
        assert positive(memory, field) < SANE_RSS_MB
    assert memory["peak_rss_mb_whole_run"] >= memory["peak_rss_mb"]

    end_to_end = by_name["end_to_end"]
    assert end_to_end["processed"] > 0
    assert end_to_end["handled"] + end_to_end["duplicates"] >= end_to_end["processed"]
