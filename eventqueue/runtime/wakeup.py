"""Wake-ups and room: how the parts of one queue tell each other that something changed.

`Changes` is the in-process signal set at every commit, promotion, ack and release: consumers
wait on it instead of polling, and the promoter listens to it for freed room. `Room` is the
number of waiting events as this process last saw it (pending, back-off included: what
EVENT_QUEUE_SIZE bounds; what a consumer holds has left the queue) with the lock under which
admission and promotion fill it, so the two never fill the same room twice. Both are made once per queue and handed to each part at construction.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from eventqueue.core.config import Config
from eventqueue.core.records import LimitHold, Wakeup

# Never sleep longer than this without looking again, whatever the clock says: a wall-clock
# jump must not leave a consumer asleep for hours.
MAX_IDLE_S = 1.0
# A put counts the waiting events at least this often (seconds) while room is plentiful.
RECOUNT_AFTER_S = 0.1


class Changes:
    """A signal for "something may have become ready": set once, then re-armed."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self._listeners: list[Callable[[], None]] = []

    def current(self) -> asyncio.Event:
        """The event the next change sets (take it before looking, so no change is missed)."""
        return self._event

    def listen(self, callback: Callable[[], None]) -> None:
        """Call `callback` at every change (it must not block)."""
        self._listeners.append(callback)

    def notify(self) -> None:
        """Something changed: wake every waiter and listener."""
        event, self._event = self._event, asyncio.Event()
        event.set()
        for callback in self._listeners:
            callback()


class Room:
    """Waiting events (pending, back-off included) as this process last saw them, against
    EVENT_QUEUE_SIZE."""

    def __init__(self, capacity: int, waiting: int = 0) -> None:
        self.capacity = capacity
        self.waiting = waiting
        self.counted_at = float("-inf")  # when `waiting` was last counted (wall clock)
        # Events admitted by group commits still in flight (parallel writers): not in any
        # count yet, but their room is taken.
        self.reserved = 0
        # Held while the room is counted and filled (a put group or a promotion chunk).
        self.lock = asyncio.Lock()

    @property
    def free(self) -> int:
        """Events that fit before the queue is full."""
        return self.capacity - self.waiting - self.reserved

    def taken(self, events: int) -> None:
        """`events` were claimed in this process: they no longer wait."""
        self.waiting = max(0, self.waiting - events)

    def returned(self, events: int) -> None:
        """`events` wait again in this process (nacked for a retry, or released)."""
        self.waiting += events

    def committed(self, waiting: int | None, accepted: int, now: float) -> None:
        """After a put at `now`: the waiting events as it counted them, or (not counted) the
        estimate plus the `accepted` events it left waiting."""
        if waiting is None:
            self.waiting += accepted
        else:
            self.waiting = waiting
            self.counted_at = now

    def worth_counting(self, rows: int, now: float) -> bool:
        """Whether a put of `rows` at `now` should count the waiting events exactly: when
        the estimate says the room may run short after it, and at least every RECOUNT_AFTER_S
        anyway, for what other processes added or finished (this estimate does not see it)."""
        if self.free - rows <= self.capacity // 2:
            return True
        return not 0.0 <= now - self.counted_at < RECOUNT_AFTER_S  # or the clock stepped back


def idle_delay(wake: Wakeup, config: Config, now: float, hold: LimitHold | None = None) -> float:
    """Seconds until something not ready now may become ready (capped by the poll)."""
    # Sleep until the next batch window closes, retry comes due or lease expires; poll anyway
    # for work committed by other processes.
    times = [config.poll_ms / 1000.0, MAX_IDLE_S]
    windows = []
    if wake.oldest_pending_at is not None:
        windows.append(wake.oldest_pending_at + config.batch_window_s - now)
    if wake.oldest_high_pending_at is not None:
        windows.append(wake.oldest_high_pending_at + config.high_batch_window_s - now)
    if hold is not None and hold.held:
        # A claim just found nothing, and a key limit holds pending work back: a window that
        # closed already belongs to a held key (any other would have been claimed). Wake at
        # its bucket's refill (an ack in this process wakes consumers anyway; other
        # processes' acks are seen at the poll), never in a loop of claims.
        windows = [t for t in windows if t > 0]
        if hold.refill_at is not None:
            times.append(hold.refill_at - now)
    times.extend(windows)
    times.extend(t - now for t in (wake.next_retry_at, wake.next_lease_expiry_at) if t is not None)
    return max(0.001, min(times))


async def wait_any(
    *waitables: asyncio.Event | asyncio.Future[Any] | None, timeout: float | None
) -> None:
    """Return when any of the events is set or futures done, or after `timeout` seconds.

    The futures are only watched: they are left as they are (their owner settles them).
    """
    made = [asyncio.ensure_future(w.wait()) for w in waitables if isinstance(w, asyncio.Event)]
    given = [w for w in waitables if isinstance(w, asyncio.Future)]
    try:
        await asyncio.wait([*made, *given], timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in made:
            waiter.cancel()
