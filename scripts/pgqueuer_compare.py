"""eventqueue beside pgqueuer on one PostgreSQL server: enqueue and drain rates (bench only).

pgqueuer is not a dependency of eventqueue: install it next to it to run this
(`pip install pgqueuer==1.6.0`). Usage:

    python scripts/pgqueuer_compare.py postgresql://postgres@127.0.0.1:5432/test --events 20000 --rounds 3

Both queues are durable (tables logged, the server's synchronous_commit), each in a scratch
schema of its own (dropped afterwards), with the same ~310-byte events (the bench's workload,
without duplicates). The runs alternate (pgqueuer, eventqueue, pgqueuer, ...) so a busy moment
of the machine falls on both; each round prints one line per queue, and the medians close.

- enqueue: 4 producers, each putting lists of 100 events until `--events` are stored.
  pgqueuer: `Queries.enqueue(entrypoints, payloads, priorities)` per list, over a pool of 4.
  eventqueue: `put_many(list)` (validation, canonical JSON and SHA-256 dedup hash included).
- drain: the stored backlog handled by a no-op, batches of 10. pgqueuer: 5 QueueManagers (one
  connection each) in `drain` mode, `batch_size=10`. eventqueue: `Dispatcher(concurrency=4)`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
from pgqueuer import QueueManager
from pgqueuer.db import AsyncpgDriver, AsyncpgPoolDriver
from pgqueuer.queries import Queries
from pgqueuer.types import QueueExecutionMode

from eventqueue.runtime.dispatch.dispatcher import Dispatcher
from eventqueue.runtime.queue import EventQueue
from eventqueue.tools.bench import workload

PRODUCERS = 4
LIST_SIZE = 100
PGQ_DEQUEUERS = 5
EQ_CONSUMERS = 4
BATCH = 10


def _payloads(n: int) -> list[dict[str, Any]]:
    return list(workload.events(n, duplicates=False))


async def _producers(n: int, put_list: Callable[[list[dict[str, Any]]], Awaitable[Any]]) -> float:
    """PRODUCERS tasks putting lists of LIST_SIZE; seconds until all `n` are stored."""
    events = _payloads(n)
    lists = [events[i : i + LIST_SIZE] for i in range(0, n, LIST_SIZE)]

    async def producer(mine: list[list[dict[str, Any]]]) -> None:
        for chunk in mine:
            await put_list(chunk)

    started = time.perf_counter()
    await asyncio.gather(*(producer(lists[p::PRODUCERS]) for p in range(PRODUCERS)))
    return time.perf_counter() - started


async def _scratch(url: str) -> str:
    schema = f"eqcmp_{secrets.token_hex(4)}"
    c = await asyncpg.connect(url)
    try:
        await c.execute(f"CREATE SCHEMA {schema}")
    finally:
        await c.close()
    return schema


async def _drop(url: str, schema: str) -> None:
    c = await asyncpg.connect(url)
    try:
        await c.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    finally:
        await c.close()


async def pgqueuer_round(url: str, n: int) -> tuple[float, float]:
    """pgqueuer: (enqueue events/s, drain events/s)."""
    schema = await _scratch(url)
    settings = {"search_path": schema}
    try:
        pool = await asyncpg.create_pool(
            url, min_size=PRODUCERS, max_size=PRODUCERS, server_settings=settings
        )
        try:
            queries = Queries(AsyncpgPoolDriver(pool))
            await queries.install(create_schema=False)

            async def put_list(chunk: list[dict[str, Any]]) -> None:
                payloads: list[bytes | None] = [json.dumps(e).encode() for e in chunk]
                await queries.enqueue(["noop"] * len(chunk), payloads, [0] * len(chunk))

            enqueue_s = await _producers(n, put_list)
        finally:
            await pool.close()
        connections = [
            await asyncpg.connect(url, server_settings=settings) for _ in range(PGQ_DEQUEUERS)
        ]
        try:
            managers = [QueueManager(Queries(AsyncpgDriver(c))) for c in connections]
            for qm in managers:

                @qm.entrypoint("noop")
                async def noop(_job: Any) -> None:
                    return None

            started = time.perf_counter()
            await asyncio.gather(
                *(qm.run(batch_size=BATCH, mode=QueueExecutionMode.drain) for qm in managers)
            )
            drain_s = time.perf_counter() - started
        finally:
            for c in connections:
                await c.close()
    finally:
        await _drop(url, schema)
    return n / enqueue_s, n / drain_s


async def eventqueue_round(url: str, n: int) -> tuple[float, float]:
    """eventqueue: (enqueue events/s, drain events/s)."""
    schema = await _scratch(url)
    try:
        async with EventQueue.open(
            f"{url}?schema={schema}",
            queue_size=n + 10_000,  # the whole backlog in the table: no spill in this comparison
            intake_size=n + 10_000,
            spill_dir=f"/tmp/{schema}.spill",
        ) as q:
            enqueue_s = await _producers(n, q.put_many)
            dispatcher = Dispatcher(q, concurrency=EQ_CONSUMERS)

            async def noop(_events: list[Any]) -> None:
                return None

            dispatcher.add_handler("*", noop)
            started = time.perf_counter()
            await dispatcher.run()  # returns once nothing is outstanding
            drain_s = time.perf_counter() - started
    finally:
        await _drop(url, schema)
    return n / enqueue_s, n / drain_s


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, list[tuple[float, float]]] = {"pgqueuer": [], "eventqueue": []}
    for round_no in range(args.rounds):
        for name, run in (("pgqueuer", pgqueuer_round), ("eventqueue", eventqueue_round)):
            enqueue, drain = await run(args.url, args.events)
            results[name].append((enqueue, drain))
            print(
                f"round {round_no + 1} {name:10s} enqueue {enqueue:8,.0f}/s drain {drain:8,.0f}/s",
                flush=True,
            )
    medians = {
        name: (statistics.median(e for e, _ in rs), statistics.median(d for _, d in rs))
        for name, rs in results.items()
    }
    for name, (enqueue, drain) in medians.items():
        print(f"median {name:10s} enqueue {enqueue:8,.0f}/s drain {drain:8,.0f}/s")
    (pe, pd), (ee, ed) = medians["pgqueuer"], medians["eventqueue"]
    print(
        f"eventqueue / pgqueuer at {args.events:,} events: enqueue {ee / pe:.2f}x, "
        f"drain {ed / pd:.2f}x"
    )


if __name__ == "__main__":
    asyncio.run(main())
