"""eventqueue: a durable, priority-aware, deduplicating, batching event queue on SQLite."""

from eventqueue.core.config import Config
from eventqueue.core.errors import (
    ConfigError,
    DatabaseBusyError,
    EventQueueError,
    InvalidEventError,
    LeaseLostError,
    NotInBatchError,
    PartialFailure,
    QueueClosedError,
    SchemaError,
    SpillError,
    StorageError,
    StoreBusyError,
)
from eventqueue.core.models import Batch, Event, Priority, PutResult, PutStatus, QueueStats, Status
from eventqueue.runtime.dispatch.dispatcher import Dispatcher
from eventqueue.runtime.queue import EventQueue

__all__ = [
    "Batch",
    "Config",
    "ConfigError",
    "DatabaseBusyError",
    "Dispatcher",
    "Event",
    "EventQueue",
    "EventQueueError",
    "InvalidEventError",
    "LeaseLostError",
    "NotInBatchError",
    "PartialFailure",
    "Priority",
    "PutResult",
    "PutStatus",
    "QueueClosedError",
    "QueueStats",
    "SchemaError",
    "SpillError",
    "Status",
    "StorageError",
    "StoreBusyError",
]
