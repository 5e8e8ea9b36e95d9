"""The public source API: `from eventqueue.sources import sse_source, jsonl_source`.

The implementation lives in eventqueue.runtime.sources (still importable from there).
"""

from eventqueue.core.errors import SourceRejectedError
from eventqueue.runtime.sources import (
    DEFAULT_EVENT_TYPES,
    JSONLSource,
    Source,
    SSESource,
    jsonl_source,
    sse_source,
)

__all__ = [
    "DEFAULT_EVENT_TYPES",
    "JSONLSource",
    "SSESource",
    "Source",
    "SourceRejectedError",
    "jsonl_source",
    "sse_source",
]
