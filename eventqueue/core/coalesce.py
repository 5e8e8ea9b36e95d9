"""Coalescing (latest wins) and debounce, as pure rules: which key an event coalesces by, and
what a put does to the pending events of the keys it touches. Both backends run the plan this
module makes (store/*/ only executes it), so the rules live in one place.

A put whose rows carry a coalesce key is stored in three steps, in one transaction:
1. dedup first: a row whose content is a live original's, or a version that a coalesce
   replaced inside its window (`superseded_keys`), is a duplicate as ever;
2. the rest is inserted like any put;
3. per (batch key, coalesce key): the newest pending event that was never delivered
   (`attempts = 0`: a claimed event, or one in retry back-off, is never changed) takes the
   payload of the last new row; the other new rows are deleted (they live only inside this
   transaction), and the versions replaced keep suppressing their repeats (`superseded_keys`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
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


@dataclass(frozen=True, slots=True)
class Plan:
    """A put's coalescing: rows to delete, merges to apply, replaced versions' dedup keys."""

    absorbed: list[int] = field(default_factory=list)
    merges: list[Merge] = field(default_factory=list)
    retired: list[tuple[str, int, float]] = field(default_factory=list)  # (key, target, at)
    redirect: dict[int, int] = field(default_factory=dict)  # absorbed id -> target id

    @property
    def superseded(self) -> int:
        return sum(m.superseded for m in self.merges)


def plan(
    candidates: Iterable[Candidate],
    fresh: Mapping[int, NewEvent],
    *,
    dedup: bool,
    debounce: Debounce | None,
) -> Plan:
    """The merges of one put: `fresh` are the ids this put inserted (with their rows);
    `candidates` every pending, never delivered event of the keys they carry, these included.

    Per key, the target is the newest event stored before this put (with ordering on, the last
    pending event of its group: issue 22's rule lands here), else the put's first row; the
    put's later rows are folded into it in id order (ids ascend in put order), the last wins.
    """
    groups: dict[tuple[str, str], list[Candidate]] = {}
    for c in candidates:
        groups.setdefault((c.batch_key, c.coalesce_key), []).append(c)
    result = Plan()
    for members in groups.values():
        members.sort(key=lambda c: c.id)
        new = [c for c in members if c.id in fresh]
        if not new:
            continue
        old = [c for c in members if c.id not in fresh]
        target = old[-1] if old else new[0]
        folded = [c for c in new if c is not target]
        if not folded and debounce is None:
            continue  # a lone new row: nothing replaced, nothing to wait for
        latest = fresh[folded[-1].id] if folded else fresh[target.id]
        first = target.received_at
        ready = None if debounce is None else debounce.ready_at(first, latest.received_at)
        result.merges.append(
            Merge(
                target=target.id,
                row=latest,
                priority=max(c.priority for c in [target, *folded]),
                dedup_key=latest.content_hash if dedup else None,
                dedup_at=latest.received_at,
                superseded=len(folded),
                available_at=ready,
            )
        )
        result.absorbed.extend(c.id for c in folded)
        result.redirect.update((c.id, target.id) for c in folded)
        if dedup:
            replaced = [target, *folded[:-1]] if folded else []
            result.retired.extend(
                (c.dedup_key, target.id, c.dedup_at) for c in replaced if c.dedup_key is not None
            )
    return result


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

    Ordering (issue 22): with ordering keys on, only the last pending event of an ordering
    group may be a target, never one with an event of its group behind it. `targets` is
    "the newest pending event of the key", which is that rule when a key's events share a
    group; where a group holds several keys, the caller must pass only events that are the
    last of their group (the hook: filter `targets` here)."""
    result = Routing()
    first: dict[str, Ref] = {}  # hash -> the ref of its first row in this put
    made: dict[tuple[str, str], Ref] = {}
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
        else:
            pair = (row.batch_key, row.coalesce_key)
            found = targets.get(pair)
            target = ("id", found.id) if found is not None else made.get(pair)
            if target is None:
                result.inserts.append(index)
                made[pair] = first[row.content_hash] = ("row", index)
            else:
                result.folds.setdefault(target, []).append(index)
                first[row.content_hash] = target
    return result
