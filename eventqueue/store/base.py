"""The store interface: what the runtime and the CLI need from a backend, and nothing more.

One method = one transaction = one domain result, in terms of `core` records. A backend keeps
its own business behind it: connections and their sharing, lock waits and busy errors (turned
into StoreBusyError), checkpoints (`maintain`), SQL dialect and schema. Every backend passes the
same contract suite (tests/contract/).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from eventqueue.core.coalesce import Debounce
from eventqueue.core.limits import KeyLimits
from eventqueue.core.models import Batch
from eventqueue.core.owners import Owner
from eventqueue.core.records import (
    EventBrief,
    EventInfo,
    Lease,
    LimitHold,
    NewEvent,
    PeekBatch,
    PutCommit,
    RequeueResult,
    SplitPoint,
    StoreStats,
    Wakeup,
)
from eventqueue.core.rules import ClaimRules

# Per priority, how far a spill log was promoted: (segment, offset).
SpillPositions = Mapping[int, tuple[int, int]]


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What the runtime may assume of a backend."""

    # Every transaction of this process goes through one connection, one at a time: the
    # writer lets a consumer's claim in between its commits after an urgent put.
    single_connection: bool
    # Commits in other processes wake this one's consumers (LISTEN/NOTIFY); without it they
    # poll every EVENT_POLL_MS.
    cross_process_notify: bool


class Store(Protocol):
    """A durable event table with dedup, fenced leases, positions and spill bookkeeping."""

    @property
    def name(self) -> str:
        """Where the data lives (a path or a URL without credentials), for messages."""
        ...

    @property
    def capabilities(self) -> Capabilities:
        """What the runtime may assume of this backend."""
        ...

    async def close(self) -> None:
        """Release the connection(s); idempotent."""

    async def watch(self, on_change: Callable[[], None]) -> None:
        """Call `on_change` when another process commits work (no-op without the capability)."""

    # --- put --------------------------------------------------------------------------------

    async def put(
        self,
        rows: Sequence[NewEvent],
        *,
        now: float,
        dedup_ttl_s: float | None,
        source_positions: Mapping[str, str | None] | None = None,
        spill_positions: tuple[str, SpillPositions] | None = None,
        fail_fast: bool = False,
        lease: Lease | None = None,
        count_waiting: bool = True,
        split: Sequence[SplitPoint] | None = None,
        sliding: bool = False,
        debounce: Debounce | None = None,
    ) -> PutCommit:
        """Insert events; duplicates are counted on their original, not inserted.

        A row is a duplicate when a stored original of its content was received at most
        `dedup_ttl_s` apart from the row itself (their `received_at`, not `now`: a repeat
        spilled inside the window stays a duplicate however late it is promoted), in either
        direction (a repeat received before its original, by another process or across a wall
        clock step back, is a duplicate within the window and new beyond it).

        Positions commit in the same transaction. `fail_fast`: raise StoreBusyError at once when
        the write cannot start within EVENT_SPILL_AFTER_MS (the caller spills instead).
        `lease`: the CRITICAL events this put accepts are leased at once under it (attempt 1,
        fenced by `token:key`, one batch per key) and returned in `PutCommit.claimed`: the
        hand-off to a waiting consumer, with no claim transaction in between.
        `count_waiting`: count the waiting events (pending, back-off included; not claimed)
        into `PutCommit.waiting`; without it `waiting` is None and the caller keeps its own
        estimate.
        `split`: (rows, positions) points where whole puts of this group end: the store may
        commit only the rows up to one of them when urgent work waits for the connection this
        put holds, storing that point's positions instead of `source_positions`; `outcome`
        then covers that prefix and `waiting` is None, and the caller puts the rest. (A
        backend whose writers do not share a connection stores every row.)
        `sliding`: a suppressed duplicate restarts its original's window from its own receipt
        (dedup_at), instead of the window running from the original's.
        Rows with a `coalesce_key` fold into the newest pending, never delivered event of their
        batch key and coalesce key (core/coalesce.py): it takes the latest payload and keeps
        its id and place, `superseded` counting the versions replaced; the row's outcome is
        ACCEPTED with that event's id. `debounce`: such an event is claimable only at
        `Debounce.ready_at` (its available_at).
        """
        ...

    async def waiting_count(self) -> int:
        """Waiting events: pending, back-off included (what EVENT_QUEUE_SIZE bounds)."""
        ...

    async def unfinished_count(self) -> int:
        """Events not done or dead yet: pending and claimed."""
        ...

    async def source_position(self, source: str) -> str | None:
        """The stream position stored with the last committed events of `source`."""
        ...

    async def spill_positions(self, spill_log: str) -> dict[int, tuple[int, int]]:
        """Per priority, how far the spill log keyed `spill_log` was promoted."""
        ...

    # --- claim and settle -------------------------------------------------------------------

    async def claim(
        self,
        *,
        now: float,
        consumer: str,
        token: str,
        batch_id: str,
        rules: ClaimRules,
        batches: int = 1,
        expire: bool = True,
        acks: Sequence[tuple[str, Sequence[int]]] = (),
        min_priority: int = 0,
    ) -> list[Batch]:
        """Lease up to `batches` ready batches, best first ([] when none is ready).

        `min_priority`: only events of at least this priority (a consumer reserved for
        CRITICAL work asks for CRITICAL); keys holding none are not ready for this claim.

        `acks` ((token, ids)) are acked first in the same transaction; if any lost its lease,
        LeaseLostError and nothing changes. `expire` first returns expired leases to pending.
        Where claims run concurrently (PostgreSQL, several hosts), two claims at the same instant
        may split one key's ready events into two smaller batches; never a double lease.
        """
        ...

    async def ack(self, token: str, ids: Sequence[int], *, now: float) -> None:
        """Leased events done; LeaseLostError (and no change) if the token is stale."""

    async def nack(
        self,
        token: str,
        retry_at: Mapping[int, float],
        dead: Sequence[int],
        *,
        error: str,
        now: float,
    ) -> None:
        """Leased events back to pending at their retry time, or dead; fenced by token."""

    async def extend(self, token: str, ids: Sequence[int], *, expires_at: float) -> None:
        """Push the lease expiry out; LeaseLostError if the token is stale."""

    async def release(
        self, token: str, ids: Sequence[int], *, now: float, max_attempts: int
    ) -> None:
        """Leased events back to pending now, or dead (finished at `now`) when their attempts
        reached `max_attempts`, as an expired lease; LeaseLostError if the token is stale."""

    async def give_back(self, token: str, ids: Sequence[int]) -> None:
        """Leased events that no handler received (a hand-off or claim nobody took) back to
        pending now, the attempt their lease counted undone; LeaseLostError if stale."""

    async def next_wakeup(self, now: float) -> Wakeup:
        """When work that is not ready now may become ready."""
        ...

    async def limit_hold(self, *, now: float, limits: KeyLimits) -> LimitHold:
        """Whether a key limit holds back pending work now, and when a bucket refills next
        (the idle wait sleeps until then rather than spinning on a key it may not claim)."""
        ...

    # --- lease owners -----------------------------------------------------------------------

    async def save_owner(self, owner: Owner) -> None:
        """Register `owner` or refresh its heartbeat (upsert); this store's later leases
        (claims and hand-offs) name it in `lease_holder`."""

    async def drop_owner(self, owner: str) -> None:
        """Unregister `owner` (its queue is closing); leases it still holds keep their expiry."""

    async def owners(self) -> list[Owner]:
        """Every registered owner, with the claimed events each holds, oldest first."""
        ...

    async def release_owners(
        self,
        dead: Sequence[str],
        silent: Sequence[str],
        *,
        now: float,
        stale_heartbeats: int,
        max_attempts: int,
    ) -> int:
        """Delete the rows of the owners found gone and release their leases in one
        transaction, as an expiry does (pending, or dead once attempts reach `max_attempts`);
        how many events. `dead`: owners whose process is gone. `silent`: owners judged by their
        heartbeat, each deleted only if it is still older than `stale_heartbeats` of its
        periods at `now` (a refresh that landed since keeps it)."""
        ...

    # --- inspection and repair --------------------------------------------------------------

    async def stats(self, *, now: float, rules: ClaimRules) -> StoreStats:
        """Counts by status and priority, counters, oldest pending time, ready batch keys."""
        ...

    async def peek(self, *, now: float, rules: ClaimRules, limit: int) -> list[PeekBatch]:
        """The batches the next claims would lease, in claim order; claims nothing."""
        ...

    async def show(self, event_id: int) -> EventInfo | None:
        """One event with every column, or None when there is no such id."""
        ...

    async def dead(self, *, limit: int) -> list[EventBrief]:
        """Dead letters, most recent first, with their last error."""
        ...

    async def requeue(self, ids: Sequence[int] | None, *, now: float) -> RequeueResult:
        """Dead events (these ids, or all) back to pending; nothing changes if one is not dead."""
        ...

    async def purge_done(self, *, cutoff: float, dedup_since: float, now: float, limit: int) -> int:
        """Delete up to `limit` done events finished before `cutoff`; how many. An event that
        still holds its dedup key and was received between `dedup_since` and `now` (its dedup
        window is open) is kept: deleting it would make a re-put of its content new again."""
        ...

    async def count_kept_for_dedup(self, *, cutoff: float, dedup_since: float, now: float) -> int:
        """How many done events finished before `cutoff` `purge_done` keeps for their window."""
        ...

    async def settings(self) -> dict[str, str]:
        """The settings the last opener recorded (see `save_settings`)."""
        ...

    async def save_settings(self, values: Mapping[str, str]) -> None:
        """Record the opener's settings for the debugging views and the CLI."""

    async def maintain(self) -> None:
        """Backend housekeeping on idle (SQLite: a WAL checkpoint); never raises on busy."""
