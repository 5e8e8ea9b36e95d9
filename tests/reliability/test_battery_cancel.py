"""Random cancellation: 1,000 `asyncio.wait_for` timeouts around put / claim / ack / nack, then
shutdown. A cancelled call may still have done its work (F2); what callers were told must hold,
the connection must never be left inside a transaction, and close must finish promptly.
"""

from __future__ import annotations

import asyncio
import collections
import random
from typing import Any

from eventqueue import EventQueue, LeaseLostError
from eventqueue.core.models import Batch

from .harness import DEAD_PAST_MAX_ATTEMPTS

OPERATIONS = 1_000
LEASE_S = 30.0
SEED = 20_240_607


class Model:
    """What callers were told, and which batches are in an unknown state after a cancellation."""

    def __init__(self) -> None:
        self.put_ids: set[int] = set()
        self.put_spilled = 0
        self.acked: set[int] = set()
        self.held: list[Batch] = []
        self.outcomes: collections.Counter[str] = collections.Counter()


def event(n: int) -> dict[str, Any]:
    return {"event_name": f"job{n % 3}", "aggregate_id": n, "attributes": {"n": n}}


KINDS = ["put"] * 4 + ["put_many"] * 2 + ["claim"] * 3 + ["ack"] * 3 + ["nack", "claim_ack"] * 2
TIMEOUTS_S = (0.0, 0.0005, 0.001, 0.002, 0.005, 1.0)


async def one_operation(
    q: EventQueue, clock: Any, model: Model, rnd: random.Random, n: int
) -> None:
    kind = "tick" if rnd.random() < 0.03 else rnd.choice(KINDS)
    if kind in {"ack", "nack", "claim_ack"} and not model.held:
        kind = "claim"
    timeout = rnd.choice(TIMEOUTS_S) * rnd.random()
    batch = (
        model.held.pop(rnd.randrange(len(model.held)))
        if kind in {"ack", "nack", "claim_ack"}
        else None
    )
    results: list[Any] = []
    try:
        if kind == "put":
            results = [await asyncio.wait_for(q.put(event(n)), timeout)]
        elif kind == "put_many":
            many = [event(n), event(n + OPERATIONS)]
            results = await asyncio.wait_for(q.put_many(many), timeout)
        elif kind in {"claim", "claim_ack"}:
            claimed = await asyncio.wait_for(q.claim(ack=batch), timeout)
            if batch is not None:
                model.acked.update(batch.ids)
            if claimed is not None:
                model.held.append(claimed)
        elif kind == "ack":
            assert batch is not None
            await asyncio.wait_for(q.ack(batch), timeout)
            model.acked.update(batch.ids)
        elif kind == "nack":
            assert batch is not None
            await asyncio.wait_for(q.nack(batch, "failed", retry_in=0), timeout)
        else:
            clock.advance(LEASE_S + 1)  # every lease held so far expires
    except TimeoutError:
        model.outcomes[f"{kind}-cancelled"] += 1  # outcome unknown: done, or not
        return
    except LeaseLostError:
        model.outcomes[f"{kind}-lease-lost"] += 1  # its lease expired at a tick
        return
    model.outcomes[kind] += 1
    for result in results:
        if result.id is None:
            model.put_spilled += 1
        else:
            model.put_ids.add(result.id)


async def test_random_cancellations_then_shutdown(open_queue, clock, query) -> None:
    q = await open_queue(batch_window_ms=0, max_batch_size=4, lease_s=LEASE_S)
    rnd = random.Random(SEED)
    model = Model()
    for n in range(OPERATIONS):
        await one_operation(q, clock, model, rnd, n)
    assert model.outcomes["put-cancelled"] and model.outcomes["put"], model.outcomes
    assert model.outcomes["claim-cancelled"] and model.outcomes["ack-cancelled"], model.outcomes

    # Let shielded work that outlived its caller finish; then no transaction is open.
    async with asyncio.timeout(10):
        await q._admission.close()  # commits puts still queued (their callers gave up)
        await q.store._conn.engine.idle.wait()  # every queued round has run
        assert not q.store._conn._db.in_transaction

    rows = dict(query("SELECT id, status FROM events"))
    assert model.put_ids <= set(rows), "an acknowledged put is missing"
    assert all(rows[i] == "done" for i in model.acked), "an acked event is not done"
    assert model.put_spilled == 0

    async with asyncio.timeout(10):
        await q.close()
    leftovers = [t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()]
    assert leftovers == []


async def test_nothing_is_lost_after_random_cancellations(open_queue, clock, query) -> None:
    q = await open_queue(batch_window_ms=0, max_batch_size=4, lease_s=LEASE_S)
    rnd = random.Random(SEED + 1)
    model = Model()
    for n in range(OPERATIONS // 2):
        await one_operation(q, clock, model, rnd, n)

    # Drain: every lease expires, then claim and ack until nothing is left.
    clock.advance(LEASE_S + 1)
    delivered: set[int] = set()
    async with asyncio.timeout(30):
        while (await q.outstanding()) > 0:
            batch = await q.next_batch(timeout=5)
            assert batch is not None, "events outstanding but none claimable"
            delivered.update(batch.ids)
            await q.ack(batch)
    rows = dict(query("SELECT id, status FROM events"))
    assert set(rows.values()) <= {"done", "dead"}  # dead: nacked max_attempts times
    assert query(DEAD_PAST_MAX_ATTEMPTS, (q.config.max_attempts,)) == []
    assert model.put_ids <= set(rows)
    assert delivered.isdisjoint(model.acked), "an acked event was delivered again"
    async with asyncio.timeout(10):
        await q.close()
