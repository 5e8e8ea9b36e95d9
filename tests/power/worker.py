"""Producer + consumers on one queue, for the power-loss battery (run as a script, fresh interpreter).

    python worker.py --db PATH --logs DIR --unique N --seed S [--limit K] [--chunk C] ...

Only eventqueue's public API; settings come from EVENT_* variables. It prints `WORKER_READY`
once imported and waits for a line on stdin before it touches the database, so the test can arm
a cut first. Then it puts the ops of `workload.put_order` below `--limit` that produced.log does
not show as acknowledged, while consumers claim, log and ack, until the queue is empty; last it
prints one JSON line (counts and `q.stats()`).

Logs live outside the power-loss mount and are fsynced before the worker acts on them:
`produced.log` gets "<op> <event id> <status> <monotonic time>" after each put returned,
`consumed.log` "<event id> <row id> <attempts> <digest>" for each delivery, before its ack.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

from reliability.workload import digest, payload, put_order

from eventqueue import Batch, EventQueue

READY = "WORKER_READY"


def acknowledged_ops(path: Path) -> set[int]:
    """Op indexes of the complete lines of produced.log."""
    if not path.exists():
        return set()
    return {int(line.split()[0]) for line in path.read_text().split("\n")[:-1] if line}


def open_log(path: Path) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)


async def produce(q: EventQueue, order: list[int], todo: list[int], fd: int, chunk: int) -> None:
    """Put `todo` in bursts of `chunk` concurrent puts; log each as it returns."""

    async def put(op: int) -> None:
        result = await q.put(payload(order[op]))
        line = f"{op} {order[op]} {result.status.value} {time.monotonic():.6f}\n"
        os.write(fd, line.encode())

    for start in range(0, len(todo), chunk):
        await asyncio.gather(*(put(op) for op in todo[start : start + chunk]))
        await asyncio.to_thread(os.fsync, fd)


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
            f"{e.payload['attributes']['event_id']} {e.id} {e.attempts} {digest(e.payload)}\n"
            for e in batch.events
        ]
        os.write(fd, "".join(lines).encode())
        await asyncio.to_thread(os.fsync, fd)
        handled += len(batch)
        if handled % 2:  # both ways of finishing: an ack of its own, one folded into a claim
            await q.ack(batch)
        else:
            to_ack = batch


async def main(args: argparse.Namespace) -> None:
    logs = Path(args.logs)
    order = put_order(args.unique, args.dup_share, args.seed)
    limit = len(order) if args.limit is None else min(args.limit, len(order))
    done = acknowledged_ops(logs / "produced.log")
    todo = [op for op in range(limit) if op not in done]
    produced_fd, consumed_fd = open_log(logs / "produced.log"), open_log(logs / "consumed.log")
    try:
        async with EventQueue.open(args.db) as q:
            produced = asyncio.Event()
            consumers = [
                asyncio.create_task(consume(q, f"w{os.getpid()}-{i}", consumed_fd, produced))
                for i in range(args.consumers)
            ]
            try:
                await produce(q, order, todo, produced_fd, args.chunk)
            finally:
                produced.set()
            handled = sum(await asyncio.gather(*consumers))
            stats = (await q.stats()).as_dict()
    finally:
        os.close(produced_fd)
        os.close(consumed_fd)
    print(json.dumps({"put": len(todo), "handled": handled, "stats": stats}), flush=True)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True)
    parser.add_argument("--logs", required=True)
    parser.add_argument("--unique", type=int, required=True)
    parser.add_argument("--dup-share", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int)
    parser.add_argument("--chunk", type=int, default=100)
    parser.add_argument("--consumers", type=int, default=2)
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse(sys.argv[1:])
    print(READY, flush=True)
    if sys.stdin.readline().strip() == "go":
        asyncio.run(main(arguments))
