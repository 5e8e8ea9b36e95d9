"""Handling one claimed batch: route its events, call the handlers, settle the outcome.

`HandlerRunner` calls the handlers registered for a batch's events (with their timeouts, and a
lease renewal while they run) and turns what they raise into failed ids; `Settler` acks,
nacks or releases the batch accordingly. The Dispatcher owns both.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Set
from dataclasses import dataclass
from typing import Any

from eventqueue.core.errors import (
    EventQueueError,
    LeaseLostError,
    PartialFailure,
    PermanentFailure,
)
from eventqueue.core.models import Batch, Event
from eventqueue.core.rules import is_dead
from eventqueue.runtime.metrics import Metrics
from eventqueue.runtime.queue import EventQueue

log = logging.getLogger(__name__)

Handler = Callable[..., Awaitable[Any]]
BatchHandler = Callable[[list[Event]], Awaitable[Any]]
EventHandler = Callable[[Event], Awaitable[Any]]
CATCH_ALL = "*"


@dataclass(frozen=True, slots=True)
class Route:
    """A registered handler: called with the batch's events, or once per event."""

    handler: Handler
    per_event: bool
    timeout_s: float | None


class Settler:
    """Acks, nacks or releases a handled batch, and counts the outcome."""

    def __init__(self, queue: EventQueue, metrics: Metrics) -> None:
        self.queue = queue
        self.metrics = metrics

    async def settle(
        self, batch: Batch, failed: dict[int, str] | None, permanent: Set[int] = frozenset()
    ) -> Batch | None:
        """Release (failed is None), or ack the handled events and nack the failed ones
        (dead-lettering at once those of them in `permanent`).

        A batch handled in full is returned instead: the next claim acks it in its transaction.
        """
        if failed is None:
            await self.release(batch)
            return None
        if not failed:
            return batch
        done = [e.id for e in batch.events if e.id not in failed]
        try:
            if done:  # acked first: a crash before the nack redelivers only the failed ones
                await self.queue.ack(batch, done)
                self.metrics.count("handled", len(done))
            await self._nack(batch, failed, permanent)
        except EventQueueError as exc:
            self._unsettled(batch, len(failed), exc)
        return None

    async def ack(self, batch: Batch) -> None:
        """Ack the whole batch on its own (not folded into a claim)."""
        await self._finish(batch, self.queue.ack, "handled")

    async def release(self, batch: Batch) -> None:
        """Hand the whole batch back to pending, unhandled."""
        await self._finish(batch, self.queue.release, "released")

    async def _nack(self, batch: Batch, failed: dict[int, str], permanent: Set[int]) -> None:
        hopeless = {i: e for i, e in failed.items() if i in permanent}
        if hopeless:  # first: a crash between the two redelivers only the retried ones
            await self.queue.nack(batch, _one_error(hopeless), ids=list(hopeless), dead=True)
            self.metrics.count("dead", len(hopeless))
        retried = {i: e for i, e in failed.items() if i not in permanent}
        if not retried:
            return
        max_attempts = self.queue.config.max_attempts
        dead = sum(1 for e in batch.events if e.id in retried and is_dead(e.attempts, max_attempts))
        await self.queue.nack(batch, _one_error(retried), ids=list(retried))
        self.metrics.count("dead", dead)
        self.metrics.count("retried", len(retried) - dead)

    async def _finish(
        self, batch: Batch, action: Callable[[Batch], Awaitable[None]], outcome: str
    ) -> None:
        try:
            await action(batch)
            self.metrics.count(outcome, len(batch))
        except EventQueueError as exc:
            self._unsettled(batch, len(batch), exc)

    def _unsettled(self, batch: Batch, events: int, error: EventQueueError) -> None:
        if isinstance(error, LeaseLostError):
            # Our lease expired and another consumer holds these events now: it settles them.
            self.metrics.count("lease_lost", events)
            log.warning("batch %s: lease lost before it was settled", batch.id)
            return
        self.metrics.count("settle_failed", events)
        log.error("batch %s not settled (%s); redelivered after its lease", batch.id, error)


def _one_error(failed: Mapping[int, str]) -> str:
    errors = sorted(set(failed.values()))
    return errors[0] if len(errors) == 1 else "; ".join(errors)[:2000]


class HandlerRunner:
    """Runs the handlers of one batch at a time and settles it; made for each run."""

    def __init__(
        self,
        queue: EventQueue,
        metrics: Metrics,
        routes: Mapping[str, Route],
        *,
        handler_timeout_s: float | None,
        forced: asyncio.Event,
        settler: Settler,
    ) -> None:
        self.queue = queue
        self.metrics = metrics
        self.routes = routes
        self.handler_timeout_s = handler_timeout_s
        self.settler = settler
        self._forced = forced  # set when in-flight handlers are to be cancelled

    async def handle(self, batch: Batch) -> Batch | None:
        """Run the handlers and settle the batch; returns it when it is to be acked whole."""
        self._record_start(batch)
        renewal = _Renewal(lambda: self._renew(batch), self.queue.config.lease_s / 3)
        tracing = self.queue.tracing
        permanent: set[int] = set()  # failed ids a handler called permanent: dead at once

        async def outcome(batch: Batch) -> dict[int, str] | None:
            return await self._outcome(batch, permanent)

        try:
            if tracing is None:
                failed = await outcome(batch)
            else:  # a consumer span around the handlers, linked to the events' puts
                failed = await tracing.process(batch, outcome)
        except asyncio.CancelledError:
            await renewal.stop()
            await self.settler.release(batch)
            raise
        await renewal.stop()
        return await self.settler.settle(batch, failed, permanent)

    def _record_start(self, batch: Batch) -> None:
        now = self.queue.now()
        self.metrics.batch(batch.key, len(batch))
        for event in batch.events:
            if event.attempts == 1:  # later attempts would count back-off or downtime
                self.metrics.latency(event.priority, max(0.0, now - event.received_at))

    async def _outcome(self, batch: Batch, permanent: set[int]) -> dict[int, str] | None:
        """Failed event id -> error (the permanent ones added to `permanent`); None when the
        handlers were cancelled (out of grace)."""
        work = asyncio.create_task(self._run_handlers(batch, permanent))
        forced = asyncio.create_task(self._forced.wait())
        try:
            await asyncio.wait({work, forced}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            forced.cancel()
            if not work.done():
                work.cancel()
                await asyncio.wait({work})
        return None if work.cancelled() else work.result()

    async def _run_handlers(self, batch: Batch, permanent: set[int]) -> dict[int, str]:
        failed: dict[int, str] = {}
        for route, events in self._routes_for(batch.events, failed):
            failed.update(await self._call(route, events, permanent))
        return failed

    def _routes_for(
        self, events: tuple[Event, ...], failed: dict[int, str]
    ) -> list[tuple[Route, list[Event]]]:
        groups: dict[int, tuple[Route, list[Event]]] = {}
        for event in events:
            route = self.routes.get(event.name) or self.routes.get(CATCH_ALL)
            if route is None:
                failed[event.id] = f"no handler registered for event_name {event.name!r}"
                continue
            groups.setdefault(id(route), (route, []))[1].append(event)
        return list(groups.values())

    async def _call(self, route: Route, events: list[Event], permanent: set[int]) -> dict[int, str]:
        timeout = route.timeout_s if route.timeout_s is not None else self.handler_timeout_s
        if not route.per_event:
            return await _invoke(route.handler, events, events, timeout, permanent)
        failed: dict[int, str] = {}
        for event in events:
            failed.update(await _invoke(route.handler, event, [event], timeout, permanent))
        return failed

    async def _renew(self, batch: Batch) -> None:
        # Long handlers keep their lease: renewed at a third of it, well before it expires
        # (started by _Renewal a third of the lease after the handlers began).
        interval = self.queue.config.lease_s / 3
        while True:
            try:
                await self.queue.extend(batch)
            except LeaseLostError:
                log.warning("batch %s: lease lost while its handler ran", batch.id)
                return
            except EventQueueError as exc:
                log.warning("batch %s: lease renewal failed (retrying): %s", batch.id, exc)
            await asyncio.sleep(interval)


class _Renewal:
    """A batch's lease renewal while its handlers run: a timer until the first renewal is due
    (most batches finish long before), a task only from then on. No task per batch."""

    def __init__(self, renew: Callable[[], Coroutine[Any, Any, None]], interval_s: float) -> None:
        self._renew = renew
        self._task: asyncio.Task[None] | None = None
        self._timer = asyncio.get_running_loop().call_later(interval_s, self._start)

    def _start(self) -> None:
        self._task = asyncio.create_task(self._renew())

    async def stop(self) -> None:
        """Cancel the timer, or the renewal task once it started."""
        self._timer.cancel()
        if self._task is not None:
            await _cancel(self._task)


async def _invoke(
    fn: Handler, argument: Any, events: list[Event], timeout: float | None, permanent: set[int]
) -> dict[int, str]:
    """Call one handler: {} on return, failed id -> error on an exception or timeout; ids that
    will never succeed (PermanentFailure, PartialFailure's `permanent`) go into `permanent`."""
    scope = asyncio.timeout(timeout)
    try:
        async with scope:
            await fn(argument)
    except PartialFailure as exc:
        failed = _partial(exc, events)
        permanent.update(i for i in exc.permanent if i in failed)
        return failed
    except PermanentFailure as exc:
        error = f"PermanentFailure: {exc}"
        log.warning("handler failed permanently for %d event(s): %s", len(events), error)
        permanent.update(e.id for e in events)
        return {e.id: error for e in events}
    except Exception as exc:  # a handler's failure is its events' outcome: retry or dead
        if isinstance(exc, TimeoutError) and scope.expired():
            error = f"handler timed out after {timeout} s"
        else:
            error = f"{type(exc).__name__}: {exc}"
        log.warning("handler failed for %d event(s): %s", len(events), error)
        return {e.id: error for e in events}
    return {}


def _partial(failure: PartialFailure, events: list[Event]) -> dict[int, str]:
    known = {e.id for e in events}
    unknown = [i for i in failure.failed if i not in known]
    if unknown:
        log.warning("PartialFailure names ids not in this call (ignored): %s", unknown[:10])
    return {i: str(error) for i, error in failure.failed.items() if i in known}


async def _cancel(task: asyncio.Task[Any]) -> None:
    task.cancel()
    await asyncio.wait({task})
