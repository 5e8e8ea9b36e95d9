"""Serving the dashboard with uvicorn: in the foreground (`eventqueue web`) or from a thread
for the length of a Dispatcher run (`Dispatcher(web_port=...)`), as /metrics is served.

The socket is bound before the server starts, so the port is known at once (0: any free port)
and a request sent before uvicorn accepts waits in the listen backlog. Without a token only a
loopback address may be bound, and only loopback Host headers are answered (a web page cannot
reach the dashboard through a DNS name that resolves to 127.0.0.1).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import uvicorn
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.types import ASGIApp

from eventqueue.tools.web.security import check_bind

LOOPBACK_NAMES = ["127.0.0.1", "localhost", "::1", "[::1]"]


def guarded(app: ASGIApp, token: str | None) -> ASGIApp:
    """`app` answering only loopback Host names when it has no token."""
    if token is not None:
        return app
    return TrustedHostMiddleware(app, allowed_hosts=LOOPBACK_NAMES)


def bind(host: str, port: int, token: str | None) -> socket.socket:
    """A listening socket on host:port, refused for a public host without a token."""
    check_bind(host, token)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


def url_of(sock: socket.socket) -> str:
    """The dashboard's address."""
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


class _Quiet(uvicorn.Server):
    """A server that leaves signal handling to its host (the Dispatcher's own handlers)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def serve(app: ASGIApp, sock: socket.socket) -> None:
    """Serve in the foreground until SIGINT/SIGTERM."""
    config = uvicorn.Config(app, log_level="warning", lifespan="off")
    uvicorn.Server(config).run(sockets=[sock])


@dataclass
class WebServer:
    """The dashboard served from a thread; `close()` stops it."""

    url: str
    _server: uvicorn.Server
    _thread: threading.Thread
    _sock: socket.socket

    @property
    def port(self) -> int:
        return int(self._sock.getsockname()[1])

    def close(self) -> None:
        """Stop serving and wait for the thread. Idempotent."""
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join()
        self._sock.close()

    async def aclose(self) -> None:
        """`close()` without blocking the event loop."""
        await asyncio.to_thread(self.close)


def start_web_server(
    app: ASGIApp, *, host: str = "127.0.0.1", port: int = 0, token: str | None = None
) -> WebServer:
    """Serve `app` on host:port from a new thread (its own event loop)."""
    sock = bind(host, port, token)
    config = uvicorn.Config(guarded(app, token), log_level="warning", lifespan="off")
    server = _Quiet(config)
    thread = threading.Thread(
        target=lambda: asyncio.run(server.serve(sockets=[sock])),
        name="eventqueue-web",
        daemon=True,
    )
    thread.start()
    return WebServer(url_of(sock), server, thread, sock)
