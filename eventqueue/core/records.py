"""Records that cross the store interface: what a put writes, what a claim returns, what the
inspection commands read. Pure values, no I/O: every backend speaks in these terms."""

from __future__ import annotations

import dataclasses
import json
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, TypedDict

from eventqueue.core.models import Batch, Event, Priority, PutStatus

# One event in a list: id, event_name, priority, attempts, then what the list is about.
EventBrief = dict[str, Any]
# `show`: every column of one event; times as ISO 8601 (UTC), priority by name, payload decoded.
EventInfo = dict[str, Any]
SchemaState = Literal["current", "behind", "missing", "unknown"]


@dataclass(frozen=True, slots=True)
class NewEvent:
    """A validated event ready to insert."""

    payload_json: str
    priority: int
    batch_key: str
    content_hash: str
    received_at: float
    # The put's W3C trace context, "traceparent[ tracestate]" (None when not traced).
    trace_context: str | None = None
    # Pending events of the same batch key and coalesce key are one (latest wins; None: never
    # coalesced). See core/coalesce.py.
    coalesce_key: str | None = None
    # The ordering group: leased only after every earlier event of it is done or dead.
    ordering_key: str | None = None

    def with_coalesce_key(self, key: str | None) -> NewEvent:
        """This event with a coalesce key."""
        return dataclasses.replace(self, coalesce_key=key)

    def to_bytes(self) -> bytes:
        """The event as one spill record (JSON array, UTF-8)."""
        fields: list[Any] = [self.payload_json, self.priority, self.batch_key, self.content_hash]
        fields.append(self.received_at)
        # Trailing fields only as far as needed: untraced, uncoalesced, unordered records keep
        # the original 5 fields, and records written before a field existed still read.
        if self.ordering_key is not None:
            fields += [self.trace_context, self.coalesce_key, self.ordering_key]
        elif self.coalesce_key is not None:
            fields += [self.trace_context, self.coalesce_key]
        elif self.trace_context is not None:
            fields.append(self.trace_context)
        return json.dumps(fields, ensure_ascii=False).encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes) -> NewEvent:
        """The event a spill record holds (the inverse of `to_bytes`; 5 to 8 fields:
        trace context, coalesce key, ordering key)."""
        payload_json, priority, batch_key, content_hash, received_at, *rest = json.loads(data)
        trace_context = rest[0] if rest else None
        coalesce_key = rest[1] if len(rest) > 1 else None
        ordering_key = rest[2] if len(rest) > 2 else None
        return cls(
            payload_json,
            int(priority),
            batch_key,
            content_hash,
            float(received_at),
            trace_context,
            coalesce_key,
            ordering_key,
        )


def first_receipts(rows: Iterable[NewEvent]) -> dict[str, float]:
    """Per content hash, when its first row in `rows` was received: the time a put's dedup
    window is measured from (the later rows of a hash in one put are repeats of the first)."""
    found: dict[str, float] = {}
    for row in rows:
        found.setdefault(row.content_hash, row.received_at)
    return found


@dataclass(frozen=True, slots=True)
class Lease:
    """A lease to take in the transaction that stores CRITICAL events (the hand-off)."""

    consumer: str
    token: str
    batch_id: str
    expires_at: float
    # Batch keys under a limit that binds CRITICAL events: never handed over (their claims
    # count against the limit; a hand-off would pass it by).
    limited: frozenset[str] = frozenset()
    limit_all: bool = False  # the "*" limit binds CRITICAL events of every other key too
    free: frozenset[str] = frozenset()  # keys with their own limit that leaves CRITICAL free

    def binds(self, batch_key: str) -> bool:
        """Whether a limit binds CRITICAL events of `batch_key` (no hand-off then)."""
        if batch_key in self.limited:
            return True
        return self.limit_all and batch_key not in self.free


@dataclass(frozen=True, slots=True)
class PutCommit:
    """What one put transaction did: (status, id) per row, the events waiting after it (pending,
    back-off included; None when not counted), and the batches of CRITICAL events it leased (with a `Lease`), best
    first."""

    outcome: list[tuple[PutStatus, int]]
    waiting: int | None
    claimed: list[Batch] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Wakeup:
    """When pending work not ready now may become ready (any of these may be None)."""

    oldest_pending_at: float | None
    next_retry_at: float | None
    next_lease_expiry_at: float | None
    oldest_high_pending_at: float | None = None  # HIGH or CRITICAL: a shorter window


@dataclass(frozen=True, slots=True)
class LimitHold:
    """Whether a key limit holds back pending work now, and when a bucket refills next."""

    held: bool = False
    refill_at: float | None = None  # the first held key's bucket holds a token again


class KeyUse(TypedDict):
    """One batch key under a limit: batches leased now, claims it held back, bucket level."""

    in_flight: int
    held_back: int
    tokens: float | None


@dataclass(frozen=True, slots=True)
class StoreStats:
    """One consistent read of the table: counts, counters, oldest pending time, ready keys."""

    counts: dict[str, dict[str, int]]  # status -> priority name -> events
    counters: dict[str, int]
    oldest_pending_at: float | None
    ready_batches: int
    key_limits: dict[str, KeyUse] = field(default_factory=dict)  # per limited batch key


class SchemaStatus(TypedDict):
    """The database's schema revision against this eventqueue's head."""

    db: str
    current: str | None
    head: str
    state: SchemaState


class PeekBatch(TypedDict):
    """The batch the next claim of this key would lease."""

    key: str
    priority: str
    top_priority: str
    oldest_age_s: float
    events: list[EventBrief]


class Refusal(TypedDict):
    id: int
    status: str  # "missing" when there is no such event


class RequeueResult(TypedDict):
    requeued: int
    refused: list[Refusal]


def assemble_batches(
    events: Iterable[Event],
    *,
    batch_id: str,
    token: str,
    consumer: str,
    expires_at: float,
    order: Sequence[str] | None = None,
) -> list[Batch]:
    """Group claimed events into one Batch per key, each fenced by `token:key`.

    `order`: the keys in the claim's order (effective priority, then oldest), as the backend
    chose them; needed when a claim leases several batches.
    """
    by_key: dict[str, list[Event]] = {}
    for event in events:
        by_key.setdefault(event.batch_key, []).append(event)
    claimed = [
        Batch(
            id=f"{batch_id}:{key}",
            key=key,
            token=f"{token}:{key}",
            consumer=consumer,
            priority=max(e.priority for e in found),
            events=tuple(sorted(found, key=lambda e: (-e.priority, e.received_at, e.id))),
            lease_expires_at=expires_at,
        )
        for key, found in by_key.items()
    ]
    if order is None:  # one key, or all CRITICAL (the hand-off): oldest first
        return sorted(claimed, key=lambda b: (-b.priority, b.events[0].received_at))
    rank = {key: n for n, key in enumerate(order)}
    return sorted(claimed, key=lambda b: rank.get(b.key, len(rank)))


def priority_name(value: Any) -> str:
    """A stored priority as its name (the number itself if it is not one of ours)."""
    try:
        return Priority(int(value)).name
    except (TypeError, ValueError):
        return str(value)


def iso(timestamp: float | None) -> str | None:
    """A stored time as ISO 8601 in UTC (None stays None)."""
    if timestamp is None:
        return None
    try:
        return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds")
    except (OverflowError, OSError, ValueError):
        return str(timestamp)


def decode_text(text: str) -> Any:
    """A stored payload decoded for display (shown as stored when it is not JSON)."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def event_name(text: str) -> str:
    """The `event_name` of a stored payload ("" when it has none)."""
    payload = decode_text(text)
    name = payload.get("event_name") if isinstance(payload, dict) else None
    return name if isinstance(name, str) else ""


def schema_problem(status: SchemaStatus) -> str:
    """What is wrong with a schema that is not at head, and what to run."""
    path, current, head = status["db"], status["current"], status["head"]
    fix = f"`eventqueue migrate --db {shlex.quote(path)}`"
    if status["state"] == "unknown":
        return (
            f"{path} has schema revision {current}, unknown to this eventqueue (head {head}): "
            "it was migrated by a newer version; upgrade eventqueue"
        )
    if status["state"] == "missing":
        return f"no database at {path}: run {fix} to create one"
    if current is None:
        return f"{path} holds no eventqueue schema: run {fix}"
    return f"{path} has schema revision {current}, behind head {head}: run {fix}"


def brief(event_id: int, payload: str, priority: Any, attempts: int) -> EventBrief:
    """One event in a list (`dead`): id, event name, priority name, attempts."""
    return {
        "id": event_id,
        "event_name": event_name(payload),
        "priority": priority_name(priority),
        "attempts": attempts,
    }


def peek_batches(
    keys: Iterable[tuple[str, Any, float, Any]], found: Iterable[Event], now: float
) -> list[PeekBatch]:
    """`peek`'s answer: per ready key (key, effective priority, oldest, top priority), in claim
    order, the events the claim would lease."""
    by_key: dict[str, list[Event]] = {}
    for event in found:
        by_key.setdefault(event.batch_key, []).append(event)
    batches = []
    for key, effective, oldest, top in keys:
        events = sorted(by_key.get(key, []), key=lambda e: (-e.priority, e.received_at, e.id))
        briefs: list[EventBrief] = [
            {
                "id": e.id,
                "event_name": e.name,
                "priority": e.priority.name,
                "attempts": e.attempts,
                "received_at": iso(e.received_at),
            }
            for e in events
        ]
        batches.append(
            PeekBatch(
                key=key,
                priority=priority_name(effective),
                top_priority=priority_name(top),
                oldest_age_s=round(max(0.0, now - oldest), 3),
                events=briefs,
            )
        )
    return batches


def refusals(ids: Sequence[int], statuses: Mapping[int, str]) -> list[Refusal]:
    """The ids a requeue must refuse (not dead, or missing), given {id: status}."""
    return [
        Refusal(id=i, status=statuses.get(i, "missing"))
        for i in sorted(set(ids))
        if statuses.get(i) != "dead"
    ]


def handoff_ids(
    rows: Sequence[NewEvent], outcome: Sequence[tuple[PutStatus, int]], lease: Lease | None = None
) -> list[int]:
    """The ids of the CRITICAL events a put accepted: what a put with a Lease hands over
    (not those of a key whose limit binds CRITICAL events: they wait for a claim)."""
    return [
        row_id
        for row, (status, row_id) in zip(rows, outcome, strict=True)
        if status is PutStatus.ACCEPTED
        and row.priority == Priority.CRITICAL
        and (lease is None or not lease.binds(row.batch_key))
    ]


def accepted(outcome: Sequence[tuple[PutStatus, int | None]]) -> int:
    """How many rows of a put's outcome were stored as new events."""
    return sum(1 for status, _ in outcome if status is PutStatus.ACCEPTED)


# A point where a group commit may end early: after this many of its rows (the end of a whole
# put), with the stream positions that are safe to store once they are (source -> position).
SplitPoint = tuple[int, Mapping[str, str | None]]
