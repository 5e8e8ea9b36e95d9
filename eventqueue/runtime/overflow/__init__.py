"""Overflow on disk: the spill log (log.py), the folders it lives in (folders.py), and the
promotion of spilled events back into the table (promoter.py)."""

from eventqueue.runtime.overflow.folders import inspect_spills
from eventqueue.runtime.overflow.promoter import SPILLED, Outcome, Overflow

__all__ = ["SPILLED", "Outcome", "Overflow", "inspect_spills"]
