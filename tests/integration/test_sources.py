"""Sources against a real SSE server on 127.0.0.1 and real JSON-lines files."""

from __future__ import annotations

import asyncio
import io
import logging
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from eventqueue.core.errors import (
    ConfigError,
    EventQueueError,
    InvalidEventError,
    SourceRejectedError,
)
from eventqueue.runtime.sources import JSONLSource, Source, SSESource, jsonl_source, sse_source
from eventqueue.tools.sse_server import SSEServer

# A bound on every wait, so a broken reconnect fails the test instead of hanging it.
DEADLINE_S = 10


def numbered(count: int) -> list[dict[str, Any]]:
    return [{"event_type": "order", "n": n} for n in range(1, count + 1)]


async def take(source: Source, count: int) -> list[dict[str, Any]]:
    async with asyncio.timeout(DEADLINE_S):
        return [await anext(source) for _ in range(count)]


def fast_sse(url: str, **options: Any) -> SSESource:
    return sse_source(url, reconnect_initial_s=0.01, **options)


@pytest.fixture
async def server() -> AsyncIterator[SSEServer]:
    async with SSEServer() as server:
        yield server


# -- the server itself ---------------------------------------------------------------------------


async def test_server_sends_numbered_frames_and_ends_cleanly_with_close_at_end() -> None:
    async with (
        SSEServer(numbered(2), close_at_end=True, retry_ms=25) as server,
        httpx.AsyncClient() as client,
    ):
        response = await client.get(server.url, headers={"Last-Event-ID": "1"})
    assert response.headers["content-type"].startswith("text/event-stream")
    assert (
        response.text
        == 'retry: 25\n\nid: 2\nevent: event_created\ndata: {"event_type":"order","n":2}\n\n'
    )
    assert server.last_event_ids_seen == ["1"]


# -- SSE source ----------------------------------------------------------------------------------


async def test_sse_reads_all_events_in_order() -> None:
    async with SSEServer(numbered(50)) as server, fast_sse(server.url) as source:
        assert await take(source, 50) == numbered(50)
        assert source.position == "50"
        assert source.name == f"sse:{server.url}"
        assert server.connections == 1
        assert server.last_event_ids_seen == [None]


async def test_sse_reads_events_from_an_async_feed() -> None:
    async def feed() -> AsyncIterator[dict[str, Any]]:
        for item in numbered(3):
            yield item

    async with SSEServer(feed()) as server, fast_sse(server.url) as source:
        assert await take(source, 3) == numbered(3)


async def test_sse_receives_events_added_live(server: SSEServer) -> None:
    async with fast_sse(server.url) as source:
        pending = asyncio.ensure_future(take(source, 1))
        await server.wait_for_connections(1)
        server.add({"n": 1})
        assert await pending == [{"n": 1}]


async def test_sse_skips_other_event_types_and_comments(server: SSEServer) -> None:
    server.publish(": ping\n\n")
    server.add_data('{"n": "other"}', event="event_deleted")
    server.publish("event: event_created\n\n")  # no data: per the SSE spec not an event
    server.add({"n": 1})
    server.publish(": ping\n\n")
    server.add({"n": 2})
    async with fast_sse(server.url) as source:
        assert await take(source, 2) == [{"n": 1}, {"n": 2}]
        assert source.position == "3"
        assert source.errors == 0
        assert source.skipped == {"event_deleted": 1}


async def test_sse_reads_untyped_messages_by_default() -> None:
    # What most SSE servers send (sse-starlette's default): no `event:` field, type "message".
    async with SSEServer(numbered(3), event="") as server, fast_sse(server.url) as source:
        assert await take(source, 3) == numbered(3)
        assert source.skipped == {}


async def test_sse_counts_skipped_types_and_warns_once_per_type(
    server: SSEServer, caplog: pytest.LogCaptureFixture
) -> None:
    server.add_data('{"n": "a"}', event="event_deleted")
    server.add_data('{"n": "b"}', event="ping")
    server.add_data('{"n": "c"}', event="event_deleted")
    server.add({"n": 1})
    with caplog.at_level(logging.WARNING, logger="eventqueue.runtime.sources"):
        async with fast_sse(server.url) as source:
            assert await take(source, 1) == [{"n": 1}]
            assert source.skipped == {"event_deleted": 2, "ping": 1}
            assert source.position == "4"
    warnings = [r.getMessage() for r in caplog.records if "skipping messages" in r.getMessage()]
    assert len(warnings) == 2
    assert "type 'event_deleted' (first at id 1)" in warnings[0]
    assert "reads event_created, message" in warnings[0]
    assert "--event TYPE" in warnings[0]


async def test_sse_event_types_replace_the_default(server: SSEServer) -> None:
    server.add_data('{"n": 1}', event="order")
    server.add({"n": "typed"})
    server.add_data('{"n": "untyped"}', event="")
    server.add_data('{"n": 2}', event="refund")
    async with fast_sse(server.url, event_types=["order", "refund"]) as source:
        assert await take(source, 2) == [{"n": 1}, {"n": 2}]
        assert source.skipped == {"event_created": 1, "message": 1}
    async with sse_source(server.url, "refund") as source:  # a string names one type
        assert await take(source, 1) == [{"n": 2}]


@pytest.mark.parametrize("bad", [[], [""], ["ok", 3]])
async def test_sse_event_types_are_checked(bad: list[Any]) -> None:
    with pytest.raises(ConfigError, match="event_types"):
        sse_source("http://127.0.0.1:1/", event_types=bad)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410])
async def test_sse_stops_at_a_client_error_without_retrying(status: int) -> None:
    async with (
        SSEServer(numbered(1), reject_first=1, reject_status=status) as server,
        fast_sse(server.url) as source,
    ):
        with pytest.raises(SourceRejectedError, match=f"HTTP {status} ") as caught:
            await take(source, 1)
        assert server.connections == 1
        assert source.reconnects == 0
    assert caught.value.status == status
    assert caught.value.url == server.url
    assert "is not retried: check the URL" in str(caught.value)


async def test_sse_stops_when_the_answer_is_not_an_event_stream() -> None:
    connections = 0

    async def web_page(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n"
            b"Content-Length: 6\r\nConnection: close\r\n\r\n<html>"
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(web_page, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/"
    try:
        async with fast_sse(url) as source:
            with pytest.raises(SourceRejectedError, match="Content-Type 'text/html'") as caught:
                await take(source, 1)
    finally:
        server.close()
        await server.wait_closed()
    assert connections == 1
    assert caught.value.status == 200
    assert "not an SSE stream (text/event-stream)" in str(caught.value)


async def test_sse_counts_types_beyond_a_hundred_under_one_key(server: SSEServer) -> None:
    for n in range(105):
        server.add_data('{"n": 0}', event=f"type_{n}")
    server.add({"n": 1})
    async with fast_sse(server.url) as source:
        assert await take(source, 1) == [{"n": 1}]
    assert len(source.skipped) == 101
    assert source.skipped["(other types)"] == 5
    assert source.skipped.total() == 105


@pytest.mark.parametrize("status", [408, 429, 500, 503])
async def test_sse_retries_server_errors_timeouts_and_throttling(status: int) -> None:
    async with (
        SSEServer(numbered(2), reject_first=2, reject_status=status) as server,
        fast_sse(server.url) as source,
    ):
        assert await take(source, 2) == numbered(2)
        assert server.connections == 3
        assert source.reconnects == 2


async def test_sse_resumes_after_a_dropped_connection_without_gaps_or_repeats() -> None:
    async with (
        SSEServer(numbered(10), disconnect_after=3) as server,
        fast_sse(server.url) as source,
    ):
        assert await take(source, 10) == numbered(10)
        assert server.connections == 2
        assert server.last_event_ids_seen == [None, "3"]
        assert source.reconnects == 1
        assert source.position == "10"


async def test_sse_reconnect_uses_the_server_retry_field() -> None:
    # reconnect_initial_s would wait a minute; the server's `retry: 10` must win.
    events = numbered(2)
    async with (
        SSEServer(events, disconnect_after=1, retry_ms=10) as server,
        sse_source(server.url, reconnect_initial_s=60) as source,
    ):
        assert await take(source, 2) == events
        assert source.retry_s == 0.01


async def test_sse_reconnects_after_an_http_error(caplog: pytest.LogCaptureFixture) -> None:
    async with SSEServer(numbered(2), reject_first=1) as server, fast_sse(server.url) as source:
        assert await take(source, 2) == numbered(2)
        assert server.connections == 2
    assert "HTTP 503 Service Unavailable; reconnecting" in caplog.text


async def test_sse_resume_from_on_a_fresh_source_continues_after_that_id() -> None:
    async with SSEServer(numbered(5)) as server:
        async with fast_sse(server.url) as first:
            await take(first, 2)
            stored = first.position
        async with fast_sse(server.url) as second:
            second.resume_from(stored)
            assert second.position == "2"
            assert await take(second, 3) == numbered(5)[2:]
        assert server.last_event_ids_seen == [None, "2"]


async def test_sse_last_event_id_option_resumes_like_resume_from() -> None:
    async with SSEServer(numbered(3)) as server, fast_sse(server.url, last_event_id="1") as source:
        assert await take(source, 2) == numbered(3)[1:]
        assert server.last_event_ids_seen == ["1"]


async def test_resume_from_after_iteration_started_is_refused(server: SSEServer) -> None:
    server.add({"n": 1})
    async with fast_sse(server.url) as source:
        await take(source, 1)
        with pytest.raises(RuntimeError, match="before iteration"):
            source.resume_from("0")


async def test_sse_counts_logs_and_skips_invalid_data(
    server: SSEServer, caplog: pytest.LogCaptureFixture
) -> None:
    server.add({"n": 1})
    server.add_data("{not json")
    server.add_data("[1, 2]")
    server.add_data('{"x": NaN}')
    server.add({"n": 2})
    with caplog.at_level(logging.WARNING, logger="eventqueue.runtime.sources"):
        async with fast_sse(server.url) as source:
            assert await take(source, 2) == [{"n": 1}, {"n": 2}]
            assert source.errors == 3
            assert source.position == "5"
    logged = caplog.text
    assert "id 2" in logged and "id 3: expected a JSON object, got array" in logged
    assert "id 4: NaN is not valid JSON" in logged


async def test_sse_raises_on_invalid_data_with_on_error_stop(server: SSEServer) -> None:
    server.add({"n": 1})
    server.add_data("{not json")
    async with fast_sse(server.url, on_error="stop") as source:
        assert await take(source, 1) == [{"n": 1}]
        with pytest.raises(InvalidEventError, match=r"^id 2: "):
            await take(source, 1)
        assert source.errors == 1
        assert source.position == "1"


async def test_sse_gives_up_after_max_reconnects() -> None:
    async with SSEServer() as server:
        url = server.url  # nothing listens here once the server is closed
    async with fast_sse(url, max_reconnects=2) as source:
        with pytest.raises(EventQueueError, match="gave up after 3") as caught:
            await take(source, 1)
    assert isinstance(caught.value.__cause__, httpx.ConnectError)
    assert source.reconnects == 2


async def test_sse_read_timeout_counts_as_a_failed_connection(server: SSEServer) -> None:
    # The server only sends `retry:` and then nothing: each connection times out without an event.
    async with fast_sse(server.url, timeout_s=0.05, max_reconnects=1) as source:
        with pytest.raises(EventQueueError, match="gave up after 2") as caught:
            await take(source, 1)
    assert isinstance(caught.value.__cause__, httpx.ReadTimeout)
    assert server.connections == 2


async def test_sse_uses_and_keeps_a_caller_client(server: SSEServer) -> None:
    server.add({"n": 1})
    async with httpx.AsyncClient() as client:
        async with fast_sse(server.url, client=client) as source:
            assert await take(source, 1) == [{"n": 1}]
        assert not client.is_closed


# -- JSON lines ----------------------------------------------------------------------------------

LINES = '{"n": 1}\n\n{"n": 2\n   \n[3]\n{"n": 6}\n'  # line 3 is cut short, line 5 an array


@pytest.fixture
def jsonl_file(tmp_path: Path) -> Path:
    path = tmp_path / "events.jsonl"
    path.write_text(LINES, encoding="utf-8")
    return path


async def test_jsonl_skips_and_reports_bad_lines_by_number(
    jsonl_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="eventqueue.runtime.sources"):
        async with jsonl_source(jsonl_file) as source:
            assert [item async for item in source] == [{"n": 1}, {"n": 6}]
    assert source.errors == 2
    assert source.position == "6"
    assert source.name == f"jsonl:{jsonl_file}"
    assert "line 3: " in caplog.text and "line 5: expected a JSON object" in caplog.text


async def test_jsonl_stops_at_a_bad_line_with_on_error_stop(jsonl_file: Path) -> None:
    async with jsonl_source(str(jsonl_file), on_error="stop") as source:
        assert await take(source, 1) == [{"n": 1}]
        with pytest.raises(InvalidEventError, match=r"^line 3: "):
            await take(source, 1)
    assert source.position == "1"


async def test_jsonl_reads_binary_and_text_file_objects(jsonl_file: Path) -> None:
    with jsonl_file.open("rb") as binary:
        async with jsonl_source(binary) as source:
            assert [item async for item in source] == [{"n": 1}, {"n": 6}]
        assert not binary.closed  # the caller's file stays the caller's
    async with jsonl_source(io.StringIO(LINES)) as text_source:
        assert [item async for item in text_source] == [{"n": 1}, {"n": 6}]
    assert text_source.name == "jsonl:<stream>"


async def test_jsonl_resume_from_skips_lines_up_to_the_position(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text("".join(f'{{"n": {n}}}\n' for n in range(1, 6)), encoding="utf-8")
    async with jsonl_source(path) as source:
        source.resume_from("3")
        assert [item async for item in source] == [{"n": 4}, {"n": 5}]
        assert source.position == "5"


async def test_jsonl_ignores_blank_lines_but_counts_them(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(b'\xef\xbb\xbf\n\r\n{"n": 1}\r\n  \n\n')  # BOM, CRLF, trailing blanks
    async with jsonl_source(path) as source:
        assert [item async for item in source] == [{"n": 1}]
        assert source.position == "3"
        assert source.errors == 0


async def test_jsonl_reports_a_line_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(b'{"n": 1}\n{"n": "\xff"}\n{"n": 3}\n')
    async with jsonl_source(path) as source:
        assert [item async for item in source] == [{"n": 1}, {"n": 3}]
        assert source.errors == 1


async def test_jsonl_reads_across_chunks(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text("".join(f'{{"n": {n}}}\n' for n in range(2500)), encoding="utf-8")
    async with JSONLSource(path, chunk_lines=1000) as source:
        items = [item async for item in source]
    assert [item["n"] for item in items] == list(range(2500))
    assert source.position == "2500"


async def test_jsonl_dash_reads_stdin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO('{"n": 1}\n'))
    async with jsonl_source("-") as source:
        assert [item async for item in source] == [{"n": 1}]
    assert source.name == "jsonl:-"


async def test_invalid_options_are_refused(jsonl_file: Path) -> None:
    with pytest.raises(ValueError, match="on_error"):
        jsonl_source(jsonl_file, on_error="ignore")
    with pytest.raises(ValueError, match="line number"):
        jsonl_source(jsonl_file).resume_from("abc")
