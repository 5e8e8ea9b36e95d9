"""Lease fencing with real processes: a consumer stalled (SIGSTOP) past its lease is refused.

The first consumer claims a batch and prints its ids (the handshake); the test stops it, and a
second consumer claims the same events once the lease has expired (the test waits for that
claim, not for a fixed time). The first is resumed and tries every finishing call on its stale
batch: each is refused with LeaseLostError, and the batch is handled once, by the second.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sqlite3
import textwrap
from typing import Any

import pytest

from eventqueue import EventQueue

LEASE_S = 0.5
EVENTS = 5

# argv: path, consumer name, lease seconds. Prints {"ids", "attempts"} once it holds a batch,
# then waits for a line: "ack" acks it; "stale" tries every finishing call and prints the
# outcome of each. Prints one JSON line per command.
CONSUMER = textwrap.dedent(
    """
    import asyncio, json, sys
    from eventqueue import EventQueue, EventQueueError, LeaseLostError

    async def attempt(call):
        try:
            result = await call
        except LeaseLostError:
            return "LeaseLostError"
        except EventQueueError as exc:
            return f"{type(exc).__name__}: {exc}"
        return "ok" if result is None else f"ok: {result!r}"

    async def main(path, name, lease):
        async with EventQueue.open(path, batch_window_ms=0, lease_s=lease, poll_ms=20) as q:
            batch = await q.next_batch(name, timeout=30)
            assert batch is not None, "nothing to claim"
            print(json.dumps({"ids": batch.ids, "attempts": [e.attempts for e in batch.events]}),
                  flush=True)
            while line := (await asyncio.to_thread(sys.stdin.readline)).strip():
                if line == "ack":
                    print(json.dumps({"ack": await attempt(q.ack(batch))}), flush=True)
                elif line == "stale":
                    outcome = {
                        "ack": await attempt(q.ack(batch)),
                        "ack_some": await attempt(q.ack(batch, batch.ids[:1])),
                        "nack": await attempt(q.nack(batch, "stale", retry_in=0)),
                        "extend": await attempt(q.extend(batch, 60)),
                        "release": await attempt(q.release(batch)),
                        "claim_with_ack": await attempt(q.claim(name, ack=batch)),
                    }
                    print(json.dumps(outcome), flush=True)

    asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3])))
    """
)


async def fill(path: str) -> list[int]:
    async with EventQueue.open(path, batch_window_ms=0) as q:
        results = await q.put_many(
            [{"event_name": "job", "aggregate_id": i} for i in range(EVENTS)]
        )
    return [r.id for r in results if r.id is not None]


def rows(path: str) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return db.execute(
            "SELECT id, status, attempts, lease_token, lease_expires_at, available_at, "
            "finished_at, last_error FROM events ORDER BY id"
        ).fetchall()


@pytest.mark.parametrize(
    "second_acks_first", [True, False], ids=["reclaimed-and-done", "reclaimed-and-held"]
)
def test_a_consumer_stalled_past_its_lease_cannot_finish_its_batch(
    db_path: str, spawn, second_acks_first: bool
) -> None:
    put_ids = asyncio.run(fill(db_path))
    first = spawn(CONSUMER, db_path, "first", str(LEASE_S), name="first")
    claimed = json.loads(first.expect())
    assert claimed == {"ids": put_ids, "attempts": [1] * EVENTS}

    first.proc.send_signal(signal.SIGSTOP)
    try:
        # The second consumer polls; its handshake arrives once the first lease has expired.
        second = spawn(CONSUMER, db_path, "second", "30", name="second")
        reclaimed = json.loads(second.expect())
        assert reclaimed == {"ids": put_ids, "attempts": [2] * EVENTS}
        if second_acks_first:
            second.send("ack")
            assert json.loads(second.expect()) == {"ack": "ok"}
        before = rows(db_path)
        first.send("stale")  # read by the first once it runs again
    finally:
        first.proc.send_signal(signal.SIGCONT)

    outcome = json.loads(first.expect())
    assert outcome == dict.fromkeys(
        ["ack", "ack_some", "nack", "extend", "release", "claim_with_ack"], "LeaseLostError"
    )
    assert rows(db_path) == before, "a refused call changed the database"
    if not second_acks_first:
        second.send("ack")
        assert json.loads(second.expect()) == {"ack": "ok"}

    assert first.wait() == 0, first.stderr()
    assert second.wait() == 0, second.stderr()
    final = rows(db_path)
    assert [(r[0], r[1], r[2], r[3]) for r in final] == [(i, "done", 2, None) for i in put_ids]
