"""The SQLite round engine: the writes queued at one moment share one transaction, CRITICAL puts
first; one request's failure fails it alone; checkpoints run off the writer's commits."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import sqlite3

from conftest import START, FakeClock, OpenQueue, event

from eventqueue.core.errors import LeaseLostError
from eventqueue.core.models import Priority, PutStatus
from eventqueue.store.sqlite.checkpoints import WAL_CHECKPOINT_BYTES, WAL_IDLE_TRUNCATE_BYTES
from eventqueue.store.sqlite.rounds import Rank


async def test_a_critical_put_queued_with_others_gets_a_round_of_its_own_first(
    open_queue: OpenQueue,
) -> None:
    q = await open_queue()
    normal = q.prepare(event(aggregate_id="n"))
    critical = q.prepare(event("payment_failed", aggregate_id="c"), priority=Priority.CRITICAL)
    engine = q.store._conn.engine
    rounds = engine.profile.rounds

    # Queued in one loop turn, NORMAL first: the CRITICAL put's own round commits first (it is
    # answered after its own COMMIT, not after the others'), then the rest in one round.
    first, second, third = await asyncio.gather(
        q.store.put([normal], now=START, dedup_ttl_s=None),
        q.store.put([critical], now=START, dedup_ttl_s=None),
        q.store.put([q.prepare(event(aggregate_id="m"))], now=START, dedup_ttl_s=None),
    )

    assert engine.profile.rounds == rounds + 2
    assert list(engine.profile.requests)[-2:] == [1, 2]
    assert second.outcome[0][1] < first.outcome[0][1] < third.outcome[0][1]


async def test_a_stale_ack_fails_alone_and_the_rest_of_its_round_commits(
    open_queue: OpenQueue,
) -> None:
    q = await open_queue()
    await q.store.put([q.prepare(event(aggregate_id="a"))], now=START, dedup_ttl_s=None)
    rounds = q.store._conn.engine.profile.rounds
    row = q.prepare(event(aggregate_id="b"))

    stale, put = await asyncio.gather(
        q.store.ack("no-such-token", [1], now=START),
        q.store.put([row], now=START, dedup_ttl_s=None),
        return_exceptions=True,
    )

    assert isinstance(stale, LeaseLostError)
    assert not isinstance(put, BaseException)
    assert put.outcome[0][0] is PutStatus.ACCEPTED
    assert q.store._conn.engine.profile.rounds == rounds + 1  # both in one round
    assert await q.store.waiting_count() == 2  # the put of the failed ack's round is stored


async def test_the_writer_never_checkpoints_and_the_checkpointer_does(
    open_queue: OpenQueue,
) -> None:
    q = await open_queue(enable_dedup=False)
    assert await q.store.pragma("wal_autocheckpoint") == 0
    checkpointer = q.store._conn._checkpointer
    big = "x" * 4000
    rows = [q.prepare(event(aggregate_id=f"a{i}", attributes={"note": big})) for i in range(200)]
    written = 0
    while written <= WAL_CHECKPOINT_BYTES * 4:  # past the growth threshold
        await q.store.put(rows, now=START, dedup_ttl_s=None)
        written += len(big) * len(rows)
        if checkpointer._running is not None:
            break

    assert checkpointer._running is not None  # started by a round past the threshold
    await checkpointer._running
    assert checkpointer.checkpoints >= 1
    wal = q.store.name + "-wal"
    assert file_size(wal) > WAL_IDLE_TRUNCATE_BYTES

    checkpointer.maintain()  # a maintenance pass after rounds: PASSIVE, the WAL file stays
    await checkpointer._running
    assert file_size(wal) > WAL_IDLE_TRUNCATE_BYTES
    checkpointer.maintain()  # no round since the last pass: idle, TRUNCATE
    await checkpointer._running
    assert file_size(wal) == 0


def file_size(path: str) -> int:
    return os.stat(path).st_size


async def test_the_writer_catches_up_so_the_wal_restarts_after_a_partial_checkpoint(
    open_queue: OpenQueue,
) -> None:
    # Under rounds that never pause, a PASSIVE checkpoint on the second connection always leaves
    # the frames appended while it copied, and the WAL restarts only after a checkpoint that
    # copied every frame: it grew with every round (600 MB after 300k end_to_end events, and the
    # RSS with it). A reader holding an old snapshot makes such a partial checkpoint here.
    q = await open_queue(enable_dedup=False)
    checkpointer = q.store._conn._checkpointer
    assert checkpointer is not None
    wal = q.store.name + "-wal"

    async def a_round(name: str) -> None:
        rows = [q.prepare(event(aggregate_id=f"{name}{i}")) for i in range(50)]
        await q.store.put(rows, now=START, dedup_ttl_s=None)

    await a_round("a")
    with contextlib.closing(sqlite3.connect(q.store.name, isolation_level=None)) as reader:
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM events").fetchall()  # a snapshot after round a
        await a_round("b")
        checkpointer.maintain()  # copies round a only: the reader still needs b's frames
        assert checkpointer._running is not None
        await checkpointer._running
        reader.execute("COMMIT")
    size = file_size(wal)

    await a_round("c")  # after the writer's catch-up: written from the WAL's beginning again

    assert checkpointer.catch_ups == 1
    assert file_size(wal) == size  # restarted, not appended


async def test_a_checkpoint_is_followed_by_the_writers_catch_up_before_the_next_round(
    open_queue: OpenQueue,
) -> None:
    q = await open_queue(enable_dedup=False)
    checkpointer = q.store._conn._checkpointer
    assert checkpointer is not None
    await q.store.put([q.prepare(event(aggregate_id="a"))], now=START, dedup_ttl_s=None)
    checkpointer.maintain()
    assert checkpointer._running is not None
    await checkpointer._running

    await q.store.put([q.prepare(event(aggregate_id="b"))], now=START, dedup_ttl_s=None)

    assert checkpointer.catch_ups == 1
    assert not checkpointer.catch_up_due()  # asked once per checkpoint


async def test_a_claim_reads_its_events_back_in_one_step_with_exact_times(
    open_queue: OpenQueue, clock: FakeClock
) -> None:
    # The claim is an UPDATE, then one aggregated SELECT (one row: a JSON array), not an
    # UPDATE ... RETURNING of one sqlite3 step per event. received_at must survive JSON exactly.
    q = await open_queue(enable_dedup=False, max_batch_size=100)
    received = START + 0.123456789
    rows = [
        dataclasses.replace(
            q.prepare(event(aggregate_id="k", attributes={"n": i})), received_at=received
        )
        for i in range(50)
    ]
    await q.store.put(rows, now=received, dedup_ttl_s=None)
    clock.advance(60.0)  # past the batching window
    profile = q.store._conn.engine.profile

    batch = await q.claim()

    assert batch is not None and len(batch) == 50
    assert [e.received_at for e in batch.events] == [received] * 50
    assert sorted(e.payload["attributes"]["n"] for e in batch.events) == list(range(50))
    assert list(profile.steps)[-1] < 10  # BEGIN, expire, UPDATE, SELECT + its row, COMMIT

    await q.ack(batch)  # the ack's fence counts the rows changed, without RETURNING
    assert list(profile.steps)[-1] < 10
    assert await q.store.unfinished_count() == 0


async def test_the_writers_catch_up_waits_while_a_critical_put_is_queued(
    open_queue: OpenQueue,
) -> None:
    q = await open_queue()
    connection = q.store._conn
    checkpointer = connection._checkpointer
    assert checkpointer is not None
    checkpointer._behind = True  # a checkpoint of the second connection just finished
    critical = connection.engine._queues[Rank.CRITICAL]
    critical.append(object())  # a CRITICAL put waiting for its round

    await connection._between_rounds()
    assert checkpointer.catch_ups == 0  # the CRITICAL put goes first

    critical.clear()
    await connection._between_rounds()
    assert checkpointer.catch_ups == 1
