"""Setting a scenario up: its configuration, and running a Dispatcher with a time limit."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from eventqueue.core.config import SETTINGS, Config
from eventqueue.runtime.dispatch.dispatcher import Dispatcher

CONCURRENCY = 4  # Dispatcher consumers


def bench_config(base: Config, path: Path | str, **overrides: Any) -> Config:
    """`base` on the database `path` (a file or a URL), with those of `overrides` that are settings."""
    known = {s.name for s in SETTINGS}
    return base.replace(db_path=str(path), **{k: v for k, v in overrides.items() if k in known})


def backlog_overrides(backlog: int) -> dict[str, Any]:
    """Settings that hold a backlog of `backlog` pending events and load it fast."""
    # Room for the whole backlog in the database (EVENT_QUEUE_SIZE bounds pending events;
    # beyond it events would spill), big groups to load it fast, and no spilling on a busy lock.
    return {
        "queue_size": min(10_000_000, backlog + 10_000),
        "intake_size": 100_000,
        "commit_max_events": 10_000,
        "spill_after_ms": 60_000,
    }


async def run_dispatcher(
    dispatcher: Dispatcher, source: AsyncIterator[dict[str, Any]] | None, limit_s: float
) -> bool:
    """Run until done, or stop it gracefully after `limit_s`; True if it finished by itself."""
    task = asyncio.create_task(dispatcher.run(source))
    done, _ = await asyncio.wait({task}, timeout=limit_s)
    finished = bool(done)
    if not finished:
        dispatcher.stop()
        done, _ = await asyncio.wait({task}, timeout=10.0)
        if not done:
            dispatcher.force_stop()
    await task
    return finished
