"""A scenario's result row: its figures, its target, and the settings it ran with."""

from __future__ import annotations

from typing import Any

from eventqueue.core.config import Config
from eventqueue.runtime.queue import EventQueue
from eventqueue.store import Baseline, backend_of
from eventqueue.store.sqlite.pragmas import pragmas
from eventqueue.store.sqlite.store import SQLiteStore

Row = dict[str, Any]

_SYNCHRONOUS = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}
NOT_APPLICABLE = "n/a"  # an SQLite-only setting (PRAGMAs) in a PostgreSQL row


def row(
    scenario: str,
    config: Config,
    specific: dict[str, Any],
    *,
    events_per_s: float | None = None,
    baseline_events_per_s: float | None = None,
    target: str = "",
    met: bool | None = None,
    **extra: Any,
) -> Row:
    """The JSON row of `scenario`: rates (and their ratio), `extra` figures, target, settings."""
    result: Row = {"scenario": scenario, "available": True}
    if events_per_s is not None:
        result["events_per_s"] = round(events_per_s, 1)
    if baseline_events_per_s is not None:
        result["baseline_events_per_s"] = round(baseline_events_per_s, 1)
        if events_per_s is not None and baseline_events_per_s > 0:
            result["ratio"] = round(events_per_s / baseline_events_per_s, 3)
    result.update(extra)
    result["target"] = target
    result["met"] = met
    result["settings"] = {**_common_settings(config), **specific}
    return result


def not_available(scenario: str, why: str) -> Row:
    """The row of a scenario this queue cannot run."""
    return {"scenario": scenario, "available": False, "note": why}


def _common_settings(config: Config) -> dict[str, Any]:
    return {
        "durability": config.durability,
        "pragmas": (
            pragmas(config.durability, config.busy_timeout_ms)
            if backend_of(config.db_path) == "sqlite"
            else NOT_APPLICABLE
        ),
        "max_batch_size": config.max_batch_size,
        "batch_window_ms": config.batch_window_ms,
        "commit_max_events": config.commit_max_events,
        "intake_size": config.intake_size,
        "queue_size": config.queue_size,
        "enable_dedup": config.enable_dedup,
        "enable_batching": config.enable_batching,
    }


async def queue_pragmas(q: EventQueue) -> dict[str, Any]:
    """The journal mode and synchronous setting in force on the queue's connection."""
    store = q.store
    if not isinstance(store, SQLiteStore):
        return dict.fromkeys(("journal_mode", "synchronous"), NOT_APPLICABLE)  # SQLite's PRAGMAs
    synchronous = await store.pragma("synchronous")
    return {
        "journal_mode": await store.pragma("journal_mode"),
        "synchronous": _SYNCHRONOUS.get(int(synchronous), synchronous),
    }


async def checked_settings(q: EventQueue, raw: Baseline) -> dict[str, Any]:
    """The PRAGMAs in force on the queue's connection; the baseline's must be the same.
    PostgreSQL: "n/a" for those, and the server's durability settings as `server` (the
    queue's sessions and the baseline's connection keep the server's defaults alike)."""
    ours = await queue_pragmas(q)
    theirs = await raw.settings()
    if not isinstance(q.store, SQLiteStore):
        return {**ours, "server": theirs}
    theirs["synchronous"] = _SYNCHRONOUS.get(int(theirs["synchronous"]), theirs["synchronous"])
    if ours != {k: theirs[k] for k in ours}:
        raise RuntimeError(f"baseline PRAGMAs differ from the queue's: {theirs} vs {ours}")
    return ours
