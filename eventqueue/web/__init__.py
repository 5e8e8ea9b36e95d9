"""The web dashboard's public API (`eventqueue[web]`); it lives in tools/web/.

`create_app(queue_or_location, allow_actions=False)` is an ASGI app to mount in a host
application (Starlette, FastAPI); `start_web_server` serves one from a thread, as
`Dispatcher(web_port=...)` does for a run. The runtime reaches the dashboard only through
this module, as a host application would.
"""

from eventqueue.tools.web.app import create_app
from eventqueue.tools.web.security import check_bind
from eventqueue.tools.web.server import WebServer, start_web_server

__all__ = ["WebServer", "check_bind", "create_app", "start_web_server"]
