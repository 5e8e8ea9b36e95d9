"""`eventqueue listen`: the dispatcher on an SSE URL, a JSON-lines file or stdin, from the shell.

Handlers come from `module:attr`, a dict mapping event names (and "*" for the rest) to async
batch handlers. The run ends with the source (a file, stdin) or at SIGINT/SIGTERM (a stream),
shuts down gracefully, and prints a summary: outcome counts, batch sizes and latency from
receipt to handler start per priority. Setup mistakes raise ConfigError (the CLI exits 2).
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

from eventqueue.core.errors import ConfigError
from eventqueue.core.models import Priority
from eventqueue.runtime.dispatch.dispatcher import Dispatcher, Handler, is_async_callable
from eventqueue.runtime.metrics import Metrics
from eventqueue.runtime.queue import EventQueue
from eventqueue.runtime.sources import JSONLSource, SSESource, jsonl_source, sse_source

_HANDLERS_HELP = "give --handlers as module:attr, e.g. myapp.handlers:HANDLERS"


@dataclass(frozen=True, slots=True)
class ListenOptions:
    """What `eventqueue listen` was asked to do."""

    source: str
    handlers: str
    db_path: str
    concurrency: int = 4
    handler_timeout_s: float | None = None
    shutdown_grace_s: float = 10.0
    on_error: str = "skip"
    metrics_port: int | None = None  # serve Prometheus /metrics (needs eventqueue[prometheus])
    metrics_host: str = "127.0.0.1"
    tracing: bool = False  # OpenTelemetry spans via the global provider (eventqueue[otel])
    event_types: tuple[str, ...] = ()  # SSE message types to read; () = the source's default


async def listen(options: ListenOptions) -> None:
    """Run the handlers on the source until it ends or a signal, then print a summary."""
    handlers = load_handlers(options.handlers)
    source = open_source(options.source, options.on_error, options.event_types)
    _log_to_stderr()
    started = time.monotonic()
    async with EventQueue.open(options.db_path) as queue:
        dispatcher = Dispatcher(
            queue,
            concurrency=options.concurrency,
            handler_timeout_s=options.handler_timeout_s,
            shutdown_grace_s=options.shutdown_grace_s,
            on_invalid=options.on_error,
            metrics_port=options.metrics_port,
            metrics_host=options.metrics_host,
        )
        if options.tracing:
            from eventqueue.runtime.telemetry import instrument

            instrument(queue)
        dispatcher.add_handlers(handlers)
        try:
            # stdin is a new stream every time: a line number stored by an earlier run means
            # nothing for it. A file or a URL continues after its stored position.
            await dispatcher.run(source, handle_signals=True, resume=options.source != "-")
        finally:
            position = await queue.source_position(source.name)
            elapsed_s = time.monotonic() - started
            print(summary(queue.metrics, source, position, elapsed_s), flush=True)


def load_handlers(spec: str) -> dict[str, Handler]:
    """The dict named by `module:attr`, checked: event names map to `async def` handlers."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"--handlers {spec!r}: {_HANDLERS_HELP}")
    value = _import_attr(module_name, attr, spec)
    if not isinstance(value, Mapping):
        raise ConfigError(
            f"--handlers {spec}: is a {type(value).__name__}, not a dict mapping event names "
            '(and "*" for the rest) to async handlers'
        )
    if not value:
        raise ConfigError(
            f'--handlers {spec}: the dict is empty; map event names or "*" to handlers'
        )
    for name, fn in value.items():
        if not isinstance(name, str):
            raise ConfigError(f"--handlers {spec}: key {name!r} is not an event name (a string)")
        if not is_async_callable(fn):
            raise ConfigError(
                f"--handlers {spec}: the handler for {name!r} ({_describe(fn)}) is not async; "
                "define it with `async def name(events): ...`"
            )
    return dict(value)


def _import_attr(module_name: str, attr: str, spec: str) -> object:
    # Like `python -m`: a handlers module in the current directory imports without PYTHONPATH.
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # whatever the module raised while importing, reported as such
        raise ConfigError(
            f"--handlers {spec}: cannot import {module_name} ({type(exc).__name__}: {exc}); "
            "check the module name and that it is on PYTHONPATH"
        ) from exc
    try:
        return functools.reduce(getattr, attr.split("."), module)
    except AttributeError:
        raise ConfigError(f"--handlers {spec}: {module_name} has no attribute {attr!r}") from None


def _describe(fn: object) -> str:
    return getattr(fn, "__qualname__", None) or type(fn).__name__


def open_source(
    spec: str, on_error: str, event_types: tuple[str, ...] = ()
) -> SSESource | JSONLSource:
    """SSE for an http(s) URL; JSON lines for `-` (stdin) or an existing file."""
    if spec.lower().startswith(("http://", "https://")):
        return sse_source(spec, event_types or None, on_error=on_error)
    if event_types:
        raise ConfigError(f"--event applies to an SSE URL; {spec!r} is read as JSON lines")
    if spec != "-" and not os.path.isfile(spec):
        raise ConfigError(
            f"source {spec!r} is not an http(s) URL, an existing file, or - for stdin"
        )
    return jsonl_source(spec, on_error=on_error)


def summary(
    metrics: Metrics, source: SSESource | JSONLSource, position: str | None, elapsed_s: float
) -> str:
    """A few lines for people: what came in, what happened to it, how fast handlers started."""
    o = metrics.outcomes
    avg = f"{metrics.batched_events / metrics.batches:.1f}" if metrics.batches else "-"
    skipped = source.skipped if isinstance(source, SSESource) else Counter[str]()
    lines = [
        f"listen {source.name}: ran {elapsed_s:.1f} s; stored position {position or 'none'}",
        f"  in: read {o['read']}, accepted {o['accepted']}, duplicates {o['duplicate']}, "
        f"spilled {o['spilled']}, bad input {source.errors}, rejected {o['invalid']}, "
        f"skipped {skipped.total()}",
        *_skipped(skipped),
        f"  out: handled {o['handled']}, retried {o['retried']}, dead {o['dead']}, "
        f"released {o['released']}, lease lost {o['lease_lost']}",
        f"  batches: {metrics.batches}, average size {avg}",
        "  latency, receipt to handler start: " + _latencies(metrics),
    ]
    return "\n".join(lines)


def _skipped(skipped: Counter[str]) -> list[str]:
    """A line naming the message types skipped and how many of each, when there were any."""
    if not skipped:
        return []
    counts = ", ".join(f"{kind} {n}" for kind, n in skipped.most_common())
    return [f"  skipped by type: {counts} (read them with --event TYPE)"]


def _latencies(metrics: Metrics) -> str:
    parts = []
    for priority in sorted(Priority, reverse=True):
        ms = metrics.latency_ms(priority)
        if ms["n"]:
            parts.append(f"{priority.name} p50 {ms['p50_ms']} ms, p99 {ms['p99_ms']} ms")
    return "; ".join(parts) or "no events handled"


def _log_to_stderr() -> None:
    # Reconnects, bad input and the shutdown steps belong on stderr; does nothing when the
    # host application (or a test runner) has configured logging already.
    logging.basicConfig(
        level=logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if logging.getLogger("eventqueue").level == logging.NOTSET:
        logging.getLogger("eventqueue").setLevel(logging.INFO)  # connects and resumes too
