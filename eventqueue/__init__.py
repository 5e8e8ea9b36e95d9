"""eventqueue: a durable, priority-aware, deduplicating, batching event queue on SQLite."""

from eventqueue.config import Config
from eventqueue.errors import (
    ConfigError,
    EventQueueError,
    InvalidEventError,
    LeaseLostError,
    QueueClosedError,
    SchemaError,
    SpillError,
    StorageError,
)
from eventqueue.models import Batch, Event, Priority, PutResult, PutStatus, QueueStats, Status

__all__ = [
    "Batch",
    "Config",
    "ConfigError",
    "Event",
    "EventQueueError",
    "InvalidEventError",
    "LeaseLostError",
    "Priority",
    "PutResult",
    "PutStatus",
    "QueueClosedError",
    "QueueStats",
    "SchemaError",
    "SpillError",
    "Status",
    "StorageError",
]

from eventqueue.queue import EventQueue

__all__ += ["EventQueue"]
