"""Limits per batch key (`KeyLimit`): a concurrency cap and a token bucket, with the compact
text form of EVENT_KEY_LIMITS. Pure: the stores keep the state (leased batches, bucket level)
and call `refill` / `blocked` with it inside their claim transaction."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from eventqueue.core.errors import ConfigError
from eventqueue.core.records import KeyUse

DEFAULT_KEY = "*"  # the limit of every batch key without its own entry

# EVENT_KEY_LIMITS field names (short and long) -> KeyLimit field.
_FIELDS = {
    "concurrency": "concurrency",
    "rate": "rate_per_s",
    "rate_per_s": "rate_per_s",
    "burst": "burst",
    "exempt_critical": "exempt_critical",
}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True, slots=True)
class KeyLimit:
    """At most `concurrency` batches of the key leased at once, and `rate_per_s` events per
    second admitted to claims (a token bucket of `burst` tokens; default one second's worth).

    Both are counted in the store, so they hold across processes and hosts. CRITICAL events
    obey them too unless `exempt_critical`.
    """

    concurrency: int | None = None
    rate_per_s: float | None = None
    burst: float | None = None
    exempt_critical: bool = False

    def __post_init__(self) -> None:
        c, r, b = self.concurrency, self.rate_per_s, self.burst
        if c is not None and (isinstance(c, bool) or not isinstance(c, int) or c < 1):
            raise ConfigError(f"KeyLimit concurrency={c!r}: an integer >= 1, or None")
        if r is not None and (not _number(r) or not 0 < r <= 1e9):
            raise ConfigError(f"KeyLimit rate_per_s={r!r}: a number of events/s in (0, 1e9]")
        if b is not None and (not _number(b) or not 1 <= b <= 1e9):
            raise ConfigError(f"KeyLimit burst={b!r}: a number of events in [1, 1e9]")
        if b is not None and r is None:
            raise ConfigError("KeyLimit burst= needs rate_per_s= (the bucket's refill rate)")
        if not isinstance(self.exempt_critical, bool):
            raise ConfigError(f"KeyLimit exempt_critical={self.exempt_critical!r}: true or false")

    @property
    def capacity(self) -> float:
        """The bucket's size: `burst`, else one second of `rate_per_s` (at least 1 event)."""
        if self.burst is not None:
            return float(self.burst)
        return max(1.0, float(self.rate_per_s or 1.0))

    def refill(self, tokens: float | None, refilled_at: float | None, now: float) -> float:
        """The bucket's level at `now` (full when it was never drawn from)."""
        if self.rate_per_s is None or tokens is None or refilled_at is None:
            return self.capacity
        # max(0, ...): a wall clock stepped back adds nothing (and takes nothing) rather than
        # draining the bucket for the length of the step.
        return min(self.capacity, tokens + max(0.0, now - refilled_at) * self.rate_per_s)

    def tokens_due_at(self, level: float, now: float) -> float | None:
        """When a bucket at `level` now holds one token again (None: it does now, or no rate)."""
        if self.rate_per_s is None or level >= 1.0:
            return None
        return now + (1.0 - level) / self.rate_per_s

    def blocked(self, in_flight: int, level: float) -> bool:
        """Whether a key with `in_flight` leased batches and a bucket at `level` is held back."""
        if self.concurrency is not None and in_flight >= self.concurrency:
            return True
        return self.rate_per_s is not None and level < 1.0


@dataclass(frozen=True, slots=True)
class KeyLimits:
    """The limits of every batch key: its own entry, else the `"*"` entry, else none."""

    entries: tuple[tuple[str, KeyLimit], ...] = ()

    @classmethod
    def of(cls, given: Mapping[str, KeyLimit] | KeyLimits | str | None) -> KeyLimits:
        """From a dict {batch key or "*": KeyLimit}, the EVENT_KEY_LIMITS text, or None."""
        if given is None:
            return cls()
        if isinstance(given, KeyLimits):
            return given
        if isinstance(given, str):
            return parse(given)
        if not isinstance(given, Mapping):
            raise ConfigError(f"key_limits={given!r}: a dict of batch key -> KeyLimit")
        for key, limit in given.items():
            if not isinstance(key, str) or not key:
                raise ConfigError(f"key_limits: key {key!r} is not a non-empty string")
            if not isinstance(limit, KeyLimit):
                raise ConfigError(f"key_limits[{key!r}]={limit!r} is not a KeyLimit")
        return cls(tuple(sorted(given.items())))

    def __bool__(self) -> bool:
        return bool(self.entries)

    def for_key(self, batch_key: str) -> KeyLimit | None:
        """The limit `batch_key` obeys (None: unlimited)."""
        found = dict(self.entries)
        return found.get(batch_key, found.get(DEFAULT_KEY))

    def named(self) -> Iterable[str]:
        """The batch keys with an entry of their own (not "*")."""
        return (key for key, _ in self.entries if key != DEFAULT_KEY)

    def text(self) -> str:
        """The EVENT_KEY_LIMITS form of these limits (`parse(text())` gives them back)."""
        return ";".join(f"{key}={_fields(limit)}" for key, limit in self.entries)


def parse(text: str) -> KeyLimits:
    """EVENT_KEY_LIMITS: `key=field:value,field:value;key=...`, e.g.
    `send_email-handler=concurrency:2,rate:50,burst:10;*=concurrency:8`.

    Fields: concurrency, rate (or rate_per_s), burst, exempt_critical (true/false). A key may
    hold `=` (the last one separates it) but not `;`. Empty text: no limits.
    """
    limits: dict[str, KeyLimit] = {}
    for entry in filter(None, (part.strip() for part in text.split(";"))):
        key, sep, spec = entry.rpartition("=")
        if not sep or not key.strip():
            raise ConfigError(
                f"EVENT_KEY_LIMITS entry {entry!r}: expected key=field:value,... "
                "(e.g. send_email-handler=concurrency:2,rate:50,burst:10)"
            )
        limits[key.strip()] = _limit(key.strip(), spec)
    return KeyLimits.of(limits)


def _limit(key: str, spec: str) -> KeyLimit:
    values: dict[str, object] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, sep, raw = item.partition(":")
        field = _FIELDS.get(name.strip().lower())
        if not sep or field is None:
            known = ", ".join(sorted(_FIELDS))
            raise ConfigError(f"EVENT_KEY_LIMITS {key!r}: {item!r} is not field:value ({known})")
        values[field] = _value(key, field, raw.strip())
    if not values:
        raise ConfigError(f"EVENT_KEY_LIMITS {key!r}: no limit given")
    return KeyLimit(**values)  # type: ignore[arg-type]


def _value(key: str, field: str, raw: str) -> object:
    try:
        if field == "exempt_critical":
            if raw.lower() in _TRUE | _FALSE:
                return raw.lower() in _TRUE
            raise ValueError(raw)
        return int(raw) if field == "concurrency" else float(raw)
    except ValueError:
        raise ConfigError(f"EVENT_KEY_LIMITS {key!r}: {field}={raw!r} is not valid") from None


def _fields(limit: KeyLimit) -> str:
    parts = []
    if limit.concurrency is not None:
        parts.append(f"concurrency:{limit.concurrency}")
    if limit.rate_per_s is not None:
        parts.append(f"rate:{limit.rate_per_s!r}")
    if limit.burst is not None:
        parts.append(f"burst:{limit.burst!r}")
    if limit.exempt_critical:
        parts.append("exempt_critical:true")
    return ",".join(parts)


def _number(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


@dataclass(frozen=True, slots=True)
class Holds:
    """The keys a claim must leave alone now: `blocked` entirely, `critical_only` but for
    their CRITICAL events (their limit exempts them)."""

    blocked: tuple[str, ...] = ()
    critical_only: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.blocked or self.critical_only)

    def all(self) -> tuple[str, ...]:
        return self.blocked + self.critical_only


def holds(limits: KeyLimits, in_flight: Mapping[str, int], empty: Iterable[str]) -> Holds:
    """Which keys are at their limit: `in_flight` batches leased per key, `empty` the keys
    whose bucket holds less than one token now. Keys in neither are free (a key with no
    batch leased and a full or untouched bucket is below any limit)."""
    drained = set(empty)
    blocked: list[str] = []
    critical_only: list[str] = []
    for key in sorted(set(in_flight) | drained):
        limit = limits.for_key(key)
        if limit is None:
            continue
        level = 0.0 if key in drained else 1.0
        if limit.blocked(in_flight.get(key, 0), level):
            (critical_only if limit.exempt_critical else blocked).append(key)
    return Holds(tuple(blocked), tuple(critical_only))


def debit(
    limit: KeyLimit, tokens: float | None, refilled_at: float | None, now: float, events: int
) -> tuple[float, float | None]:
    """The bucket after a claim took `events`: its level at `now`, and when it holds one
    token again (None: it still does). A batch may take the bucket below zero (a batch is
    never split for it): the key then waits for the refill, so over time the rate holds."""
    level = limit.refill(tokens, refilled_at, now) - events
    return level, limit.tokens_due_at(level, now)


def key_uses(
    limits: KeyLimits,
    in_flight: Mapping[str, int],
    stored: Mapping[str, tuple[int, float | None, float | None]],
    now: float,
) -> dict[str, KeyUse]:
    """Per key under a limit (or with state stored): batches leased now, claims held back, and
    the bucket's level now. `stored` is the key_limits table: key -> (held back, tokens, at)."""
    uses: dict[str, KeyUse] = {}
    for key in sorted(set(in_flight) | set(stored) | set(limits.named())):
        limit = limits.for_key(key)
        if limit is None and key not in stored:
            continue
        held_back, tokens, at = stored.get(key, (0, None, None))
        level = None
        if limit is not None and limit.rate_per_s is not None:
            level = round(limit.refill(tokens, at, now), 3)
        uses[key] = KeyUse(in_flight=in_flight.get(key, 0), held_back=held_back, tokens=level)
    return uses
