"""Event sources: async iterators of event dicts from an SSE stream or a JSON-lines file.

Every source has a `name`, a `position` (where the last yielded event came from) and
`resume_from(position)`. The dispatcher stores `position` in the same transaction as the events
and, after a restart, calls `resume_from` before iterating, so nothing is read twice or lost.
Malformed input is never dropped silently: it is logged, counted in `errors`, and either skipped
(`on_error="skip"`) or raised as `InvalidEventError` (`on_error="stop"`). SSE messages of a type
the source does not read are counted by type in `skipped`, with a warning for the first of each.
A server that refuses the stream with a 4xx (other than 408/429), or answers with something that
is not an SSE stream, stops the source with `SourceRejectedError`; 5xx answers and network
errors are retried with back-off.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import sys
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Iterable
from contextlib import aclosing
from types import TracebackType
from typing import IO, Any, Protocol, Self

import httpx
from httpx_sse import ServerSentEvent, aconnect_sse

from eventqueue.core.errors import (
    ConfigError,
    EventQueueError,
    InvalidEventError,
    SourceRejectedError,
)

logger = logging.getLogger(__name__)

ON_ERROR_CHOICES = ("skip", "stop")
# What an SSE source reads unless told otherwise: the typed messages of the original stream, and
# untyped ones (type "message" per the SSE spec), which most SSE servers send by default.
DEFAULT_EVENT_TYPES = ("event_created", "message")
# Client errors that are worth retrying: a request timeout and "too many requests".
_RETRIED_4XX = frozenset({408, 429})
# Distinct skipped types counted by name; a stream inventing more is counted under one key.
_MAX_SKIPPED_TYPES = 100
_OTHER_TYPES = "(other types)"
_JSON_TYPE_NAMES = {list: "array", str: "string", int: "number", float: "number", bool: "boolean"}


class Source(Protocol):
    """What the dispatcher needs from a source: iteration, a resumable position and close."""

    @property
    def name(self) -> str:
        """A short label for logs and the stored position, e.g. `sse:http://...`."""
        ...

    @property
    def position(self) -> str | None:
        """Where the most recently yielded event came from; None before the first."""
        ...

    @property
    def errors(self) -> int:
        """How many malformed inputs were logged (and skipped or raised)."""
        ...

    def resume_from(self, position: str | None) -> None:
        """Continue after `position` (a value of `position` stored earlier); before iterating."""
        ...

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        """The source is its own iterator."""
        ...

    async def __anext__(self) -> dict[str, Any]:
        """The next event."""
        ...

    async def aclose(self) -> None:
        """Release connections and files the source opened."""
        ...


class _BaseSource:
    """Shared bookkeeping: position, error policy and the lifecycle of the inner generator."""

    def __init__(self, name: str, on_error: str, position: str | None) -> None:
        if on_error not in ON_ERROR_CHOICES:
            raise ConfigError(f"on_error must be one of {ON_ERROR_CHOICES}, got {on_error!r}")
        self.name = name
        self.position = position
        self.errors = 0
        self.on_error = on_error
        self._gen: AsyncGenerator[dict[str, Any], None] | None = None

    def resume_from(self, position: str | None) -> None:
        """Continue after `position` (a stored `position` value); call before iterating."""
        if self._gen is not None:
            raise RuntimeError(f"{self.name}: resume_from() must be called before iteration starts")
        self.position = position

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> dict[str, Any]:
        if self._gen is None:
            self._gen = self._events()
        return await self._gen.__anext__()

    async def aclose(self) -> None:
        """Stop iterating and release what the source opened; safe to call twice."""
        if self._gen is not None:
            await self._gen.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def _events(self) -> AsyncGenerator[dict[str, Any], None]:
        raise NotImplementedError

    def _decode(self, where: str, data: str | bytes) -> dict[str, Any] | None:
        """The JSON object in `data`, or None after logging, counting and maybe raising."""
        try:
            return _decode_object(data)
        except ValueError as exc:
            self.errors += 1
            logger.warning("%s: invalid event at %s: %s", self.name, where, exc)
            if self.on_error == "stop":
                raise InvalidEventError(f"{where}: {exc} (in {self.name})") from None
            return None


def _decode_object(data: str | bytes) -> dict[str, Any]:
    """Parse one JSON object (UTF-8 if bytes), or raise ValueError saying why not."""
    text = data.decode("utf-8") if isinstance(data, bytes) else data
    value = json.loads(text, parse_constant=_reject_constant)
    if not isinstance(value, dict):
        kind = "null" if value is None else _JSON_TYPE_NAMES.get(type(value), type(value).__name__)
        raise ValueError(f"expected a JSON object, got {kind}")
    return value


def _reject_constant(name: str) -> Any:
    # NaN and Infinity are not JSON; the queue would reject them later, so report them here.
    raise ValueError(f"{name} is not valid JSON")


# -- Server-Sent Events -------------------------------------------------------------------------


class SSESource(_BaseSource):
    """Events of the chosen types from an SSE stream; reconnects with back-off and `Last-Event-ID`.

    `event_types` are the message types read (a string for one; default `DEFAULT_EVENT_TYPES`:
    `event_created` and untyped messages). Messages of other types are counted in `skipped`.
    """

    def __init__(
        self,
        url: str,
        event_types: Iterable[str] | str | None = None,
        *,
        last_event_id: str | None = None,
        reconnect_initial_s: float = 0.1,
        reconnect_max_s: float = 30.0,
        timeout_s: float | None = None,
        client: httpx.AsyncClient | None = None,
        max_reconnects: int | None = None,
        on_error: str = "skip",
    ) -> None:
        super().__init__(f"sse:{url}", on_error, last_event_id)
        self.url = url
        self.event_types = _event_types(event_types)
        self.skipped: Counter[str] = Counter()  # messages not of `event_types`, by type
        self.reconnect_initial_s = reconnect_initial_s
        self.reconnect_max_s = reconnect_max_s
        self.timeout_s = timeout_s
        self.max_reconnects = max_reconnects
        self.reconnects = 0
        self.retry_s: float | None = None  # the server's `retry:` field, once sent
        self._client = client
        self._owns_client = client is None
        # The id of the last message seen of any type: reconnecting after it skips nothing that
        # matters, while `position` only moves on yielded events (what the dispatcher stores).
        self._last_seen_id: str | None = last_event_id

    def resume_from(self, position: str | None) -> None:
        """Resume after SSE id `position` (sent as `Last-Event-ID`); call before iterating."""
        super().resume_from(position)
        self._last_seen_id = position

    async def aclose(self) -> None:
        """Stop iterating and close the HTTP client if this source created it."""
        await super().aclose()
        if self._owns_client and self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _events(self) -> AsyncGenerator[dict[str, Any], None]:
        # Consecutive connections that delivered no event. A `retry:` or empty message does not
        # count as progress, so a server that accepts and then drops us is still backed off from.
        failures = 0
        while True:
            try:
                async with aclosing(self._connect()) as messages:
                    async for message in messages:
                        if message.data:
                            failures = 0
                        item = self._accept(message)
                        if item is not None:
                            yield item
                cause: Exception | None = None
            except httpx.HTTPStatusError as exc:
                _raise_if_rejected(self.url, exc)
                cause = exc
            except httpx.TransportError as exc:
                cause = exc
            failures += 1
            await self._before_reconnect(failures, cause)

    async def _connect(self) -> AsyncGenerator[ServerSentEvent, None]:
        """Messages from one connection, starting after the last id seen."""
        if self._client is None:
            self._client = httpx.AsyncClient()
        headers = {"Last-Event-ID": self._last_seen_id} if self._last_seen_id else {}
        # The stream is idle between events, so httpx's default 5 s timeout would cut it;
        # timeout_s bounds connect and each read (server heartbeats keep a healthy stream alive).
        timeout = httpx.Timeout(self.timeout_s)
        async with aconnect_sse(
            self._client, "GET", self.url, headers=headers, timeout=timeout
        ) as event_source:
            event_source.response.raise_for_status()
            _check_stream(self.url, event_source.response)
            logger.info("%s: connected (Last-Event-ID %s)", self.name, self._last_seen_id)
            async for message in event_source.aiter_sse():
                yield message

    def _accept(self, message: ServerSentEvent) -> dict[str, Any] | None:
        """The event in `message` if it is of our types; records id and retry of every message."""
        if message.retry is not None:
            self.retry_s = message.retry / 1000
        if message.id:
            self._last_seen_id = message.id
        # Per the SSE spec a message with no data is not dispatched (httpx-sse yields it anyway).
        if not message.data:
            return None
        if message.event not in self.event_types:
            self._skip(message)
            return None
        item = self._decode(f"id {message.id or '?'}", message.data)
        if item is not None and message.id:
            self.position = message.id
        return item

    def _skip(self, message: ServerSentEvent) -> None:
        """Count a message of another type; warn at the first of each type (never silent)."""
        kind = message.event
        if kind not in self.skipped and len(self.skipped) >= _MAX_SKIPPED_TYPES:
            kind = _OTHER_TYPES
        self.skipped[kind] += 1
        if self.skipped[kind] == 1:
            logger.warning(
                "%s: skipping messages of type %r (first at id %s): this source reads %s; "
                "choose the types with event_types= (eventqueue listen --event TYPE)",
                self.name,
                kind,
                message.id or "?",
                ", ".join(sorted(self.event_types)),
            )

    async def _before_reconnect(self, failures: int, cause: Exception | None) -> None:
        """Sleep the back-off delay, or raise EventQueueError once `max_reconnects` is spent."""
        reason = _brief(cause) if cause is not None else "the server ended the stream"
        if self.max_reconnects is not None and failures > self.max_reconnects:
            raise EventQueueError(
                f"{self.name}: gave up after {failures} failed connection attempts in a row "
                f"({reason}); check that the server is up and the URL is right"
            ) from cause
        delay_s = self._delay_s(failures)
        logger.warning("%s: %s; reconnecting in %.2f s", self.name, reason, delay_s)
        self.reconnects += 1
        await asyncio.sleep(delay_s)

    def _delay_s(self, failures: int) -> float:
        """Exponential back-off from the server's `retry:` (or reconnect_initial_s), jittered."""
        base_s = self.retry_s if self.retry_s is not None else self.reconnect_initial_s
        delay_s = min(self.reconnect_max_s, base_s * 2.0 ** min(failures - 1, 30))
        # Jitter spreads the reconnects of many clients after a server restart.
        return delay_s * random.uniform(0.5, 1.0)


def _event_types(event_types: Iterable[str] | str | None) -> frozenset[str]:
    """The message types to read, checked: at least one, each a non-empty string."""
    if event_types is None:
        return frozenset(DEFAULT_EVENT_TYPES)
    types = [event_types] if isinstance(event_types, str) else list(event_types)
    if not types:
        raise ConfigError("event_types is empty: the source would read nothing; name a type")
    for kind in types:
        if not isinstance(kind, str) or not kind:
            raise ConfigError(f"event_types: {kind!r} is not a message type (a non-empty string)")
    return frozenset(types)


def _raise_if_rejected(url: str, error: httpx.HTTPStatusError) -> None:
    """Raise SourceRejectedError for a 4xx that retrying cannot fix (not 408 or 429)."""
    response = error.response
    if 400 <= response.status_code < 500 and response.status_code not in _RETRIED_4XX:
        answer = f"HTTP {response.status_code} {response.reason_phrase}".rstrip()
        problem = f"the server refused the stream ({answer})"
        raise SourceRejectedError(url, response.status_code, problem) from error


def _check_stream(url: str, response: httpx.Response) -> None:
    """Raise SourceRejectedError unless the answer is an SSE stream (a web page, JSON ...)."""
    content_type = response.headers.get("content-type", "").partition(";")[0].strip()
    if content_type.lower() != "text/event-stream":
        problem = (
            f"the server answered HTTP {response.status_code} with Content-Type "
            f"{content_type or 'none'!r}, not an SSE stream (text/event-stream)"
        )
        raise SourceRejectedError(url, response.status_code, problem)


def _brief(error: Exception) -> str:
    """One line naming a connection failure, for logs and the give-up message."""
    if isinstance(error, httpx.HTTPStatusError):
        return f"HTTP {error.response.status_code} {error.response.reason_phrase}"
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def sse_source(
    url: str,
    event_types: Iterable[str] | str | None = None,
    *,
    last_event_id: str | None = None,
    reconnect_initial_s: float = 0.1,
    reconnect_max_s: float = 30.0,
    timeout_s: float | None = None,
    client: httpx.AsyncClient | None = None,
    max_reconnects: int | None = None,
    on_error: str = "skip",
) -> SSESource:
    """A source of the messages of `event_types` at `url`, JSON-decoded; see SSESource."""
    return SSESource(
        url,
        event_types,
        last_event_id=last_event_id,
        reconnect_initial_s=reconnect_initial_s,
        reconnect_max_s=reconnect_max_s,
        timeout_s=timeout_s,
        client=client,
        max_reconnects=max_reconnects,
        on_error=on_error,
    )


# -- JSON lines ---------------------------------------------------------------------------------


class JSONLSource(_BaseSource):
    """One event per non-blank line of a file, a file object or stdin ("-")."""

    def __init__(
        self,
        path_or_file: str | os.PathLike[str] | IO[str] | IO[bytes],
        *,
        on_error: str = "skip",
        chunk_lines: int = 1000,
    ) -> None:
        super().__init__(f"jsonl:{_describe(path_or_file)}", on_error, None)
        self._path_or_file = path_or_file
        self.chunk_lines = chunk_lines

    def resume_from(self, position: str | None) -> None:
        """Skip lines up to and including line number `position`; call before iterating."""
        if position is not None and not position.isdigit():
            raise ConfigError(f"{self.name}: position must be a line number, got {position!r}")
        super().resume_from(position)

    async def _events(self) -> AsyncGenerator[dict[str, Any], None]:
        skip = int(self.position or 0)
        async with aclosing(self._lines()) as lines:
            async for number, raw in lines:
                line = _strip_bom(raw) if number == 1 else raw
                if number <= skip or not line.strip():
                    continue
                item = self._decode(f"line {number}", line)
                if item is not None:
                    self.position = str(number)
                    yield item

    async def _lines(self) -> AsyncGenerator[tuple[int, str | bytes], None]:
        """(line number, line) pairs, read in a worker thread so the loop never waits on disk."""
        file, owned = await self._open()
        try:
            # A pipe or terminal may hold back a whole chunk for a long time: read those line by
            # line so each event is yielded as soon as it arrives.
            chunk = self.chunk_lines if file.seekable() else 1
            number = 0
            while lines := await asyncio.to_thread(_read_lines, file, chunk):
                for line in lines:
                    number += 1
                    yield number, line
        finally:
            if owned:
                file.close()

    async def _open(self) -> tuple[IO[Any], bool]:
        """The file to read and whether this source opened it (and so must close it)."""
        target = self._path_or_file
        if target == "-":
            return sys.stdin, False
        if isinstance(target, str | os.PathLike):
            # Binary, so a line that is not UTF-8 is reported with its number instead of failing.
            return await asyncio.to_thread(open, target, "rb"), True
        return target, False


def _strip_bom(line: str | bytes) -> str | bytes:
    # Editors on Windows like to start UTF-8 files with a byte-order mark, which JSON forbids.
    if isinstance(line, bytes):
        return line.removeprefix(b"\xef\xbb\xbf")
    return line.removeprefix("\ufeff")


def _read_lines(file: IO[Any], count: int) -> list[str | bytes]:
    lines: list[str | bytes] = []
    while len(lines) < count and (line := file.readline()):
        lines.append(line)
    return lines


def _describe(path_or_file: str | os.PathLike[str] | IO[str] | IO[bytes]) -> str:
    if isinstance(path_or_file, str | os.PathLike):
        return os.fspath(path_or_file)
    name = getattr(path_or_file, "name", None)
    return str(name) if name is not None else "<stream>"


def jsonl_source(
    path_or_file: str | os.PathLike[str] | IO[str] | IO[bytes],
    *,
    on_error: str = "skip",
    chunk_lines: int = 1000,
) -> JSONLSource:
    """A source of one event per non-blank JSON line; "-" reads stdin; see JSONLSource."""
    return JSONLSource(path_or_file, on_error=on_error, chunk_lines=chunk_lines)
