"""TLS and bearer-token authentication shared by the gRPC services (search, refiner) and their
clients, driven by :class:`spr.config.SecurityConfig`.

Everything is off by default: the embedded setup listens on loopback only. Set
``security.tls_cert``/``security.tls_key`` to serve TLS, ``security.tls_ca`` for clients to
verify the server with (empty: the system roots), and ``security.token`` to require
``authorization: Bearer <token>`` metadata (the scheme in any case, RFC 7235) on every call
except health checks, which load balancers and Kubernetes probes make without credentials.

Server side::

    server = grpc.server(pool, interceptors=server_interceptors(config.security), options=SERVER_OPTIONS)
    port = add_server_port(server, f"{host}:{port}", config.security)

Client side::

    channel = open_channel(f"{host}:{port}", config.security)
    stub.Method(request, metadata=client_metadata(config.security))
"""

from __future__ import annotations

import errno
import hmac
import logging
import socket
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc

log = logging.getLogger(__name__)

__all__ = [
    "HEALTH_METHOD_PREFIX",
    "PortInUse",
    "TokenAuthInterceptor",
    "add_server_port",
    "channel_credentials",
    "client_metadata",
    "open_channel",
    "server_credentials",
    "server_interceptors",
]

# Probes (Kubernetes, load balancers) check health without credentials.
HEALTH_METHOD_PREFIX = "/grpc.health.v1.Health/"
_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]", "::1")
# RFC 7235: the auth-scheme is case-insensitive ("Bearer", "bearer", "BEARER").
_BEARER = "bearer"


class PortInUse(RuntimeError):
    """The address a gRPC server was to listen on is taken (by another server, maybe another
    ``spr serve`` over another data directory): start-up fails rather than share the port."""

    def __init__(self, address: str, port: int) -> None:
        super().__init__(f"port {port} is in use (cannot listen on {address})")
        self.address = address
        self.port = port


def _read(path: str, what: str) -> bytes:
    file = Path(path).expanduser()
    try:
        return file.read_bytes()
    except OSError as exc:
        raise ValueError(f"security.{what} = {path!r} cannot be read: {exc.strerror or exc}") from None


def server_credentials(security: Any) -> grpc.ServerCredentials | None:
    """TLS credentials from ``security.tls_cert``/``tls_key`` (PEM files), or None when both are
    empty (plaintext). Setting only one of the two is an error, never a silent plaintext server."""
    cert, key = security.tls_cert, security.tls_key
    if not cert and not key:
        return None
    if not (cert and key):
        missing = "tls_key" if cert else "tls_cert"
        raise ValueError(f"TLS needs both security.tls_cert and security.tls_key; security.{missing} is empty")
    return grpc.ssl_server_credentials([(_read(key, "tls_key"), _read(cert, "tls_cert"))])


def channel_credentials(security: Any) -> grpc.ChannelCredentials | None:
    """TLS credentials for a client, or None for a plaintext channel.

    TLS is on when ``security.tls_ca`` or ``security.tls_cert`` is set (one configuration is
    shared by servers and clients). The server is verified against ``tls_ca`` when set, else
    against the system roots."""
    if not security.tls_ca and not security.tls_cert:
        return None
    roots = _read(security.tls_ca, "tls_ca") if security.tls_ca else None
    return grpc.ssl_channel_credentials(root_certificates=roots)


def client_metadata(security: Any) -> list[tuple[str, str]]:
    """The call metadata a client sends: the bearer token when one is configured."""
    return [("authorization", f"Bearer {security.token}")] if security.token else []


def open_channel(target: str, security: Any, options: Sequence[tuple[str, Any]] | None = None) -> grpc.Channel:
    """A channel to ``target`` (``host:port``): TLS per :func:`channel_credentials`, else plaintext.
    The token is not bound to the channel; pass :func:`client_metadata` with each call."""
    creds = channel_credentials(security)
    if creds is None:
        return grpc.insecure_channel(target, options=options)
    return grpc.secure_channel(target, creds, options=options)


def add_server_port(server: grpc.Server, address: str, security: Any) -> int:
    """Bind ``address`` (``host:port``; port 0 picks a free one) with TLS when configured and
    return the bound port. Raises :class:`PortInUse` when another process listens there (the
    server must have been built with :data:`spr.grpc_server.SERVER_OPTIONS`, which turn off
    grpcio's SO_REUSEPORT; with it, the bind would succeed and the kernel would split new
    connections between the two servers), RuntimeError when it cannot be bound otherwise."""
    creds = server_credentials(security)
    host, _, port_text = address.rpartition(":")
    if security.token and creds is None and host not in _LOOPBACK_HOSTS:
        log.warning(
            "a bearer token is required but TLS is off on a non-loopback address: the token travels "
            "in clear text; set security.tls_cert and security.tls_key",
            extra={"address": address},
        )
    try:
        port = server.add_secure_port(address, creds) if creds is not None else server.add_insecure_port(address)
    except RuntimeError as exc:
        _raise_if_in_use(address, host, port_text)
        raise RuntimeError(f"cannot listen on {address}: {exc}") from None
    if port == 0:
        _raise_if_in_use(address, host, port_text)
        raise RuntimeError(f"cannot listen on {address}")
    return port


def _raise_if_in_use(address: str, host: str, port_text: str) -> None:
    """Raise :class:`PortInUse` when binding ``host:port`` fails with EADDRINUSE (grpcio's own
    error does not say why it failed)."""
    try:
        port = int(port_text)
    except ValueError:
        return
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host.strip("[]") or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError:
        return
    for family, kind, proto, _, sockaddr in infos[:1]:
        with socket.socket(family, kind, proto) as probe:
            # As grpcio binds: SO_REUSEADDR, so a port in TIME_WAIT does not count as in use.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(sockaddr)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise PortInUse(address, port) from None


def server_interceptors(security: Any) -> list[grpc.ServerInterceptor]:
    """The interceptors :func:`grpc.server` needs for ``security``: token checking when a token is set."""
    return [TokenAuthInterceptor(security.token)] if security.token else []


class TokenAuthInterceptor(grpc.ServerInterceptor):
    """Rejects calls without ``authorization: Bearer <token>`` metadata with UNAUTHENTICATED.

    Methods whose full name starts with one of ``exempt_prefixes`` (health checks by default)
    pass without a token. Tokens are compared in constant time."""

    def __init__(self, token: str, exempt_prefixes: Sequence[str] = (HEALTH_METHOD_PREFIX,)) -> None:
        if not token:
            raise ValueError("TokenAuthInterceptor needs a non-empty token")
        self._expected = token.encode()
        self._exempt = tuple(exempt_prefixes)

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method or ""
        if method.startswith(self._exempt) or self._authorized(handler_call_details.invocation_metadata):
            return continuation(handler_call_details)
        handler = continuation(handler_call_details)
        if handler is None:
            return None  # unknown method: let gRPC answer UNIMPLEMENTED
        log.info("rejected a call without a valid bearer token", extra={"method": method})
        return _rejecting_handler(handler)

    def _authorized(self, metadata: Sequence[tuple[str, str | bytes]] | None) -> bool:
        for key, value in metadata or ():
            if key == "authorization":
                given = value if isinstance(value, bytes) else value.encode()
                # "<scheme> <credentials>": the scheme in any case (RFC 7235), one or more spaces.
                scheme, _, credentials = given.partition(b" ")
                if scheme.decode("latin-1").lower() != _BEARER:
                    return False
                return hmac.compare_digest(credentials.lstrip(b" "), self._expected)
        return False


def _rejecting_handler(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A handler of the same streaming kind as ``handler`` that fails with UNAUTHENTICATED."""
    message = "missing or invalid bearer token: send `authorization: Bearer <token>` metadata"

    def reject(_request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    def reject_stream(_request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        yield  # pragma: no cover - makes this a generator; abort raises first

    codecs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(reject_stream, **codecs)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(reject, **codecs)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(reject_stream, **codecs)
    return grpc.unary_unary_rpc_method_handler(reject, **codecs)
