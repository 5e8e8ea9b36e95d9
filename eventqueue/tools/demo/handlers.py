"""The demo's sample handlers: one simulating I/O, one flaky, one that always fails."""

from __future__ import annotations

import asyncio

from eventqueue.core.errors import PartialFailure
from eventqueue.core.models import Event
from eventqueue.runtime.dispatch.dispatcher import Dispatcher
from eventqueue.tools.demo.stream import BROKEN, FLAKY

_WORK_S = 0.002  # simulated I/O per handler call and per event in it


def add_sample_handlers(dispatcher: Dispatcher) -> None:
    """A catch-all that simulates I/O, a flaky invoice handler and a broken ledger sync."""
    dispatcher.add_handler("*", _record)
    dispatcher.add_handler(FLAKY, _send_invoices)
    dispatcher.add_handler(BROKEN, _sync_ledger)


async def _record(events: list[Event]) -> None:
    await asyncio.sleep(_WORK_S * (1 + len(events)))


async def _send_invoices(events: list[Event]) -> None:
    await _record(events)
    timed_out = {
        e.id: "invoice service timed out" for e in events if e.attempts == 1 and e.id % 3 == 0
    }
    if timed_out:
        raise PartialFailure(timed_out)  # the rest of the batch is done; these are retried


async def _sync_ledger(events: list[Event]) -> None:
    raise RuntimeError("ledger rejected the sync: 409 conflict")
