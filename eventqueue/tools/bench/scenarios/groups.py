"""ordered and limited: ordering groups and key limits under load.

`ordered`: groups of 10 events (interleaved, as aggregates' events arrive) through a Dispatcher
of 4 consumers, against the same events unordered; and claim + ack of ordered events at a small
and a large backlog of them (claims must stay flat). `limited`: one key limited to 500 events/s
beside free keys: the limited key's rate, and the free keys' rate against a run without it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from eventqueue.core.config import Config
from eventqueue.core.limits import KeyLimit
from eventqueue.core.models import Event
from eventqueue.runtime.dispatch.dispatcher import Dispatcher
from eventqueue.runtime.queue import EventQueue
from eventqueue.tools.bench.harness import CONCURRENCY, backlog_overrides, run_dispatcher
from eventqueue.tools.bench.measure import rate
from eventqueue.tools.bench.places import Places
from eventqueue.tools.bench.rows import Row, queue_pragmas, row
from eventqueue.tools.bench.sizes import Sizes

GROUP_SIZE = 10
ORDERED_TARGET = 0.7  # ordered events/s against the same events unordered
LIMITED_KEY = "limited-handler"
LIMITED_RATE = 500.0
# Per mode: groups in the end-to-end run, the backlogs of the claim rows, the limited run's s.
_GROUPS = {"full": 10_000, "quick": 1_000, "tiny": 100}
_BACKLOGS = {"full": (2_000, 1_000_000), "quick": (2_000, 20_000), "tiny": (1_000, 5_000)}
_LIMITED_S = {"full": 20.0, "quick": 6.0, "tiny": 2.0}


def ordered_events(groups: int, *, start: int = 0) -> Iterator[dict[str, Any]]:
    """`groups` x 10 events, the groups' events interleaved (group = aggregate_id)."""
    for i in range(start, start + groups * GROUP_SIZE):
        group = i % groups
        yield {
            "event_type": "entity_event",
            "event_name": f"job_{group % 8}",
            "aggregate_id": f"agg-{group}",
            "attributes": {"i": i},
        }


async def _source(groups: int) -> Any:
    for event in ordered_events(groups):
        yield event


async def ordered_scenario(sz: Sizes, base: Config, places: Places) -> list[Row]:
    """The `ordered` rows: end to end ordered against unordered, and claims at two backlogs."""
    groups = _GROUPS[sz.mode]
    unordered_s, _, _ = await _e2e(await places.config("ordered_off"), groups, sz)
    config = await places.config("ordered_on", ordered_by="aggregate_id")
    ordered_s, in_order, pragmas = await _e2e(config, groups, sz)
    events = groups * GROUP_SIZE
    ratio = unordered_s / ordered_s if ordered_s else 0.0
    rows = [
        row(
            "ordered",
            config,
            {**pragmas, "groups": groups, "group_size": GROUP_SIZE, "consumers": CONCURRENCY},
            events_per_s=rate(events, ordered_s),
            baseline_events_per_s=rate(events, unordered_s),
            groups_in_order=in_order,
            target=f">= {ORDERED_TARGET}x the same events unordered",
            met=ratio >= ORDERED_TARGET and in_order == groups,
        )
    ]
    for backlog in _BACKLOGS[sz.mode]:
        rows.append(await _claims(places, backlog, sz))
    small, large = rows[1], rows[-1]
    flat = large["events_per_s"] / small["events_per_s"] if small["events_per_s"] else 0.0
    large["vs_small_backlog"] = round(flat, 3)
    large["met"] = flat >= 0.9
    large["target"] = ">= 0.9x the small backlog's rate"
    return rows


async def _e2e(config: Config, groups: int, sz: Sizes) -> tuple[float, int, dict[str, Any]]:
    """Seconds to run the events through a Dispatcher; how many groups kept their order."""
    seen: dict[str, int] = {}
    in_order = set(range(groups))

    async def handler(batch: list[Event]) -> None:
        for event in batch:
            group, i = event.payload["aggregate_id"], event.payload["attributes"]["i"]
            if seen.get(group, -1) > i:
                in_order.discard(int(group.split("-")[1]))
            seen[group] = i

    async with EventQueue.open(config=config.replace(dedup_ttl_s=0)) as q:
        dispatcher = Dispatcher(q, concurrency=CONCURRENCY)
        dispatcher.add_handler("*", handler)
        started = time.perf_counter()
        await run_dispatcher(dispatcher, _source(groups), sz.e2e_limit_s)
        return time.perf_counter() - started, len(in_order), await queue_pragmas(q)


async def _claims(places: Places, backlog: int, sz: Sizes) -> Row:
    """Claim + ack of ordered events at a backlog of `backlog` of them."""
    name = f"ordered_claims_{backlog}"
    overrides = backlog_overrides(backlog)
    config = await places.config(name, ordered_by="aggregate_id", **overrides)
    async with EventQueue.open(config=config) as q:
        pragmas = await queue_pragmas(q)
        events = list(ordered_events(backlog // GROUP_SIZE))
        for offset in range(0, len(events), 1_000):
            await q.put_many(events[offset : offset + 1_000])
        taken, claims = 0, 0
        wanted = min(sz.claim_events, backlog // 2)
        started = time.perf_counter()
        while taken < wanted and time.perf_counter() - started < sz.claim_seconds:
            batch = await q.claim("bench")
            if batch is None:
                break
            await q.ack(batch)
            taken, claims = taken + len(batch), claims + 1
        seconds = time.perf_counter() - started
    return row(
        name,
        config,
        {**pragmas, "backlog": backlog, "groups": backlog // GROUP_SIZE, "claimed": "claim, ack"},
        events_per_s=rate(taken, seconds),
        claims_per_s=round(rate(claims, seconds), 1),
        events=taken,
    )


async def limited_scenario(sz: Sizes, base: Config, places: Places) -> list[Row]:
    """The `limited` row: one key at 500 events/s beside free keys, and the free keys alone."""
    seconds = _LIMITED_S[sz.mode]
    limited_n = int(LIMITED_RATE * seconds * 1.5)  # always more than the limit lets through
    free_n = {"full": 40_000, "quick": 10_000, "tiny": 4_000}[sz.mode]
    limits = {LIMITED_KEY: KeyLimit(rate_per_s=LIMITED_RATE, burst=10)}
    # The free keys alone first: the run after it, warmed up the same way, is the one measured.
    free_config = await places.config("limited_off", **backlog_overrides(free_n))
    off = await _limited_run(free_config, 0, free_n, seconds, None)
    config = await places.config("limited", **backlog_overrides(limited_n + free_n))
    on = await _limited_run(config, limited_n, free_n, seconds, limits)
    pragmas = on.pop("pragmas")
    limited_rate = on["limited"]
    error = abs(limited_rate / LIMITED_RATE - 1.0)
    free_ratio = on["free"] / off["free"] if off["free"] else 0.0
    return [
        row(
            "limited",
            config,
            {
                **pragmas,
                "limit": f"{LIMITED_KEY}: rate_per_s={LIMITED_RATE}, burst=10",
                "window_s": seconds,
            },
            events_per_s=limited_rate,
            free_keys_events_per_s=round(on["free"], 1),
            free_keys_alone_events_per_s=round(off["free"], 1),
            free_ratio=round(free_ratio, 3),
            rate_error=round(error, 4),
            target="limited key within 5 % of 500 events/s; free keys >= 0.9x alone",
            met=error <= 0.05 and free_ratio >= 0.9,
        )
    ]


async def _limited_run(
    config: Config,
    limited_n: int,
    free_n: int,
    seconds: float,
    limits: dict[str, KeyLimit] | None,
) -> dict[str, Any]:
    """Rates handled: the limited key's after its first second (the burst and the start
    excluded), the free keys' over the time they took."""
    times: dict[str, list[float]] = {"limited": [], "free": []}
    async with EventQueue.open(config=config, key_limits=limits) as q:
        await q.put_many(
            [{"event_name": "limited", "attributes": {"i": i}} for i in range(limited_n)]
        )
        for offset in range(0, free_n, 1_000):
            chunk = range(offset, min(free_n, offset + 1_000))
            await q.put_many(
                [{"event_name": f"free_{i % 4}", "attributes": {"i": i}} for i in chunk]
            )

        async def handler(batch: list[Event]) -> None:
            at = time.perf_counter()
            kind = "limited" if batch[0].batch_key == LIMITED_KEY else "free"
            times[kind].extend(at for _ in batch)

        dispatcher = Dispatcher(q, concurrency=CONCURRENCY)
        dispatcher.add_handler("*", handler)
        started = time.perf_counter()
        await run_dispatcher(dispatcher, None, seconds)
        pragmas = await queue_pragmas(q)
    limited = [t - started for t in times["limited"] if t - started >= 1.0]
    window = min(seconds, max(limited, default=1.0)) - 1.0
    free = times["free"]
    free_s = (max(free) - started) if free else 0.0
    return {
        "limited": rate(len(limited), window) if window > 0 else 0.0,
        "free": rate(len(free), free_s),
        "pragmas": pragmas,
    }
