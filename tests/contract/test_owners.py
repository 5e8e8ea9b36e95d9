"""Lease owners: the leases of an owner that is gone go back at once (an attempt counted, dead
past the limit, as on expiry); a live owner's leases stay. The store's part on every backend,
then what an opening queue and its heartbeat do with it."""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest

from contract.conftest import START, OpenStore, claim_one, make_event, put, status_of
from eventqueue import EventQueue
from eventqueue.core.config import Config
from eventqueue.core.owners import STALE_HEARTBEATS, Owner
from eventqueue.runtime.owners import pid_space, process_start
from eventqueue.store.base import Store

HEARTBEAT_S = 5.0
# Beyond any pid_max (2^22): no process of this pid space can have it.
NO_SUCH_PID = 2**22 + 17


def owner(name: str, *, pid: int, space: str, start: int | None, beat: float = START) -> Owner:
    return Owner(name, "somehost", pid, space, start, START, beat, HEARTBEAT_S)


def dead_process(name: str = "somehost/dead/1") -> Owner:
    """An owner in this pid space whose process does not exist."""
    return owner(name, pid=NO_SUCH_PID, space=pid_space(), start=12345)


def other_host(name: str = "somehost/7/1", *, beat: float = START) -> Owner:
    """An owner on another host: only its heartbeat tells whether it lives."""
    return owner(name, pid=7, space="another-boot/pid:[1]", start=99, beat=beat)


async def leased_by(store: Store, holder: Owner, name: str, *, attempts: int = 1) -> list[int]:
    """Put one event and claim it `attempts` times as `holder` (expiring it in between)."""
    await store.save_owner(holder)
    ids = await put(store, [make_event(name, at=START)])
    for n in range(attempts):
        now = START + n * 1000.0  # each claim after the previous lease expired
        await claim_one(store, now=now, token=f"{name}-{n}")
    return ids


# --- the store: release_owners ---------------------------------------------------------------


async def test_a_gone_owners_leases_go_back_with_the_attempt_counted(store: Store) -> None:
    gone, alive = dead_process(), dead_process("somehost/alive/2")
    (held,) = await leased_by(store, gone, "one")
    (kept,) = await leased_by(store, alive, "two")

    released = await store.release_owners(
        [gone.owner], [], now=START + 1, stale_heartbeats=STALE_HEARTBEATS, max_attempts=5
    )

    assert released == 1
    assert await status_of(store, held) == "pending"
    assert await status_of(store, kept) == "claimed"
    again = await claim_one(store, now=START + 2, token="again")
    assert again.ids == [held] and again.events[0].attempts == 2
    assert [o.owner for o in await store.owners()] == [alive.owner]


async def test_a_gone_owners_lease_past_the_attempt_limit_goes_dead(store: Store) -> None:
    gone = dead_process()
    (held,) = await leased_by(store, gone, "one", attempts=2)

    await store.release_owners(
        [gone.owner], [], now=START + 5000, stale_heartbeats=STALE_HEARTBEATS, max_attempts=2
    )

    info = await store.show(held)
    assert info is not None
    assert (info["status"], info["attempts"], info["last_error"]) == ("dead", 2, "lease owner gone")


async def test_a_silent_owner_is_released_only_while_its_heartbeat_is_stale(store: Store) -> None:
    host = other_host()
    (held,) = await leased_by(store, host, "one")
    stale_at = START + STALE_HEARTBEATS * HEARTBEAT_S + 1

    # It beat again meanwhile (after the judge read its row): it is kept.
    await store.save_owner(other_host(beat=stale_at - 1))
    kept = await store.release_owners(
        [], [host.owner], now=stale_at, stale_heartbeats=STALE_HEARTBEATS, max_attempts=5
    )
    assert kept == 0 and await status_of(store, held) == "claimed"

    gone = await store.release_owners(
        [],
        [host.owner],
        now=stale_at + HEARTBEAT_S * STALE_HEARTBEATS,
        stale_heartbeats=STALE_HEARTBEATS,
        max_attempts=5,
    )
    assert gone == 1 and await status_of(store, held) == "pending"
    assert await store.owners() == []


async def test_owners_lists_each_with_the_leases_it_holds(store: Store) -> None:
    first, second = dead_process("a/1/1"), other_host("b/2/2")
    await leased_by(store, first, "one")
    await store.save_owner(second)

    found = {o.owner: o.leases for o in await store.owners()}

    assert found == {first.owner: 1, second.owner: 0}


# --- the queue: at open, and every heartbeat ---------------------------------------------------


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def foreign(open_another: OpenStore) -> AsyncIterator[Store]:
    """A second store on the database, standing in for another process's queue."""
    yield await open_another()


def queue_on(config: Config, clock: Clock, **settings: Any) -> Any:
    """EventQueue.open on the backend under test, no batch window, with `clock`."""
    return EventQueue.open(config=config.replace(batch_window_ms=0, **settings), clock=clock)


async def test_an_opening_queue_gets_a_dead_process_leases_back_at_once(
    backend_config: Config, foreign: Store
) -> None:
    (held,) = await leased_by(foreign, dead_process(), "one")
    clock = Clock(START + 1)  # long before the lease (30 s) would expire

    async with queue_on(backend_config, clock) as q:
        batch = await q.claim()
        assert batch is not None and batch.ids == [held] and batch.events[0].attempts == 2
        assert q.metrics.as_dict()["outcomes"].get("owner_leases_released") == 1


async def test_a_live_owners_leases_are_not_released(
    backend_config: Config, foreign: Store
) -> None:
    clock = Clock(START + 1)
    (fresh,) = await leased_by(foreign, other_host(beat=START), "one")
    async with queue_on(backend_config, clock) as first:
        await first.put({"event_name": "two", "aggregate_id": "x"})
        mine = await first.claim()
        assert mine is not None
        # A second queue opening (this very process, and so alive) leaves both alone.
        second_spill = backend_config.spill_dir and f"{backend_config.spill_dir}-2"
        async with queue_on(backend_config, clock, spill_dir=second_spill or None) as second:
            assert await second.claim() is None
            live = [(o["host"], o["pid"]) for o in (await second.stats()).owners]
            assert live.count((socket.gethostname(), os.getpid())) == 2  # first and second
            assert ("somehost", 7) in live  # the other host, fresh
        await first.ack(mine)  # still its lease
    assert await status_of(foreign, fresh) == "claimed"


async def test_an_opening_queue_takes_over_a_silent_host_only_after_three_periods(
    backend_config: Config, foreign: Store
) -> None:
    (held,) = await leased_by(foreign, other_host(beat=START), "one")
    limit = START + STALE_HEARTBEATS * HEARTBEAT_S

    async with queue_on(backend_config, Clock(limit - 0.5)) as q:
        assert await q.claim() is None  # silent for less than three periods: alive
    async with queue_on(backend_config, Clock(limit + 0.5)) as q:
        batch = await q.claim()
        assert batch is not None and batch.ids == [held] and batch.events[0].attempts == 2


async def test_a_running_queue_takes_over_at_its_heartbeat(
    backend_config: Config, foreign: Store
) -> None:
    clock = Clock(START + 1)
    async with queue_on(backend_config, clock, owner_heartbeat_s=0.1) as q:
        (held,) = await leased_by(foreign, other_host(beat=START), "one")
        clock.now = START + STALE_HEARTBEATS * HEARTBEAT_S + 1  # the other host fell silent
        # Woken by the poll; the release comes from the heartbeat task (every 0.1 s), not
        # from the lease's expiry (30 s away on this clock).
        batch = await q.next_batch(timeout=30)
        assert batch is not None and batch.ids == [held] and batch.events[0].attempts == 2


def test_this_process_is_alive_by_its_own_rule() -> None:
    assert process_start(os.getpid()) is not None
    assert process_start(NO_SUCH_PID) is None
