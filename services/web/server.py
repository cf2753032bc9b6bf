"""Serving the gateway: uvicorn in a background thread (or the caller's) on a bound socket."""

from __future__ import annotations

import errno
import logging
import socket
import threading
import time
from dataclasses import replace
from typing import Any

from spr.config import Config

log = logging.getLogger(__name__)

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0


class PortInUse(OSError):
    """The port the gateway was told to listen on is taken."""


class WebServer:
    """A running gateway: ``url`` (``http://HOST:PORT/``), ``port``, ``app``; :meth:`stop`."""

    def __init__(self, server: Any, app: Any, sock: socket.socket, thread: threading.Thread | None) -> None:
        self._server = server
        self.app = app
        self._sock = sock
        self._thread = thread
        host, port = sock.getsockname()[:2]
        self.host = str(host)
        self.port = int(port)
        self.url = f"http://{_url_host(self.host)}:{self.port}/"

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Stop serving (open streams get ``timeout_s`` to finish) and close the gateway's client."""
        self._server.should_exit = True
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                self._server.force_exit = True
                self._thread.join(timeout_s)
        self._sock.close()
        self.app.state.close()

    def __enter__(self) -> "WebServer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def serve_web(config: Config, port: int | None = None, target: str | None = None, block: bool = False) -> WebServer:
    """Serve the gateway for ``config`` on ``config.web.host`` and ``port`` (None:
    ``config.web.port``; 0: a free one), calling the search service at ``target`` (None:
    ``config.web.target`` or ``services.host:services.search_port``).

    Returns once it listens, serving from a background thread; ``block`` serves in the caller
    until SIGINT/SIGTERM (when called from the main thread) and returns the stopped server.
    :class:`PortInUse` (an OSError) when the port is taken."""
    import uvicorn

    from .app import create_app

    if target is not None:
        config = config.replace(web=replace(config.web, target=target))
    host = config.web.host
    port = config.web.port if port is None else int(port)
    sock = _bind(host, port)
    try:
        app = create_app(config)
        uv_config = uvicorn.Config(
            app, log_config=None, access_log=False, server_header=False, lifespan="off",
            timeout_graceful_shutdown=int(STOP_TIMEOUT_S), h11_max_incomplete_event_size=32 * 1024,
        )
        server = uvicorn.Server(uv_config)
    except BaseException:
        sock.close()
        raise
    if block:
        web = WebServer(server, app, sock, None)
        log.info("web page at %s", web.url)
        try:
            server.run(sockets=[sock])
        finally:
            web.stop()
        return web
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="spr-web", daemon=True)
    thread.start()
    web = WebServer(server, app, sock, thread)
    deadline = time.monotonic() + START_TIMEOUT_S
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            web.stop(1.0)
            raise RuntimeError(f"the web gateway did not start on {host}:{web.port} (see the log)")
        time.sleep(0.01)
    log.info("web page at %s", web.url)
    return web


def _bind(host: str, port: int) -> socket.socket:
    """A listening-ready socket on ``host:port`` (the port checked now, not in the thread)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise PortInUse(errno.EADDRINUSE, f"port {port} on {host} is in use; stop what listens there or pick "
                            "another with --port / web.port") from None
        raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.set_inheritable(True)
    return sock


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host
