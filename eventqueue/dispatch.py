"""The listener runtime: source -> queue -> handlers, with bounded concurrency and clean shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterable, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from eventqueue.errors import EventQueueError, InvalidEventError, LeaseLostError, PartialFailure
from eventqueue.models import Batch, Event
from eventqueue.queue import EventQueue

log = logging.getLogger("eventqueue.dispatch")

BatchHandler = Callable[[list[Event]], Awaitable[Any]]
EventHandler = Callable[[Event], Awaitable[Any]]
CATCH_ALL = "*"
# Puts the reader keeps in flight: enough to fill a group commit, bounded so memory stays flat.
_PUTS_IN_FLIGHT = 512


@dataclass(frozen=True, slots=True)
class _Route:
    handler: Callable[..., Awaitable[Any]]
    per_event: bool
    timeout_s: float | None


class Dispatcher:
    """Reads a source into the queue and runs handlers on ready batches, critical first."""

    def __init__(
        self,
        queue: EventQueue,
        *,
        concurrency: int = 4,
        handler_timeout_s: float | None = None,
        shutdown_grace_s: float = 10.0,
        name: str = "dispatcher",
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.queue = queue
        self.concurrency = concurrency
        self.handler_timeout_s = handler_timeout_s
        self.shutdown_grace_s = shutdown_grace_s
        self.name = name
        self.metrics = queue.metrics
        self._routes: dict[str, _Route] = {}
        self._stopping = asyncio.Event()
        self._forced = asyncio.Event()
        self._source_done = False
        self._in_flight: set[asyncio.Task[Any]] = set()

    # --- registration -----------------------------------------------------------------------

    def handler(
        self, event_name: str, *, per_event: bool = False, timeout_s: float | None = None
    ) -> Callable[[Callable[..., Awaitable[Any]]], Callable[..., Awaitable[Any]]]:
        """Decorator: handle events named `event_name` ("*" for the rest).

        Batch handlers get a list of Events; `per_event=True` handlers get one Event per call.
        """

        def register(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
            self.add_handler(event_name, fn, per_event=per_event, timeout_s=timeout_s)
            return fn

        return register

    def add_handler(
        self,
        event_name: str,
        fn: Callable[..., Awaitable[Any]],
        *,
        per_event: bool = False,
        timeout_s: float | None = None,
    ) -> None:
        """Register `fn` for events named `event_name` ("*" catches every other name)."""
        if not callable(fn):
            raise TypeError(f"handler for {event_name!r} is not callable")
        self._routes[event_name] = _Route(fn, per_event, timeout_s)

    def add_handlers(self, handlers: Mapping[str, Callable[..., Awaitable[Any]]]) -> None:
        """Register a mapping of event name -> batch handler."""
        for name, fn in handlers.items():
            self.add_handler(name, fn)

    # --- running ----------------------------------------------------------------------------

    async def run(
        self, source: AsyncIterable[dict[str, Any]] | None = None, *, handle_signals: bool = False
    ) -> None:
        """Run until the source is exhausted and all its events are handled, or until `stop()`."""
        self._stopping.clear()
        self._source_done = source is None
        restore = self._install_signals() if handle_signals else None
        consumers = [
            asyncio.create_task(self._consume(f"{self.name}-{i}"), name=f"eventqueue-consumer-{i}")
            for i in range(self.concurrency)
        ]
        reader = (
            asyncio.create_task(self._read(source), name="eventqueue-reader") if source else None
        )
        try:
            await self._until_finished(reader)
        finally:
            self._stopping.set()
            self.queue.notify()
            await self._shutdown(reader, consumers)
            if restore is not None:
                restore()

    def stop(self) -> None:
        """Begin a graceful shutdown: stop reading, finish in-flight batches, release the rest."""
        self._stopping.set()
        self.queue.notify()

    def force_stop(self) -> None:
        """Stop now: in-flight handlers are cancelled; their leases are released where possible."""
        self._forced.set()
        self.stop()

    async def _until_finished(self, reader: asyncio.Task[None] | None) -> None:
        stop_wait = asyncio.create_task(self._stopping.wait())
        try:
            if reader is not None:
                await asyncio.wait({reader, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
                if reader.done():
                    reader.result()  # a failed read (storage fault, bad input with stop) ends the run
            self._source_done = True
            while not self._stopping.is_set():
                changed = self.queue.changed_event()
                if await self.queue.outstanding() == 0:
                    return
                # Re-checked on every change in this process; the timeout covers other processes.
                waiter = asyncio.ensure_future(changed.wait())
                await asyncio.wait(
                    {stop_wait, waiter}, timeout=0.5, return_when=asyncio.FIRST_COMPLETED
                )
                waiter.cancel()
        finally:
            stop_wait.cancel()

    async def _read(self, source: AsyncIterable[dict[str, Any]]) -> None:
        name = getattr(source, "name", None)
        slots = asyncio.Semaphore(_PUTS_IN_FLIGHT)
        iterator = aiter(source)
        try:
            while not self._stopping.is_set():
                try:
                    event = await anext(iterator)
                except StopAsyncIteration:
                    break
                position = getattr(source, "position", None)
                await slots.acquire()
                task = asyncio.create_task(self._put(event, name, position))
                self._in_flight.add(task)
                task.add_done_callback(self._in_flight.discard)
                task.add_done_callback(lambda _t: slots.release())
        finally:
            # Reading stops here; what was read is committed before the run returns.
            results = await asyncio.gather(*self._in_flight, return_exceptions=True)
            closer = getattr(iterator, "aclose", None)
            if closer is not None:
                await closer()
            for result in results:
                if isinstance(result, BaseException):
                    raise result

    async def _put(self, event: dict[str, Any], source: str | None, position: str | None) -> None:
        try:
            result = await self.queue.put(event, source=source, position=position)
        except InvalidEventError as exc:
            # Bad input from a stream is reported and counted, never silently dropped; it is not
            # a reason to stop listening.
            self.metrics.count("invalid")
            log.error("rejected event from %s at %s: %s", source, position, exc)
            return
        if result.spilled:
            self.queue.notify()

    async def _consume(self, consumer: str) -> None:
        while not self._stopping.is_set():
            batch = await self.queue.next_batch(consumer, stop=self._stopping)
            if batch is None:
                continue
            await self._handle(batch)

    async def _handle(self, batch: Batch) -> None:
        now = self.queue.now()
        for event in batch.events:
            self.metrics.latency(event.priority, max(0.0, now - event.received_at))
        self.metrics.batch(batch.key, len(batch))
        renewer = asyncio.create_task(self._renew(batch))
        work = asyncio.create_task(self._run_handlers(batch))
        try:
            failed = await self._await_work(work)
        except asyncio.CancelledError:
            await self._finish(batch, None, release=True)
            raise
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
        await self._finish(batch, failed, release=False)

    async def _await_work(self, work: asyncio.Task[dict[int, str]]) -> dict[int, str] | None:
        """The handler's result; None when shutdown ran out of grace and the work was cancelled."""
        forced = asyncio.create_task(self._grace_expired())
        try:
            await asyncio.wait({work, forced}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            forced.cancel()
        if work.done():
            return work.result()
        work.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await work
        return None

    async def _grace_expired(self) -> None:
        await self._stopping.wait()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._forced.wait(), self.shutdown_grace_s)

    async def _run_handlers(self, batch: Batch) -> dict[int, str]:
        """Run every handler the batch needs; returns failed event id -> error."""
        failed: dict[int, str] = {}
        for route, events in self._routes_for(batch.events, failed):
            failed.update(await self._call(route, events))
        return failed

    def _routes_for(
        self, events: tuple[Event, ...], failed: dict[int, str]
    ) -> list[tuple[_Route, list[Event]]]:
        groups: dict[int, tuple[_Route, list[Event]]] = {}
        for event in events:
            route = self._routes.get(event.name) or self._routes.get(CATCH_ALL)
            if route is None:
                failed[event.id] = f"no handler registered for event_name {event.name!r}"
                continue
            groups.setdefault(id(route), (route, []))[1].append(event)
        return list(groups.values())

    async def _call(self, route: _Route, events: list[Event]) -> dict[int, str]:
        timeout = route.timeout_s if route.timeout_s is not None else self.handler_timeout_s
        if route.per_event:
            failed: dict[int, str] = {}
            for event in events:
                failed.update(await self._invoke(route.handler, event, [event], timeout))
            return failed
        return await self._invoke(route.handler, events, events, timeout)

    async def _invoke(
        self,
        fn: Callable[..., Awaitable[Any]],
        argument: Any,
        events: list[Event],
        timeout: float | None,
    ) -> dict[int, str]:
        try:
            async with asyncio.timeout(timeout):
                await fn(argument)
        except PartialFailure as exc:
            known = {e.id for e in events}
            return {i: err for i, err in exc.failed.items() if i in known}
        except TimeoutError:
            return {e.id: f"handler timed out after {timeout}s" for e in events}
        except (
            Exception
        ) as exc:  # a handler's failure is the event's outcome, retried or dead-lettered
            log.warning("handler failed for %d event(s): %r", len(events), exc)
            return {e.id: f"{type(exc).__name__}: {exc}" for e in events}
        return {}

    async def _renew(self, batch: Batch) -> None:
        # Long handlers keep their lease: renew at a third of it, well before expiry.
        interval = max(0.01, self.queue.config.lease_s / 3)
        while True:
            await asyncio.sleep(interval)
            try:
                await self.queue.extend(batch)
            except LeaseLostError:
                log.warning("lease of batch %s lost while its handler ran", batch.id)
                return

    async def _finish(self, batch: Batch, failed: dict[int, str] | None, *, release: bool) -> None:
        try:
            if release or failed is None:
                await self.queue.release(batch)
                self.metrics.count("released", len(batch))
                return
            done = [e.id for e in batch.events if e.id not in failed]
            if done:
                await self.queue.ack(batch, done)
                self.metrics.count("handled", len(done))
            if failed:
                await self._nack_failed(batch, failed)
        except LeaseLostError:
            # Another consumer holds these events now (our lease expired): it will finish them.
            self.metrics.count("lease_lost", len(batch))
            log.warning("batch %s: lease lost before it could be finished", batch.id)
        except EventQueueError as exc:
            self.metrics.count("finish_failed", len(batch))
            log.error(
                "batch %s could not be finished (%s); it is redelivered after its lease",
                batch.id,
                exc,
            )

    async def _nack_failed(self, batch: Batch, failed: dict[int, str]) -> None:
        errors = sorted(set(failed.values()))
        error = errors[0] if len(errors) == 1 else "; ".join(errors)[:2000]
        dead = [
            e
            for e in batch.events
            if e.id in failed and e.attempts >= self.queue.config.max_attempts
        ]
        await self.queue.nack(batch, error, ids=list(failed))
        self.metrics.count("dead", len(dead))
        self.metrics.count("retried", len(failed) - len(dead))

    async def _shutdown(
        self, reader: asyncio.Task[None] | None, consumers: list[asyncio.Task[None]]
    ) -> None:
        if reader is not None and not reader.done():
            reader.cancel()
        if reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(reader, return_exceptions=True)
        await asyncio.gather(*consumers, return_exceptions=True)

    def _install_signals(self) -> Callable[[], None] | None:
        loop = asyncio.get_running_loop()
        signals = (signal.SIGINT, signal.SIGTERM)

        def on_signal(signum: int) -> None:
            if self._stopping.is_set():
                log.warning("second signal: stopping now")
                self.force_stop()
            else:
                log.warning("signal %d: shutting down gracefully (again to force)", signum)
                self.stop()

        try:
            for sig in signals:
                loop.add_signal_handler(sig, on_signal, sig)
        except (NotImplementedError, RuntimeError):
            return None

        def restore() -> None:
            for sig in signals:
                loop.remove_signal_handler(sig)

        return restore
