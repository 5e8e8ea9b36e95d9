"""The web dashboard (`eventqueue[web]`): Overview, Events, Event, Dead letters and SQL pages.

`create_app(queue_or_location, allow_actions=False)` is an ASGI app to mount in a host
application; `eventqueue web` and `Dispatcher(web_port=...)` serve it (server.py).
"""

from eventqueue.web.app import create_app

__all__ = ["create_app"]
