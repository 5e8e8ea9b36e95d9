"""Peak RSS while a 1,000,000-event backlog spills to disk (issue 4's figure).

Run: .venv/bin/python scripts/spill_backlog_rss.py [EVENTS]
Puts EVENTS events (default 1,000,000) into a fresh queue with the default EVENT_QUEUE_SIZE
(1000) and no consumer, so all but the first thousand spill; prints throughput and peak RSS
after 100k and at the end. Memory must stay flat: nothing in RAM grows with the spill.
"""

from __future__ import annotations

import asyncio
import resource
import sys
import tempfile
import time
from pathlib import Path

from eventqueue import EventQueue


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def main(total: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        async with EventQueue.open(str(Path(folder) / "events.db")) as q:
            start = time.perf_counter()
            marks: dict[int, float] = {}
            for base in range(0, total, 1000):
                await q.put_many(
                    {
                        "event_type": "bench",
                        "event_name": f"e{i % 8}",
                        "aggregate_id": str(i),
                        "attributes": {"i": i, "pad": "x" * 200},
                    }
                    for i in range(base, base + 1000)
                )
                if base + 1000 in (100_000, total):
                    marks[base + 1000] = rss_mb()
            elapsed = time.perf_counter() - start
            spill = (await q.stats()).spill
        print(f"events={total} seconds={elapsed:.1f} events_per_s={total / elapsed:.0f}")
        print(f"spilled={spill['total']} bytes_on_disk={spill['bytes_on_disk']}")
        for count, mb in marks.items():
            print(f"peak_rss_mb_after_{count}={mb:.1f}")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000))
