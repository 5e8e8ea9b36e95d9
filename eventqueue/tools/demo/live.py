"""The demo's live progress: a bar and a table on a terminal, a plain line a second elsewhere."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import click
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table

from eventqueue.core.models import Priority
from eventqueue.runtime.queue import EventQueue
from eventqueue.tools.demo.stream import CountedSource

_PRIORITIES = sorted(Priority, reverse=True)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Progress at one moment: received by priority, rows by status x priority, spill, dedup."""

    elapsed_s: float
    sent: int
    received: dict[str, int]
    counts: dict[str, dict[str, int]]
    spilled: int
    duplicates: int
    superseded: int = 0  # versions coalesced into a pending event (latest wins)

    def count(self, status: str, priority: str | None = None) -> int:
        """Rows in `status` (of `priority`, or of all priorities)."""
        by_priority = self.counts.get(status, {})
        return by_priority.get(priority, 0) if priority else sum(by_priority.values())


class ProgressView:
    """A bar and a table by priority redrawn in place on a terminal, else a plain line a second."""

    def __init__(self, console: Console) -> None:
        self._live = Live(console=console, refresh_per_second=8) if console.is_terminal else None
        self._next_s = 0.0
        self._unshown: Snapshot | None = None
        if self._live is not None:
            self._live.start()

    def show(self, snapshot: Snapshot) -> None:
        """Draw `snapshot` (lines: at most one a second)."""
        if self._live is not None:
            self._live.update(_progress_table(snapshot))
            return
        self._unshown = snapshot
        if snapshot.elapsed_s >= self._next_s:
            self._next_s = snapshot.elapsed_s + 1.0
            self.close()

    def close(self) -> None:
        """Leave the last state on screen."""
        if self._live is not None:
            self._live.stop()
        elif self._unshown is not None:
            click.echo(_progress_line(self._unshown))
            self._unshown = None


def _progress_line(s: Snapshot) -> str:
    by_priority = "  ".join(
        f"{p.name} {s.count('done', p.name)}/{s.received.get(p.name, 0)}" for p in _PRIORITIES
    )
    return (
        f"[{s.elapsed_s:5.1f}s] received {sum(s.received.values())}/{s.sent}  "
        f"duplicates {s.duplicates}  spilled {s.spilled}  handled {s.count('done')}  "
        f"dead {s.count('dead')}  | handled/received: {by_priority}"
    )


def _progress_table(s: Snapshot) -> RenderableType:
    finished = s.duplicates + s.superseded + s.count("done") + s.count("dead")
    table = Table("priority", "received", "waiting", "handled", "dead")
    for p in _PRIORITIES:
        waiting = s.count("pending", p.name) + s.count("claimed", p.name)
        cells = (
            s.received.get(p.name, 0),
            waiting,
            s.count("done", p.name),
            s.count("dead", p.name),
        )
        table.add_row(p.name, *map(str, cells))
    head = (
        f"{s.elapsed_s:5.1f}s  received {sum(s.received.values())}/{s.sent}  "
        f"duplicates {s.duplicates}  spilled {s.spilled}  finished {finished}/{s.sent}"
    )
    return Group(head, ProgressBar(total=s.sent, completed=finished, width=60), table)


async def snapshot(queue: EventQueue, source: CountedSource, sent: int, t0: float) -> Snapshot:
    """Progress now, from the queue's stats, its metrics and the source's counts."""
    stats = await queue.stats()
    return Snapshot(
        elapsed_s=time.monotonic() - t0,
        sent=sent,
        received={p.name: n for p, n in source.received.items()},
        counts=stats.counts,
        # Ever spilled = promoted since + still waiting (read from the spill log itself).
        spilled=queue.metrics.outcomes["promoted"] + queue.overflow.pending(),
        duplicates=stats.duplicates_suppressed,
        superseded=stats.superseded,
    )


async def watch(
    queue: EventQueue, source: CountedSource, sent: int, t0: float, view: ProgressView
) -> None:
    """Show a snapshot every 0.1 s until cancelled."""
    while True:
        view.show(await snapshot(queue, source, sent, t0))
        await asyncio.sleep(0.1)
