"""Arguments of the settle calls out of range are refused with InvalidArgumentError before
anything changes: the batch keeps its lease and can still be acked (issue 19.6)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from contract.conftest import snapshot, status_of
from eventqueue import EventQueueError, InvalidArgumentError
from eventqueue.core.arguments import MAX_EXTEND_S, MAX_RETRY_IN_S
from eventqueue.core.models import Batch
from eventqueue.runtime.queue import EventQueue


def job(n: int) -> dict[str, Any]:
    return {"event_type": "t", "event_name": "job", "aggregate_id": "a", "attributes": {"n": n}}


async def claimed(queue: EventQueue) -> Batch:
    await queue.put(job(1))
    batch = await queue.claim("c")
    assert batch is not None
    return batch


async def still_held(queue: EventQueue, batch: Batch, before: list[Any]) -> None:
    """Nothing changed, and the lease is still the caller's: its ack goes through."""
    assert await snapshot(queue.store, batch.ids) == before
    await queue.ack(batch)
    assert await status_of(queue.store, batch.ids[0]) == "done"


@pytest.mark.parametrize(
    "retry_in",
    [math.inf, -math.inf, math.nan, -5, -0.001, MAX_RETRY_IN_S + 1, 1e12, "soon", True],
)
async def test_nack_with_a_retry_delay_out_of_range_is_refused(
    queue: EventQueue, retry_in: Any
) -> None:
    batch = await claimed(queue)
    before = await snapshot(queue.store, batch.ids)

    with pytest.raises(InvalidArgumentError, match="retry_in") as refused:
        await queue.nack(batch, error="boom", retry_in=retry_in)

    assert isinstance(refused.value, EventQueueError)
    await still_held(queue, batch, before)


@pytest.mark.parametrize("seconds", [-1, 0, math.inf, math.nan, MAX_EXTEND_S + 1, 1e12, "1"])
async def test_extend_out_of_range_is_refused(queue: EventQueue, seconds: Any) -> None:
    batch = await claimed(queue)
    before = await snapshot(queue.store, batch.ids)

    with pytest.raises(InvalidArgumentError, match="seconds"):
        await queue.extend(batch, seconds=seconds)

    await still_held(queue, batch, before)


async def test_nack_with_an_error_that_is_not_text_is_refused(queue: EventQueue) -> None:
    batch = await claimed(queue)
    before = await snapshot(queue.store, batch.ids)

    with pytest.raises(InvalidArgumentError, match="error must be a string"):
        await queue.nack(batch, error=ValueError("boom"))  # type: ignore[arg-type]

    await still_held(queue, batch, before)


async def test_the_bounds_themselves_are_taken(queue: EventQueue) -> None:
    batch = await claimed(queue)
    await queue.extend(batch, seconds=MAX_EXTEND_S)
    await queue.nack(batch, error="later", retry_in=MAX_RETRY_IN_S)

    info = await queue.store.show(batch.ids[0])
    assert info is not None and info["status"] == "pending"
    assert await queue.claim("c") is None  # waiting out its 7 days
