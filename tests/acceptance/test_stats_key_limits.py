"""`eventqueue stats` and Prometheus show per limited key the batches in flight and the claims
a limit held back, as the running queue's limits (recorded in the database) define them."""

from __future__ import annotations

import asyncio
import json
import os

from click.testing import CliRunner, Result
from prometheus_client.core import Metric

from eventqueue import EventQueue, KeyLimit
from eventqueue.runtime.telemetry.prometheus import _state_metrics
from eventqueue.tools import cli


def run(*args: str) -> Result:
    clean: dict[str, str | None] = {k: None for k in os.environ if k.startswith("EVENT_")}
    return CliRunner().invoke(cli.main, list(args), env={**clean, "COLUMNS": "200"})


async def hold_one_batch(path: str) -> list[Metric]:
    limits = {"mail-handler": KeyLimit(concurrency=1)}
    async with EventQueue.open(path, batch_window_ms=0, key_limits=limits) as q:
        await q.put_many([{"event_name": "mail", "attributes": {"i": i}} for i in range(20)])
        assert await q.claim("a") is not None
        assert await q.claim("b") is None  # held back by the limit
        return list(_state_metrics(await q.stats()))


def test_stats_and_metrics_show_in_flight_and_held_back(db_path: str) -> None:
    metrics = asyncio.run(hold_one_batch(db_path))

    samples = {(m.name, s.labels.get("batch_key")): s.value for m in metrics for s in m.samples}
    assert samples[("eventqueue_key_in_flight_batches", "mail-handler")] == 1
    assert samples[("eventqueue_key_claims_held_back", "mail-handler")] == 1
    found = json.loads(run("stats", "--db", db_path, "--json").stdout)["key_limits"]
    assert found == {"mail-handler": {"in_flight": 1, "held_back": 1, "tokens": None}}
    text = run("stats", "--db", db_path).stdout
    assert "key limits" in text and "mail-handler" in text
