"""Coalescing as the queue reports it (issue 23): stats(), `eventqueue stats`, Prometheus and
the eq_* views count superseded versions; settings and bad keys fail with clear errors."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from eventqueue import EventQueue
from eventqueue.core.config import Config
from eventqueue.core.errors import ConfigError, InvalidEventError
from eventqueue.core.models import QueueStats
from eventqueue.runtime.telemetry.prometheus import _state_metrics
from eventqueue.tools import cli


def update(order: str, v: int) -> dict[str, Any]:
    return {"event_name": "order_updated", "aggregate_id": order, "attributes": {"v": v}}


async def _coalesced(path: str) -> QueueStats:
    async with EventQueue.open(path, coalesce_by="aggregate_id", durability="normal") as q:
        for v in range(4):
            await q.put(update("o1", v))
        await q.put(update("o2", 0))
        return await q.stats()


def test_stats_cli_prometheus_and_views_count_superseded_versions(tmp_path: Path) -> None:
    path = str(tmp_path / "events.db")
    stats = asyncio.run(_coalesced(path))
    families = {f.name: f for f in _state_metrics(stats)}

    assert stats.superseded == 3
    assert families["eventqueue_superseded"].samples[0].value == 3
    result = CliRunner().invoke(cli.main, ["stats", "--db", path, "--json"])
    assert result.exit_code == 0, result.output
    assert '"superseded": 3' in result.stdout
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT sum(superseded) FROM eq_overview").fetchone() == (3,)
        rows = db.execute("SELECT coalesce_keys, superseded FROM eq_ready_batches").fetchall()
        assert rows == [(2, 3)]


def test_settings_are_read_from_the_environment() -> None:
    env = {
        "DEDUP_WINDOW": "sliding",
        "EVENT_COALESCE_BY": "aggregate_id",
        "EVENT_DEBOUNCE_MS": "250",
        "EVENT_DEBOUNCE_MAX_MS": "1000",
    }
    config = Config.load(env)
    assert (config.dedup_window, config.coalesce_by) == ("sliding", "aggregate_id")
    assert (config.debounce_ms, config.debounce_max_ms) == (250, 1000)


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"DEDUP_WINDOW": "rolling"}, "DEDUP_WINDOW='rolling'"),
        ({"EVENT_COALESCE_BY": "order"}, "EVENT_COALESCE_BY='order'"),
        ({"EVENT_DEBOUNCE_MS": "-1"}, "EVENT_DEBOUNCE_MS"),
        ({"EVENT_DEBOUNCE_MS": "500", "EVENT_DEBOUNCE_MAX_MS": "100"}, "debounce_max_ms=100"),
    ],
)
def test_bad_settings_are_refused_naming_the_setting(env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(")):
        Config.load(env)


async def test_a_coalesce_key_that_is_not_text_is_refused(tmp_path: Path) -> None:
    path = str(tmp_path / "events.db")
    async with EventQueue.open(path, coalesce_by=lambda e: 7, durability="normal") as q:
        with pytest.raises(InvalidEventError, match="coalesce_by must be a string or None"):
            await q.put(update("o1", 1))
        with pytest.raises(InvalidEventError, match="coalesce_key must be a string"):
            await q.put(update("o1", 1), coalesce_key=7)  # type: ignore[arg-type]
        assert await q.store.waiting_count() == 0
