"""EventQueue: the façade a listener embeds: put, claim, ack, nack, extend, release, stats."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import secrets
import time
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any

from eventqueue.core.codec import encode_event
from eventqueue.core.config import Config
from eventqueue.core.errors import (
    EventQueueError,
    InvalidEventError,
    QueueClosedError,
    StoreBusyError,
)
from eventqueue.core.models import Batch, Priority, PutResult, QueueStats
from eventqueue.core.priority import BatchKeyFn, Classifier, batch_key, classify
from eventqueue.core.records import NewEvent
from eventqueue.core.rules import backoff_s, retry_plan, rules_from_config, view_settings
from eventqueue.runtime.faults import crash_point
from eventqueue.runtime.metrics import Metrics
from eventqueue.runtime.overflow.promoter import SPILLED, Outcome, Overflow
from eventqueue.runtime.writer import GroupCommitWriter, IntakeEntry
from eventqueue.store import open_store
from eventqueue.store.base import Store

Clock = Callable[[], float]
log = logging.getLogger("eventqueue.queue")
# Never sleep longer than this without looking again, whatever the clock says: a wall-clock
# jump must not leave a consumer asleep for hours.
_MAX_IDLE_S = 1.0
_CRITICAL = int(Priority.CRITICAL)
_PRIORITIES = {int(p): p for p in Priority}


class EventQueue:
    """A durable priority queue of events on one SQLite file. Open with `EventQueue.open(...)`."""

    def __init__(
        self,
        store: Store,
        overflow: Overflow,
        config: Config,
        *,
        metrics: Metrics,
        classifier: Classifier = classify,
        batch_key_fn: BatchKeyFn = batch_key,
        clock: Clock = time.time,
    ) -> None:
        self.config = config
        self.store = store
        self.overflow = overflow
        self.metrics = metrics
        self._classify = classifier
        self._batch_key = batch_key_fn
        self._clock = clock
        self._rules = rules_from_config(config)
        self._writer = GroupCommitWriter(
            self._commit, max_events=config.commit_max_events, intake_size=config.intake_size
        )
        self._writer.on_commit.append(self.notify)
        # A stream position commits only when every earlier put is durable: a put still being
        # spilled must not be passed by a later one's position (a crash would skip it). The
        # position then simply commits with a later group.
        self._tickets = 0
        self._spilling: set[int] = set()
        self._writer.may_record = lambda e: not any(t < e.ticket for t in self._spilling)
        # Puts that find the intake full go to the spill log, gathered into one fsync.
        self._spiller = GroupCommitWriter(
            overflow.spill_commit, max_events=config.commit_max_events, intake_size=2**62
        )
        overflow.on_promote.append(self.notify)
        overflow.on_scheduled = self._set_scheduled
        self._scheduled = 0  # pending + claimed after this process's last put commit
        self._expiry_every_s = min(1.0, config.lease_s / 4)
        self._last_expiry_check = float("-inf")
        self._changed = asyncio.Event()
        self._closed = False
        self._maintenance: asyncio.Task[None] | None = None

    @classmethod
    def open(
        cls,
        path: str | None = None,
        *,
        config: Config | None = None,
        classifier: Classifier = classify,
        batch_key: BatchKeyFn = batch_key,
        clock: Clock = time.time,
        migrate: bool | str = "auto",
        **settings: Any,
    ) -> _Opener:
        """Open (and on first use create) the queue: `async with EventQueue.open("events.db") as q`.

        Settings come from `config`, else keyword arguments over the environment. `migrate`:
        "auto" creates the schema in a new file and refuses an old one; True upgrades; False never.
        """
        if config is None:
            config = Config.load(db_path=path, **settings)
        elif path is not None or settings:
            config = config.replace(**({"db_path": path} if path else {}), **settings)
        return _Opener(cls._open(config, classifier, batch_key, clock, migrate))

    @classmethod
    async def _open(
        cls,
        config: Config,
        classifier: Classifier,
        key_fn: BatchKeyFn,
        clock: Clock,
        migrate: bool | str,
    ) -> EventQueue:
        store = await open_store(config, migrate=migrate)
        metrics = Metrics()
        try:
            await store.save_settings(view_settings(config))
            overflow = await Overflow.open(store, config, metrics, clock)
        except BaseException:
            await store.close()
            raise
        queue = cls(
            store,
            overflow,
            config,
            metrics=metrics,
            classifier=classifier,
            batch_key_fn=key_fn,
            clock=clock,
        )
        queue._scheduled = await store.scheduled_count()
        queue._writer.start()
        queue._spiller.start()
        overflow.start()
        queue._maintenance = asyncio.create_task(queue._maintain(), name="eventqueue-maintenance")
        return queue

    async def close(self) -> None:
        """Commit what was put, checkpoint, and close the database. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._maintenance is not None:
            self._maintenance.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._maintenance
        try:
            await self._writer.close()
            await self._spiller.close()
            await self.overflow.close()
        finally:
            await self.store.close()
            self.notify()

    async def __aenter__(self) -> EventQueue:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- put --------------------------------------------------------------------------------

    async def put(
        self,
        event: Mapping[str, Any],
        priority: Priority | int | str | None = None,
        *,
        source: str | None = None,
        position: str | None = None,
    ) -> PutResult:
        """Store one event durably; returns once it is committed (accepted or duplicate)."""
        results = await self._put_rows([self.prepare(event, priority)], source, position)
        return results[0]

    async def put_many(
        self,
        events: Iterable[Mapping[str, Any]],
        priority: Priority | int | str | None = None,
        *,
        source: str | None = None,
        position: str | None = None,
    ) -> list[PutResult]:
        """Store several events in one commit; all are validated before any is stored."""
        rows = [self.prepare(event, priority, index=i) for i, event in enumerate(events)]
        return await self._put_rows(rows, source, position) if rows else []

    async def record_position(self, source: str, position: str) -> None:
        """Store where `source` stands, with no event (its events are already stored)."""
        await self._put_rows([], source, position)

    def is_critical(self, event: Any) -> bool:
        """Whether `event` would be put as CRITICAL (False when it cannot be classified)."""
        if not isinstance(event, dict):
            return False
        try:
            return bool(self._classify(event) == Priority.CRITICAL)
        except Exception:
            return False  # put() reports what is wrong with it

    def prepare(
        self,
        event: Mapping[str, Any],
        priority: Priority | int | str | None = None,
        *,
        index: int | None = None,
    ) -> NewEvent:
        """Validate, hash and classify one event (raises InvalidEventError; stores nothing)."""
        try:
            encoded = encode_event(
                event, max_bytes=self.config.max_event_bytes, max_depth=self.config.max_depth
            )
            if priority is not None:
                chosen = Priority.parse(priority)
            else:
                chosen = self._classify(encoded.payload)
                if type(chosen) is not Priority:
                    chosen = Priority(chosen)
            key = self._batch_key(encoded.payload)
        except InvalidEventError as exc:
            raise InvalidEventError(f"event {index}: {exc}") if index is not None else exc from None
        except ValueError as exc:
            raise InvalidEventError(f"invalid priority: {exc}") from None
        if not isinstance(key, str):
            raise InvalidEventError(f"batch key function returned {type(key).__name__}, not str")
        return NewEvent(encoded.payload_json, int(chosen), key, encoded.content_hash, self._clock())

    async def _put_rows(
        self, rows: list[NewEvent], source: str | None, position: str | None
    ) -> list[PutResult]:
        self._check_open()
        future: asyncio.Future[list[Outcome]] = asyncio.get_running_loop().create_future()
        self._tickets += 1
        if len(rows) == 1:  # the common case, without a generator
            critical = rows[0].priority == _CRITICAL
        else:
            critical = any(row.priority == _CRITICAL for row in rows)
        entry = IntakeEntry(
            rows, future, source, position, ticket=self._tickets, urgent=critical and source is None
        )
        if self._writer.has_room(len(rows)) or critical:
            self._writer.submit(entry)  # CRITICAL is always admitted, even past the intake bound
        else:
            self._spiller.submit(entry)  # the writer is behind: spill rather than wait
            self._spilling.add(entry.ticket)
            future.add_done_callback(lambda _f: self._spilling.discard(entry.ticket))
        outcome = await future
        count = self.metrics.count
        for status, _ in outcome:
            count(status.value)
        return [
            PutResult(status, row_id, _PRIORITIES[row.priority], row.content_hash)
            for row, (status, row_id) in zip(rows, outcome, strict=True)
        ]

    async def _commit(
        self, rows: Sequence[NewEvent], positions: dict[str, str | None]
    ) -> list[Outcome]:
        """The writer's commit: admit what fits, spill the rest durably first, then commit."""
        async with self.overflow.admission:
            if (
                not self.overflow.pending()
                and len(rows) <= self.config.queue_size - self._scheduled
            ):
                # What split() answers when nothing is spilled and all fit (it costs a look
                # at every spill lane per row).
                admitted, spilled = list(range(len(rows))), list[int]()
            else:
                admitted, spilled = self.overflow.split(rows, self._scheduled)
            if spilled:
                # Durable before the transaction that records the stream position past them.
                await self.overflow.append([rows[i] for i in spilled])
            ttl = self.config.dedup_ttl_s if self.config.enable_dedup else None
            chosen = [rows[i] for i in admitted]
            try:
                commit = await self.store.put(
                    chosen,
                    now=self._clock(),
                    dedup_ttl_s=ttl,
                    source_positions=positions,
                    fail_fast=True,
                )
            except StoreBusyError:
                # Another connection holds the write lock: spill instead of making the stream wait.
                await self.overflow.append(chosen)
                return [SPILLED] * len(rows)
            self._scheduled = commit.scheduled
        crash_point("after_commit")
        outcome: list[Outcome] = [SPILLED] * len(rows)
        for index, result in zip(admitted, commit.outcome, strict=True):
            outcome[index] = result
        return outcome

    async def source_position(self, source: str) -> str | None:
        """Where `source` stood at its last committed event (None if never)."""
        return await self.store.source_position(source)

    # --- claim and finish -------------------------------------------------------------------

    async def claim(self, consumer: str = "consumer", *, ack: Batch | None = None) -> Batch | None:
        """Lease the best ready batch now, or return None when nothing is ready.

        `ack`: a finished batch to ack in the same transaction (one commit instead of two);
        if its lease was lost, LeaseLostError is raised and nothing is acked or claimed.
        """
        found = await self.claim_batches(consumer, 1, acks=() if ack is None else (ack,))
        return found[0] if found else None

    async def claim_batches(
        self, consumer: str = "consumer", max_batches: int = 1, *, acks: Sequence[Batch] = ()
    ) -> list[Batch]:
        """Lease up to `max_batches` ready batches in one transaction, best first.

        `acks`: finished batches acked in the same transaction. If any of them lost its lease,
        LeaseLostError is raised and nothing is acked or claimed (ack them one by one then).
        """
        self._check_open()
        now = self._clock()
        batches = await self.store.claim(
            now=now,
            consumer=consumer,
            token=secrets.token_hex(8),
            batch_id=secrets.token_hex(6),
            rules=self._rules,
            batches=max_batches,
            expire=self._expiry_due(now),
            acks=[(b.token, b.ids) for b in acks],
        )
        if acks:
            self._finished(sum(len(b) for b in acks))
        crash_point("after_claim")
        return batches

    def _set_scheduled(self, count: int) -> None:
        self._scheduled = count

    def _expiry_due(self, now: float) -> bool:
        # Returning expired leases costs a statement; a fraction of the lease is soon enough.
        # A clock that jumped backwards makes it due at once rather than hours later.
        if self._last_expiry_check <= now < self._last_expiry_check + self._expiry_every_s:
            return False
        self._last_expiry_check = now
        return True

    def _finished(self, events: int) -> None:
        # Room in the scheduling set for this process's next admissions, and for promotion.
        self._scheduled = max(0, self._scheduled - events)
        self.notify()

    async def next_batch(
        self,
        consumer: str = "consumer",
        *,
        timeout: float | None = None,
        stop: asyncio.Event | None = None,
        ack: Batch | None = None,
    ) -> Batch | None:
        """Wait for a ready batch and lease it; None after `timeout`, once `stop` is set, or on close.

        `ack`: a finished batch acked in the first claim's transaction (see `claim`).
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        if ack is not None and (self._closed or (stop is not None and stop.is_set())):
            await self.ack(ack)  # stopping: still finish what was handled
            return None
        while not self._closed and not (stop is not None and stop.is_set()):
            changed = self._changed
            try:
                batch = await self.claim(consumer, ack=ack)
                ack = None
                if batch is not None:
                    return batch
                delay = await self.idle_delay()
            except QueueClosedError:
                return None  # closed while we looked: the documented answer is None
            if deadline is not None:
                delay = min(delay, deadline - loop.time())
                if delay <= 0:
                    return None
            await _wait_any(changed, stop, delay)
        return None

    async def urgent_puts_settled(self, timeout: float) -> None:
        """Wait (at most `timeout`) for the CRITICAL puts in progress to commit.

        A claim that starts while one is being put cannot see it, and holds the connection
        that put waits for: claiming just after it gets the CRITICAL event out sooner.
        """
        if not self._writer.urgent_open:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._writer.urgent_settled()

    def changed_event(self) -> asyncio.Event:
        """An event set at the next change (commit, ack, nack, release) in this process."""
        return self._changed

    def now(self) -> float:
        """The queue's clock (wall time, injectable for tests)."""
        return self._clock()

    async def outstanding(self) -> int:
        """Events not finished yet: pending, claimed, waiting for the writer (and spilled)."""
        queued = self._writer.queued + self._spiller.queued + self.overflow.pending()
        return queued + await self.store.scheduled_count()

    def notify(self) -> None:
        """Wake waiting consumers (something may have become ready) and the promoter."""
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        self.overflow.wake()

    async def idle_delay(self) -> float:
        """Seconds until something not ready now may become ready (capped by the poll)."""
        # Sleep until the next batch window closes, retry comes due or lease expires; poll
        # anyway for work committed by other processes.
        now = self._clock()
        wake = await self.store.next_wakeup(now)
        times = [self.config.poll_ms / 1000.0, _MAX_IDLE_S]
        if wake.oldest_pending_at is not None:
            times.append(wake.oldest_pending_at + self.config.batch_window_s - now)
        times.extend(
            t - now for t in (wake.next_retry_at, wake.next_lease_expiry_at) if t is not None
        )
        return max(0.001, min(times))

    async def ack(self, batch: Batch, ids: Sequence[int] | None = None) -> None:
        """The batch (or these events of it) was handled: done. LeaseLostError if stale."""
        self._check_open()
        chosen = batch.ids if ids is None else list(ids)
        await self.store.ack(batch.token, chosen, now=self._clock())
        self._finished(len(chosen))

    async def nack(
        self,
        batch: Batch,
        error: str = "",
        retry_in: float | None = None,
        *,
        ids: Sequence[int] | None = None,
    ) -> None:
        """The batch (or these events) failed: retry after back-off, or dead after max attempts."""
        self._check_open()
        if retry_in is not None and retry_in + 1.0 > self._rules.retry_horizon_s:
            # A long explicit delay is not a clock step.
            self._rules = dataclasses.replace(self._rules, retry_horizon_s=retry_in + 1.0)
        now = self._clock()
        chosen = set(batch.ids if ids is None else ids)
        plan = retry_plan(self.config, batch, chosen, now=now, retry_in=retry_in)
        await self.store.nack(batch.token, plan.retry_at, plan.dead, error=error[:10_000], now=now)
        self._finished(len(plan.dead))

    def backoff_s(self, attempts: int) -> float:
        """Exponential back-off with ±25 % jitter, capped at EVENT_BACKOFF_MAX_SECONDS."""
        return backoff_s(self.config, attempts)

    async def extend(self, batch: Batch, seconds: float | None = None) -> None:
        """Renew the batch's lease for `seconds` (default EVENT_LEASE_SECONDS) from now."""
        self._check_open()
        length = seconds if seconds is not None else self.config.lease_s
        if length + 1.0 > self._rules.lease_horizon_s:  # a long lease is not a clock step
            self._rules = dataclasses.replace(self._rules, lease_horizon_s=length + 1.0)
        await self.store.extend(batch.token, batch.ids, expires_at=self._clock() + length)

    async def release(self, batch: Batch) -> None:
        """Give an unfinished batch back to pending at once (e.g. on shutdown)."""
        self._check_open()
        await self.store.release(batch.token, batch.ids)
        self.notify()

    # --- inspection -------------------------------------------------------------------------

    async def stats(self) -> QueueStats:
        """Counts by status and priority, oldest pending age, ready batches, dedup hits."""
        self._check_open()
        now = self._clock()
        found = await self.store.stats(now=now, rules=self._rules)
        oldest = found.oldest_pending_at
        return QueueStats(
            counts=found.counts,
            oldest_pending_age_s=None if oldest is None else max(0.0, now - oldest),
            duplicates_suppressed=found.counters.get("duplicates_suppressed", 0),
            ready_batches=found.ready_batches,
            spill=self.overflow.stats(),
            metrics={"intake_queued": self._writer.queued, **self.metrics.as_dict()},
        )

    async def purge(self, older_than_s: float | None = None, *, chunk: int = 500) -> int:
        """Delete done events finished more than `older_than_s` ago (default: retention), in
        small transactions so writers never wait long; returns how many."""
        cutoff = self._clock() - (self.config.retention_s if older_than_s is None else older_than_s)
        total = 0
        while True:
            removed = await self.store.purge_done(cutoff=cutoff, limit=chunk)
            total += removed
            if removed < chunk:
                return total

    async def _maintain(self) -> None:
        # Retention and a compact file without an operator: purge what retention allows and
        # checkpoint the WAL, at a gentle pace.
        interval = min(60.0, max(1.0, self.config.retention_s / 10))
        while True:
            await asyncio.sleep(interval)
            try:
                purged = await self.purge()
                await self.store.maintain()
            except EventQueueError as exc:
                log.warning("maintenance (purge, checkpoint) failed, will retry: %s", exc)
                continue
            if purged:
                self.metrics.count("purged", purged)

    def _check_open(self) -> None:
        if self._closed:
            raise QueueClosedError("the queue is closed")


class _Opener:
    """What `EventQueue.open` returns: await it, or use it as an async context manager."""

    def __init__(self, opening: Any) -> None:
        self._opening = opening
        self._queue: EventQueue | None = None

    def __await__(self) -> Generator[Any, None, EventQueue]:
        return self._opening.__await__()  # type: ignore[no-any-return]

    async def __aenter__(self) -> EventQueue:
        self._queue = await self._opening
        return self._queue

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._queue is not None:
            await self._queue.close()


async def _wait_any(changed: asyncio.Event, stop: asyncio.Event | None, delay: float) -> None:
    waiters = [asyncio.ensure_future(changed.wait())]
    if stop is not None:
        waiters.append(asyncio.ensure_future(stop.wait()))
    try:
        await asyncio.wait(waiters, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
