"""The demo's synthetic stream: episodes of realistic traffic, its pacing, the counted source."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from eventqueue.core.models import Priority
from eventqueue.core.priority import classify
from eventqueue.runtime.sources import SSESource

FLAKY = "invoice_generated"  # its handler fails a third of first attempts: retried, then done
BROKEN = "sync_error"  # its handler always fails: dead-lettered after max_attempts
COALESCED = "order_updated"  # state updates: coalesced per order, latest wins


def coalesce_updates(event: Any) -> str | None:
    """The demo's coalesce key: an `order_updated` event's order; nothing else coalesces."""
    if event.get("event_name") != COALESCED:
        return None
    return str(event.get("aggregate_id"))


@dataclass(slots=True)
class Stream:
    """The events the server sends; `unique` maps each distinct event's seq to its name."""

    events: list[dict[str, Any]] = field(default_factory=list)
    unique: dict[int, str] = field(default_factory=dict)
    aggregates: dict[int, str] = field(default_factory=dict)  # seq -> aggregate_id
    duplicates: int = 0


# event_type, event_name, aggregate_id, attributes
Content = tuple[str, str, str, dict[str, Any]]


def synthetic_stream(count: int, rate_per_s: float, seed: int = 7) -> Stream:
    """`count` events: episodes of realistic traffic, with ~6 % exact re-sends mixed in."""
    rng, stream, start = random.Random(seed), Stream(), time.time()
    while len(stream.events) < count:
        if stream.events and rng.random() < 0.06:
            # A re-send: the same content (what the hash covers), a new event_id and timestamp.
            stream.duplicates += 1
            original = rng.choice(stream.events[-50:])
            contents = [{k: v for k, v in original.items() if k not in ("event_id", "timestamp")}]
        else:
            contents = [_unique(stream, c) for c in _episode(rng)[: count - len(stream.events)]]
        for content in contents:
            n = len(stream.events) + 1
            when = datetime.fromtimestamp(start + n / rate_per_s, UTC)
            stamp = when.isoformat(timespec="milliseconds")
            stream.events.append({"event_id": f"evt-{n:06d}", "timestamp": stamp, **content})
    return stream


def _episode(rng: random.Random) -> list[Content]:
    roll, order = rng.random(), f"order-{rng.randint(1001, 1005)}"
    if roll < 0.40:  # a burst of similar events for one of a few aggregates
        name = rng.choice(("order_created", "order_updated", "inventory_reserved"))
        if name == COALESCED:  # successive states of one order: only the latest matters
            return [
                ("entity_event", name, order, {"amount": rng.randint(5, 500), "version": v})
                for v in range(rng.randint(4, 12))
            ]
        return [("entity_event", name, order, {"amount": rng.randint(5, 500)})] * rng.randint(4, 12)
    if roll < 0.62:
        name = rng.choice(("heartbeat", "metrics"))
        return [("system_event", name, "listener-1", {"lag_ms": rng.randint(0, 40)})]
    if roll < 0.78:
        step = rng.choice(("submitted", "approved", "shipped"))
        return [("workflow_event", "approval_step", f"wf-{rng.randint(1, 20)}", {"step": step})]
    if roll < 0.92:
        return [("entity_event", FLAKY, order, {"total": rng.randint(10, 900)})]
    if roll < 0.97:
        return [("entity_event", "payment_failed", order, {"reason": "card_declined"})]
    return [("system_event", BROKEN, "ledger", {"code": 409})]


def _unique(stream: Stream, content: Content) -> dict[str, Any]:
    """The event's fields with a `seq` attribute that makes its content distinct."""
    event_type, name, aggregate_id, attributes = content
    seq = len(stream.unique) + 1
    stream.unique[seq] = name
    stream.aggregates[seq] = aggregate_id
    body = {"event_type": event_type, "event_name": name, "aggregate_id": aggregate_id}
    return {**body, "attributes": {**attributes, "seq": seq}}


async def paced(events: list[dict[str, Any]], rate_per_s: float) -> AsyncIterator[dict[str, Any]]:
    """The events on a schedule at `rate_per_s`, the middle fifth as a spike at 5x the rate.

    Paced against the schedule, not by a sleep per event, so a busy loop does not slow it down.
    """
    loop = asyncio.get_running_loop()
    start, count = loop.time(), len(events)
    for i, event in enumerate(events):
        delay = start + _schedule_s(i, count, rate_per_s) - loop.time()
        await asyncio.sleep(delay if delay > 0 else 0)
        yield event


def _schedule_s(i: int, count: int, rate_per_s: float) -> float:
    """When event `i` is due, in seconds from the start."""
    spike_start, spike_end = int(count * 0.4), int(count * 0.6)
    before = min(i, spike_start) + max(0, i - spike_end)
    during = max(0, min(i, spike_end) - spike_start)
    return (before + during / 5) / rate_per_s


class CountedSource(SSESource):
    """The SSE source, counted by priority, ending after the server's last id (SSE never ends)."""

    def __init__(self, url: str, last_id: int) -> None:
        super().__init__(url, max_reconnects=20)
        self.last_id = last_id
        self.received: Counter[Priority] = Counter()
        self.out_of_order = 0  # ids that were not the previous id + 1: a gap or a repeat

    def total(self) -> int:
        """Events received so far."""
        return sum(self.received.values())

    async def __anext__(self) -> dict[str, Any]:
        if self.position == str(self.last_id):
            raise StopAsyncIteration
        event = await super().__anext__()
        if self.position != str(self.total() + 1):
            self.out_of_order += 1
        self.received[classify(event)] += 1
        return event
