"""``spr web``: the web page and its HTTP/JSON gateway, a client of the search service.

:func:`create_app` builds the ASGI app (FastAPI), :func:`serve_web` serves it with uvicorn;
see :mod:`spr.search.web.app` for the routes. Nothing heavy is imported here (no model, no
catalog): the gateway only speaks gRPC to the search service.
"""

from .app import create_app
from .server import PortInUse, WebServer, serve_web

__all__ = ["PortInUse", "WebServer", "create_app", "serve_web"]
