"""ClaimPool: the idle consumers of a dispatcher share one claim transaction.

Each consumer that needs work hands in the batch it just finished and waits. One claimer task
takes every such request at once: it acks all finished batches and leases one ready batch per
waiting consumer in a single transaction (one commit, one fsync), so claim throughput grows
with concurrency instead of paying a commit per batch.

Where the store has a pool of connections (PostgreSQL), two such claimers run at once, each for
the consumers the other is not already claiming for: a claim's round trips and its commit no
longer hold up the next one, and SKIP LOCKED keeps their leases apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable

from eventqueue.core.errors import EventQueueError, LeaseLostError, QueueClosedError
from eventqueue.core.models import Batch
from eventqueue.runtime.metrics import Metrics
from eventqueue.runtime.queue import EventQueue
from eventqueue.runtime.wakeup import wait_any

log = logging.getLogger(__name__)
# Claims in flight at once on a store with a pool of connections.
_POOLED_LANES = 2

# Loop passes a claim waits, at most, for every consumer to be waiting. A consumer's way from
# its answer through a fast handler back to `next` takes about ten passes (its tasks, the
# settle), so a claim made for the first to come back leased for one or two of them: in
# end_to_end (4 consumers) claims then made most of the rounds, and of the commits. With 8
# passes a handler that yields 3 times is already missed; 16 catch it. No timer: a slow
# handler simply is not waited for.
GATHER_PASSES = 16


class ClaimPool:
    """Gathers consumers' requests (and their finished batches) into one claim at a time."""

    def __init__(
        self,
        queue: EventQueue,
        name: str,
        *,
        stopping: asyncio.Event,
        metrics: Metrics,
        ack_alone: Callable[[Batch], Awaitable[None]],
    ) -> None:
        self._queue = queue
        self._name = name
        self._stopping = stopping
        self._metrics = metrics
        self._ack_alone = ack_alone  # settles one batch when the folded acks were refused
        self._waiters: deque[asyncio.Future[Batch | None]] = deque()
        self._acks: list[Batch] = []
        self._wake = asyncio.Event()
        self._closing = False
        self._consumers = 0  # the most consumers seen waiting at once: how many there are
        self._reserved = 0  # waiters a claim in flight is leasing for
        self._lanes = 1 if queue.store.capabilities.single_connection else _POOLED_LANES

    async def next(self, finished: Batch | None = None) -> Batch | None:
        """Ack `finished` and wait for a batch; None once the dispatcher stops."""
        if finished is not None:
            self._acks.append(finished)
        waiter: asyncio.Future[Batch | None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._wake.set()
        return await waiter

    def close(self) -> None:
        """Flush the remaining acks, answer every waiter None, and end `run`."""
        self._closing = True
        self._wake.set()

    async def run(self) -> None:
        """The claimer tasks: one transaction per round, for every waiting consumer."""
        await asyncio.gather(*(self._lane() for _ in range(self._lanes)))

    async def _lane(self) -> None:
        while True:
            self._wake.clear()
            stopping = self._stopping.is_set() or self._closing
            if not stopping:
                await self._queue.urgent_puts_settled(self._queue.config.poll_ms / 1000)
                stopping = self._stopping.is_set() or self._closing
            if not stopping:
                await self._gather()
            changed = self._queue.changed_event()  # before the claim: no change is missed
            wanted = 0 if stopping else self._unserved()
            self._consumers = max(self._consumers, self._live_waiters())
            batches = await self._claim(wanted)
            if batches is None:  # the queue is closed
                self._answer_all(None)
                return
            for batch in batches:
                self._hand_out(batch)
            if stopping:
                self._answer_all(None)
                if self._closing and not self._acks:
                    return
                await self._wake.wait()
                continue
            if wanted and not batches and not self._acks:
                await self._idle(changed)
            elif not self._unserved() and not self._acks:
                await self._wake.wait()

    async def _gather(self) -> None:
        """Let the other consumers come back (GATHER_PASSES loop passes at most), so one claim
        leases for all of them and carries all their acks."""
        for _ in range(GATHER_PASSES):
            if self._live_waiters() >= self._consumers or self._stopping.is_set() or self._closing:
                return
            await asyncio.sleep(0)

    def _unserved(self) -> int:
        """Waiting consumers no claim in flight is leasing for."""
        return max(0, self._live_waiters() - self._reserved)

    def _live_waiters(self) -> int:
        while self._waiters and self._waiters[0].done():
            self._waiters.popleft()  # a consumer cancelled while it waited
        return sum(1 for w in self._waiters if not w.done())

    async def _claim(self, wanted: int) -> list[Batch] | None:
        acks, self._acks = self._acks, []
        if not wanted and not acks:
            return []
        self._reserved += wanted
        try:
            batches = await self._queue.claim_batches(self._name, wanted, acks=acks)
        except QueueClosedError:
            return None
        except LeaseLostError:
            # One of the finished batches lost its lease, so nothing was acked or claimed: settle
            # them one by one (each says for itself whether it still holds its lease).
            for batch in acks:
                await self._ack_alone(batch)
            return []
        except EventQueueError as exc:
            self._acks = acks + self._acks  # kept for the next round
            log.error("claiming batches failed (retrying): %s", exc)
            await self._pause()
            return []
        finally:
            self._reserved -= wanted
        self._metrics.count("handled", sum(len(b) for b in acks))
        return batches

    def _hand_out(self, batch: Batch) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(batch)
                return
        self._give_back(batch)

    def _give_back(self, batch: Batch) -> None:
        # Nobody is waiting any more (a consumer was cancelled): give the batch back at once.
        task = asyncio.create_task(self._queue.give_back(batch))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    def _answer_all(self, answer: Batch | None) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(answer)

    async def _idle(self, changed: asyncio.Event) -> None:
        """Nothing ready: wait for a change, a request, the stop, or the next window."""
        delay = await self._queue.idle_delay()
        await wait_any(changed, self._wake, self._stopping, timeout=delay)

    async def _pause(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), self._queue.config.poll_ms / 1000)
