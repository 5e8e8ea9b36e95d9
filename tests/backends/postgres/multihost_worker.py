"""One "host" of the multi-host crash test (run as a script, in a fresh interpreter).

    python multihost_worker.py producer --db URL --logs DIR --part I --parts N ...
    python multihost_worker.py consumer --db URL --logs DIR --done FILE ...

A producer puts its share of `workload.put_order` (ops with op % parts == part) that its own
produced.log does not show as acknowledged, then waits until its spill folder is promoted. A
consumer claims, logs (fsynced) and acks until the file `--done` exists (every producer has
finished) and nothing is left anywhere. Each process has its own logs folder and spill folder
(EVENT_SPILL_DIR); the test kills them at the crash points eventqueue reports.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "reliability"))

from workload import consumer_line, digest, payload, producer_line, put_order

from eventqueue import Batch, EventQueue


def acknowledged_ops(path: Path) -> set[int]:
    if not path.exists():
        return set()
    return {int(line.split()[0]) for line in path.read_text().split("\n")[:-1] if line}


def open_log(path: Path) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)


async def produce(args: argparse.Namespace) -> None:
    order = put_order(args.unique, args.dup_share, args.seed)
    log = Path(args.logs) / "produced.log"
    done = acknowledged_ops(log)
    todo = [op for op in range(len(order)) if op % args.parts == args.part and op not in done]
    fd = open_log(log)
    try:
        async with EventQueue.open(args.db) as q:

            async def put(op: int) -> None:
                result = await q.put(payload(order[op]))
                os.write(fd, producer_line(op, order[op], result.status.value))

            for start in range(0, len(todo), args.chunk):
                await asyncio.gather(*(put(op) for op in todo[start : start + args.chunk]))
                await asyncio.to_thread(os.fsync, fd)
            # What this host spilled must reach the shared table before it may leave: wait
            # for the promoter (bounded by the test's deadline for this process).
            while q.overflow.pending():
                with contextlib.suppress(TimeoutError):  # a promotion notifies; else look again
                    await asyncio.wait_for(q.changed_event().wait(), 0.5)
    finally:
        os.close(fd)


async def consume(args: argparse.Namespace) -> None:
    fd = open_log(Path(args.logs) / "consumed.log")
    try:
        async with EventQueue.open(args.db) as q:
            await asyncio.gather(*(consumer(q, f"c{os.getpid()}-{i}", fd, args) for i in range(2)))
    finally:
        os.close(fd)


async def consumer(q: EventQueue, name: str, fd: int, args: argparse.Namespace) -> None:
    to_ack: Batch | None = None
    while True:
        batch = await q.next_batch(name, timeout=0.25, ack=to_ack)
        to_ack = None
        if batch is None:
            if await asyncio.to_thread(os.path.exists, args.done) and not await q.outstanding():
                return
            continue
        lines = [
            consumer_line(e.payload["attributes"]["event_id"], e.id, e.attempts, digest(e.payload))
            for e in batch.events
        ]
        os.write(fd, b"".join(lines))
        await asyncio.to_thread(os.fsync, fd)
        if batch.events[0].id % 2:
            await q.ack(batch)
        else:
            to_ack = batch  # folded into the next claim


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("role", choices=["producer", "consumer"])
    parser.add_argument("--db", required=True)
    parser.add_argument("--logs", required=True)
    parser.add_argument("--unique", type=int, default=600)
    parser.add_argument("--dup-share", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--part", type=int, default=0)
    parser.add_argument("--parts", type=int, default=1)
    parser.add_argument("--chunk", type=int, default=40)
    parser.add_argument("--done", default="")
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse(sys.argv[1:])
    asyncio.run(produce(arguments) if arguments.role == "producer" else consume(arguments))
