"""The listener runtime: source -> queue -> handlers, with bounded concurrency and clean shutdown.

Reading never waits for handlers: the intake (source_reader.py) stores the source in order; a
claim pool (claim_pool.py) leases ready batches for all idle consumers in one transaction;
`concurrency` consumers handle and settle them (handlers.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import inspect
import logging
import signal
from collections.abc import AsyncIterable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from eventqueue.core.errors import ConfigError, LeaseLostError, QueueClosedError
from eventqueue.core.models import Batch, Priority
from eventqueue.runtime.dispatch.claim_pool import ClaimPool
from eventqueue.runtime.dispatch.handlers import (
    CATCH_ALL,
    BatchHandler,
    EventHandler,
    Handler,
    HandlerRunner,
    Route,
    Settler,
)
from eventqueue.runtime.dispatch.source_reader import Intake, name_of
from eventqueue.runtime.queue import EventQueue

if TYPE_CHECKING:
    from eventqueue.runtime.telemetry.prometheus import MetricsServer
    from eventqueue.web import WebServer

__all__ = [
    "CATCH_ALL",
    "ON_INVALID_CHOICES",
    "BatchHandler",
    "Dispatcher",
    "EventHandler",
    "Handler",
    "is_async_callable",
]

log = logging.getLogger(__name__)

ON_INVALID_CHOICES = ("skip", "stop")


_Task = asyncio.Task[None]


@dataclass(slots=True)
class _Tasks:
    """The tasks of one run."""

    consumers: list[_Task]
    claimer: _Task
    reader: _Task | None = None
    committer: _Task | None = None

    def all(self) -> list[_Task]:
        others = (self.claimer, self.reader, self.committer)
        return [*self.consumers, *(t for t in others if t is not None)]


class Dispatcher:
    """Reads a source into the queue and runs handlers on ready batches, critical first."""

    def __init__(
        self,
        queue: EventQueue,
        *,
        concurrency: int = 4,
        handler_timeout_s: float | None = None,
        shutdown_grace_s: float = 10.0,
        on_invalid: str = "skip",
        name: str = "dispatcher",
        reserved: Mapping[Priority, int] | None = None,
        metrics_port: int | None = None,
        metrics_host: str = "127.0.0.1",
        web_port: int | None = None,
        web_host: str = "127.0.0.1",
        web_token: str | None = None,
    ) -> None:
        """`metrics_port`: serve Prometheus `/metrics` on metrics_host:port while `run` runs
        (0: any free port, see `metrics_server.port`; needs `eventqueue[prometheus]`).
        `web_port`: serve the read-only web dashboard likewise (see `web_server.url`; needs
        `eventqueue[web]`; a non-loopback `web_host` needs `web_token`)."""
        _check_settings(concurrency, handler_timeout_s, shutdown_grace_s, on_invalid)
        _check_metrics(metrics_port)
        self.metrics_port = metrics_port
        self.metrics_host = metrics_host
        self.metrics_server: MetricsServer | None = None  # while a run serves /metrics
        self.web = _web_settings(web_port, web_host, web_token)
        self.web_server: WebServer | None = None  # while a run serves the dashboard
        self.queue = queue
        self.concurrency = concurrency
        # Consumers that take CRITICAL work only, besides the `concurrency` others: a CRITICAL
        # event never waits for a slow NORMAL handler to finish.
        self.reserved = _reserved_consumers(DEFAULT_RESERVED if reserved is None else reserved)
        self.handler_timeout_s = handler_timeout_s
        self.shutdown_grace_s = shutdown_grace_s
        self.on_invalid = on_invalid
        self.name = name
        self.metrics = queue.metrics
        self._routes: dict[str, Route] = {}
        self._settler = Settler(queue, self.metrics)
        self._pool: ClaimPool  # made by each run
        self._runner: HandlerRunner  # made by each run
        self._stopping = asyncio.Event()
        # Set by force_stop(), or when the grace period after stop() runs out.
        self._forced = asyncio.Event()

    # --- registration -----------------------------------------------------------------------

    def handler(
        self, event_name: str, *, per_event: bool = False, timeout_s: float | None = None
    ) -> Callable[[Handler], Handler]:
        """Decorator: handle events named `event_name` ("*" for the rest).

        Batch handlers get a list of Events; `per_event=True` handlers get one Event per call.
        """

        def register(fn: Handler) -> Handler:
            self.add_handler(event_name, fn, per_event=per_event, timeout_s=timeout_s)
            return fn

        return register

    def add_handler(
        self,
        event_name: str,
        fn: Handler,
        *,
        per_event: bool = False,
        timeout_s: float | None = None,
    ) -> None:
        """Register async `fn` for events named `event_name` ("*" catches every other name)."""
        if not is_async_callable(fn):
            raise TypeError(f"the handler for {event_name!r} must be an `async def` function")
        self._routes[event_name] = Route(fn, per_event, timeout_s)

    def add_handlers(self, handlers: Mapping[str, Handler]) -> None:
        """Register a mapping of event name -> batch handler."""
        for name, fn in handlers.items():
            self.add_handler(name, fn)

    # --- running ----------------------------------------------------------------------------

    async def run(
        self,
        source: AsyncIterable[Any] | None = None,
        *,
        handle_signals: bool = False,
        resume: bool = True,
    ) -> None:
        """Run until the source is exhausted and everything is handled or dead, or `stop()`.

        With `resume`, a source with `name` and `resume_from` continues after the position
        stored with its last committed event. Without a source, run until the queue is empty.
        """
        restore = self._install_signals() if handle_signals else None
        self._serve_metrics()
        self._serve_web()
        try:
            if source is not None and resume:
                await self._resume(source)
            await self._run(source)
        finally:
            if restore is not None:
                restore()
            if self.metrics_server is not None:
                server, self.metrics_server = self.metrics_server, None
                await server.aclose()
            if self.web_server is not None:
                web, self.web_server = self.web_server, None
                await web.aclose()
            self._stopping, self._forced = asyncio.Event(), asyncio.Event()

    def stop(self) -> None:
        """Graceful stop: stop reading, store what was read, let in-flight batches finish
        within `shutdown_grace_s`, release the rest back to pending."""
        self._stopping.set()
        self.queue.notify()

    def force_stop(self) -> None:
        """Stop now: in-flight handlers are cancelled and their batches released."""
        self._forced.set()
        self.stop()

    def _serve_metrics(self) -> None:
        if self.metrics_port is None:
            return
        from eventqueue.runtime.telemetry.prometheus import start_metrics_server

        self.metrics_server = start_metrics_server(
            self.queue, port=self.metrics_port, host=self.metrics_host
        )
        log.info("serving Prometheus metrics at %s", self.metrics_server.url)

    def _serve_web(self) -> None:
        if self.web is None:
            return
        from eventqueue.web import create_app, start_web_server

        port, host, token = self.web
        app = create_app(self.queue, token=token)
        self.web_server = start_web_server(app, host=host, port=port, token=token)
        log.info("serving the web dashboard at %s", self.web_server.url)

    async def _resume(self, source: AsyncIterable[Any]) -> None:
        name, resume_from = name_of(source), getattr(source, "resume_from", None)
        if name is None or not callable(resume_from):
            return
        position = await self.queue.source_position(name)
        if position is not None:
            log.info("%s: resuming after position %s", name, position)
            resume_from(position)

    async def _run(self, source: AsyncIterable[Any] | None) -> None:
        self._pool = ClaimPool(
            self.queue,
            self.name,
            stopping=self._stopping,
            metrics=self.metrics,
            ack_alone=self._settler.ack,
        )
        self._runner = HandlerRunner(
            self.queue,
            self.metrics,
            self._routes,
            handler_timeout_s=self.handler_timeout_s,
            forced=self._forced,
            settler=self._settler,
        )
        tasks = _Tasks(
            [
                *(
                    asyncio.create_task(self._consume(), name=f"eventqueue-consumer-{i}")
                    for i in range(self.concurrency)
                ),
                *(
                    asyncio.create_task(self._consume_critical(), name=f"eventqueue-reserved-{i}")
                    for i in range(self.reserved)
                ),
            ],
            claimer=asyncio.create_task(self._pool.run(), name="eventqueue-claimer"),
        )
        if source is not None:
            tasks.reader, tasks.committer = self._start_intake(source)
        grace = asyncio.create_task(self._keep_grace(), name="eventqueue-grace")
        try:
            await self._supervise(tasks)
        finally:
            await self._shutdown(tasks)
            grace.cancel()

    def _start_intake(self, source: AsyncIterable[Any]) -> tuple[_Task, _Task]:
        return Intake(self.queue, self.metrics, self.on_invalid).start(source)

    async def _supervise(self, tasks: _Tasks) -> None:
        """Until stop, or until all that was read is stored and nothing is outstanding."""
        while not self._stopping.is_set():
            if tasks.committer is not None and not tasks.committer.done():
                await self._watch(tasks)
            elif await self._drained(tasks):
                return

    async def _drained(self, tasks: _Tasks) -> bool:
        """True when nothing is outstanding; otherwise False after the next change."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        changed = self.queue.changed_event()  # taken before the count: no change is missed
        if await self.queue.outstanding() == 0:
            return True
        # The count is a read that grows with the backlog: spend at most a tenth of the time on it.
        pace_s = 9 * (loop.time() - started)
        await self._watch(tasks, changed, timeout=self.queue.config.poll_ms / 1000)
        await self._watch(tasks, timeout=pace_s)
        return False

    async def _watch(
        self, tasks: _Tasks, changed: asyncio.Event | None = None, *, timeout: float | None = None
    ) -> None:
        """Wait for the stop, a task's end or `changed`; raise what a task failed with."""
        waiters = [asyncio.ensure_future(self._stopping.wait())]
        if changed is not None:
            waiters.append(asyncio.ensure_future(changed.wait()))
        running = [t for t in tasks.all() if not t.done()]
        try:
            await asyncio.wait(
                [*waiters, *running], timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for waiter in waiters:
                waiter.cancel()
        for task in tasks.all():
            if task.done() and (error := _failure(task)) is not None:
                raise error
        if not self._stopping.is_set() and any(t.done() for t in [*tasks.consumers, tasks.claimer]):
            raise QueueClosedError("the queue was closed while the dispatcher was running")

    async def _shutdown(self, tasks: _Tasks) -> None:
        """Stop reading, store what was read, finish or release in-flight batches."""
        self.stop()
        if tasks.reader is not None:
            tasks.reader.cancel()
            await asyncio.wait({tasks.reader})
        if tasks.committer is not None:
            await asyncio.wait({tasks.committer})
        await asyncio.gather(*tasks.consumers, return_exceptions=True)
        self._pool.close()  # acks what the consumers finished last
        await asyncio.gather(tasks.claimer, return_exceptions=True)
        if tasks.committer is not None and (error := _failure(tasks.committer)) is not None:
            raise error  # events were read but could not be stored

    async def _keep_grace(self) -> None:
        await self._stopping.wait()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._forced.wait(), self.shutdown_grace_s)
        self._forced.set()

    # --- consuming --------------------------------------------------------------------------

    async def _consume(self) -> None:
        finished: Batch | None = None  # handled in full: acked in the next claim's transaction
        while (batch := await self._pool.next(finished)) is not None:
            finished = None
            if self._stopping.is_set():
                # Claimed as the stop began: hand it straight back.
                await self._settler.release(batch)
                return
            finished = await self._runner.handle(batch)

    async def _consume_critical(self) -> None:
        """A reserved consumer: CRITICAL batches handed over by their put, or claimed."""
        name = f"{self.name}-reserved"
        finished: Batch | None = None  # handled in full: acked in the next claim's transaction
        while True:
            try:
                batch = await self.queue.next_critical(name, stop=self._stopping, ack=finished)
            except LeaseLostError:
                # The folded ack was refused, so nothing was claimed: settle it on its own.
                if finished is not None:
                    await self._settler.ack(finished)
                finished = None
                continue
            if finished is not None:
                self.metrics.count("handled", len(finished))  # acked in the claim's transaction
            finished = None
            if batch is None:
                return
            if self._stopping.is_set():
                await self._settler.release(batch)
                return
            finished = await self._runner.handle(batch)

    # --- signals ----------------------------------------------------------------------------

    def _install_signals(self) -> Callable[[], None] | None:
        loop = asyncio.get_running_loop()
        signals = (signal.SIGINT, signal.SIGTERM)
        previous = {sig: signal.getsignal(sig) for sig in signals}

        def on_signal(signum: int) -> None:
            if self._stopping.is_set():
                log.warning("signal %d again: stopping now", signum)
                self.force_stop()
            else:
                log.warning("signal %d: shutting down gracefully (again to force)", signum)
                self.stop()

        try:
            for sig in signals:
                loop.add_signal_handler(sig, on_signal, sig)
        except (NotImplementedError, RuntimeError, ValueError):
            return None  # not the main thread, or no signals here: stop() still works

        def restore() -> None:
            for sig, handler in previous.items():
                loop.remove_signal_handler(sig)
                if handler is not None:
                    signal.signal(sig, handler)  # e.g. asyncio.run's own SIGINT handler

        return restore


def is_async_callable(fn: object) -> bool:
    """True for an `async def` function, a partial of one, or an object with `async __call__`."""
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004
    )


def _failure(task: asyncio.Task[Any]) -> BaseException | None:
    return None if task.cancelled() else task.exception()


DEFAULT_RESERVED: Mapping[Priority, int] = {Priority.CRITICAL: 1}


def _reserved_consumers(reserved: Mapping[Priority, int]) -> int:
    """How many CRITICAL-only consumers `reserved` asks for (only CRITICAL can be reserved)."""
    try:
        counts = {Priority.parse(p): n for p, n in reserved.items()}
    except ValueError as exc:
        raise ConfigError(f"reserved: {exc}") from None
    others = sorted(p.name for p in counts if p is not Priority.CRITICAL)
    if others:
        raise ConfigError(f"reserved: only CRITICAL consumers can be reserved, not {others}")
    count = counts.get(Priority.CRITICAL, 0)
    if not isinstance(count, int) or isinstance(count, bool) or not 0 <= count <= 64:
        raise ConfigError(f"reserved: {{Priority.CRITICAL: n}} takes n in 0 .. 64, got {count!r}")
    return count


def _check_metrics(port: int | None) -> None:
    if port is None:
        return
    if not 0 <= port <= 65535:
        raise ConfigError(f"metrics_port must be 0..65535 (0: any free port), got {port}")
    if importlib.util.find_spec("prometheus_client") is None:
        raise ConfigError(
            "metrics_port needs prometheus-client: pip install 'eventqueue[prometheus]'"
        )


def _web_settings(
    port: int | None, host: str, token: str | None
) -> tuple[int, str, str | None] | None:
    if port is None:
        return None
    if not 0 <= port <= 65535:
        raise ConfigError(f"web_port must be 0..65535 (0: any free port), got {port}")
    if importlib.util.find_spec("starlette") is None or importlib.util.find_spec("uvicorn") is None:
        raise ConfigError("web_port needs the dashboard's packages: pip install 'eventqueue[web]'")
    from eventqueue.web import check_bind

    check_bind(host, token)
    return port, host, token


def _check_settings(
    concurrency: int, handler_timeout_s: float | None, shutdown_grace_s: float, on_invalid: str
) -> None:
    if concurrency < 1:
        raise ConfigError(f"concurrency must be at least 1, got {concurrency}")
    if handler_timeout_s is not None and not handler_timeout_s > 0:
        raise ConfigError(f"handler_timeout_s must be positive or None, got {handler_timeout_s}")
    if not shutdown_grace_s >= 0:
        raise ConfigError(f"shutdown_grace_s must be 0 or more, got {shutdown_grace_s}")
    if on_invalid not in ON_INVALID_CHOICES:
        raise ConfigError(f"on_invalid must be one of {ON_INVALID_CHOICES}, got {on_invalid!r}")
