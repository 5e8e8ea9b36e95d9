"""Without the extras (issue 13): the core path imports neither prometheus_client nor
opentelemetry, and asking for metrics or tracing without them says what to install.

Each check runs in a fresh interpreter, so nothing imported by other tests can hide an import.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

WORKLOAD = """
import asyncio, sys
{prelude}
import eventqueue
from eventqueue import Dispatcher, EventQueue

async def main() -> None:
    async with EventQueue.open(sys.argv[1], batch_window_ms=0) as q:
        await q.put({{"event_name": "a", "aggregate_id": 1}})
        await q.put_many([{{"event_name": "b", "aggregate_id": i}} for i in range(3)])
        batch = await q.claim()
        assert batch is not None
        await q.ack(batch)
        await q.stats()
        d = Dispatcher(q)

        async def handler(events):
            pass

        d.add_handler("*", handler)
        await d.run()
        {extra}

asyncio.run(main())
telemetry = ("prometheus_client", "opentelemetry")
loaded = sorted(m for m, v in sys.modules.items() if m.split(".")[0] in telemetry and v is not None)
print("loaded:", loaded)
"""


def run(tmp_path: Path, prelude: str = "", extra: str = "pass") -> str:
    script = WORKLOAD.format(prelude=prelude, extra=extra)
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "events.db")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_core_path_imports_no_telemetry_package(tmp_path: Path) -> None:
    # The extras are installed in the test environment: nothing may import them uninvited.
    assert "loaded: []" in run(tmp_path)


def test_metrics_and_tracing_without_the_extras_say_what_to_install(tmp_path: Path) -> None:
    # sys.modules[name] = None: the import fails and find_spec says "not installed".
    prelude = "sys.modules['prometheus_client'] = None; sys.modules['opentelemetry'] = None"
    extra = """
        from eventqueue import ConfigError
        from eventqueue.runtime.telemetry import instrument
        for attempt in (lambda: Dispatcher(q, metrics_port=0), lambda: instrument(q)):
            try:
                attempt()
            except ConfigError as exc:
                print("refused:", exc)
"""
    out = run(tmp_path, prelude, extra)

    assert (
        "refused: metrics_port needs prometheus-client: pip install 'eventqueue[prometheus]'" in out
    )
    assert "refused: tracing needs opentelemetry-api: pip install 'eventqueue[otel]'" in out
    assert "loaded: []" in out
