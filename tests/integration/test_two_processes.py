"""Two OS processes claiming from one file never receive the same event, and miss none."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import eventqueue
from eventqueue import EventQueue

EVENTS = 2_000

# Each consumer opens the queue, says "ready", waits for "go" (so both claim concurrently),
# then claims and acks until nothing is left and prints the ids it received as JSON.
CONSUMER = textwrap.dedent(
    """
    import asyncio, json, sys
    from eventqueue import EventQueue

    async def main(path, name):
        async with EventQueue.open(path, batch_window_ms=0, lease_s=3600) as q:
            print("ready", flush=True)
            sys.stdin.readline()
            received = []
            while (batch := await q.claim(consumer=name)) is not None:
                received.extend(batch.ids)
                await q.ack(batch)
        print(json.dumps(received), flush=True)

    asyncio.run(main(sys.argv[1], sys.argv[2]))
    """
)


async def fill(path: str) -> list[int]:
    async with EventQueue.open(path, batch_window_ms=0, queue_size=EVENTS) as q:
        events = [{"event_name": f"job_{i % 7}", "aggregate_id": i} for i in range(EVENTS)]
        return [r.id for r in await q.put_many(events) if r.id is not None]


def spawn(path: str, name: str) -> subprocess.Popen[str]:
    # A fresh interpreter, never a fork: a SQLite connection must not cross fork() (F12).
    package_root = str(Path(eventqueue.__file__).resolve().parent.parent)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])),
    }
    return subprocess.Popen(
        [sys.executable, "-c", CONSUMER, path, name],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_two_processes_never_receive_the_same_event(db_path: str, query) -> None:
    put_ids = asyncio.run(fill(db_path))
    assert len(put_ids) == EVENTS
    consumers = [spawn(db_path, f"proc-{n}") for n in (1, 2)]
    # A hung child must fail the test, not hang it: the handshake reads have no timeout.
    watchdog = threading.Timer(120, lambda: [proc.kill() for proc in consumers])
    watchdog.start()
    try:
        for proc in consumers:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready", proc.stderr and proc.stderr.read()
        for proc in consumers:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        outputs = [proc.communicate(timeout=120) for proc in consumers]
    finally:
        watchdog.cancel()
        for proc in consumers:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()

    for proc, (_, stderr) in zip(consumers, outputs, strict=True):
        assert proc.returncode == 0, stderr
    received = [json.loads(stdout) for stdout, _ in outputs]
    first, second = received
    assert len(first) == len(set(first))
    assert len(second) == len(set(second))
    assert set(first).isdisjoint(second)
    assert sorted(first + second) == sorted(put_ids)
    assert query("SELECT status, count(*), max(attempts) FROM events GROUP BY status") == [
        ("done", EVENTS, 1)
    ]
