"""Two processes putting versions of one order at once (issue 23): every version is accepted,
one event of the order waits (puts of one key are serialised: SQLite's write lock,
PostgreSQL's advisory lock per key), and its `superseded` counts every other version. Real
subprocesses, fresh interpreters."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from eventqueue import EventQueue
from eventqueue.core.config import Config

VERSIONS = 25
WRITER = """
import asyncio, sys
from eventqueue import EventQueue

async def main(path, spill, tag):
    async with EventQueue.open(path, spill_dir=spill, coalesce_by="aggregate_id",
                               durability="normal", migrate=True) as q:
        for v in range(int(sys.argv[4])):
            r = await q.put({"event_name": "order_updated", "aggregate_id": "o1",
                             "attributes": {"v": v, "writer": tag}})
            assert r.accepted, r

asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3]))
"""


async def test_two_processes_putting_one_order_leave_one_pending_event(
    backend_config: Config, tmp_path: Path
) -> None:
    async with EventQueue.open(config=backend_config, migrate=True):
        pass  # the schema exists before the writers race
    writers = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            WRITER,
            backend_config.db_path,
            str(tmp_path / f"spill-{tag}"),
            tag,
            str(VERSIONS),
        )
        for tag in ("a", "b")
    ]
    assert [await asyncio.wait_for(w.wait(), 120) for w in writers] == [0, 0]

    config = backend_config.replace(batch_window_ms=0, max_batch_size=100)
    async with EventQueue.open(config=config) as q:
        batch = await q.claim("check")
        assert batch is not None
        (event,) = batch.events
        assert event.superseded == 2 * VERSIONS - 1
        assert (await q.stats()).superseded == 2 * VERSIONS - 1
