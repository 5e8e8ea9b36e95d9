"""The queue's rules in one place: what makes a batch ready and how it is leased (ClaimRules),
when a failed event is retried or dead, and how long it waits. Pure: no I/O, no clock."""

from __future__ import annotations

import math
import random
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from eventqueue.core.config import Config
from eventqueue.core.errors import ConfigError
from eventqueue.core.limits import KeyLimits
from eventqueue.core.models import Batch


@dataclass(frozen=True, slots=True)
class ClaimRules:
    """What makes a batch ready and how it is leased (from Config, in claim terms)."""

    max_batch: int
    window_s: float
    aging_s: float
    batching: bool
    lease_s: float
    max_attempts: int
    # A key holding a HIGH event is ready once its oldest event waited this (capped at
    # window_s): low-volume HIGH keys never fill a batch, and would otherwise wait out the
    # whole window while busy NORMAL keys fill theirs at once.
    high_window_s: float = float("inf")
    # The longest a lease or a retry back-off can legitimately run; stored times further ahead
    # than that mean the wall clock stepped back, and count as due.
    lease_horizon_s: float = 86_400.0
    retry_horizon_s: float = 604_800.0
    # Concurrency and rate limits per batch key (EVENT_KEY_LIMITS), enforced in the claim.
    limits: KeyLimits = field(default_factory=KeyLimits)

    @property
    def batch_limit(self) -> int:
        """Events per batch: MAX_BATCH_SIZE, or 1 with batching off."""
        return self.max_batch if self.batching else 1

    @property
    def high_window_effective_s(self) -> float:
        """The window of keys holding a HIGH event: the shorter of the two windows."""
        return min(self.high_window_s, self.window_s)


def rules_from_config(config: Config) -> ClaimRules:
    """The claim rules of a running queue."""
    return ClaimRules(
        max_batch=config.max_batch_size,
        window_s=config.batch_window_s,
        high_window_s=config.high_batch_window_s,
        aging_s=config.aging_s,
        batching=config.enable_batching,
        lease_s=config.lease_s,
        max_attempts=config.max_attempts,
        lease_horizon_s=config.lease_s + 1.0,
        # A debounce holds an event back like a retry does (available_at ahead).
        retry_horizon_s=max(
            config.backoff_max_s, config.debounce_ms / 1000.0, config.debounce_max_ms / 1000.0
        )
        + 1.0,
        limits=KeyLimits.of(config.key_limits),
    )


def view_settings(config: Config) -> dict[str, str]:
    """The settings a queue records in the database, for the views and the CLI's `peek`."""
    return {
        "max_batch_size": str(config.max_batch_size),
        "batch_window_ms": str(config.batch_window_ms),
        "high_batch_window_ms": str(config.high_batch_window_ms),
        "enable_batching": "true" if config.enable_batching else "false",
        "aging_s": str(config.aging_s),
        "queue_size": str(config.queue_size),
        # What `eventqueue purge` must keep for dedup, whatever the CLI's own environment says.
        "dedup_ttl_s": str(dedup_ttl_s(config)),
        # The CLI's stats show each key against the limits the queue runs with.
        "key_limits": config.key_limits,
    }


def rules_from_settings(stored: Mapping[str, str], config: Config) -> ClaimRules:
    """The batching rules the last opener recorded (`view_settings`), else this config's.

    The CLI has no queue of its own: it reads readiness the way the running queue decides it.
    """

    def number(name: str, default: float) -> float:
        try:
            return float(stored[name])
        except (KeyError, ValueError):
            return default

    return ClaimRules(
        max_batch=max(1, int(number("max_batch_size", config.max_batch_size))),
        window_s=number("batch_window_ms", config.batch_window_ms) / 1000.0,
        high_window_s=number("high_batch_window_ms", config.high_batch_window_ms) / 1000.0,
        aging_s=number("aging_s", config.aging_s) or config.aging_s,
        batching=stored.get("enable_batching", str(config.enable_batching).lower()) != "false",
        lease_s=config.lease_s,
        max_attempts=config.max_attempts,
        limits=_stored_limits(stored.get("key_limits"), config),
    )


def _stored_limits(text: str | None, config: Config) -> KeyLimits:
    # The queue's own limits; an entry this version cannot read falls back to the config's.
    try:
        return KeyLimits.of(config.key_limits if text is None else text)
    except ConfigError:
        return KeyLimits.of(config.key_limits)


def dedup_ttl_s(config: Config) -> float | None:
    """The dedup window puts use: DEDUP_TTL_SECONDS, or None with dedup off."""
    return config.dedup_ttl_s if config.enable_dedup else None


def dedup_ttl_from_settings(stored: Mapping[str, str], config: Config) -> float | None:
    """The dedup window the last opener recorded (`view_settings`), else this config's.

    The CLI's purge keeps what that queue's dedup still needs, not what its own env says.
    """
    recorded = stored.get("dedup_ttl_s")
    if recorded is None:
        return dedup_ttl_s(config)
    if recorded == "None":
        return None
    try:
        return float(recorded)
    except ValueError:
        return dedup_ttl_s(config)


def dedup_since(now: float, ttl_s: float | None) -> float:
    """The earliest receipt time whose dedup window is still open at `now` (+inf: none is)."""
    return math.inf if ttl_s is None else now - ttl_s


def backoff_s(config: Config, attempts: int, rng: random.Random | None = None) -> float:
    """Exponential back-off with ±25 % jitter, capped at EVENT_BACKOFF_MAX_SECONDS."""
    base = config.backoff_base_s * 2.0 ** max(0, attempts - 1)
    jitter = (rng or random).uniform(0.75, 1.25)
    return min(config.backoff_max_s, base * jitter)


def is_dead(attempts: int, max_attempts: int) -> bool:
    """A failed event with this many attempts goes to the dead letters instead of a retry."""
    return attempts >= max_attempts


@dataclass(frozen=True, slots=True)
class RetryPlan:
    """What a nack does: retry times per event id, and the ids that are dead."""

    retry_at: dict[int, float]
    dead: list[int]


def retry_plan(
    config: Config,
    batch: Batch,
    ids: Collection[int],
    *,
    now: float,
    retry_in: float | None,
    dead_now: bool = False,
) -> RetryPlan:
    """Retry or dead-letter each of `ids` of `batch` after a failure at `now` (`dead_now`: a
    permanent failure, every one dead-lettered whatever its attempts).

    Ids that are not the batch's are kept, due now: they are not held under its claim, so the
    store's fence refuses them (LeaseLostError) instead of quietly ignoring them.
    """
    retry_at: dict[int, float] = {}
    dead: list[int] = []
    for event in batch.events:
        if event.id not in ids:
            continue
        if dead_now or is_dead(event.attempts, config.max_attempts):
            dead.append(event.id)
        else:
            delay = retry_in if retry_in is not None else backoff_s(config, event.attempts)
            retry_at[event.id] = now + delay
    retry_at.update((i, now) for i in set(ids) - set(batch.ids))
    return RetryPlan(retry_at, dead)
