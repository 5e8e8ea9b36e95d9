"""Frozen values passed between layers: priorities, statuses, events, batches, results."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class Priority(enum.IntEnum):
    """Scheduling priority; a higher value is served first (values from the plan)."""

    LOW = 1
    NORMAL = 2
    HIGH = 3
    CRITICAL = 4

    def __str__(self) -> str:
        # print() and f-strings show the name (`CRITICAL`, not `4`); comparisons, int() and
        # JSON (json.dumps writes the value) stay those of an int.
        return self.name

    @classmethod
    def parse(cls, value: Priority | int | str) -> Priority:
        """Accept a Priority, its value (1..4) or its name (case-insensitive)."""
        if isinstance(value, Priority):
            return value
        if isinstance(value, bool):
            raise ValueError(f"priority must be 1..4 or a name, got {value!r}")
        if isinstance(value, int):
            return cls(value)
        if isinstance(value, str):
            try:
                return cls[value.strip().upper()]
            except KeyError:
                pass
        names = ", ".join(p.name for p in cls)
        raise ValueError(f"priority must be one of {names} (or 1..4), got {value!r}")


class Status(enum.StrEnum):
    """Where an event is in its life; stored as text in `events.status`."""

    PENDING = "pending"
    # An ordered event waiting for the earlier events of its ordering key (revision 0004):
    # out of every claim's reach until its group's earlier events are done or dead.
    HELD = "held"
    CLAIMED = "claimed"
    DONE = "done"
    DEAD = "dead"


class PutStatus(enum.StrEnum):
    """What `put` did with an event."""

    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    SPILLED = "spilled"


@dataclass(frozen=True, slots=True)
class PutResult:
    """The outcome of one `put`: accepted (id is the new row), duplicate (id of the original)
    or spilled (id is None until the event is promoted from the spill log)."""

    status: PutStatus
    id: int | None
    priority: Priority
    content_hash: str

    @property
    def accepted(self) -> bool:
        return self.status is PutStatus.ACCEPTED

    @property
    def duplicate(self) -> bool:
        return self.status is PutStatus.DUPLICATE

    @property
    def spilled(self) -> bool:
        return self.status is PutStatus.SPILLED


@dataclass(frozen=True, slots=True)
class Event:
    """One stored event as a handler sees it."""

    id: int
    payload: dict[str, Any]
    priority: Priority
    content_hash: str
    batch_key: str
    attempts: int
    received_at: float
    # The W3C trace context stored by a traced put ("traceparent[ tracestate]"), else None.
    trace_context: str | None = None
    # The event's ordering group (`ordered_by` / `put(ordering_key=)`), else None.
    ordering_key: str | None = None
    # How many newer versions of this event (same batch key and coalesce key) replaced its
    # payload while it waited: the payload is the latest one (coalescing; 0 without it).
    superseded: int = 0

    @property
    def name(self) -> str:
        """The event's `event_name` ('' when absent)."""
        value = self.payload.get("event_name")
        return value if isinstance(value, str) else ""


@dataclass(frozen=True, slots=True)
class Batch:
    """Events claimed together under one lease. `token` fences ack/nack/extend."""

    id: str
    key: str
    token: str
    consumer: str
    priority: Priority
    events: tuple[Event, ...]
    lease_expires_at: float

    def __len__(self) -> int:
        return len(self.events)

    @property
    def ids(self) -> list[int]:
        return [e.id for e in self.events]


@dataclass(frozen=True, slots=True)
class QueueStats:
    """A snapshot of the queue: counts, ages, dedup hits, spill and runtime metrics."""

    counts: dict[str, dict[str, int]]
    oldest_pending_age_s: float | None
    duplicates_suppressed: int
    ready_batches: int
    spill: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    # The live lease owners (open queues): owner, host, pid, started_at, heartbeat_age_s, leases.
    owners: list[dict[str, Any]] = field(default_factory=list)
    # Per batch key under a limit: in_flight (batches leased now), held_back (claims a limit
    # held it back, counted in the store), tokens (its bucket now; None without a rate).
    key_limits: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Versions a coalesce folded into a pending event (latest wins), kept in the database.
    superseded: int = 0

    def count(self, status: Status | str, priority: Priority | None = None) -> int:
        """Events with this status (at this priority, or at all priorities)."""
        by_priority = self.counts.get(str(status), {})
        if priority is None:
            return sum(by_priority.values())
        return by_priority.get(priority.name, 0)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the shape of `eventqueue stats --json`)."""
        return {
            "counts": self.counts,
            "oldest_pending_age_s": self.oldest_pending_age_s,
            "duplicates_suppressed": self.duplicates_suppressed,
            "superseded": self.superseded,
            "ready_batches": self.ready_batches,
            "spill": self.spill,
            "metrics": self.metrics,
            "owners": self.owners,
            "key_limits": self.key_limits,
        }
