"""The dashboard's pages and its JSON endpoint: each handler reads in a worker thread, renders.

Overview, Events, Event, Dead letters and SQL (GET, read-only); the dead-letter actions
(POST /dead/requeue, /dead/purge) run only when the app allows actions, with the app's CSRF
token, and only after a confirmation page (the form posts again with confirm=yes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import click
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.templating import Jinja2Templates

from eventqueue.core.errors import EventQueueError
from eventqueue.core.models import Priority, Status
from eventqueue.tools.web.queries import ID_WINDOW, EventFilter
from eventqueue.tools.web.reads import PRIORITIES, STATUSES, Reads
from eventqueue.tools.web.security import same_token

_MAX_ID = 2**63 - 1


@dataclass
class Pages:
    """The request handlers of one app."""

    reads: Reads
    templates: Jinja2Templates
    allow_actions: bool
    csrf: str
    title: str

    def _render(
        self, request: Request, name: str, status_code: int = 200, **context: Any
    ) -> Response:
        context |= {
            "title": self.title,
            "allow_actions": self.allow_actions,
            "csrf": self.csrf,
            "priorities": PRIORITIES,
            "statuses": STATUSES,
        }
        return self.templates.TemplateResponse(request, name, context, status_code=status_code)

    async def overview(self, request: Request) -> Response:
        """Depth, keys, latency, spill and the live charts."""
        data = await run_in_threadpool(self.reads.overview)
        return self._render(request, "overview.html", page="overview", data=data)

    async def overview_json(self, request: Request) -> Response:
        """What the overview shows, as JSON (polled by the charts)."""
        return JSONResponse(await run_in_threadpool(self.reads.overview))

    async def events(self, request: Request) -> Response:
        """The newest events, filtered; or the events a search names."""
        params = request.query_params
        text = (params.get("find") or "").strip()
        try:
            if text:
                ids = await run_in_threadpool(self.reads.find, text)
                if len(ids) == 1:
                    return RedirectResponse(request.url_for("event", event_id=ids[0]), 303)
                page: dict[str, Any] = {"rows": [{"id": i} for i in ids], "older": None}
                found = EventFilter()
            else:
                found = _filter(params)
                page = await run_in_threadpool(self.reads.events, found)
        except (EventQueueError, ValueError) as exc:
            return self._render(
                request, "events.html", 400, page="events", rows=[], error=str(exc),
                params=params, found=EventFilter(), window=ID_WINDOW,
            )  # fmt: skip
        return self._render(
            request, "events.html", page="events", rows=page["rows"], params=params,
            found=found, find=text, error=None, older=page["older"],
            searched=page.get("searched"), window=ID_WINDOW,
        )  # fmt: skip

    async def event(self, request: Request) -> Response:
        """One event: payload, attempts, lease, error, timeline."""
        event_id = int(request.path_params["event_id"])
        info = await run_in_threadpool(self.reads.event, event_id) if event_id <= _MAX_ID else None
        if info is None:
            return self._render(
                request, "message.html", 404, page="events",
                message=f"no event with id {event_id}",
            )  # fmt: skip
        return self._render(request, "event.html", page="events", event=info)

    async def dead(self, request: Request) -> Response:
        """Dead letters grouped by last error."""
        groups = await run_in_threadpool(self.reads.dead_groups)
        error = request.query_params.get("error")
        ids = await run_in_threadpool(self.reads.dead_ids, error) if error is not None else []
        return self._render(
            request, "dead.html", page="dead", groups=groups, error=error, ids=ids[:200],
            total=len(ids),
        )  # fmt: skip

    async def requeue(self, request: Request) -> Response:
        """Requeue dead letters (by ids or one error group), after a confirmation."""
        form, refusal = await self._action_form(request)
        if refusal is not None:
            return refusal
        try:
            ids = _ids(form.get("ids", ""))
            if not ids and "error" in form:
                ids = await run_in_threadpool(self.reads.dead_ids, form["error"])
        except ValueError as exc:
            return self._message(request, 400, str(exc))
        if not ids:
            return self._message(request, 400, "nothing to requeue: no dead events named")
        if form.get("confirm") != "yes":
            return self._render(
                request, "confirm.html", page="dead", action="requeue",
                what=f"requeue {len(ids)} dead event(s) to pending with fresh attempts",
                fields={"ids": " ".join(map(str, ids))}, ids=ids[:200],
            )  # fmt: skip
        result = await run_in_threadpool(self.reads.requeue, ids)
        if result["refused"]:
            listed = ", ".join(f"{r['id']} ({r['status']})" for r in result["refused"][:20])
            return self._message(request, 409, f"nothing requeued: not dead any more: {listed}")
        return self._message(request, 200, f"requeued {result['requeued']} dead event(s)")

    async def purge(self, request: Request) -> Response:
        """Delete done events older than a duration (the CLI's `purge`), after a confirmation."""
        form, refusal = await self._action_form(request)
        if refusal is not None:
            return refusal
        from eventqueue.tools.cli import parse_duration

        text = form.get("older_than") or "1d"
        try:
            seconds = parse_duration(text)
        except click.ClickException as exc:
            return self._message(request, 400, exc.message)
        if form.get("confirm") != "yes":
            return self._render(
                request, "confirm.html", page="dead", action="purge",
                what=f"delete done events finished more than {text} ago",
                fields={"older_than": text}, ids=[],
            )  # fmt: skip
        result = await run_in_threadpool(self.reads.purge, seconds)
        return self._message(request, 200, f"purged {result['purged']} done event(s)")

    async def sql(self, request: Request) -> Response:
        """The read-only console: the guards of `eventqueue sql`."""
        query = request.query_params.get("q", "").strip()
        result: dict[str, Any] | None = None
        error = None
        if query:
            try:
                result = await run_in_threadpool(self.reads.sql, query)
            except EventQueueError as exc:
                error = str(exc)
        status = 400 if error else 200
        return self._render(
            request, "sql.html", status, page="sql", query=query, result=result, error=error
        )

    async def _action_form(self, request: Request) -> tuple[dict[str, str], Response | None]:
        if not self.allow_actions:
            return {}, self._message(
                request, 403, "actions are off: start the dashboard with --allow-actions"
            )
        form = {k: str(v) for k, v in (await request.form()).items()}
        if not same_token(form.get("csrf"), self.csrf):
            return form, self._message(request, 403, "refused: missing or stale CSRF token")
        return form, None

    def _message(self, request: Request, status: int, message: str) -> Response:
        return self._render(request, "message.html", status, page="dead", message=message)


def _filter(params: Any) -> EventFilter:
    status = params.get("status") or None
    priority = params.get("priority") or None
    before = params.get("before") or None
    if status is not None:
        Status(status)  # ValueError names the bad value
    if priority is not None and priority not in Priority.__members__:
        raise ValueError(f"bad priority {priority!r}: one of {', '.join(PRIORITIES)}")
    return EventFilter(
        status=status,
        priority=None if priority is None else int(Priority[priority]),
        batch_key=params.get("batch_key") or None,
        aggregate=params.get("aggregate") or None,
        before_id=None if before is None else _ids(before)[0],
    )


def _ids(text: str) -> list[int]:
    words = text.replace(",", " ").split()
    if not all(w.isascii() and w.isdigit() and 0 < int(w) <= _MAX_ID for w in words):
        raise ValueError(f"bad ids {text!r}: event ids are positive integers")
    return [int(w) for w in words]
