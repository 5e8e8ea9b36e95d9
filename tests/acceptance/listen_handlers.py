"""Handlers for the `eventqueue listen` tests, imported by the command as listen_handlers:HANDLERS.

Every handled event is recorded in HANDLED (in-process runs) and, when LISTEN_LOG names a file,
appended to it as a JSON line and fsynced before the handler returns, then announced on stdout
as `HANDLED <count>` (the handshake of subprocess tests). An event named "stuck" blocks its
handler forever, after printing `BLOCKED`.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

from eventqueue.core.models import Event

HANDLED: list[dict[str, Any]] = []


async def record(events: list[Event]) -> None:
    rows = [
        {"id": e.id, "aggregate_id": e.payload.get("aggregate_id"), "attempts": e.attempts}
        for e in events
    ]
    HANDLED.extend(rows)
    path = os.environ.get("LISTEN_LOG")
    if path:
        _append(path, rows)  # blocking on purpose: durable before the handler returns
        print(f"HANDLED {len(rows)}", flush=True)


def _append(path: str, rows: list[dict[str, Any]]) -> None:
    with open(path, "a") as log:
        log.writelines(json.dumps(row) + "\n" for row in rows)
        log.flush()
        os.fsync(log.fileno())


async def stuck(events: list[Event]) -> None:
    print("BLOCKED", flush=True)
    await asyncio.Event().wait()


def not_async(events: list[Event]) -> None:
    """A mistake the command must refuse: handlers are `async def`."""


HANDLERS = {"*": record, "stuck": stuck}
NOT_A_DICT = [record]
SYNC = {"*": not_async}
