"""`Dispatcher(web_port=...)` serves the dashboard for the length of a run, as `metrics_port`
serves /metrics (issue 25); `create_app` mounts in a host Starlette application."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from eventqueue import Dispatcher, Event, EventQueue
from eventqueue.core.errors import ConfigError
from eventqueue.web import create_app, start_web_server


async def test_the_dashboard_is_served_while_a_run_runs(tmp_path: Path) -> None:
    async with EventQueue.open(str(tmp_path / "events.db"), batch_window_ms=0) as q:
        d = Dispatcher(q, concurrency=1, web_port=0)
        await q.put_many([{"event_name": "job", "aggregate_id": i} for i in range(3)])
        inside = asyncio.Event()
        release = asyncio.Event()
        seen: list[int] = []

        async def handle(events: list[Event]) -> None:
            seen.append(len(events))
            inside.set()
            await release.wait()

        d.add_handler("job", handle)
        running = asyncio.create_task(d.run())
        await inside.wait()  # the batch is claimed and in its handler
        server = d.web_server
        assert server is not None and server.port > 0
        async with httpx.AsyncClient() as client:
            overview = (await client.get(server.url + "api/overview")).json()
            dead = await client.get(server.url + "dead")
            refused = await client.post(server.url + "dead/requeue", data={"ids": "1"})
        release.set()
        await running

    assert overview["stats"]["counts"]["claimed"]["NORMAL"] == sum(seen) == 3
    assert dead.status_code == 200 and "read-only" in dead.text
    assert refused.status_code == 403  # a run's dashboard has no actions
    assert d.web_server is None
    async with httpx.AsyncClient() as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(server.url)  # stopped with the run


async def test_web_port_and_host_are_checked(tmp_path: Path) -> None:
    async with EventQueue.open(str(tmp_path / "events.db")) as q:
        with pytest.raises(ConfigError, match="web_port"):
            Dispatcher(q, web_port=70_000)
        with pytest.raises(ConfigError, match="without a token"):
            Dispatcher(q, web_port=0, web_host="0.0.0.0")
        Dispatcher(q, web_port=0, web_host="0.0.0.0", web_token="a-long-enough-secret-token")


async def test_create_app_mounts_in_a_host_application(tmp_path: Path) -> None:
    async with EventQueue.open(str(tmp_path / "events.db")) as q:
        await q.put({"event_name": "job", "aggregate_id": 1})
        host = Starlette(routes=[Mount("/queue", app=create_app(q))])
        server = await asyncio.to_thread(start_web_server, host)
        try:
            async with httpx.AsyncClient() as client:
                page = await client.get(server.url + "queue/")
                api = await client.get(server.url + "queue/api/overview")
        finally:
            await server.aclose()

    assert page.status_code == 200
    assert f'href="{server.url}queue/static/app.css"' in page.text  # links stay under the mount
    assert 'data-api="' + server.url + 'queue/api/overview"' in page.text
    assert api.json()["totals"]["pending"] == 1


def test_create_app_refuses_what_is_not_a_queue() -> None:
    with pytest.raises(ConfigError, match="create_app takes"):
        create_app(42)  # type: ignore[arg-type]
