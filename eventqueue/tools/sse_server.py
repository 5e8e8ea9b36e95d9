"""A tiny Server-Sent Events server on stdlib asyncio, for tests and `eventqueue demo`.

Every connection replays the stream's history from the client's `Last-Event-ID` and then follows
live additions, so a reconnecting client resumes without gaps or repeats. Numbered items are sent
as `id: <n>\\nevent: <type>\\ndata: <json>\\n\\n` with n = 1, 2, 3, ... (no `event:` line when the
type is "": an untyped message, as most SSE servers send by default); `publish()` interleaves
raw SSE text (comments such as `: ping`, frames without an id) for tests.

The body uses chunked transfer encoding, so a simulated drop (`disconnect_after`) reaches the
client as an incomplete body - a protocol error - exactly like a real network failure, while a
clean end of stream (`close_at_end`) sends the terminating chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterable, Iterable
from http import HTTPStatus
from types import TracebackType
from typing import Any

logger = logging.getLogger(__name__)

_STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Type: text/event-stream; charset=utf-8\r\n"
    b"Cache-Control: no-store\r\n"
    b"Transfer-Encoding: chunked\r\n"
    b"Connection: close\r\n\r\n"
)
_LAST_CHUNK = b"0\r\n\r\n"
# How many items a synchronous `events` iterable may add before the pump yields to the loop.
_PUMP_BATCH = 256


class SSEServer:
    """An SSE stream on 127.0.0.1 that replays history from `Last-Event-ID` and follows live adds.

    `events` (a list, any iterable or an async iterable of dicts) is fed into the stream by a
    background task, paced by `rate_per_s` when given (pass it for an endless generator: history
    is kept in memory). `add()` and `add_data()` append numbered items live; `publish()` appends raw
    SSE text. `disconnect_after=N` drops the first served connection after N numbered items;
    `reject_first=N` answers the first N connections with `reject_status` (503 by default). With `close_at_end=True` a
    connection ends cleanly once it has sent everything and the feed is finished (`events`
    exhausted, or `finish()` called when `events` is None); otherwise it stays open for live items.
    """

    def __init__(
        self,
        events: Iterable[dict[str, Any]] | AsyncIterable[dict[str, Any]] | None = None,
        *,
        event: str = "event_created",
        host: str = "127.0.0.1",
        port: int = 0,
        rate_per_s: float | None = None,
        disconnect_after: int | None = None,
        retry_ms: int = 50,
        close_at_end: bool = False,
        reject_first: int = 0,
        reject_status: int = 503,
    ) -> None:
        self.event = event
        self.host = host
        self.port = port
        self.retry_ms = retry_ms
        self.connections = 0
        self.last_event_ids_seen: list[str | None] = []
        self._events = events
        self._rate_per_s = rate_per_s
        self._disconnect_after = disconnect_after
        self._close_at_end = close_at_end
        self._reject_first = reject_first
        self._rejection = _status_only(reject_status)
        self._history: list[tuple[int | None, bytes]] = []
        self._index_of_id: dict[int, int] = {}
        self._finished = False
        self._dropped = False
        self._closing = False
        self._changed = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._pump: asyncio.Task[None] | None = None
        self._handlers: set[asyncio.Task[Any]] = set()

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen on host:port (port 0 picks a free one) and start feeding `events`."""
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        if self._events is not None:
            self._pump = asyncio.create_task(self._feed(self._events))

    @property
    def url(self) -> str:
        """The stream's URL; valid after `start()`."""
        return f"http://{self.host}:{self.port}/"

    async def close(self) -> None:
        """Stop listening, end every connection and the feed, and wait for them to finish."""
        if self._server is None:
            return
        self._closing = True
        self._server.close()
        tasks = [*self._handlers, *([self._pump] if self._pump else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    async def __aenter__(self) -> SSEServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- feeding the stream ------------------------------------------------------------------

    def add(self, event: dict[str, Any]) -> int:
        """Append `event` as the next numbered item and return its id."""
        return self.add_data(json.dumps(event, separators=(",", ":")))

    def add_data(self, data: str, *, event: str | None = None) -> int:
        """Append a numbered item with raw `data` text (e.g. invalid JSON) and an optional type
        (default: the server's `event`; "" sends the item untyped)."""
        event_id = len(self._index_of_id) + 1
        kind = self.event if event is None else event
        lines = "".join(f"data: {line}\n" for line in data.split("\n"))
        frame = f"id: {event_id}\n" + (f"event: {kind}\n" if kind else "") + f"{lines}\n"
        self._index_of_id[event_id] = len(self._history)
        self._append(event_id, frame)
        return event_id

    def publish(self, raw_sse: str) -> None:
        """Append raw SSE text, sent verbatim and without an id (e.g. `": ping\\n\\n"`)."""
        self._append(None, raw_sse)

    def finish(self) -> None:
        """Mark the feed as complete, so `close_at_end` connections end after the last item."""
        self._finished = True
        self._notify()

    async def wait_for_connections(self, count: int) -> None:
        """Return once at least `count` connections have been accepted in total."""
        while self.connections < count:
            await self._changed.wait()

    def _append(self, event_id: int | None, frame: str) -> None:
        self._history.append((event_id, frame.encode("utf-8")))
        self._notify()

    def _notify(self) -> None:
        # Waiters hold the previous Event object, so a fresh one per change never misses a wake-up.
        self._changed.set()
        self._changed = asyncio.Event()

    async def _feed(self, events: Iterable[dict[str, Any]] | AsyncIterable[dict[str, Any]]) -> None:
        # Paced against a schedule (start + n / rate), not by a fixed sleep per item, so a busy
        # event loop does not slow the stream below its rate.
        start = asyncio.get_running_loop().time()
        count = 0
        if isinstance(events, AsyncIterable):
            async for item in events:
                count += 1
                await self._feed_one(item, start, count)
        else:
            for item in events:
                count += 1
                await self._feed_one(item, start, count)
        self.finish()

    async def _feed_one(self, item: dict[str, Any], start: float, count: int) -> None:
        self.add(item)
        if self._rate_per_s:
            due = start + count / self._rate_per_s
            delay = due - asyncio.get_running_loop().time()
            if delay > 0:
                await asyncio.sleep(delay)
            elif count % _PUMP_BATCH == 0:
                await asyncio.sleep(0)
        elif count % _PUMP_BATCH == 0:
            await asyncio.sleep(0)

    # -- connections -------------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # the client went away or sent garbage: nothing to answer
        except asyncio.CancelledError:
            # close() cancels handlers; ending normally keeps Python 3.11's start_server callback
            # from calling task.exception() on a cancelled task and logging a spurious error.
            if not self._closing:
                raise
        finally:
            self._handlers.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        headers = _parse_headers(await reader.readuntil(b"\r\n\r\n"))
        if self._closing:
            return
        last_event_id = headers.get("last-event-id")
        self.connections += 1
        self.last_event_ids_seen.append(last_event_id)
        self._notify()
        if self.connections <= self._reject_first:
            writer.write(self._rejection)
            await writer.drain()
            return
        writer.write(_STREAM_HEAD)
        await _write_chunk(writer, f"retry: {self.retry_ms}\n\n".encode())
        drop_after = None if self._dropped else self._disconnect_after
        self._dropped = True
        await self._stream(writer, self._start_index(last_event_id), drop_after)

    def _start_index(self, last_event_id: str | None) -> int:
        # An unknown or malformed id replays from the start, as a server with no memory of it would.
        try:
            return self._index_of_id[int(last_event_id or "")] + 1
        except (ValueError, KeyError):
            return 0

    async def _stream(
        self, writer: asyncio.StreamWriter, index: int, drop_after: int | None
    ) -> None:
        sent = 0
        while True:
            while index < len(self._history) and sent != drop_after:
                event_id, frame = self._history[index]
                index += 1
                await _write_chunk(writer, frame)
                if event_id is not None:
                    sent += 1
            if sent == drop_after:
                return  # no terminating chunk: the client sees a broken body
            if self._finished and self._close_at_end:
                writer.write(_LAST_CHUNK)
                await writer.drain()
                return
            # No await between the length check and taking the Event, so no addition is missed.
            await self._changed.wait()


def _status_only(status: int) -> bytes:
    """A complete response with `status` and no body, e.g. 503 Service Unavailable."""
    reason = HTTPStatus(status).phrase
    return f"HTTP/1.1 {status} {reason}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode()


async def _write_chunk(writer: asyncio.StreamWriter, payload: bytes) -> None:
    writer.write(b"%x\r\n%s\r\n" % (len(payload), payload))
    await writer.drain()


def _parse_headers(head: bytes) -> dict[str, str]:
    """Request headers keyed by lower-case name; the request line and path are ignored."""
    lines = head.decode("latin-1").split("\r\n")[1:]
    pairs = (line.partition(":") for line in lines if ":" in line)
    return {name.strip().lower(): value.strip() for name, _, value in pairs}
