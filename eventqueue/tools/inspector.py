"""The CLI's access to a queue's database: the same Store the runtime uses, opened briefly.

Every call opens the store (read-only for reads), runs one or a few short transactions and
closes it again: an open reader would stop SQLite's WAL checkpoints (failure mode F7). What only
one backend has (vacuum, backup, the SQL console) comes from that backend's admin module.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypedDict, TypeVar

from eventqueue.core.config import Config
from eventqueue.core.errors import SchemaError
from eventqueue.core.models import Priority, QueueStats, Status
from eventqueue.core.records import (
    EventBrief,
    EventInfo,
    PeekBatch,
    RequeueResult,
    iso,
    schema_problem,
)
from eventqueue.core.records import SchemaStatus as SchemaStatus
from eventqueue.core.rules import (
    ClaimRules,
    dedup_since,
    dedup_ttl_from_settings,
    rules_from_settings,
)
from eventqueue.runtime.owners import live_owners
from eventqueue.store import Store, admin, migrate, open_store, schema_status

T = TypeVar("T")


class PurgeResult(TypedDict):
    purged: int
    cutoff: str | None
    # Done events old enough to purge, kept because their dedup window is still open.
    kept_for_dedup: int
    dedup_ttl_s: float | None
    freed_pages: int


class Inspector:
    """Inspection and repair of one database; every method opens, works briefly and closes."""

    def __init__(self, config: Config) -> None:
        self.config = config

    def schema_status(self) -> SchemaStatus:
        """The schema revision against head, read-only: never creates the database."""
        return schema_status(self.config)

    def migrate(self) -> SchemaStatus:
        """Upgrade to head, creating the database and schema if needed; the status before."""
        return migrate(self.config)

    # --- reads ------------------------------------------------------------------------------

    def stats(self, *, now: float) -> QueueStats:
        """Counts by status and priority (zeros included), oldest pending age, ready batches."""

        async def read(store: Store) -> QueueStats:
            found = await store.stats(now=now, rules=await self._rules(store))
            oldest = found.oldest_pending_at
            return QueueStats(
                counts=_dense(found.counts),
                oldest_pending_age_s=None if oldest is None else round(max(0.0, now - oldest), 3),
                duplicates_suppressed=found.counters.get("duplicates_suppressed", 0),
                superseded=found.counters.get("superseded", 0),
                ready_batches=found.ready_batches,
                owners=await live_owners(store, now),
                key_limits={k: dict(v) for k, v in found.key_limits.items()},
            )

        return self._run(read)

    def spill_positions(self, spill_log: str) -> dict[int, tuple[int, int]]:
        """How far the spill log keyed `spill_log` was promoted, per priority."""
        return self._run(lambda store: store.spill_positions(spill_log))

    def peek(self, *, now: float, limit: int) -> list[PeekBatch]:
        """The next batches in claim order (one per ready key), claiming nothing."""

        async def read(store: Store) -> list[PeekBatch]:
            return await store.peek(now=now, rules=await self._rules(store), limit=limit)

        return self._run(read)

    def show(self, event_id: int) -> EventInfo | None:
        """One event with every column, or None when there is no such id."""
        return self._run(lambda store: store.show(event_id))

    def dead(self, *, limit: int) -> list[EventBrief]:
        """Dead letters, most recent first, with their last error."""
        return self._run(lambda store: store.dead(limit=limit))

    # --- repair -----------------------------------------------------------------------------

    def requeue(self, ids: Sequence[int] | None, *, now: float) -> RequeueResult:
        """Dead events (these ids, or all) back to pending; nothing changes if one is not dead."""
        return self._run(lambda store: store.requeue(ids, now=now), write=True)

    def purge(self, *, cutoff: float, now: float, chunk: int = 500) -> PurgeResult:
        """Delete done events finished before `cutoff`, one small transaction per chunk,
        keeping those whose dedup window (as the queue last recorded it) is open at `now`."""

        async def purge(store: Store) -> tuple[int, int, float | None]:
            ttl = dedup_ttl_from_settings(await store.settings(), self.config)
            window = {"cutoff": cutoff, "dedup_since": dedup_since(now, ttl), "now": now}
            purged = 0
            while (deleted := await store.purge_done(**window, limit=chunk)) == chunk:
                purged += deleted
            return purged + deleted, await store.count_kept_for_dedup(**window), ttl

        purged, kept, ttl = self._run(purge, write=True)
        freed = admin(self.config).compact(self.config)
        return PurgeResult(
            purged=purged,
            cutoff=iso(cutoff),
            kept_for_dedup=kept,
            dedup_ttl_s=ttl,
            freed_pages=freed,
        )

    def vacuum(self) -> Mapping[str, Any]:
        """Give free space back to the filesystem (backend-specific)."""
        return admin(self.config).vacuum(self.config)

    def backup(self, destination: str, *, force: bool = False) -> Mapping[str, Any]:
        """A consistent copy of the database (backend-specific)."""
        return admin(self.config).backup(self.config, destination, force=force)

    def sql(self, query: str, *, max_rows: int = 1000) -> Mapping[str, Any]:
        """One read-only statement (backend-specific guard)."""
        return admin(self.config).sql(self.config, query, max_rows=max_rows)

    # --- plumbing ---------------------------------------------------------------------------

    async def _rules(self, store: Store) -> ClaimRules:
        # The batching rules of the last process that opened the queue, else this config's:
        # peek and "ready" then answer as the running scheduler would.
        return rules_from_settings(await store.settings(), self.config)

    def _run(self, work: Callable[[Store], Awaitable[T]], *, write: bool = False) -> T:
        if write:
            # Repairs never create or migrate a database: it must exist at head already.
            status = self.schema_status()
            if status["state"] != "current":
                raise SchemaError(schema_problem(status))

        async def session() -> T:
            store = await open_store(self.config, migrate=False, readonly=not write)
            try:
                return await work(store)
            finally:
                await store.close()

        return asyncio.run(session())


def _dense(counts: Mapping[str, Mapping[str, int]]) -> dict[str, dict[str, int]]:
    """Every status × every priority, zeros included: a stable shape for scripts."""
    dense = {str(s): {p.name: 0 for p in sorted(Priority, reverse=True)} for s in Status}
    for status, by_priority in counts.items():
        dense.setdefault(status, {}).update(by_priority)
    return dense
