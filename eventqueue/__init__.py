"""eventqueue: a durable, priority-aware, deduplicating, batching event queue on SQLite."""

from eventqueue.core.config import Config
from eventqueue.core.errors import (
    ConfigError,
    DatabaseBusyError,
    EventQueueError,
    InvalidArgumentError,
    InvalidEventError,
    LeaseLostError,
    NotInBatchError,
    PartialFailure,
    PermanentFailure,
    QueueClosedError,
    SchemaError,
    SourceRejectedError,
    SpillError,
    StorageError,
    StoreBusyError,
)
from eventqueue.core.limits import KeyLimit
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
    "InvalidArgumentError",
    "InvalidEventError",
    "KeyLimit",
    "LeaseLostError",
    "NotInBatchError",
    "PartialFailure",
    "PermanentFailure",
    "Priority",
    "PutResult",
    "PutStatus",
    "QueueClosedError",
    "QueueStats",
    "SchemaError",
    "SourceRejectedError",
    "SpillError",
    "Status",
    "StorageError",
    "StoreBusyError",
]
