"""Every exception eventqueue raises on purpose: one root, a few children. Stdlib only."""

from __future__ import annotations

from collections.abc import Collection, Mapping


class EventQueueError(Exception):
    """Root of every error eventqueue raises on purpose."""


class ConfigError(EventQueueError, ValueError):
    """A setting is out of range or malformed; the message names the variable and the range."""


class InvalidEventError(EventQueueError, ValueError):
    """An event was rejected at `put`: the message names the problem; nothing was stored."""


class InvalidArgumentError(EventQueueError, ValueError):
    """A call was given an argument out of its range (e.g. `nack(retry_in=nan)`); the message
    names it and the range. Raised before anything changes: the batch keeps its lease."""


class LeaseLostError(EventQueueError):
    """The batch's claim token is no longer current: another consumer holds it, or it finished."""


class NotInBatchError(LeaseLostError):
    """Ids given to ack or nack that were never in this batch (a caller's mistake, not a lost
    lease); nothing was acked or retried."""

    def __init__(self, ids: list[int]) -> None:
        shown = ", ".join(map(str, ids[:20])) + (", ..." if len(ids) > 20 else "")
        super().__init__(
            f"ids not in this batch: {shown}; pass ids of the batch (batch.ids) or none for all"
        )
        self.ids = list(ids)


class SchemaError(EventQueueError):
    """The database schema is missing, behind or ahead of this version of eventqueue."""


class StorageError(EventQueueError):
    """The database could not be used: locked, full, deleted, read-only or corrupt."""


class QueueClosedError(EventQueueError):
    """The queue was used after `close()`."""


class SpillError(EventQueueError):
    """The overflow spill log could not be written durably."""


class SourceRejectedError(EventQueueError):
    """A stream source's server refused it (a 4xx other than 408/429) or answered with
    something that is not a stream: a configuration error that retrying cannot fix, so the
    source stops. Carries `status` and `url`."""

    def __init__(self, url: str, status: int, problem: str) -> None:
        super().__init__(
            f"{url}: {problem}; this is not retried: check the URL and any credentials or "
            "headers the server needs"
        )
        self.url = url
        self.status = status


class PartialFailure(EventQueueError):
    """Raised by a batch handler: these events failed (id -> error); the rest succeeded.

    `permanent`: those of the failed ids that will never succeed: dead-lettered at once
    instead of retried (each must be a key of `failed`).
    """

    def __init__(self, failed: Mapping[int, str], *, permanent: Collection[int] = ()) -> None:
        super().__init__(f"{len(failed)} event(s) of the batch failed")
        self.failed = dict(failed)
        self.permanent = frozenset(permanent)
        if stray := sorted(self.permanent - set(self.failed)):
            raise InvalidArgumentError(
                f"PartialFailure(permanent=...) names ids that are not failed: {stray[:10]}"
            )


class PermanentFailure(EventQueueError):
    """Raised by a handler: its event(s) will never succeed; the Dispatcher dead-letters them at
    once (`nack(..., dead=True)`) with this message as their last error, instead of retrying."""


class StoreBusyError(StorageError):
    """The write could not start within EVENT_SPILL_AFTER_MS (another connection held the
    lock, or no connection was free); puts spill on this instead of waiting."""


# The name of StoreBusyError before there was more than one backend; kept for callers.
DatabaseBusyError = StoreBusyError


class QueryError(EventQueueError, ValueError):
    """`eventqueue sql` refused a statement (not read-only, or more than one) or it failed."""
