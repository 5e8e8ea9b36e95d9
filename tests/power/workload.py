"""The battery's events: deterministic payloads, their put order, a fingerprint of each.

Stdlib only and no eventqueue import: the scorer must not trust the system under test to
describe what it was given. (The same shapes as the kill -9 battery's workload.)
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
_SHARES = ((5, 4), (25, 3), (75, 2), (100, 1))  # of 100: 5 CRITICAL, 20 HIGH, 50 NORMAL, 25 LOW


def priority_of(event_id: int) -> int:
    """The event's priority, a fixed function of its id."""
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
    """A short fingerprint of a delivered payload."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def put_order(unique: int, duplicate_share: float, seed: int) -> list[int]:
    """Event ids in put order: 0..unique-1, now and then followed by a repeat of an earlier one."""
    rng = random.Random(seed)
    order: list[int] = []
    for event_id in range(unique):
        order.append(event_id)
        if event_id and rng.random() < duplicate_share:
            order.append(rng.randrange(event_id))
    return order
