"""The demo's checks: the report's counts against the database, read with the backend's own
read-only SQL console (what `eventqueue sql` runs); and the example queries printed at the end."""

from __future__ import annotations

import shlex
from collections import Counter
from typing import Any

from eventqueue.core.config import Config
from eventqueue.store import backend_of
from eventqueue.tools.demo.stream import BROKEN, COALESCED, Stream
from eventqueue.tools.inspector import Inspector

# Each event's place in the stream, status and duplicate count, in each backend's SQL.
_STORED = {
    "sqlite": "SELECT json_extract(payload, '$.attributes.seq'), status, duplicates FROM events",
    "postgresql": "SELECT (payload::jsonb #>> '{attributes,seq}')::bigint, status, duplicates "
    "FROM events",
}
_EVENT_NAME = {
    "sqlite": "json_extract(payload, '$.event_name')",
    "postgresql": "payload::json ->> 'event_name'",
}
_COUNTER = "SELECT coalesce(sum(value), 0) FROM counters WHERE name = 'duplicates_suppressed'"
_ALL_ROWS = 10_000_000


def _rows(path: str, query: str) -> list[Any]:
    """One read-only query through the backend's SQL console (a short read transaction)."""
    result = Inspector(Config.load(db_path=path)).sql(query, max_rows=_ALL_ROWS)
    return [tuple(row) for row in result["rows"]]


def verify(path: str, stream: Stream, report: dict[str, Any]) -> list[dict[str, Any]]:
    """Every sent event stored once and finished; the report's counts equal the database's."""
    stored = _rows(path, _STORED[backend_of(path)])
    counter = int(_rows(path, _COUNTER)[0][0])
    seqs = [seq for seq, _, _ in stored]
    status = Counter(s for _, s, _ in stored)
    dead = {seq for seq, s, _ in stored if s == "dead"}
    events = report["events"]
    # The stream check proves the events received are the first `received` of the stream.
    expected = {e["attributes"]["seq"] for e in stream.events[: events["received"]]}
    # A version coalesced away is not lost: a later version of its order is stored instead.
    updates = _latest_update(path, stream)
    lost = {
        seq
        for seq in expected - set(seqs)
        if not (stream.unique[seq] == COALESCED and updates.get(_order(stream, seq), 0) > seq)
    }
    superseded = events.get("superseded", 0)
    dups = (stream.duplicates, events["duplicates_suppressed"], counter, sum(d for *_, d in stored))
    doomed = {seq for seq in expected if stream.unique[seq] == BROKEN}
    stream_ok = events["received"] == events["sent"] and not report["received_out_of_order"]
    return [
        _check("every event received once, in order, across the reconnect", stream_ok,
               f"received {events['received']} of {events['sent']} over "
               f"{report['stream']['connections']} connections"),
        _check("no event lost", len(lost) <= events["still_spilled"],
               f"{len(expected) - len(lost)} of {len(expected)} distinct events received are "
               f"stored, {events['still_spilled']} wait in the spill log"),
        _check("no event stored twice", len(seqs) == len(set(seqs)), f"{len(seqs)} rows"),
        _check("every event finished (done or dead)", status["done"] + status["dead"] == len(seqs),
               f"{len(seqs) - status['done'] - status['dead']} unfinished"),
        _check("duplicates: sent = suppressed = counter = events.duplicates", len(set(dups)) == 1,
               " = ".join(map(str, dups))),
        _check("report counts = database (accepted, handled, dead)",
               (events["accepted"] - events["still_spilled"] - superseded, events["handled"],
                events["dead"])
               == (len(seqs), status["done"], status["dead"]),
               f"rows {len(seqs)}, done {status['done']}, dead {status['dead']}"),
        _check(f"coalesced {COALESCED} versions = superseded (latest wins)",
               len(expected - set(seqs)) - len(lost) == superseded,
               f"{superseded} versions folded into a pending event: handler calls saved"),
        _check(f"dead letters = the {BROKEN} events",
               dead == doomed if report["finished"] else dead <= doomed,
               f"{len(dead)} dead of {len(doomed)}"),
    ]  # fmt: skip


def _order(stream: Stream, seq: int) -> str:
    """The order of the stream's event `seq` (its aggregate)."""
    return str(stream.aggregates.get(seq))


def _latest_update(path: str, stream: Stream) -> dict[str, int]:
    """Per order, the highest `seq` of its stored `order_updated` events."""
    stored = _rows(path, _STORED[backend_of(path)])
    latest: dict[str, int] = {}
    for seq, _, _ in stored:
        if stream.unique.get(seq) == COALESCED:
            order = _order(stream, seq)
            latest[order] = max(latest.get(order, 0), seq)
    return latest


def _check(name: str, ok: bool, detail: str) -> dict[str, Any]:
    return {"name": name, "ok": bool(ok), "detail": detail}


def example_queries(path: str) -> list[dict[str, str]]:
    """Three ways to look inside: the overview, the dead letters, the retried events."""
    shell = "psql" if backend_of(path) == "postgresql" else "sqlite3"
    event_name = _EVENT_NAME[backend_of(path)]
    queries = [
        (shell, "select * from eq_overview"),
        (shell, "select id, event_name, attempts, last_error from eq_dead_letters"),
        (
            "eventqueue sql --db",
            f"select id, {event_name} as event_name, status, attempts "
            "from events where attempts > 1 order by id limit 20",
        ),
    ]
    # Double quotes keep the SQL readable; "$." is not an expansion in a POSIX shell.
    return [
        {"tool": tool.split()[0], "sql": q, "command": _command(tool, path, q)}
        for tool, q in queries
    ]


def _command(tool: str, path: str, query: str) -> str:
    flag = " -c" if tool == "psql" else ""  # psql takes the query as an option
    return f'{tool} {shlex.quote(path)}{flag} "{query}"'
