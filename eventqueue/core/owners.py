"""Lease owners: every open queue is one, and its leases name it. The rule that says an owner
is gone, so its leases go back at once instead of at their expiry. Pure: the process probe
and the clock are given (runtime/owners.py reads them)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from eventqueue.core.records import iso

# An owner whose heartbeat is older than this many of its own periods is gone (when it cannot
# be judged by its process): one missed refresh is a busy moment, three are a dead host.
STALE_HEARTBEATS = 3


@dataclass(frozen=True, slots=True)
class Owner:
    """One open queue, as its row in `owners` says."""

    owner: str  # "host/pid/random": what its leases name (events.lease_holder)
    host: str
    pid: int
    # Where `pid` means this process: boot id and pid namespace ("" when unknown).
    pid_space: str
    process_start: int | None  # the process's start time in clock ticks since boot
    started_at: float  # when the queue opened (wall clock)
    heartbeat_at: float  # when it last refreshed its row
    heartbeat_s: float  # how often it refreshes it
    leases: int = 0  # claimed events it holds (as read; not stored)


ProcessStart = Callable[[int], int | None]


def judged_by_process(owner: Owner, pid_space: str) -> bool:
    """Whether a judge in `pid_space` can check the owner's process itself (same boot, same
    pid namespace, start time known); otherwise only its heartbeat tells."""
    return bool(pid_space) and owner.pid_space == pid_space and owner.process_start is not None


def is_gone(owner: Owner, *, pid_space: str, now: float, process_start: ProcessStart) -> bool:
    """Whether the owner is gone: in the judge's pid space, no process with its pid and start
    time (exact, at once, however long ago it beat); elsewhere, no heartbeat for
    STALE_HEARTBEATS of its periods. A heartbeat "in the future" (the judge's clock stepped
    back) is alive."""
    if judged_by_process(owner, pid_space):
        return process_start(owner.pid) != owner.process_start
    return now - owner.heartbeat_at > STALE_HEARTBEATS * owner.heartbeat_s


def describe(owner: Owner, now: float) -> dict[str, Any]:
    """One owner in `stats`: who, since when, how fresh its heartbeat, how many leases."""
    return {
        "owner": owner.owner,
        "host": owner.host,
        "pid": owner.pid,
        "started_at": iso(owner.started_at),
        "heartbeat_age_s": round(max(0.0, now - owner.heartbeat_at), 3),
        "leases": owner.leases,
    }
