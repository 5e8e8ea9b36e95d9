"""Figures: resident memory, rates, percentiles; and the untimed sync between measurements."""

from __future__ import annotations

import asyncio
import os
import resource
import sys
import time
from collections.abc import Sequence
from pathlib import Path

# One definition of a percentile in the project: the one the queue's own metrics report.
from eventqueue.runtime.metrics import percentile


def rss_mb() -> float:
    """Resident set size now, in MiB (Linux /proc; elsewhere the peak)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return peak_rss_mb()


def peak_rss_mb() -> float:
    """Peak resident set size of this process, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def rate(events: int, seconds: float) -> float:
    """Events per second; 0 when no time passed."""
    return events / seconds if seconds > 0 else 0.0


def percentile_ms(samples_s: Sequence[float], q: float) -> float | None:
    """The `q` quantile of `samples_s` (seconds) in ms, to the microsecond; None without samples."""
    return round(percentile(sorted(samples_s), q) * 1000, 3) if samples_s else None


async def settle() -> None:
    """Write back dirty pages (untimed) so the next measurement does not pay for the last."""
    await asyncio.to_thread(os.sync)


def bare_fsync_s(folder: Path, writes: int = 300) -> list[float]:
    """Seconds of each fsync after a 300-byte append, on the bench's own disk (blocking).

    The physical floor of a durable commit, measured in the same run as the queue's figures.
    """
    path = folder / "fsync-probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    samples = []
    try:
        for _ in range(writes):
            os.write(fd, b"x" * 300)
            start = time.perf_counter()
            os.fsync(fd)
            samples.append(time.perf_counter() - start)
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)
    return samples
