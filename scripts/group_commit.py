"""Put throughput with group commit against one commit per put (issue 3's figure).

Run: .venv/bin/python scripts/group_commit.py [EVENTS]
"One commit per put": one producer awaiting each put, so every put is its own transaction.
"Group commit": 16 producers keeping 64 puts each in flight, gathered by the writer.
Both with the default durability (synchronous=FULL) on fresh files.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

from eventqueue import EventQueue


def event(i: int) -> dict[str, object]:
    return {
        "event_type": "bench",
        "event_name": f"e{i % 8}",
        "aggregate_id": str(i),
        "attributes": {"i": i},
    }


async def serial(path: str, n: int) -> float:
    async with EventQueue.open(path, queue_size=10 * n) as q:
        start = time.perf_counter()
        for i in range(n):
            await q.put(event(i))
        return n / (time.perf_counter() - start)


async def grouped(path: str, n: int, producers: int = 16, in_flight: int = 64) -> float:
    async with EventQueue.open(path, queue_size=10 * n) as q:

        async def produce(offset: int) -> None:
            slots = asyncio.Semaphore(in_flight)

            async def one(i: int) -> None:
                async with slots:
                    await q.put(event(i))

            await asyncio.gather(*(one(i) for i in range(offset, n, producers)))

        start = time.perf_counter()
        await asyncio.gather(*(produce(p) for p in range(producers)))
        return n / (time.perf_counter() - start)


async def main(n: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        one = await serial(str(Path(folder) / "serial.db"), n)
        many = await grouped(str(Path(folder) / "grouped.db"), n * 10)
    print(f"one commit per put: {one:.0f} puts/s")
    print(f"group commit (16 producers x 64 in flight): {many:.0f} puts/s ({many / one:.1f}x)")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000))
