"""The CRITICAL hand-off: a put that stores CRITICAL events while a reserved consumer waits
leases them in the same transaction, and they go to that consumer the moment the commit
returns. One fsync from receipt to handler start, no claim in between.

Crash safety is unchanged: a handed-over event is a committed, claimed row like any other, and
comes back after its lease if the process dies before it is acked.
"""

from __future__ import annotations

import asyncio
import secrets
from collections import deque

from eventqueue.core.limits import DEFAULT_KEY, KeyLimits
from eventqueue.core.models import Batch
from eventqueue.core.records import Lease


class Handoff:
    """Reserved consumers waiting for CRITICAL batches, and the batches handed to them."""

    def __init__(self, lease_s: float, limits: KeyLimits | None = None) -> None:
        self._lease_s = lease_s
        # Keys whose limit binds CRITICAL events are never handed over (see Lease.binds).
        entries = dict(limits.entries) if limits else {}
        default = entries.pop(DEFAULT_KEY, None)
        self._limited = frozenset(k for k, v in entries.items() if not v.exempt_critical)
        self._free = frozenset(k for k, v in entries.items() if v.exempt_critical)
        self._limit_all = default is not None and not default.exempt_critical
        self._waiting: deque[asyncio.Future[Batch]] = deque()

    def waiting(self) -> int:
        """How many reserved consumers wait for a hand-off now."""
        while self._waiting and self._waiting[0].done():
            self._waiting.popleft()  # gave up waiting (it claimed, or stopped)
        return sum(1 for w in self._waiting if not w.done())

    def wait(self) -> asyncio.Future[Batch]:
        """A future that a hand-off completes; cancel it to stop waiting."""
        waiter: asyncio.Future[Batch] = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        return waiter

    def lease(self, now: float) -> Lease | None:
        """The lease for a put's CRITICAL events, when a reserved consumer waits for them."""
        if not self.waiting():
            return None
        return Lease(
            consumer="reserved",
            token=secrets.token_hex(8),
            batch_id=secrets.token_hex(6),
            expires_at=now + self._lease_s,
            limited=self._limited,
            limit_all=self._limit_all,
            free=self._free,
        )

    def deliver(self, batches: list[Batch]) -> list[Batch]:
        """Hand batches to waiting consumers, oldest waiter first; those nobody took."""
        left = []
        for batch in batches:
            while self._waiting and self._waiting[0].done():
                self._waiting.popleft()
            if self._waiting:
                self._waiting.popleft().set_result(batch)
            else:
                left.append(batch)  # its consumer stopped waiting meanwhile
        return left
