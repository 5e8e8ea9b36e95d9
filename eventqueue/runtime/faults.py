"""The named crash points live in eventqueue.core.faults (the store's round engine has two);
this name stays for the migrations that import it."""

from eventqueue.core.faults import POINTS, crash_point

__all__ = ["POINTS", "crash_point"]
