"""`create_app`: the dashboard as an ASGI app, for `eventqueue web`, a Dispatcher, or a host
application that mounts it (Starlette, FastAPI)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from starlette.applications import Starlette
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp

from eventqueue.core.config import Config
from eventqueue.core.errors import ConfigError
from eventqueue.runtime.queue import EventQueue
from eventqueue.tools.inspector import Inspector
from eventqueue.tools.web.pages import Pages
from eventqueue.tools.web.reads import Reads
from eventqueue.tools.web.security import TokenGate, new_csrf_token

HERE = Path(__file__).parent


def create_app(
    queue_or_location: EventQueue | Config | str | Path,
    allow_actions: bool = False,
    *,
    token: str | None = None,
) -> ASGIApp:
    """The dashboard of one queue database (an open EventQueue, its Config, a path or URL).

    Read-only unless `allow_actions`; with `token`, every request must carry it.
    """
    config = _config_of(queue_or_location)
    pages = Pages(
        reads=Reads(Inspector(config)),
        templates=Jinja2Templates(directory=HERE / "templates"),
        allow_actions=allow_actions,
        csrf=new_csrf_token(),
        title=_shown(config.db_path),
    )
    app = Starlette(
        routes=[
            Route("/", pages.overview, name="overview"),
            Route("/api/overview", pages.overview_json, name="overview_json"),
            Route("/events", pages.events, name="events"),
            Route("/events/{event_id:int}", pages.event, name="event"),
            Route("/dead", pages.dead, name="dead"),
            Route("/dead/requeue", pages.requeue, methods=["POST"], name="requeue"),
            Route("/dead/purge", pages.purge, methods=["POST"], name="purge"),
            Route("/sql", pages.sql, name="sql"),
            Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
        ]
    )
    return app if token is None else TokenGate(app, token)


def _config_of(where: EventQueue | Config | str | Path) -> Config:
    if isinstance(where, EventQueue):
        return where.config
    if isinstance(where, Config):
        return where
    if isinstance(where, str | Path):
        return Config.load(db_path=str(where))
    raise ConfigError(
        f"create_app takes an EventQueue, a Config, or a database path or URL, not {where!r}"
    )


def _shown(location: str) -> str:
    """The database as the page title shows it: a URL without its password."""
    parts = urlsplit(location)
    if parts.password is None:
        return location
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))
