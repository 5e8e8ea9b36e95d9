"""Settings: frozen, validated, units in names. The environment is read in one function."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from eventqueue.core.errors import ConfigError
from eventqueue.core.limits import parse as parse_limits

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True, slots=True)
class Setting:
    """One setting's contract: keyword name, environment variable, default and range."""

    name: str
    env: str
    default: Any
    doc: str
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()

    def describe_range(self) -> str:
        if self.choices:
            return " | ".join(self.choices)
        if isinstance(self.default, bool):
            return "true | false"
        if self.low is not None and self.high is not None:
            return f"{_num(self.low)} .. {_num(self.high)}"
        if self.low is not None:
            return f">= {_num(self.low)}"
        return "text"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


# The plan's six variables keep their names and defaults; the rest are eventqueue's own.
SETTINGS: tuple[Setting, ...] = (
    Setting(
        "db_path", "EVENT_DB_PATH", "events.db", "SQLite database file, or a postgresql:// URL"
    ),
    Setting(
        "queue_size",
        "EVENT_QUEUE_SIZE",
        1000,
        "bound on waiting events (pending, back-off included; not claimed); beyond it"
        " non-CRITICAL events spill to disk, promoted as soon as there is room",
        1,
        10_000_000,
    ),
    Setting(
        "dedup_ttl_s",
        "DEDUP_TTL_SECONDS",
        300.0,
        "a repeat of the same content within this window is a duplicate",
        0,
        31_536_000,
    ),
    Setting(
        "dedup_window",
        "DEDUP_WINDOW",
        "fixed",
        "fixed: a duplicate is measured from its original's arrival; sliding: each suppressed"
        " duplicate restarts the window from its own arrival",
        choices=("fixed", "sliding"),
    ),
    Setting(
        "coalesce_by",
        "EVENT_COALESCE_BY",
        "none",
        "none, or aggregate_id: a pending (never delivered) event of the same batch key and"
        " aggregate takes the payload of a newer one (latest wins); EventQueue.open also takes"
        " a callable (event) -> str | None",
        choices=("none", "aggregate_id"),
    ),
    Setting(
        "debounce_ms",
        "EVENT_DEBOUNCE_MS",
        0.0,
        "with coalescing, an event with a coalesce key is ready only after this long without a"
        " newer event of its key (0: off)",
        0,
        86_400_000,
    ),
    Setting(
        "debounce_max_ms",
        "EVENT_DEBOUNCE_MAX_MS",
        0.0,
        "with debounce, an event is ready at the latest this long after its first version"
        " (0 or unset: no maximum)",
        0,
        86_400_000,
    ),
    Setting(
        "batch_window_ms",
        "BATCH_WINDOW_MS",
        100.0,
        "a batch key is ready once its oldest pending event waited this long",
        0,
        3_600_000,
    ),
    Setting(
        "high_batch_window_ms",
        "EVENT_HIGH_BATCH_WINDOW_MS",
        25.0,
        "a key holding a HIGH event is ready once its oldest pending event waited this long "
        "(capped at BATCH_WINDOW_MS): a lone HIGH event does not wait out the whole window",
        0,
        3_600_000,
    ),
    Setting(
        "max_batch_size",
        "MAX_BATCH_SIZE",
        10,
        "events per batch; a key with this many pending is ready at once",
        1,
        10_000,
    ),
    Setting(
        "enable_batching",
        "ENABLE_BATCHING",
        True,
        "false: every event is a batch of one, ready at once",
    ),
    Setting(
        "enable_dedup", "ENABLE_DEDUP", True, "false: every event is accepted, duplicates included"
    ),
    Setting(
        "durability",
        "EVENT_DURABILITY",
        "full",
        "full: survives power loss (synchronous=FULL); normal: survives a process crash",
        choices=("full", "normal"),
    ),
    Setting(
        "aging_s",
        "EVENT_AGING_SECONDS",
        60.0,
        "waiting this long raises an event one priority level (never to CRITICAL)",
        0.001,
        31_536_000,
    ),
    Setting(
        "lease_s",
        "EVENT_LEASE_SECONDS",
        30.0,
        "a claimed batch not acked within this is claimable again",
        0.01,
        86_400,
    ),
    Setting(
        "owner_heartbeat_s",
        "EVENT_OWNER_HEARTBEAT_S",
        5.0,
        "how often an open queue refreshes its owner row; another host takes over the leases "
        "of an owner silent for 3 periods (on its own host, a dead process's go back at once)",
        0.1,
        3600,
    ),
    Setting(
        "max_attempts",
        "EVENT_MAX_ATTEMPTS",
        5,
        "deliveries before an event is dead-lettered",
        1,
        1000,
    ),
    Setting(
        "backoff_base_s",
        "EVENT_BACKOFF_SECONDS",
        1.0,
        "first retry delay after nack; doubles per attempt, with jitter",
        0,
        86_400,
    ),
    Setting(
        "backoff_max_s", "EVENT_BACKOFF_MAX_SECONDS", 300.0, "cap on the retry delay", 0, 604_800
    ),
    Setting(
        "retention_s",
        "EVENT_RETENTION_SECONDS",
        86_400.0,
        "done events are kept this long for inspection, then purged (never inside their dedup "
        "window)",
        0,
        31_536_000,
    ),
    Setting(
        "max_event_bytes",
        "EVENT_MAX_BYTES",
        1_048_576,
        "largest accepted event, as canonical JSON",
        64,
        268_435_456,
    ),
    Setting(
        "max_depth", "EVENT_MAX_DEPTH", 64, "deepest accepted nesting of objects and lists", 1, 900
    ),
    Setting(
        "busy_timeout_ms",
        "EVENT_BUSY_TIMEOUT_MS",
        5000,
        "how long SQLite waits for another process's lock",
        0,
        600_000,
    ),
    Setting(
        "commit_max_events",
        "EVENT_COMMIT_MAX_EVENTS",
        1000,
        "most events one group commit writes (a CRITICAL put does not wait for all of them: "
        "the commit ends early for it, at the end of a put about every 64 events)",
        1,
        100_000,
    ),
    Setting(
        "intake_size",
        "EVENT_INTAKE_SIZE",
        10_000,
        "puts waiting for the writer; beyond it non-CRITICAL puts spill to disk",
        1,
        10_000_000,
    ),
    Setting(
        "poll_ms",
        "EVENT_POLL_MS",
        200.0,
        "how often consumers look for work written by other processes",
        1,
        60_000,
    ),
    Setting(
        "spill_dir",
        "EVENT_SPILL_DIR",
        "",
        "the spill log's folder (default: <database>.spill); one per process that puts",
    ),
    Setting(
        "spill_after_ms",
        "EVENT_SPILL_AFTER_MS",
        100,
        "a put that cannot get the write lock within this spills to disk instead of waiting",
        0,
        60_000,
    ),
    Setting(
        "ordered_by",
        "EVENT_ORDERED_BY",
        "",
        "aggregate_id: events of one aggregate are leased one after another, in the order put"
        " (empty: no ordering; a callable (event) -> str | None as keyword)",
        choices=("", "aggregate_id"),
    ),
    Setting(
        "key_limits",
        "EVENT_KEY_LIMITS",
        "",
        "limits per batch key: key=concurrency:N,rate:R,burst:B,exempt_critical:true;..."
        " (key * is the default of every key)",
    ),
)
_BY_NAME = {s.name: s for s in SETTINGS}


@dataclass(frozen=True, slots=True)
class Config:
    """Validated settings. Build with `Config.load(...)`: keyword arguments win over the environment."""

    db_path: str = "events.db"
    queue_size: int = 1000
    dedup_ttl_s: float = 300.0
    dedup_window: str = "fixed"
    coalesce_by: str = "none"
    debounce_ms: float = 0.0
    debounce_max_ms: float = 0.0
    batch_window_ms: float = 100.0
    high_batch_window_ms: float = 25.0
    max_batch_size: int = 10
    enable_batching: bool = True
    enable_dedup: bool = True
    durability: str = "full"
    aging_s: float = 60.0
    lease_s: float = 30.0
    owner_heartbeat_s: float = 5.0
    max_attempts: int = 5
    backoff_base_s: float = 1.0
    backoff_max_s: float = 300.0
    retention_s: float = 86_400.0
    max_event_bytes: int = 1_048_576
    max_depth: int = 64
    busy_timeout_ms: int = 5000
    commit_max_events: int = 1000
    intake_size: int = 10_000
    poll_ms: float = 200.0
    spill_after_ms: int = 100
    spill_dir: str = ""
    ordered_by: str = ""
    key_limits: str = ""

    @property
    def spill_base(self) -> str:
        """The stem of the default spill folders (`<stem>.spill`, `<stem>.spill-2`, ...).

        Beside an SQLite file: the file's path. For a PostgreSQL URL the database is elsewhere,
        and each host spills on its own disk: a folder per database under
        ~/.local/state/eventqueue, named by host, database and a hash of the URL (sans password).
        """
        if not self.db_path.startswith(("postgresql://", "postgres://")):
            return self.db_path
        parts = urlsplit(self.db_path)
        user = f"{parts.username}@" if parts.username else ""
        port = f":{parts.port}" if parts.port else ""
        safe = parts._replace(netloc=f"{user}{parts.hostname or ''}{port}")  # no password
        digest = hashlib.sha1(urlunsplit(safe).encode("utf-8")).hexdigest()[:12]
        name = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{parts.hostname}-{parts.path.strip('/')}")
        state = os.path.join(os.path.expanduser("~"), ".local", "state", "eventqueue")
        return os.path.join(state, f"{name}-{digest}")

    def __post_init__(self) -> None:
        for setting in SETTINGS:
            _check(setting, getattr(self, setting.name), setting.name)
        if 0 < self.debounce_max_ms < self.debounce_ms:
            raise ConfigError(
                f"debounce_max_ms={self.debounce_max_ms:g} is below debounce_ms="
                f"{self.debounce_ms:g}; the maximum wait must be at least the debounce"
                " (EVENT_DEBOUNCE_MAX_MS >= EVENT_DEBOUNCE_MS, or 0 for no maximum)"
            )

    @classmethod
    def load(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Config:
        """Defaults, then the environment (`os.environ` unless given), then keyword overrides."""
        env = os.environ if env is None else env
        _check_known(overrides)
        values: dict[str, Any] = {}
        for setting in SETTINGS:
            if setting.name in overrides and overrides[setting.name] is not None:
                values[setting.name] = _coerce(setting, overrides[setting.name], setting.name)
            elif setting.env in env:
                values[setting.name] = _coerce(setting, env[setting.env], setting.env)
        return cls(**values)

    def replace(self, **changes: Any) -> Config:
        """A copy with some settings changed, coerced and validated as `load` does."""
        _check_known(changes)
        values = {
            name: _coerce(_BY_NAME[name], value, name)
            for name, value in changes.items()
            if value is not None
        }
        return dataclasses.replace(self, **values)

    @property
    def batch_window_s(self) -> float:
        return self.batch_window_ms / 1000.0

    @property
    def high_batch_window_s(self) -> float:
        """The window of keys holding a HIGH event: never longer than the batch window."""
        return min(self.high_batch_window_ms, self.batch_window_ms) / 1000.0


def _check_known(names: Mapping[str, Any]) -> None:
    unknown = sorted(set(names) - set(_BY_NAME))
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(unknown)}; known: {', '.join(_BY_NAME)}")


def _coerce(setting: Setting, raw: Any, label: str) -> Any:
    kind = type(setting.default)
    if kind is bool:
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise ConfigError(f"{label}={raw!r} is not a boolean; accepted: true | false")
    if kind in (int, float):
        if isinstance(raw, bool):
            raise ConfigError(f"{label}={raw!r} must be a number in {setting.describe_range()}")
        if kind is int and isinstance(raw, float) and not raw.is_integer():
            # int(2.7) would silently become 2.
            raise ConfigError(
                f"{label}={raw!r} is not an integer; accepted: {setting.describe_range()}"
            )
        try:
            number = kind(str(raw).strip()) if isinstance(raw, str) else kind(raw)
        except (TypeError, ValueError):
            raise ConfigError(
                f"{label}={raw!r} is not a{'n integer' if kind is int else ' number'}; "
                f"accepted: {setting.describe_range()}"
            ) from None
        _check(setting, number, label)
        return number
    text = str(raw).strip()
    if setting.choices:
        text = text.lower()
    _check(setting, text, label)
    return text


def _check(setting: Setting, value: Any, label: str) -> None:
    if setting.choices and value not in setting.choices:
        raise ConfigError(
            f"{label}={value!r} is not accepted; accepted: {setting.describe_range()}"
        )
    if isinstance(setting.default, bool) and not isinstance(value, bool):
        raise ConfigError(f"{label}={value!r} is not a boolean; accepted: true | false")
    if isinstance(setting.default, int | float) and not isinstance(setting.default, bool):
        if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
            raise ConfigError(f"{label}={value!r} must be a number in {setting.describe_range()}")
        if type(setting.default) is int and not isinstance(value, int):
            raise ConfigError(
                f"{label}={value!r} is not an integer; accepted: {setting.describe_range()}"
            )
        if (setting.low is not None and value < setting.low) or (
            setting.high is not None and value > setting.high
        ):
            raise ConfigError(
                f"{label}={value!r} is out of range; accepted: {setting.describe_range()}"
            )
    if setting.name == "key_limits":
        parse_limits(str(value))  # ConfigError naming the entry at fault
    if setting.name == "db_path" and not str(value):
        raise ConfigError(f"{label} is empty; give a database file path")
    if setting.name == "db_path" and _in_memory(str(value)):
        # Refused, not emulated: the queue opens its database more than once (the schema on
        # one connection, the queue on another, the CLI and a restart on more) and keeps its
        # spill folders beside it, and an in-memory database lives and dies with one connection.
        raise ConfigError(
            f"{label}={value!r}: an in-memory database is not supported; eventqueue needs a "
            "file that every connection, process and restart reaches (and its durable spill "
            "folder beside it). For tests, use a file in a temporary folder, e.g. "
            "EventQueue.open(str(tmp_path / 'events.db'), durability='normal')"
        )


def _in_memory(path: str) -> bool:
    """An SQLite in-memory database name (`:memory:`, or a `file:` URI with mode=memory)."""
    return path == ":memory:" or (path.startswith("file:") and "mode=memory" in path)
