"""Handlers for the `eventqueue listen --metrics-port` test: the first batch scrapes the
listener's own /metrics (port from EQ_TEST_METRICS_PORT) while the listener runs."""

from __future__ import annotations

import os

import httpx

from eventqueue.core.models import Event

SCRAPED: list[str] = []


async def scrape_once(events: list[Event]) -> None:
    if SCRAPED:
        return
    url = f"http://127.0.0.1:{os.environ['EQ_TEST_METRICS_PORT']}/metrics"
    async with httpx.AsyncClient() as client:
        response = await client.get(url, timeout=10)
    SCRAPED.append(response.text)


HANDLERS = {"*": scrape_once}
