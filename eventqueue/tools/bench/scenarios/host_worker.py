"""One listener process of the `hosts` scenario (hosts.py starts it with `python -m`).

Arguments: the queue's URL, this host's spill folder, the first event number and how many events
it reads from its source, and the file its report goes to. It opens the queue and prints
`ready`; on `go` from its standard input it runs source → Dispatcher → no-op handler until the
whole shared queue is drained (every host's events), then writes one JSON report: each handled
event's number and attempts, CRITICAL receipt-to-handler latencies, and its own times.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from eventqueue.core.models import Event, Priority
from eventqueue.runtime.dispatch.dispatcher import Dispatcher
from eventqueue.runtime.queue import EventQueue
from eventqueue.tools.bench import workload
from eventqueue.tools.bench.harness import CONCURRENCY


class _Handled:
    """What this host's handlers saw."""

    def __init__(self) -> None:
        self.events: list[tuple[str, int]] = []  # (event_id of the content, attempts)
        self.critical_s: list[float] = []

    async def noop(self, events: list[Event]) -> None:
        now = time.time()
        for event in events:
            self.events.append((str(event.payload["event_id"]), event.attempts))
            if event.priority == Priority.CRITICAL:
                self.critical_s.append(now - event.received_at)


async def main(url: str, spill: str, start: int, count: int, out: str) -> None:
    handled = _Handled()
    async with EventQueue.open(url, spill_dir=spill) as q:
        dispatcher = Dispatcher(q, concurrency=CONCURRENCY)
        dispatcher.add_handler("*", handled.noop)
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)  # the handshake: every host starts at once
        began = time.time()
        await dispatcher.run(workload.source(count, start=start))
        ended = time.time()
        duplicates = q.metrics.outcomes["duplicate"]
    report: dict[str, Any] = {
        "began": began,
        "ended": ended,
        "handled": handled.events,
        "critical_s": handled.critical_s,
        "duplicates": duplicates,
    }
    await asyncio.to_thread(Path(out).write_text, json.dumps(report))


if __name__ == "__main__":
    url_arg, spill_arg, start_arg, count_arg, out_arg = sys.argv[1:6]
    asyncio.run(main(url_arg, spill_arg, int(start_arg), int(count_arg), out_arg))
