"""The `eventqueue` command: look inside a queue database and repair it.

Tables for people by default, `--json` for scripts (rendered in render.py). Every command takes
`--db PATH` (default: the EVENT_DB_PATH variable, else events.db). Database access goes through
the Inspector (inspector.py); the commands that run the queue call asyncio.run here.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import click

from eventqueue.core.config import Config
from eventqueue.core.errors import EventQueueError
from eventqueue.tools.inspector import Inspector, PurgeResult
from eventqueue.tools.render import (
    emit,
    refusal_message,
    render_dead,
    render_event,
    render_migrated,
    render_peek,
    render_rows,
    render_schema,
    render_stats,
    render_vacuum,
    watch_json,
    watch_live,
)

F = TypeVar("F", bound=Callable[..., Any])

_MAX_ID = 2**63 - 1
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd]?)")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86_400}
_MAX_DURATION_S = 36_500 * 86_400
_sleep = time.sleep  # replaced in tests: `stats --watch` without waiting


class Failure(click.ClickException):
    """A clear error that says what to do next: no traceback, exit code 2."""

    exit_code = 2


class _Group(click.Group):
    """Turns eventqueue's own errors into a message and exit code 2, for every command."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except EventQueueError as exc:
            raise Failure(str(exc)) from exc


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """A durable priority event queue on SQLite: inspect and repair its database."""


def db_option(f: F) -> F:
    """`--db PATH`, defaulting to EVENT_DB_PATH, else events.db."""
    option = click.option(
        "--db",
        "db_path",
        envvar="EVENT_DB_PATH",
        default="events.db",
        show_default=True,
        metavar="PATH",
        help="The database file (env EVENT_DB_PATH).",
    )
    return option(f)


def json_option(f: F) -> F:
    """`--json`: print JSON for scripts instead of tables."""
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")(f)


def _inspector(db_path: str) -> Inspector:
    return Inspector(Config.load(db_path=db_path))


# --- schema -------------------------------------------------------------------------------------


@main.command()
@db_option
@click.option(
    "--check", is_flag=True, help="Report revision vs head, change nothing; exit 1 if behind."
)
@json_option
def migrate(db_path: str, check: bool, as_json: bool) -> None:
    """Upgrade the schema to head, creating the database if there is none."""
    inspector = _inspector(db_path)
    if not check:
        before = inspector.migrate()
        result = {"db": db_path, "previous": before["current"], "current": before["head"]}
        emit(result, as_json, lambda r: render_migrated(r["db"], r["previous"], r["current"]))
        return
    status = inspector.schema_status()
    if status["state"] == "unknown":
        raise Failure(
            f"{db_path} has schema revision {status['current']}, unknown to this eventqueue "
            f"(head {status['head']}): it was migrated by a newer version; upgrade eventqueue"
        )
    emit(status, as_json, render_schema)
    if status["state"] != "current":
        raise click.exceptions.Exit(1)


# --- reads --------------------------------------------------------------------------------------


@main.command()
@db_option
@click.option(
    "--watch", type=click.FloatRange(min=0.1), metavar="SECONDS", help="Refresh until Ctrl-C."
)
@json_option
def stats(db_path: str, watch: float | None, as_json: bool) -> None:
    """Counts by status × priority, oldest pending age, ready batches, duplicates, spill."""
    inspector = _inspector(db_path)
    if watch is None:
        emit(_stats(inspector), as_json, render_stats)
    elif as_json:
        watch_json(lambda: _stats(inspector), watch, _sleep)
    else:
        watch_live(lambda: _stats(inspector), watch, _sleep)


def _stats(inspector: Inspector) -> dict[str, Any]:
    """One snapshot, read in its own short transaction."""
    snapshot = inspector.stats(now=time.time())
    spill = _spill_summary(inspector)
    if spill["directories"]:
        spill = {"directory": spill["directories"][0], **spill}
        snapshot = dataclasses.replace(snapshot, spill=spill)
    return snapshot.as_dict()


def _spill_summary(inspector: Inspector) -> dict[str, Any]:
    """The spill section of `stats`, over the spill folders of every process on the database."""
    from eventqueue.runtime.overflow import inspect_spills

    return inspect_spills(inspector.config, inspector.spill_positions)


@main.command()
@db_option
@click.option("--limit", type=click.IntRange(1, 10_000), default=10, show_default=True)
@json_option
def peek(db_path: str, limit: int, as_json: bool) -> None:
    """The next batches in claim order (one per ready key), without claiming them."""
    batches = _inspector(db_path).peek(now=time.time(), limit=limit)
    emit({"batches": batches}, as_json, render_peek)


@main.command()
@db_option
@click.argument("event_id", metavar="ID")
@json_option
def show(db_path: str, event_id: str, as_json: bool) -> None:
    """One event with every column: status, attempts, lease, last error, times."""
    number = _parse_id(event_id)
    info = _inspector(db_path).show(number)
    if info is None:
        raise Failure(f"no event with id {number} in {db_path}; `eventqueue peek` lists some")
    emit(info, as_json, render_event)


@main.command()
@db_option
@click.option("--limit", type=click.IntRange(1, 100_000), default=20, show_default=True)
@json_option
def dead(db_path: str, limit: int, as_json: bool) -> None:
    """Dead letters, most recent first, with their last error."""
    letters = _inspector(db_path).dead(limit=limit)
    emit({"dead": letters}, as_json, render_dead)


# --- repair -------------------------------------------------------------------------------------


@main.command()
@db_option
@click.argument("ids", nargs=-1, metavar="[IDS]...")
@click.option("--all-dead", is_flag=True, help="Requeue every dead event.")
@json_option
def requeue(db_path: str, ids: tuple[str, ...], all_dead: bool, as_json: bool) -> None:
    """Dead events (these ids, or --all-dead) back to pending, with fresh attempts."""
    if bool(ids) == all_dead:
        raise Failure("give the ids of dead events, or --all-dead (not both)")
    wanted = None if all_dead else [_parse_id(i) for i in ids]
    result = _inspector(db_path).requeue(wanted, now=time.time())
    if result["refused"]:
        raise Failure(refusal_message(result["refused"]))
    emit(result, as_json, lambda r: f"requeued {r['requeued']} dead event(s) to pending")


@main.command()
@db_option
@click.option(
    "--older-than",
    metavar="DURATION",
    help="e.g. 30s, 15m, 2h, 7d [default: EVENT_RETENTION_SECONDS, else 1d]",
)
@json_option
def purge(db_path: str, older_than: str | None, as_json: bool) -> None:
    """Delete done events finished more than DURATION ago, in small transactions.

    Events still inside their dedup window (DEDUP_TTL_SECONDS, as the queue last recorded it)
    are kept, so a re-put of their content stays a duplicate; the output says how many."""
    inspector = _inspector(db_path)
    seconds = inspector.config.retention_s if older_than is None else parse_duration(older_than)
    now = time.time()
    result = inspector.purge(cutoff=now - seconds, now=now)
    emit(result, as_json, _purged)


def _purged(r: PurgeResult) -> str:
    kept = ""
    if r["kept_for_dedup"]:
        # Why some old enough to go are still there: their content must stay a duplicate.
        kept = (
            f"; kept {r['kept_for_dedup']} received within the dedup window "
            f"({r['dedup_ttl_s']:g} s, DEDUP_TTL_SECONDS): a re-put of their content is still "
            "a duplicate"
        )
    return (
        f"purged {r['purged']} done event(s) finished before {r['cutoff']}{kept}; "
        f"freed {r['freed_pages']} page(s)"
    )


@main.command()
@db_option
@json_option
def vacuum(db_path: str, as_json: bool) -> None:
    """Hand free pages back to the filesystem, then checkpoint and truncate the WAL."""
    emit(_inspector(db_path).vacuum(), as_json, render_vacuum)


@main.command()
@db_option
@click.argument("path", metavar="PATH")
@click.option("--force", is_flag=True, help="Replace PATH if it exists.")
@json_option
def backup(db_path: str, path: str, force: bool, as_json: bool) -> None:
    """Write a consistent copy of the database to PATH (SQLite's backup API; on PostgreSQL
    it copies nothing and prints the pg_dump command to run, exit 0, `copied: false`)."""
    result = _inspector(db_path).backup(path, force=force)
    emit(result, as_json, _backed_up)


def _backed_up(r: Mapping[str, Any]) -> str:
    if "command" in r:  # a server database: pg_dump's job
        return (
            f"{r['source']} is a PostgreSQL database: eventqueue copies nothing itself; back it "
            f"up with pg_dump:\n  {r['command']}"
        )
    return f"backed up {r['source']} to {r['path']} ({r['bytes']} bytes)"


# --- SQL for debugging --------------------------------------------------------------------------


@main.command("sql")
@db_option
@click.argument("query")
@click.option("--max-rows", type=click.IntRange(min=1), default=1000, show_default=True)
@json_option
def sql_command(db_path: str, query: str, max_rows: int, as_json: bool) -> None:
    """Run one read-only statement: SELECT, WITH, or a reading PRAGMA such as table_info."""
    result = _inspector(db_path).sql(query, max_rows=max_rows)
    emit(result, as_json, render_rows)


# --- parsing helpers ----------------------------------------------------------------------------


def parse_duration(text: str) -> float:
    """'30s', '15m', '2h', '7d' or plain seconds, as seconds."""
    match = _DURATION.fullmatch(text.strip().lower())
    seconds = float(match[1]) * _UNIT_S[match[2]] if match else None
    if seconds is None or seconds > _MAX_DURATION_S:
        raise Failure(
            f"bad duration {text!r}: give a number and a unit, e.g. 30s, 15m, 2h or 7d "
            "(at most 36500d)"
        )
    return seconds


def _parse_id(text: str) -> int:
    if text.isascii() and text.isdigit() and 0 < int(text) <= _MAX_ID:
        return int(text)
    raise Failure(f"bad id {text!r}: an event id is a positive integer (see `eventqueue peek`)")


# --- commands that run the queue ----------------------------------------------------------------
# `bench` (tools/bench/), `demo` (tools/demo/) and `listen` (tools/listen.py, over
# runtime/dispatch/) each import their package inside the command function, so the inspection
# commands never pay for (or break on) them. A new command that runs the queue follows suit.


@main.command()
@click.option("--quick", is_flag=True, help="Smaller sizes: finishes in under a minute.")
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, writable=True),
    metavar="PATH",
    help="Also write the results to PATH as a JSON list, one object per scenario.",
)
@click.option("--tiny", is_flag=True, hidden=True, help="Smoke sizes (a few seconds).")
@click.option(
    "--only", multiple=True, hidden=True, help="Run only these scenarios (repeatable, or a,b)."
)
@click.option(
    "--db",
    "db_url",
    metavar="URL",
    default=None,
    help="Bench a PostgreSQL server (postgresql://...) against raw asyncpg instead, in scratch "
    "schemas it drops afterwards.  [default: SQLite files in a temporary directory]",
)
@click.option(
    "--telemetry",
    type=click.Choice(["metrics", "tracing", "all"]),
    is_flag=False,
    flag_value="all",
    default=None,
    help="Run the scenarios twice, without then with Prometheus metrics, OpenTelemetry spans "
    "or both (all, the default), and print the overhead.",
)
def bench(
    quick: bool,
    json_path: str | None,
    tiny: bool,
    only: tuple[str, ...],
    db_url: str | None,
    telemetry: str | None,
) -> None:
    """Measure put, claim + ack, end-to-end, latency and memory against raw sqlite3.

    Runs on fresh databases in a temporary directory, with the settings of the environment
    (EVENT_DURABILITY ...); prints a table and the settings used. The full run takes minutes.
    With --db postgresql://..., the same scenarios run on that server, each in scratch schemas
    (eqbench_*), against raw asyncpg.
    """
    from eventqueue.tools import bench as benchmark
    from eventqueue.tools.loop import loop_name
    from eventqueue.tools.loop import run as run_loop

    sizes = benchmark.sizes(quick=quick, tiny=tiny)
    only = tuple(name for names in only for name in names.split(",") if name)
    rows = run_loop(benchmark.run(sizes, only=only, db=db_url))
    click.echo(f"event loop: {loop_name()}")
    if not telemetry:
        benchmark.report(rows, json_path)
        return
    from eventqueue.tools.bench import telemetry as bench_telemetry

    traced = run_loop(benchmark.run(sizes, only=only, db=db_url, telemetry=telemetry))
    benchmark.report(rows + traced, json_path)
    for line in bench_telemetry.overhead(rows, traced):
        click.echo(line)


@main.command()
@click.option(
    "--events",
    type=click.IntRange(1, 1_000_000),
    default=2000,
    show_default=True,
    help="How many events the local server sends.",
)
@click.option(
    "--rate",
    type=click.FloatRange(min=1),
    default=2000.0,
    show_default=True,
    help="Events per second the server sends.",
)
@click.option(
    "--seconds",
    type=click.FloatRange(min=1),
    default=60.0,
    show_default=True,
    help="Deadline: stop gracefully and report after this long.",
)
@click.option(
    "--db",
    "db_path",
    metavar="PATH",
    default=None,
    help="Keep the database here (a new file). Default: a fresh temporary folder. A "
    "postgresql:// URL: a new schema eqdemo_* in that database, kept afterwards.",
)
@json_option
def demo(events: int, rate: float, seconds: float, db_path: str | None, as_json: bool) -> None:
    """Run a listener end to end: local SSE stream, handlers, live view, report checked by SQL.

    Exits 1 if an event was lost or a count in the report differs from the database.
    """
    from eventqueue.tools.demo import DemoOptions, run_demo
    from eventqueue.tools.loop import run as run_loop

    options = DemoOptions(events, rate, seconds, db_path, as_json)
    raise SystemExit(run_loop(run_demo(options)))


@main.command()
@db_option
@click.option(
    "--interval",
    type=click.FloatRange(min=0.1),
    default=1.0,
    show_default=True,
    metavar="SECONDS",
    help="Seconds between refreshes.",
)
@click.option(
    "--iterations",
    type=click.IntRange(min=1),
    metavar="N",
    help="Stop by itself after N refreshes.  [default: until Ctrl-C]",
)
def top(db_path: str, interval: float, iterations: int | None) -> None:
    """A live view: depth by priority and key, rates, latency, dead letters, spill.

    Read-only; each refresh reads in short transactions and holds nothing open between them.
    """
    from eventqueue.tools.top import run_top

    run_top(db_path, interval_s=interval, iterations=iterations)


@main.command()
@click.argument("source")
@click.option(
    "--handlers",
    required=True,
    metavar="MODULE:ATTR",
    help='A dict mapping event names (and "*" for the rest) to async batch handlers.',
)
@db_option
@click.option("--concurrency", type=click.IntRange(1, 1024), default=4, show_default=True)
@click.option(
    "--handler-timeout",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="A handler call running longer fails (nack: retried, then dead).  [default: none]",
)
@click.option(
    "--shutdown-grace",
    type=click.FloatRange(min=0),
    default=10.0,
    show_default=True,
    metavar="SECONDS",
    help="On SIGINT/SIGTERM, how long in-flight batches may finish before they are released.",
)
@click.option(
    "--on-error",
    type=click.Choice(["skip", "stop"]),
    default="skip",
    show_default=True,
    help="A bad line or message: report and skip it, or report it and stop.",
)
@click.option(
    "--event",
    "event_types",
    multiple=True,
    metavar="TYPE",
    help="Read SSE messages of this type (repeatable; replaces the default: event_created and "
    "untyped messages). Others are skipped, counted and warned about.",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    metavar="PORT",
    help="Serve Prometheus /metrics on this port (needs eventqueue[prometheus]).",
)
@click.option(
    "--metrics-host",
    default="127.0.0.1",
    show_default=True,
    metavar="HOST",
    help="The address /metrics binds; 0.0.0.0 lets other hosts scrape it.",
)
@click.option(
    "--tracing",
    is_flag=True,
    help="OpenTelemetry spans for puts and handler runs, to the global tracer provider "
    "(needs eventqueue[otel] and an SDK, e.g. run under opentelemetry-instrument).",
)
def listen(
    source: str,
    handlers: str,
    db_path: str,
    concurrency: int,
    handler_timeout: float | None,
    shutdown_grace: float,
    on_error: str,
    event_types: tuple[str, ...],
    metrics_port: int | None,
    metrics_host: str,
    tracing: bool,
) -> None:
    """Run handlers on SOURCE: an http(s) SSE URL, a JSON-lines file, or - for stdin.

    Runs until the source ends (files) or SIGINT/SIGTERM (streams; a second signal forces),
    shuts down gracefully, and prints a summary. A restart resumes after the stored position.
    """
    from eventqueue.tools.listen import ListenOptions
    from eventqueue.tools.listen import listen as run_listen
    from eventqueue.tools.loop import run as run_loop

    options = ListenOptions(
        source,
        handlers,
        db_path,
        concurrency,
        handler_timeout,
        shutdown_grace,
        on_error,
        metrics_port=metrics_port,
        metrics_host=metrics_host,
        tracing=tracing,
        event_types=event_types,
    )
    run_loop(run_listen(options))


@main.command()
@db_option
@click.option("--host", default="127.0.0.1", show_default=True, help="The address to bind.")
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True)
@click.option(
    "--allow-actions", is_flag=True, help="Allow requeueing dead letters and purging done events."
)
@click.option(
    "--token",
    envvar="EVENTQUEUE_WEB_TOKEN",
    metavar="TOKEN",
    help="Every request must carry this token (needed to bind a non-loopback host; env "
    "EVENTQUEUE_WEB_TOKEN).",
)
def web(db_path: str, host: str, port: int, allow_actions: bool, token: str | None) -> None:
    """Serve the web dashboard: overview with live charts, events, dead letters, SQL.

    Read-only unless --allow-actions. Binds 127.0.0.1 by default; another address needs
    --token. Needs eventqueue[web]. Runs until Ctrl-C.
    """
    try:
        from eventqueue.tools.web.app import create_app
        from eventqueue.tools.web.server import bind, guarded, serve, url_of
    except ImportError as exc:
        raise Failure(f"`eventqueue web` needs {exc.name}: pip install 'eventqueue[web]'") from exc
    status = _inspector(db_path).schema_status()
    if status["state"] != "current":
        from eventqueue.core.records import schema_problem

        raise Failure(schema_problem(status))
    app = guarded(create_app(db_path, allow_actions=allow_actions, token=token), token)
    sock = bind(host, port, token)
    shown = url_of(sock)
    mode = "actions allowed" if allow_actions else "read-only"
    click.echo(f"serving the dashboard of {db_path} at {shown} ({mode}); Ctrl-C stops", err=True)
    click.echo(shown)  # one line on stdout: scripts and tests read the address from it
    serve(app, sock)
