"""Spill folders are keyed by a stable writer identity, not by their path.

With several hosts on one shared database, two hosts' folders may have the same path on their
own disks; keyed by path, one host's promotion positions would move the other's. The identity
is made once per folder (host and a random id), stored durably in it, and kept for its life.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
from pathlib import Path
from typing import Any

from reliability.workload import payload

from eventqueue.runtime.overflow.folders import (
    IDENTITY_FILE,
    legacy_name,
    read_identity,
    writer_identity,
)
from eventqueue.runtime.overflow.log import SpillLog


def test_a_new_folder_gets_a_host_and_random_identity_that_stays(tmp_path: Path) -> None:
    folder = tmp_path / "events.db.spill"
    folder.mkdir()
    first = writer_identity(str(folder), str(tmp_path / "events.db"))
    assert first.startswith(f"{socket.gethostname()}/") and len(first.split("/")[1]) == 32
    assert (folder / IDENTITY_FILE).read_text().strip() == first
    assert writer_identity(str(folder), str(tmp_path / "events.db")) == first
    assert read_identity(str(folder), str(tmp_path / "events.db")) == first


def test_two_folders_at_the_same_relative_path_never_share_a_key(tmp_path: Path) -> None:
    """Host A and host B each spill into `<db>.spill` beside their own copy of the path."""
    host_a, host_b = tmp_path / "a", tmp_path / "b"
    keys = []
    for host in (host_a, host_b):
        (host / "events.db.spill").mkdir(parents=True)
        keys.append(writer_identity(str(host / "events.db.spill"), str(host / "events.db")))
    assert legacy_name(str(host_a / "events.db"), str(host_a / "events.db.spill")) == (
        legacy_name(str(host_b / "events.db"), str(host_b / "events.db.spill"))
    ), "the old path-based key would have collided"
    assert keys[0] != keys[1]


def test_a_folder_keeps_its_identity_when_moved(tmp_path: Path) -> None:
    folder = tmp_path / "spill"
    folder.mkdir()
    identity = writer_identity(str(folder), str(tmp_path / "events.db"))
    shutil.move(str(folder), str(tmp_path / "elsewhere"))
    assert read_identity(str(tmp_path / "elsewhere"), str(tmp_path / "events.db")) == identity


def test_a_folder_spilled_before_identities_keeps_its_path_key(tmp_path: Path) -> None:
    """Its promotion positions were committed under the path key: they must still apply."""
    db = tmp_path / "events.db"
    folder = tmp_path / "events.db.spill"
    spill = SpillLog.open(folder)
    spill.append(2, [b"x"])
    spill.close()
    assert not (folder / IDENTITY_FILE).exists()
    assert writer_identity(str(folder), str(db)) == "events.db.spill"
    assert (folder / IDENTITY_FILE).read_text().strip() == "events.db.spill"


async def test_promotion_positions_are_stored_under_the_identity(
    open_queue: Any, db_path: str, query: Any
) -> None:
    q = await open_queue(queue_size=1, batch_window_ms=0)
    results = await q.put_many([payload(i) for i in range(5)])
    assert any(r.spilled for r in results)
    folder = Path(q.overflow.directory)
    identity = (folder / IDENTITY_FILE).read_text().strip()
    assert q.overflow.name == identity
    # Consumers free room; the promoter moves the spill in and commits its positions.
    async with asyncio.timeout(30):
        while q.overflow.pending() or await q.store.unfinished_count():
            batch = await q.next_batch("drain", timeout=1.0)
            if batch is not None:
                await q.ack(batch)
    assert q.metrics.outcomes["promoted"] >= 1
    logs = {row[0] for row in query("SELECT DISTINCT log FROM spill_positions")}
    assert logs == {identity}
