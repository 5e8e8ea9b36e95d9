"""This queue as a lease owner: who it is (host, pid, process start), its row in `owners`
kept fresh, and the release of the leases of owners that are gone, at open and then every
EVENT_OWNER_HEARTBEAT_S (core/owners.py says what "gone" means)."""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
import socket
from collections.abc import Callable
from typing import Any

from eventqueue.core.config import Config
from eventqueue.core.errors import EventQueueError
from eventqueue.core.owners import STALE_HEARTBEATS, Owner, describe, is_gone, judged_by_process
from eventqueue.store.base import Store

log = logging.getLogger(__name__)


def process_start(pid: int) -> int | None:
    """When process `pid` started, in clock ticks since boot (None: no such process here, or
    no /proc). With the pid it names one process: a reused pid has another start time."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            text = stat.read().decode("ascii", "replace")
        # After the command name (in parentheses, which may hold spaces), field 3 onward;
        # starttime is field 22.
        return int(text[text.rindex(")") + 2 :].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def pid_space() -> str:
    """Where a pid means one process: this boot and this pid namespace ("" when unknown).
    Containers on one host share the boot but not the namespace: they judge each other by
    heartbeat, as other hosts do."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as boot:
            boot_id = boot.read().strip()
        return f"{boot_id}/{os.readlink('/proc/self/ns/pid')}"
    except OSError:
        return ""


def this_owner(now: float, heartbeat_s: float) -> Owner:
    """This process as a new owner (one per opened queue: two queues in one process are two)."""
    host, pid = socket.gethostname(), os.getpid()
    return Owner(
        owner=f"{host}/{pid}/{secrets.token_hex(4)}",
        host=host,
        pid=pid,
        pid_space=pid_space(),
        process_start=process_start(pid),
        started_at=now,
        heartbeat_at=now,
        heartbeat_s=heartbeat_s,
    )


class Owners:
    """Registers this queue, refreshes its heartbeat and releases the leases of gone owners."""

    def __init__(self, store: Store, config: Config, clock: Callable[[], float]) -> None:
        self._store = store
        self._config = config
        self._clock = clock
        self.me = this_owner(clock(), config.owner_heartbeat_s)

    async def register(self) -> int:
        """Save this owner (before any lease names it), then release gone owners' leases."""
        await self._store.save_owner(self.me)
        return await self.release_gone()

    async def heartbeat(self) -> int:
        """Refresh this owner's row (made again if another judged it gone), then release gone
        owners' leases; how many events went back."""
        self.me = dataclasses.replace(self.me, heartbeat_at=self._clock())
        await self._store.save_owner(self.me)
        return await self.release_gone()

    async def release_gone(self) -> int:
        """Release the leases of every owner found gone now; how many events."""
        now, space = self._clock(), self.me.pid_space
        dead: list[str] = []
        silent: list[str] = []
        for owner in await self._store.owners():
            if owner.owner == self.me.owner:
                continue
            if not is_gone(owner, pid_space=space, now=now, process_start=process_start):
                continue
            (dead if judged_by_process(owner, space) else silent).append(owner.owner)
        if not dead and not silent:
            return 0
        released = await self._release(dead, silent, now)
        log.info(
            "released %d leased event(s) of %d owner(s) found gone: %s",
            released,
            len(dead) + len(silent),
            ", ".join(dead + silent),
        )
        return released

    async def close(self) -> None:
        """Unregister. A lease still held (a batch claimed and never settled nor released)
        keeps its expiry, as before owners existed: the Dispatcher releases its own at
        shutdown, and a caller that holds a batch past close meant to."""
        try:
            await self._store.drop_owner(self.me.owner)
        except EventQueueError as exc:
            # Closing must still close (a deleted database fails every write): the row left
            # behind is judged gone once this process has exited, and deleted then.
            log.warning("could not unregister lease owner %s: %s", self.me.owner, exc)

    async def _release(self, dead: list[str], silent: list[str], now: float) -> int:
        return await self._store.release_owners(
            dead,
            silent,
            now=now,
            stale_heartbeats=STALE_HEARTBEATS,
            max_attempts=self._config.max_attempts,
        )


async def live_owners(store: Store, now: float) -> list[dict[str, Any]]:
    """The owners that are alive by the rule (for `stats`), oldest first."""
    space = pid_space()
    return [
        describe(owner, now)
        for owner in await store.owners()
        if not is_gone(owner, pid_space=space, now=now, process_start=process_start)
    ]
