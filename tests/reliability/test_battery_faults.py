"""Fault at the Nth operation: the Nth SQL statement, spill write or fsync fails, N = 1, 2, ...
until the operation gets through untouched.

Statements fail either before they run, or after they ran (the caller sees an error for work
that was done: F2). After every fault: only eventqueue's documented errors reached the caller,
every row is in exactly one consistent state, the connection is outside any transaction, and
the next call on the same queue succeeds. At the end, every acknowledged put is delivered.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

import eventqueue.runtime.overflow.log as spill_module
from eventqueue import EventQueue, EventQueueError, SpillError, StorageError
from eventqueue.core.models import Batch
from eventqueue.runtime.overflow.log import SpillPosition
from eventqueue.runtime.overflow.log import inspect as inspect_spill
from eventqueue.store.sqlite.connection import Tx

LEASE_S = 30.0
MAX_N = 40  # far more statements than any one operation runs
_ids = itertools.count()


def unique(name: str = "job") -> dict[str, Any]:
    return {"event_name": name, "aggregate_id": next(_ids)}


class StatementFaults:
    """Make the Nth SQL statement of the store (BEGIN and COMMIT included) raise "disk I/O
    error". Every statement of a transaction goes through one `Tx` on the connection's thread."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        self.at: int | None = None
        self.after = False
        self.fired = False
        for name in ("run", "rows", "dicts", "scalar", "many"):
            monkeypatch.setattr(Tx, name, self._faulty(getattr(Tx, name)))

    def _faulty(self, original: Any) -> Any:
        def statement(tx: Tx, sql: str, *args: Any) -> Any:
            self.calls += 1
            if self.calls == self.at:
                self.fired = True
                if self.after:
                    original(tx, sql, *args)  # done, yet reported as failed
                raise sqlite3.OperationalError("disk I/O error")
            return original(tx, sql, *args)

        return statement

    def arm(self, n: int, *, after: bool) -> None:
        self.calls, self.at, self.after, self.fired = 0, n, after, False

    def disarm(self) -> None:
        self.at = None


class Model:
    """What the callers were told: acknowledged puts, and acks that returned."""

    def __init__(self) -> None:
        self.put_ids: set[int] = set()
        self.put_spilled = 0
        self.acked: set[int] = set()

    def record_puts(self, results: list[Any]) -> None:
        for result in results:
            if result.id is None:
                self.put_spilled += 1
            else:
                self.put_ids.add(result.id)


def check_rows(query: Callable[..., list[Any]]) -> dict[int, str]:
    """Every row in exactly one consistent state; returns id -> status."""
    statuses: dict[int, str] = {}
    rows = query("SELECT id, status, lease_token, lease_expires_at, finished_at FROM events")
    for event_id, status, token, expires, finished in rows:
        assert status in {"pending", "claimed", "done", "dead"}, (event_id, status)
        leased = token is not None and expires is not None
        assert leased == (status == "claimed"), (event_id, status, token, expires)
        assert (finished is not None) == (status in {"done", "dead"}), (event_id, status)
        statuses[event_id] = status
    return statuses


async def claim_one(q: EventQueue) -> Batch:
    batch = await q.claim()
    assert batch is not None
    return batch


def scenarios(
    model: Model,
) -> dict[str, Callable[[EventQueue], Awaitable[Callable[[], Awaitable[Any]]]]]:
    """Each prepares its precondition (unfaulted) and returns the operation to fault."""

    async def put(q: EventQueue) -> Callable[[], Awaitable[Any]]:
        async def op() -> None:
            model.record_puts([await q.put(unique())])

        return op

    async def put_many(q: EventQueue) -> Callable[[], Awaitable[Any]]:
        async def op() -> None:
            model.record_puts(await q.put_many([unique(), unique("other"), unique()]))

        return op

    async def claim(q: EventQueue) -> Callable[[], Awaitable[Any]]:
        model.record_puts([await q.put(unique())])
        return q.claim

    async def ack(q: EventQueue) -> Callable[[], Awaitable[Any]]:
        model.record_puts([await q.put(unique())])
        batch = await claim_one(q)

        async def op() -> None:
            await q.ack(batch)
            model.acked.update(batch.ids)

        return op

    async def nack(q: EventQueue) -> Callable[[], Awaitable[Any]]:
        model.record_puts([await q.put(unique())])
        batch = await claim_one(q)
        return lambda: q.nack(batch, "handler failed", retry_in=0)

    async def claim_with_ack(q: EventQueue) -> Callable[[], Awaitable[Any]]:
        model.record_puts([await q.put(unique()), await q.put(unique("next"))])
        batch = await claim_one(q)

        async def op() -> None:
            await q.claim(ack=batch)
            model.acked.update(batch.ids)

        return op

    async def extend(q: EventQueue) -> Callable[[], Awaitable[Any]]:
        model.record_puts([await q.put(unique())])
        batch = await claim_one(q)
        return lambda: q.extend(batch)

    async def release(q: EventQueue) -> Callable[[], Awaitable[Any]]:
        model.record_puts([await q.put(unique())])
        batch = await claim_one(q)
        return lambda: q.release(batch)

    return {
        "put": put,
        "put_many": put_many,
        "claim": claim,
        "ack": ack,
        "nack": nack,
        "claim_with_ack": claim_with_ack,
        "extend": extend,
        "release": release,
    }


async def drain(q: EventQueue, clock: Any, model: Model) -> set[int]:
    """Expire every lease and claim + ack until nothing is left; the ids delivered."""
    clock.advance(LEASE_S + 1)
    delivered: set[int] = set()
    while (batch := await q.claim()) is not None:
        delivered.update(batch.ids)
        await q.ack(batch)
    return delivered


@pytest.mark.parametrize(
    "after", [False, True], ids=["fails-before-running", "fails-after-running"]
)
@pytest.mark.parametrize("name", list(scenarios(Model())))
async def test_a_statement_failing_at_the_nth_call(
    open_queue, clock, query, monkeypatch, name: str, after: bool
) -> None:
    q = await open_queue(batch_window_ms=0, enable_batching=False, lease_s=LEASE_S)
    faults = StatementFaults(monkeypatch)
    model = Model()
    scenario = scenarios(model)[name]
    faulted = 0
    for n in range(1, MAX_N + 1):
        op = await scenario(q)
        faults.arm(n, after=after)
        try:
            await op()
        except EventQueueError as exc:
            assert faults.fired, f"{type(exc).__name__} without a fault: {exc}"
            assert isinstance(exc, StorageError), exc
            faulted += 1
        finally:
            faults.disarm()
        assert not q.store._conn._db.in_transaction, (n, after)
        check_rows(query)
        if not faults.fired:
            break  # the operation ran fewer than n statements: every fault point was visited
        # The next call on the same queue succeeds.
        await (await scenario(q))()
        check_rows(query)
    else:
        raise AssertionError(f"{name} still hit the fault after {MAX_N} statements")
    assert faulted > 0

    delivered = await drain(q, clock, model)
    statuses = check_rows(query)
    assert model.put_spilled == 0
    # Lost 0: every acknowledged put is delivered now, or was acked (or dead-lettered) before.
    assert all(statuses[i] == "done" for i in model.put_ids), statuses
    assert model.acked <= set(statuses)
    assert all(statuses[i] == "done" for i in model.acked)
    assert set(statuses.values()) == {"done"}
    assert delivered.isdisjoint(model.acked), "an acked event was delivered again"


# --- the spill: a failing write or fsync -----------------------------------------------------


class OsFaults:
    """Make the Nth spill write (optionally torn: half written) or fsync fail with an OSError."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        self.at: int | None = None
        self.kind = "fsync"
        self.fired = False
        write_all, fsync = spill_module._write_all, spill_module.os.fsync

        def faulty_write_all(fd: int, data: bytes) -> None:
            if self.kind in ("write", "torn-write") and self._hit():
                if self.kind == "torn-write":
                    write_all(fd, data[: len(data) // 2])
                raise OSError(errno.ENOSPC, "No space left on device")
            write_all(fd, data)

        def faulty_fsync(fd: int) -> None:
            if self.kind == "fsync" and self._hit():
                raise OSError(errno.EIO, "Input/output error")
            fsync(fd)

        monkeypatch.setattr(spill_module, "_write_all", faulty_write_all)
        monkeypatch.setattr(spill_module.os, "fsync", faulty_fsync)

    def _hit(self) -> bool:
        self.calls += 1
        if self.calls == self.at:
            self.fired = True
            return True
        return False

    def arm(self, n: int, kind: str) -> None:
        self.calls, self.at, self.kind, self.fired = 0, n, kind, False

    def disarm(self) -> None:
        self.at = None


@pytest.mark.parametrize("kind", ["fsync", "write", "torn-write"])
async def test_a_spill_write_or_fsync_failing_at_the_nth_call(
    open_queue, clock, query, monkeypatch, kind: str
) -> None:
    q = await open_queue(batch_window_ms=0, enable_batching=False, queue_size=1)
    faults = OsFaults(monkeypatch)
    assert (await q.put(unique())).accepted  # fills the table: every later put spills
    spilled = 0
    faulted = 0
    for n in range(1, MAX_N + 1):
        faults.arm(n, kind)
        try:
            result = await q.put(unique())
        except EventQueueError as exc:
            assert faults.fired and isinstance(exc, SpillError), exc
            faulted += 1
        else:
            assert result.spilled
            spilled += 1
        finally:
            faults.disarm()
        # All or nothing: the spill holds exactly the spilled puts, and no damaged bytes.
        assert q.overflow.pending() == spilled
        on_disk = inspect_spill(
            q.overflow.spill._dir, {p: SpillPosition(0, 0) for p in range(1, 5)}
        )
        assert sum(on_disk.records.values()) == spilled
        assert on_disk.quarantined_records == 0
        if not faults.fired:
            break
        assert (await q.put(unique())).spilled  # the next call succeeds
        spilled += 1
    assert faulted > 0

    # Room frees one event at a time; the promoter brings every spilled put in.
    handled = 0
    while handled < 1 + spilled:
        batch = await q.next_batch(timeout=10)
        assert batch is not None, f"only {handled} of {1 + spilled} delivered"
        await q.ack(batch)
        handled += len(batch)
    assert check_rows(query) and set(check_rows(query).values()) == {"done"}
    assert len(query("SELECT id FROM events")) == 1 + spilled
    assert q.overflow.pending() == 0


# --- promotion from the spill: a statement failing at the Nth call ---------------------------


@pytest.mark.parametrize(
    "after", [False, True], ids=["fails-before-running", "fails-after-running"]
)
async def test_promotion_with_a_statement_failing_at_the_nth_call(
    open_queue, clock, query, monkeypatch, tmp_path: Path, after: bool
) -> None:
    # After running: the promotion committed, yet the call failed (F2). Its positions must come
    # from the database, or the next attempt promotes the same records a second time.
    await check_promotion_faults(open_queue, clock, query, monkeypatch, tmp_path, after=after)


async def check_promotion_faults(
    open_queue: Any, clock: Any, query: Any, monkeypatch: Any, tmp_path: Path, *, after: bool
) -> None:
    for n in range(1, MAX_N + 1):
        path = str(tmp_path / f"promote-{n}.db")
        q = await open_queue(
            path,
            batch_window_ms=0,
            enable_dedup=False,  # a record promoted twice shows as a second row
            queue_size=2,
            lease_s=LEASE_S,
        )
        # Promotion only when the test calls it: no background attempt races the fault.
        monkeypatch.setattr(q.overflow, "wake", lambda: None)
        faults = StatementFaults(monkeypatch)
        puts = await q.put_many([unique() for _ in range(5)])
        assert [r.spilled for r in puts].count(True) == 3
        await q.ack(await claim_one(q))  # room for promotion

        faults.arm(n, after=after)
        try:
            await q.overflow.promote_once()
        except EventQueueError as exc:
            assert faults.fired and isinstance(exc, StorageError), exc
        finally:
            faults.disarm()
        assert not q.store._conn._db.in_transaction

        async with asyncio.timeout(10):
            while True:  # the next calls succeed: promote and drain everything
                while (batch := await q.claim()) is not None:
                    await q.ack(batch)
                if not await q.overflow.promote_once():
                    break
        clock.advance(LEASE_S + 1)
        assert await q.claim() is None
        assert q.overflow.pending() == 0
        rows = query(
            "SELECT json_extract(payload, '$.aggregate_id'), status FROM events", path=path
        )
        keys = sorted(key for key, _ in rows)
        assert keys == sorted(set(keys)) and len(keys) == 5, f"N={n}: {keys}"
        assert {status for _, status in rows} == {"done"}
        await q.close()
        if not faults.fired:
            break
    else:
        raise AssertionError(f"promotion still hit the fault after {MAX_N} statements")
