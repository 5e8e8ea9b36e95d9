"""Who may use the dashboard: the access token, the CSRF token, and which hosts may be bound.

With a token, every request must carry it: `Authorization: Bearer TOKEN`, the cookie a first
`?token=TOKEN` visit sets (HttpOnly, SameSite=Strict), or that query parameter. Without one the
dashboard only binds a loopback address. Actions (POST) also need the app's CSRF token, which
only its own pages carry.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
from http.cookies import SimpleCookie
from urllib.parse import parse_qs

from starlette.types import ASGIApp, Receive, Scope, Send

from eventqueue.core.errors import ConfigError

COOKIE = "eventqueue_token"


def is_loopback(host: str) -> bool:
    """True for localhost, 127.0.0.0/8 and ::1."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuse to serve a non-loopback address without a token."""
    if token is None and not is_loopback(host):
        raise ConfigError(
            f"refusing to serve the dashboard on {host} without a token: other hosts could "
            "read every event; give --token TOKEN (web_token=...) or bind 127.0.0.1"
        )
    if token is not None and len(token) < 16:
        raise ConfigError("the dashboard token must be at least 16 characters long")


def new_csrf_token() -> str:
    """A fresh CSRF token for one app."""
    return secrets.token_urlsafe(32)


def same_token(given: str | None, expected: str) -> bool:
    """Constant-time comparison; None never matches."""
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


class TokenGate:
    """ASGI middleware: every HTTP request must carry `token`, else 401."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        from_query = query.get("token", [None])[0]
        bearer = headers.get("authorization", "")
        cookie = SimpleCookie(headers.get("cookie", "")).get(COOKIE)
        candidates = [
            bearer[7:] if bearer.startswith("Bearer ") else None,
            cookie.value if cookie is not None else None,
            from_query,
        ]
        if not any(same_token(c, self.token) for c in candidates):
            await _send_plain(send, 401, "401: this dashboard needs its token (?token=...)")
            return
        if same_token(from_query, self.token):
            await self.app(scope, receive, _setting_cookie(send, self.token))
            return
        await self.app(scope, receive, send)


def _setting_cookie(send: Send, token: str) -> Send:
    cookie = f"{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/".encode("latin-1")

    async def wrapped(message: dict[str, object]) -> None:
        if message["type"] == "http.response.start":
            headers = list(message.get("headers", []))  # type: ignore[call-overload]
            message = {**message, "headers": [*headers, (b"set-cookie", cookie)]}
        await send(message)

    return wrapped  # type: ignore[return-value]


async def _send_plain(send: Send, status: int, text: str) -> None:
    body = text.encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"text/plain; charset=utf-8")],
        }
    )
    await send({"type": "http.response.body", "body": body})
