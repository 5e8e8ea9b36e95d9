"""The crash battery's workload: deterministic events, their put order, and the log formats.

Shared by the worker subprocess (which imports it as a plain module beside itself) and by the
scoring in harness.py. Stdlib only, no eventqueue import: the scorer must not trust the system
under test to describe what it was given.
"""

from __future__ import annotations

import hashlib
import json
import random
from typing import Any

# Priority -> (event_type, event_name): the default classifier gives each name this priority.
KINDS = {
    4: ("entity_event", "deploy_failed"),
    3: ("workflow_event", "build_started"),
    2: ("entity_event", "order_created"),
    1: ("entity_event", "heartbeat"),
}
# Out of 100 events: 5 CRITICAL, 20 HIGH, 50 NORMAL, 25 LOW.
_SHARES = ((5, 4), (25, 3), (75, 2), (100, 1))


def priority_of(event_id: int) -> int:
    """The event's priority, a fixed function of its id (the same in every process)."""
    bucket = (event_id * 2_654_435_761) % 2**32 % 100
    return next(priority for bound, priority in _SHARES if bucket < bound)


def payload(event_id: int) -> dict[str, Any]:
    """The event with this id: distinct content per id, so dedup merges only true repeats."""
    event_type, name = KINDS[priority_of(event_id)]
    return {
        "event_type": event_type,
        "event_name": name,
        "aggregate_id": f"agg-{event_id}",
        "attributes": {"event_id": event_id, "note": f"event number {event_id}"},
    }


def digest(value: Any) -> str:
    """A short fingerprint of a delivered payload, logged so the scorer can check content."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def put_order(unique: int, duplicate_share: float, seed: int) -> list[int]:
    """Event ids in put order: 0..unique-1, each followed now and then by an exact repeat of an
    event put earlier (about `duplicate_share` of the originals are repeated)."""
    rng = random.Random(seed)
    order: list[int] = []
    for event_id in range(unique):
        order.append(event_id)
        if event_id and rng.random() < duplicate_share:
            order.append(rng.randrange(event_id))
    return order


# Log lines, one per write(2); a worker fsyncs them before it acts on them.
#   producer: "<op index> <event id> <put status>"  written after the put returned
#   consumer: "<event id> <row id> <attempts> <payload digest>"  written before the ack


def producer_line(op: int, event_id: int, status: str) -> bytes:
    return f"{op} {event_id} {status}\n".encode()


def consumer_line(event_id: int, row_id: int, attempts: int, fingerprint: str) -> bytes:
    return f"{event_id} {row_id} {attempts} {fingerprint}\n".encode()
