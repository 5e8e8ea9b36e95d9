"""Coalescing (latest wins) and debounce, as pure rules: which key an event coalesces by, and
what a put does to the pending events of the keys it touches. Both backends run the plan this
module makes (store/*/ only executes it), so the rules live in one place.

A put whose rows carry a coalesce key is routed before anything is inserted (`route`), in one
transaction:
1. dedup first: a row whose content is a live original's, or a version that a coalesce
   replaced inside its window (`superseded_keys`), is a duplicate as ever;
2. per (batch key, coalesce key): a row folds into the newest pending event that was never
   delivered (`attempts = 0`: a claimed event, or one in retry back-off, is never changed),
   which takes its payload with one UPDATE; the versions replaced keep suppressing their
   repeats (`superseded_keys`);
3. the rest is inserted like any put (a folded row never is).

With ordering (issue 22) a row folds only into an event of its own ordering group that is the
group's last unfinished event (pending, or held behind the group's head): it keeps its place,
and nothing of the group is reordered. Otherwise the row is stored as a new event, at the end
of its group.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from eventqueue.core.config import Config
from eventqueue.core.errors import ConfigError, InvalidEventError
from eventqueue.core.models import Priority
from eventqueue.core.records import NewEvent

# (event) -> its coalesce key, or None for "never coalesced".
CoalesceBy = Callable[[Mapping[str, Any]], "str | None"]
MAX_KEY_CHARS = 1024


def coalesce_function(value: Any) -> CoalesceBy | None:
    """`coalesce_by` as a function: None/"none" (off), "aggregate_id", or a callable."""
    if value is None or value == "none":
        return None
    if value == "aggregate_id":
        return by_aggregate_id
    if callable(value):
        return value  # type: ignore[no-any-return]
    raise ConfigError(
        f"coalesce_by={value!r} is not accepted; accepted: None | 'aggregate_id' | a callable "
        "(event) -> str | None"
    )


def by_aggregate_id(event: Mapping[str, Any]) -> str | None:
    """The aggregate as JSON text: 7 and "7" are different aggregates, as in the content hash."""
    aggregate = event.get("aggregate_id")
    return None if aggregate is None else json.dumps(aggregate, ensure_ascii=False)


def key_for(
    row: NewEvent, event: Mapping[str, Any], fn: CoalesceBy | None, explicit: Any = None
) -> NewEvent:
    """`row` with its coalesce key: `explicit` (put(coalesce_key=...)) wins over `fn`.

    CRITICAL events are never coalesced: they keep no key. A key that is not a string (or
    None) raises InvalidEventError naming where it came from.
    """
    if row.priority == Priority.CRITICAL:
        return row
    if explicit is not None:
        key, where = explicit, "coalesce_key"
    elif fn is not None:
        key, where = fn(event), "coalesce_by"
    else:
        return row
    if key is None:
        return row
    if not isinstance(key, str):
        raise InvalidEventError(f"{where} must be a string or None, not {type(key).__name__}")
    if not key or len(key) > MAX_KEY_CHARS:
        raise InvalidEventError(f"{where} must be 1 .. {MAX_KEY_CHARS} characters")
    return row.with_coalesce_key(key)


@dataclass(frozen=True, slots=True)
class Debounce:
    """When a coalesced event becomes claimable: `wait_s` after its latest version, and never
    later than `max_s` after its first (None: no maximum)."""

    wait_s: float
    max_s: float | None = None

    def ready_at(self, first_at: float, latest_at: float) -> float:
        ready = latest_at + self.wait_s
        return ready if self.max_s is None else min(ready, first_at + self.max_s)

    @property
    def horizon_s(self) -> float:
        """The furthest ahead a debounce puts an event (for the clock-step test)."""
        return self.wait_s if self.max_s is None else max(self.wait_s, self.max_s)


def debounce_of(config: Config) -> Debounce | None:
    """The debounce puts use (None: off)."""
    if config.debounce_ms <= 0:
        return None
    top = config.debounce_max_ms / 1000.0 if config.debounce_max_ms > 0 else None
    return Debounce(config.debounce_ms / 1000.0, top)


def sliding(config: Config) -> bool:
    """Whether each suppressed duplicate restarts its dedup window."""
    return config.dedup_window == "sliding"


@dataclass(frozen=True, slots=True)
class Candidate:
    """A pending, never delivered event of a key the put touches (read in its transaction)."""

    id: int
    batch_key: str
    coalesce_key: str
    priority: int
    received_at: float
    dedup_key: str | None
    dedup_at: float
    # Its ordering group (None: unordered), and whether it is the group's last unfinished
    # event (no pending, held or claimed event of the group after it, in group order).
    ordering_key: str | None = None
    last: bool = True


@dataclass(frozen=True, slots=True)
class Merge:
    """What one surviving event takes from the put."""

    target: int
    row: NewEvent  # the latest version: payload, hash, trace
    priority: int  # never lower than any version's: urgency does not drop
    dedup_key: str | None  # the latest version's key (None: dedup off)
    dedup_at: float
    superseded: int  # versions replaced by this put
    available_at: float | None  # the debounce's ready time (None: unchanged)
    raised: bool = False  # its priority goes up (a newer version is more urgent)


def pairs(rows: Sequence[NewEvent]) -> list[tuple[str, str]]:
    """The distinct (batch key, coalesce key) pairs of `rows` that coalesce, sorted (the order
    in which PostgreSQL takes their locks, so two puts never wait for each other in a cycle)."""
    return sorted({(r.batch_key, r.coalesce_key) for r in rows if r.coalesce_key is not None})


def within(ttl_s: float, at: float, stored_at: float) -> bool:
    """A row received `at` is a repeat of content whose window runs from `stored_at`."""
    return abs(at - stored_at) <= ttl_s


# --- routing before the insert (SQLite) ----------------------------------------------------------
# A row that will fold into an event already stored is never inserted at all: one UPDATE of
# its target instead of an INSERT and a DELETE (each touching every index), which keeps a
# coalescing put near the cost of a plain one.

Ref = tuple[str, int]  # ("id", event id) or ("row", index of the put's row stored as new)


@dataclass(slots=True)
class Routing:
    """Where each row of a coalescing put goes."""

    inserts: list[int] = field(default_factory=list)  # rows stored as new events
    duplicates: dict[int, Ref] = field(default_factory=dict)  # row -> what it repeats
    folds: dict[Ref, list[int]] = field(default_factory=dict)  # target -> rows folded into it


def route(
    rows: Sequence[NewEvent],
    *,
    live: Mapping[str, int],
    retired: Mapping[str, int],
    targets: Mapping[tuple[str, str], Candidate],
) -> Routing:
    """Route `rows`: `live` maps content hashes held by an event inside its window to its id,
    `retired` those of replaced versions inside theirs to the event that replaced them, and
    `targets` each (batch key, coalesce key) to its newest pending, never delivered event.
    Identical content is a duplicate first; then a row with a key folds into its target, or
    becomes the target of the put's later rows of that key.

    Ordering (issue 22): a row folds only into an event of its own ordering group that is the
    last unfinished event of that group, never one with an event of its group behind it,
    stored (`Candidate.last`) or inserted earlier by this put; else it is stored as a new event
    (and becomes its key's target for the put's later rows)."""
    result = Routing()
    first: dict[str, Ref] = {}  # hash -> the ref of its first row in this put
    made: dict[tuple[str, str], Ref] = {}
    # Per ordering group, its last event as this put goes: a stored candidate that is its
    # group's last, then each row the put stores in the group.
    tails: dict[str, Ref] = {
        c.ordering_key: ("id", c.id)
        for c in targets.values()
        if c.ordering_key is not None and c.last
    }

    def keeps_order(row: NewEvent, ref: Ref, group: str | None) -> bool:
        """Folding `row` into `ref` (of ordering group `group`) reorders nothing."""
        return row.ordering_key == group and (group is None or tails.get(group) == ref)

    for index, row in enumerate(rows):
        if row.content_hash in live:
            result.duplicates[index] = ("id", live[row.content_hash])
        elif row.content_hash in retired and row.coalesce_key is not None:
            result.duplicates[index] = ("id", retired[row.content_hash])
        elif row.content_hash in first:
            result.duplicates[index] = first[row.content_hash]
        elif row.coalesce_key is None:
            result.inserts.append(index)
            first[row.content_hash] = ("row", index)
            if row.ordering_key is not None:
                tails[row.ordering_key] = ("row", index)
        else:
            pair = (row.batch_key, row.coalesce_key)
            found = targets.get(pair)
            target: Ref | None = made.get(pair)
            if target is not None:  # the put's own newer event of the key
                if not keeps_order(row, target, rows[target[1]].ordering_key):
                    target = None
            elif found is not None and keeps_order(row, ("id", found.id), found.ordering_key):
                target = ("id", found.id)
            if target is None:
                result.inserts.append(index)
                made[pair] = first[row.content_hash] = ("row", index)
                if row.ordering_key is not None:
                    tails[row.ordering_key] = ("row", index)
            else:
                result.folds.setdefault(target, []).append(index)
                first[row.content_hash] = target
    return result


@dataclass(frozen=True, slots=True)
class Folding:
    """What the put writes for its folds: one Merge per target, and the replaced versions'
    dedup keys to keep (key, target id, window start)."""

    merges: list[Merge]
    retired: list[tuple[str, int, float]]

    @property
    def superseded(self) -> int:
        return sum(m.superseded for m in self.merges)


def folding(
    rows: Sequence[NewEvent],
    routing: Routing,
    ids: Mapping[int, int],
    targets: Mapping[tuple[str, str], Candidate],
    *,
    dedup: bool,
    debounce: Debounce | None,
) -> Folding:
    """The merges of `routing.folds`, given `ids` (row index -> id of the rows inserted)."""
    by_id = {c.id: c for c in targets.values()}
    merges: list[Merge] = []
    retired: list[tuple[str, int, float]] = []
    for ref, members in routing.folds.items():
        if ref[0] == "id":
            c = by_id[ref[1]]
            target, first_at, priority = c.id, c.received_at, c.priority
            previous = (c.dedup_key, c.dedup_at)
        else:
            t = rows[ref[1]]
            target, first_at, priority = ids[ref[1]], t.received_at, t.priority
            previous = (t.content_hash if dedup else None, t.received_at)
        latest = rows[members[-1]]
        top = max([priority, *(rows[i].priority for i in members)])
        merges.append(
            Merge(
                target=target,
                row=latest,
                priority=top,
                dedup_key=latest.content_hash if dedup else None,
                dedup_at=latest.received_at,
                superseded=len(members),
                available_at=None
                if debounce is None
                else debounce.ready_at(first_at, latest.received_at),
                raised=top > priority,
            )
        )
        if dedup:
            replaced = [
                previous,
                *((rows[i].content_hash, rows[i].received_at) for i in members[:-1]),
            ]
            retired += [(key, target, at) for key, at in replaced if key is not None]
    return Folding(merges, retired)


def first_ready(
    rows: Sequence[NewEvent], routing: Routing, ids: Mapping[int, int], debounce: Debounce
) -> list[tuple[int, float]]:
    """(id, ready time) of the new events with a key that nothing was folded into: a lone
    first version waits for quiet too."""
    return [
        (ids[i], debounce.ready_at(rows[i].received_at, rows[i].received_at))
        for i in routing.inserts
        if rows[i].coalesce_key is not None and ("row", i) not in routing.folds
    ]
