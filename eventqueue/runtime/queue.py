"""EventQueue: the façade a listener embeds: put, claim, ack, nack, extend, release, stats."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import secrets
import time
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

from eventqueue.core.arguments import dead_flag, error_text, extend_s, retry_in_s
from eventqueue.core.coalesce import CoalesceBy, coalesce_function, key_for
from eventqueue.core.config import Config
from eventqueue.core.errors import InvalidEventError, NotInBatchError, QueueClosedError
from eventqueue.core.faults import crash_point
from eventqueue.core.limits import KeyLimits
from eventqueue.core.models import Batch, Priority, PutResult, QueueStats
from eventqueue.core.prepare import _UNSET, OrderingFn, ordering_fn, prepare_event
from eventqueue.core.priority import BatchKeyFn, Classifier, batch_key, classify
from eventqueue.core.records import NewEvent
from eventqueue.core.rules import (
    backoff_s,
    dedup_since,
    dedup_ttl_s,
    retry_plan,
    rules_from_config,
    view_settings,
)
from eventqueue.runtime.admission import Admission
from eventqueue.runtime.handoff import Handoff
from eventqueue.runtime.maintenance import Maintenance
from eventqueue.runtime.metrics import Metrics
from eventqueue.runtime.overflow import Overflow
from eventqueue.runtime.owners import Owners, live_owners
from eventqueue.runtime.wakeup import Changes, Room, idle_delay, wait_any
from eventqueue.store import open_store
from eventqueue.store.base import Store

if TYPE_CHECKING:
    from eventqueue.runtime.telemetry.tracing import QueueTracing

Clock = Callable[[], float]
_CRITICAL = int(Priority.CRITICAL)
_PRIORITIES = {int(p): p for p in Priority}


class EventQueue:
    """A durable priority queue of events on one SQLite file. Open with `EventQueue.open(...)`."""

    def __init__(
        self,
        store: Store,
        overflow: Overflow,
        admission: Admission,
        changes: Changes,
        room: Room,
        handoff: Handoff,
        config: Config,
        *,
        metrics: Metrics,
        classifier: Classifier = classify,
        batch_key_fn: BatchKeyFn = batch_key,
        clock: Clock = time.time,
        ordering: OrderingFn | None = None,
        coalesce_by: CoalesceBy | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.overflow = overflow
        self.metrics = metrics
        self._admission = admission
        self._changes = changes
        self._room = room
        self._handoff = handoff
        self._classify = classifier
        self._batch_key = batch_key_fn
        self._ordering = ordering or ordering_fn(config.ordered_by)
        # A callable given to open() wins over the setting (EVENT_COALESCE_BY).
        self._coalesce_by = coalesce_by or coalesce_function(config.coalesce_by)
        self._clock = clock
        self._rules = rules_from_config(config)
        self._expiry_every_s = min(1.0, config.lease_s / 4)
        self._last_expiry_check = float("-inf")
        self._closed = False
        self._maintenance: Maintenance | None = None
        self._owners: Owners | None = None
        # Spans for put and handler runs: set by telemetry.tracing.instrument(queue), else None.
        self.tracing: QueueTracing | None = None

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
        `coalesce_by`: None, "aggregate_id" or a callable (event) -> str | None (latest wins).
        """
        # `ordered_by` may be a callable and `key_limits` a dict: Config holds their text forms.
        ordering = settings.pop("ordered_by", None)
        if ordering is not None and not isinstance(ordering, str):
            ordering_fn(ordering)  # ConfigError unless callable
        elif ordering is not None:
            settings["ordered_by"] = ordering
            ordering = None
        if settings.get("key_limits") is not None:
            settings["key_limits"] = KeyLimits.of(settings["key_limits"]).text()
        fn = settings.get("coalesce_by")
        if callable(fn):  # a function is no setting: it travels beside the config
            settings["coalesce_by"] = None
        if config is None:
            config = Config.load(db_path=path, **settings)
        elif path is not None or settings:
            config = config.replace(**({"db_path": path} if path else {}), **settings)
        fn = fn if callable(fn) else None
        return _Opener(cls._open(config, classifier, batch_key, clock, migrate, ordering, fn))

    @classmethod
    async def _open(
        cls,
        config: Config,
        classifier: Classifier,
        key_fn: BatchKeyFn,
        clock: Clock,
        migrate: bool | str,
        ordering: OrderingFn | None = None,
        coalesce_by: CoalesceBy | None = None,
    ) -> EventQueue:
        store = await open_store(config, migrate=migrate)
        metrics = Metrics()
        changes = Changes()
        owners = Owners(store, config, clock)
        try:
            await store.save_settings(view_settings(config))
            # Before anything is claimed: the leases of owners gone since (this process's
            # own previous life, after a kill -9) go back now, not at their expiry.
            released = await owners.register()
            if released:
                metrics.count("owner_leases_released", released)
            room = Room(config.queue_size, await store.waiting_count())
            overflow = await Overflow.open(store, room, changes, config, metrics, clock)
        except BaseException:
            await store.close()
            raise
        handoff = Handoff(config.lease_s, KeyLimits.of(config.key_limits))
        admission = Admission(
            store, overflow, room, changes, handoff, config, clock, metrics=metrics
        )
        queue = cls(
            store,
            overflow,
            admission,
            changes,
            room,
            handoff,
            config,
            metrics=metrics,
            classifier=classifier,
            batch_key_fn=key_fn,
            clock=clock,
            ordering=ordering,
            coalesce_by=coalesce_by,
        )
        admission.start()
        overflow.start()
        await store.watch(changes.notify)
        queue._owners = owners
        queue._maintenance = Maintenance.start(queue, store, config, metrics, owners)
        return queue

    async def close(self) -> None:
        """Commit what was put, checkpoint, and close the database. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._maintenance is not None:
            await self._maintenance.stop()
        try:
            await self._admission.close()
            await self.overflow.close()
            if self._owners is not None:
                await self._owners.close()
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
        ordering_key: str | None = _UNSET,
        coalesce_key: str | None = None,
    ) -> PutResult:
        """Store one event durably; returns once it is committed (accepted or duplicate).

        `ordering_key` (default: from `ordered_by`; None: unordered) puts it in a group leased
        one event after another, in the order put. `coalesce_key`: fold it into the pending
        event of its batch key with this key (latest wins); wins over `coalesce_by`. Never for
        CRITICAL events; with ordering, only into the last pending event of its group.
        """
        row = self.prepare(event, priority, ordering_key=ordering_key, coalesce_key=coalesce_key)
        results = await self._put_rows([row], source, position)
        return results[0]

    async def put_many(
        self,
        events: Iterable[Mapping[str, Any]],
        priority: Priority | int | str | None = None,
        *,
        source: str | None = None,
        position: str | None = None,
        ordering_key: str | Sequence[str | None] | None = _UNSET,
    ) -> list[PutResult]:
        """Store several events in one commit; all are validated before any is stored.

        `ordering_key`: one key for every event, or a sequence with one per event."""
        given = list(events)
        keys = _ordering_keys(ordering_key, len(given))
        rows = [
            self.prepare(event, priority, index=i, ordering_key=key)
            for i, (event, key) in enumerate(zip(given, keys, strict=True))
        ]
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
        ordering_key: Any = _UNSET,
        coalesce_key: str | None = None,
    ) -> NewEvent:
        """Validate, hash and classify one event (raises InvalidEventError; stores nothing)."""
        row = prepare_event(
            event,
            priority,
            config=self.config,
            classifier=self._classify,
            batch_key_fn=self._batch_key,
            now=self._clock(),
            index=index,
            ordering=self._ordering,
            ordering_key=ordering_key,
        )
        if coalesce_key is None and self._coalesce_by is None:
            return row
        return key_for(row, event, self._coalesce_by, coalesce_key)

    async def _put_rows(
        self, rows: list[NewEvent], source: str | None, position: str | None
    ) -> list[PutResult]:
        self._check_open()
        if self.tracing is not None and rows:  # a producer span, its context in the rows
            return await self.tracing.put(
                rows, lambda traced: self._admit(traced, source, position)
            )
        return await self._admit(rows, source, position)

    async def _admit(
        self, rows: list[NewEvent], source: str | None, position: str | None
    ) -> list[PutResult]:
        outcome = await self._admission.put(rows, source, position)
        count = self.metrics.count
        for status, _ in outcome:
            count(status.value)
        if self.metrics.sink is not None:
            self.metrics.sink.put(rows, outcome)
        return [
            PutResult(status, row_id, _PRIORITIES[row.priority], row.content_hash)
            for row, (status, row_id) in zip(rows, outcome, strict=True)
        ]

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
        self,
        consumer: str = "consumer",
        max_batches: int = 1,
        *,
        acks: Sequence[Batch] = (),
        min_priority: Priority | int = 0,
    ) -> list[Batch]:
        """Lease up to `max_batches` ready batches in one transaction, best first.

        `acks`: finished batches acked in the same transaction. If any of them lost its lease,
        LeaseLostError is raised and nothing is acked or claimed (ack them one by one then).
        `min_priority`: only events of at least this priority (e.g. CRITICAL work only).
        """
        self._check_open()
        now = self._clock()
        sink = self.metrics.sink
        started = time.perf_counter() if sink is not None else 0.0
        batches = await self.store.claim(
            now=now,
            consumer=consumer,
            token=secrets.token_hex(8),
            batch_id=secrets.token_hex(6),
            rules=self._rules,
            batches=max_batches,
            expire=self._expiry_due(now),
            acks=[(b.token, b.ids) for b in acks],
            min_priority=int(min_priority),
        )
        if sink is not None:
            sink.claim(time.perf_counter() - started, len(batches))
            for acked in acks:
                sink.settled("handled", acked.key, len(acked))
        if batches:
            self._taken(sum(len(b) for b in batches))
        if acks:
            self.notify()
        crash_point("after_claim")
        return batches

    def _expiry_due(self, now: float) -> bool:
        # Returning expired leases costs a statement; a fraction of the lease is soon enough.
        # A clock that jumped backwards makes it due at once rather than hours later.
        if self._last_expiry_check <= now < self._last_expiry_check + self._expiry_every_s:
            return False
        self._last_expiry_check = now
        return True

    def _taken(self, events: int) -> None:
        # Claimed events no longer wait: room for this process's next admissions, and for
        # promotion from the spill at once (only the promoter is woken: consumers need not be).
        self._room.taken(events)
        self.overflow.wake()

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
            changed = self._changes.current()
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
            await wait_any(changed, stop, timeout=delay)
        return None

    async def next_critical(
        self,
        consumer: str = "reserved",
        *,
        stop: asyncio.Event | None = None,
        ack: Batch | None = None,
    ) -> Batch | None:
        """Wait for CRITICAL work only: a batch handed over by the put that stored it, or
        claimed with `min_priority=CRITICAL`; None once `stop` is set or the queue closes.

        `ack`: the batch this consumer just finished, acked in the first claim's transaction
        (LeaseLostError if its lease was lost: nothing is acked or claimed then).
        """
        # Registered first: a CRITICAL put during the claim below is handed over, not missed.
        waiter = self._handoff.wait()
        try:
            while not self._closed and not (stop is not None and stop.is_set()):
                if waiter.done():
                    break
                acks = () if ack is None else (ack,)
                try:
                    found = await self.claim_batches(
                        consumer, 1, acks=acks, min_priority=Priority.CRITICAL
                    )
                except QueueClosedError:
                    return None
                ack = None
                if found:
                    return self._either(found[0], waiter)
                # Not woken by every commit (that would be a claim per commit): this process's
                # CRITICAL puts come as hand-offs; others' are found by the claim after a poll.
                await wait_any(waiter, stop, timeout=self.config.poll_ms / 1000)
        finally:
            waiter.cancel()  # no-op once handed over: the batch stays its result
        if ack is not None and not self._closed:
            await self.ack(ack)  # stopping before any claim: still finish what was handled
        return self._handed_over(waiter)

    def _either(self, claimed: Batch, waiter: asyncio.Future[Batch]) -> Batch:
        """The claimed batch, unless a hand-off arrived meanwhile (then that one; the claimed
        batch goes back to pending at once)."""
        handed = self._handed_over(waiter)
        if handed is None:
            return claimed
        self._admission.give_back(claimed)
        return handed

    def _handed_over(self, waiter: asyncio.Future[Batch]) -> Batch | None:
        waiter.cancel()
        if waiter.cancelled():
            return None
        batch = waiter.result()
        self.metrics.count("handed_over", len(batch))
        return batch

    async def urgent_puts_settled(self, timeout: float) -> None:
        """Wait (at most `timeout`) for the CRITICAL puts in progress to commit.

        A claim that starts while one is being put cannot see it, and holds the connection
        that put waits for: claiming just after it gets the CRITICAL event out sooner.
        """
        urgent = self._admission.urgent
        if not self.store.capabilities.single_connection or not urgent.open:
            return  # with a pool, the claim does not wait behind the put's connection
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await urgent.settled()

    def changed_event(self) -> asyncio.Event:
        """An event set at the next change (commit, ack, nack, release) in this process."""
        return self._changes.current()

    def now(self) -> float:
        """The queue's clock (wall time, injectable for tests)."""
        return self._clock()

    async def outstanding(self) -> int:
        """Events not finished yet: pending, claimed, waiting for the writer (and spilled)."""
        queued = self._admission.queued + self.overflow.pending()
        return queued + await self.store.unfinished_count()

    def notify(self) -> None:
        """Wake waiting consumers (something may have become ready) and the promoter."""
        self._changes.notify()

    async def idle_delay(self) -> float:
        """Seconds until something not ready now may become ready (capped by the poll)."""
        now = self._clock()
        wake = await self.store.next_wakeup(now)
        limits = self._rules.limits
        hold = await self.store.limit_hold(now=now, limits=limits) if limits else None
        return idle_delay(wake, self.config, now, hold)

    async def ack(self, batch: Batch, ids: Sequence[int] | None = None) -> None:
        """The batch (or these events of it) was handled: done. LeaseLostError if stale."""
        self._check_open()
        chosen = batch.ids if ids is None else list(ids)
        _require_in_batch(batch, chosen)
        await self.store.ack(batch.token, chosen, now=self._clock())
        if self.metrics.sink is not None:
            self.metrics.sink.settled("handled", batch.key, len(chosen))
        self.notify()

    async def nack(
        self,
        batch: Batch,
        error: str = "",
        retry_in: float | None = None,
        *,
        ids: Sequence[int] | None = None,
        dead: bool = False,
    ) -> None:
        """The batch (or these events) failed: retry after back-off (or `retry_in` seconds, 0 ..
        7 days), dead after max attempts; `dead=True`: dead-letter them now (a permanent failure).

        Arguments out of range raise InvalidArgumentError before anything changes.
        """
        self._check_open()
        text = error_text(error)
        delay = retry_in_s(retry_in)
        dead = dead_flag(dead, delay)
        if delay is not None and delay + 1.0 > self._rules.retry_horizon_s:
            # A long explicit delay is not a clock step.
            self._rules = dataclasses.replace(self._rules, retry_horizon_s=delay + 1.0)
        now = self._clock()
        chosen = set(batch.ids if ids is None else ids)
        _require_in_batch(batch, chosen)
        plan = retry_plan(self.config, batch, chosen, now=now, retry_in=delay, dead_now=dead)
        await self.store.nack(batch.token, plan.retry_at, plan.dead, error=text[:10_000], now=now)
        if self.metrics.sink is not None:
            self.metrics.sink.settled("retried", batch.key, len(plan.retry_at))
            self.metrics.sink.settled("dead", batch.key, len(plan.dead))
        self._room.returned(len(plan.retry_at))  # retries wait again (in back-off)
        self.notify()

    def backoff_s(self, attempts: int) -> float:
        """Exponential back-off with ±25 % jitter, capped at EVENT_BACKOFF_MAX_SECONDS."""
        return backoff_s(self.config, attempts)

    async def extend(self, batch: Batch, seconds: float | None = None) -> None:
        """Renew the batch's lease for `seconds` (default EVENT_LEASE_SECONDS; more than 0, at
        most 1 day) from now; InvalidArgumentError, with nothing changed, when out of range."""
        self._check_open()
        length = extend_s(seconds) if seconds is not None else self.config.lease_s
        if length + 1.0 > self._rules.lease_horizon_s:  # a long lease is not a clock step
            self._rules = dataclasses.replace(self._rules, lease_horizon_s=length + 1.0)
        await self.store.extend(batch.token, batch.ids, expires_at=self._clock() + length)

    async def release(self, batch: Batch) -> None:
        """Give an unfinished batch back to pending at once (e.g. on shutdown); its events at
        their last attempt are dead-lettered instead, as when their lease expires."""
        self._check_open()
        max_attempts = self.config.max_attempts
        await self.store.release(
            batch.token, batch.ids, now=self._clock(), max_attempts=max_attempts
        )
        self._room.returned(len(batch.ids))
        self.notify()

    async def give_back(self, batch: Batch) -> None:
        """Give back a batch that no handler received: pending at once, its attempt uncounted
        (`release` keeps the attempt: a released batch may have been partly handled)."""
        self._check_open()
        await self.store.give_back(batch.token, batch.ids)
        self._room.returned(len(batch.ids))
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
            superseded=found.counters.get("superseded", 0),
            ready_batches=found.ready_batches,
            spill=self.overflow.stats(),
            metrics={"intake_queued": self._admission.queued, **self.metrics.as_dict()},
            key_limits={k: dict(v) for k, v in found.key_limits.items()},
            owners=await live_owners(self.store, now),
        )

    async def purge(self, older_than_s: float | None = None, *, chunk: int = 500) -> int:
        """Delete done events finished more than `older_than_s` ago (default: retention), in
        small transactions so writers never wait long; returns how many. Events whose dedup
        window is still open are kept, so a re-put of their content stays a duplicate."""
        now = self._clock()
        cutoff = now - (self.config.retention_s if older_than_s is None else older_than_s)
        since = dedup_since(now, dedup_ttl_s(self.config))
        total = 0
        while True:
            removed = await self.store.purge_done(
                cutoff=cutoff, dedup_since=since, now=now, limit=chunk
            )
            total += removed
            if removed < chunk:
                return total

    def _check_open(self) -> None:
        if self._closed:
            raise QueueClosedError("the queue is closed")


def _require_in_batch(batch: Batch, ids: Iterable[int]) -> None:
    """Ids never in the batch are the caller's mistake, not a lost lease: say so, change nothing."""
    outside = sorted(set(ids) - set(batch.ids))
    if outside:
        raise NotInBatchError(outside)


def _ordering_keys(given: Any, count: int) -> list[Any]:
    """put_many's `ordering_key`: one for all (a string, None or unset), or one per event."""
    if given is _UNSET or given is None or isinstance(given, str):
        return [given] * count
    if not isinstance(given, Sequence) or len(given) != count:
        raise InvalidEventError(
            f"ordering_key: a string, None, or a sequence of {count} (one per event)"
        )
    return list(given)


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
