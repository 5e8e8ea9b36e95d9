"""A producer + consumer process for the crash harness (run as a script, in a fresh interpreter).

    python crash_worker.py --db PATH --logs DIR --unique N --seed S [--limit K] ...

It puts the events of `workload.put_order` with index below `--limit` that the producer log
does not already show as acknowledged, while consumer tasks claim, log and ack, until it has put
them all and the queue (table and spill) is empty. Settings come from EVENT_* variables. With
EVENTQUEUE_CRASH_AT set, eventqueue halts at that crash point and the harness kills the process.

Logs (see workload.py): `produced.log` gets a line after each put returned, `consumed.log` a
line per delivered event before its ack; both are fsynced before the worker goes on.
`attempted.log` gets each op index before its put: with `--no-retry` a restart never puts an op
again, so that with dedup off every second row of an event is the queue's doing, not a retry.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path

from workload import consumer_line, digest, payload, producer_line, put_order

from eventqueue import Batch, EventQueue

PRODUCED = "produced.log"
CONSUMED = "consumed.log"
ATTEMPTED = "attempted.log"


def logged_ops(path: Path) -> set[int]:
    """Op indexes in the first column of a log (complete lines only)."""
    if not path.exists():
        return set()
    text = path.read_bytes().decode()
    return {int(line.split()[0]) for line in text.split("\n")[:-1] if line}


def open_log(path: Path) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)


async def produce(
    q: EventQueue,
    order: list[int],
    todo: list[int],
    fds: tuple[int, int],
    chunk: int,
    groups: int = 0,
) -> int:
    """Put `todo` in bursts of `chunk` concurrent puts; log each put as it returns."""
    attempted, fd = fds

    async def put(op: int) -> None:
        event_id = order[op]
        os.write(attempted, f"{op}\n".encode())
        if groups:  # ordering on: event n belongs to group n mod groups
            result = await q.put(payload(event_id), ordering_key=f"g{event_id % groups}")
        else:
            result = await q.put(payload(event_id))
        os.write(fd, producer_line(op, event_id, result.status.value))

    for start in range(0, len(todo), chunk):
        await asyncio.gather(*(put(op) for op in todo[start : start + chunk]))
        await asyncio.to_thread(os.fsync, fd)
    return len(todo)


async def consume(q: EventQueue, name: str, fd: int, produced: asyncio.Event) -> int:
    """Claim, log (fsynced), ack, until the producer is done and nothing is outstanding."""
    handled = 0
    to_ack: Batch | None = None
    while True:
        batch = await q.next_batch(name, timeout=0.25, ack=to_ack)
        to_ack = None
        if batch is None:
            if produced.is_set() and await q.outstanding() == 0:
                return handled
            continue
        lines = [
            consumer_line(e.payload["attributes"]["event_id"], e.id, e.attempts, digest(e.payload))
            for e in batch.events
        ]
        os.write(fd, b"".join(lines))
        await asyncio.to_thread(os.fsync, fd)
        handled += len(batch)
        # Both ways of finishing: an ack of its own, and one folded into the next claim.
        if handled % 2:
            await q.ack(batch)
        else:
            to_ack = batch


async def consume_critical(q: EventQueue, name: str, fd: int, stop: asyncio.Event) -> int:
    """A reserved consumer: CRITICAL batches handed over by their put (or claimed), until stop."""
    handled = 0
    while (batch := await q.next_critical(name, stop=stop)) is not None:
        lines = [
            consumer_line(e.payload["attributes"]["event_id"], e.id, e.attempts, digest(e.payload))
            for e in batch.events
        ]
        os.write(fd, b"".join(lines))
        await asyncio.to_thread(os.fsync, fd)
        handled += len(batch)
        await q.ack(batch)
    return handled


async def main(args: argparse.Namespace) -> None:
    logs = Path(args.logs)
    order = put_order(args.unique, args.dup_share, args.seed)
    limit = len(order) if args.limit is None else min(args.limit, len(order))
    done = logged_ops(logs / (PRODUCED if args.retry else ATTEMPTED))
    todo = [op for op in range(limit) if op not in done]
    attempted_fd = open_log(logs / ATTEMPTED)
    produced_fd, consumed_fd = open_log(logs / PRODUCED), open_log(logs / CONSUMED)
    try:
        async with EventQueue.open(args.db) as q:
            produced = asyncio.Event()
            consumers = [
                asyncio.create_task(consume(q, f"worker-{os.getpid()}-{i}", consumed_fd, produced))
                for i in range(args.consumers)
            ]
            stop_reserved = asyncio.Event()
            reserved = asyncio.create_task(
                consume_critical(q, f"reserved-{os.getpid()}", consumed_fd, stop_reserved)
            )
            try:
                fds = (attempted_fd, produced_fd)
                put = await produce(q, order, todo, fds, args.chunk, args.groups)
            finally:
                produced.set()
            handled = sum(await asyncio.gather(*consumers))
            stop_reserved.set()
            handled += await reserved
            stats = (await q.stats()).as_dict()
    finally:
        for fd in (attempted_fd, produced_fd, consumed_fd):
            os.close(fd)
    print(json.dumps({"put": put, "handled": handled, "stats": stats}), flush=True)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True)
    parser.add_argument("--logs", required=True, help="folder of produced.log and consumed.log")
    parser.add_argument("--unique", type=int, required=True, help="distinct events in the run")
    parser.add_argument("--dup-share", type=float, default=0.05, help="share of exact repeats")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, help="put only ops with an index below this")
    parser.add_argument("--chunk", type=int, default=250, help="concurrent puts per burst")
    parser.add_argument("--consumers", type=int, default=2)
    parser.add_argument("--groups", type=int, default=0, help="ordering groups (0: unordered)")
    parser.add_argument(
        "--no-retry",
        dest="retry",
        action="store_false",
        help="never put an op again that an earlier run attempted (default: retry unacknowledged)",
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse(sys.argv[1:])))
