"""`eventqueue stats` lists the live lease owners: each open queue, with the leases it holds;
a process killed with SIGKILL is no longer listed (its process is gone)."""

from __future__ import annotations

import json
import os
import signal
import textwrap
from typing import Any

from click.testing import CliRunner, Result

from eventqueue.tools import cli

# argv: db. Puts and claims one event, prints its pid, then waits to be killed.
HOLDER = textwrap.dedent(
    """
    import asyncio, json, os, sys
    from eventqueue import EventQueue

    async def main(path):
        async with EventQueue.open(path, batch_window_ms=0) as q:
            await q.put({"event_name": "job", "aggregate_id": 1})
            assert await q.claim("holder") is not None
            print(json.dumps({"pid": os.getpid()}), flush=True)
            await asyncio.to_thread(sys.stdin.readline)

    asyncio.run(main(sys.argv[1]))
    """
)


def run(*args: str) -> Result:
    clean: dict[str, str | None] = {k: None for k in os.environ if k.startswith("EVENT_")}
    return CliRunner().invoke(cli.main, list(args), env={**clean, "COLUMNS": "200"})


def test_stats_lists_live_owners_and_drops_a_killed_one(db_path: str, spawn: Any) -> None:
    holder = spawn(HOLDER, db_path, name="holder")
    pid = json.loads(holder.expect())["pid"]

    found = json.loads(run("stats", "--db", db_path, "--json").stdout)["owners"]
    assert [(o["pid"], o["leases"]) for o in found] == [(pid, 1)]
    assert found[0]["owner"].startswith(f"{found[0]['host']}/{pid}/")
    text = run("stats", "--db", db_path).stdout
    assert "live owners" in text and str(pid) in text

    holder.proc.send_signal(signal.SIGKILL)
    holder.proc.wait(timeout=30)
    assert json.loads(run("stats", "--db", db_path, "--json").stdout)["owners"] == []
    assert "live owners" not in run("stats", "--db", db_path).stdout
