"""Clean, structured gRPC errors for both services (search and refiner).

* :func:`abort` ends a call with a ``google.rpc.Status`` (grpcio-status) carrying an
  ``ErrorInfo`` (a stable ``reason``, :data:`ERROR_DOMAIN`, and ``field`` / ``limit`` /
  ``incident`` metadata) and, for a refusal naming a request field, a ``BadRequest`` with that
  field and the limit it broke. Clients that ignore details still get the code and message;
  ``grpc_status.rpc_status.from_call(error)`` (Python) or the ``grpc-status-details-bin``
  trailer (any language) gives the details.
* :func:`add_servicer` registers a servicer like the generated ``add_*Servicer_to_server``,
  with request deserializers that never raise: grpcio answers a deserializer that raises (bad
  UTF-8 in a string field, garbage bytes) with INTERNAL "Exception deserializing request!" and
  a traceback in the log; here the call gets INVALID_ARGUMENT naming the message type.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NoReturn

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

__all__ = ["ERROR_DOMAIN", "UNDECODABLE_REQUEST", "abort", "add_servicer"]

# ErrorInfo.domain of every error the services raise (the proto package).
ERROR_DOMAIN = "spr.v1"
# ErrorInfo.reason of a request whose bytes do not parse as its message type.
UNDECODABLE_REQUEST = "UNDECODABLE_REQUEST"


def abort(
    context: grpc.ServicerContext,
    code: grpc.StatusCode,
    message: str,
    *,
    reason: str,
    field: str = "",
    limit: str = "",
    metadata: Mapping[str, str] | None = None,
) -> NoReturn:
    """End the call with ``code`` and ``message`` plus an ``ErrorInfo`` (``reason``; metadata:
    ``field``, ``limit`` when given, and ``metadata``) and, when ``field`` is given, a
    ``BadRequest`` field violation (``field``, the message as its description). Raises, like
    :meth:`grpc.ServicerContext.abort`."""
    info = {k: v for k, v in (("field", field), ("limit", limit)) if v}
    info.update(metadata or {})
    details = [_packed(error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN, metadata=info))]
    if field:
        violation = error_details_pb2.BadRequest.FieldViolation(field=field, description=message, reason=reason)
        details.append(_packed(error_details_pb2.BadRequest(field_violations=[violation])))
    status = status_pb2.Status(code=code.value[0], message=message, details=details)
    context.abort_with_status(rpc_status.to_status(status))
    raise AssertionError("unreachable: abort_with_status raises")  # pragma: no cover


def add_servicer(add_to_server: Callable[[Any, Any], None], servicer: Any, server: grpc.Server) -> None:
    """``add_to_server(servicer, server)`` (a generated ``add_*Servicer_to_server``), except that
    every unary-request method's deserializer never raises: undecodable bytes reach the
    method as a marker and the call is answered INVALID_ARGUMENT before the servicer runs."""
    recorder = _Recorder()
    add_to_server(servicer, recorder)
    for service, handlers in recorder.services.items():
        guarded = {name: _guarded(f"{service}/{name}", h) for name, h in handlers.items()}
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, guarded),))
        server.add_registered_method_handlers(service, guarded)


class _Undecodable:
    """What a guarded deserializer returns for bytes that do not parse."""

    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error


class _Recorder:
    """Stands in for the server while a generated function registers its handlers."""

    def __init__(self) -> None:
        self.services: dict[str, dict[str, grpc.RpcMethodHandler]] = {}

    def add_generic_rpc_handlers(self, generic_rpc_handlers: Any) -> None:
        pass  # the same handlers come again through add_registered_method_handlers

    def add_registered_method_handlers(self, service_name: str, method_handlers: Any) -> None:
        self.services[service_name] = dict(method_handlers)


def _guarded(method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    if handler.request_streaming or handler.request_deserializer is None:
        return handler  # no such method in either service; left as grpcio handles it
    deserialize = handler.request_deserializer
    behaviour = handler.unary_stream if handler.response_streaming else handler.unary_unary

    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception as exc:  # google.protobuf.message.DecodeError and kin
            return _Undecodable(exc)

    def call(request: Any, context: grpc.ServicerContext) -> Any:
        if isinstance(request, _Undecodable):
            abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the request to {method} does not parse: {request.error}",
                reason=UNDECODABLE_REQUEST,
            )
        return behaviour(request, context)

    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(call, parse, handler.response_serializer)
    return grpc.unary_unary_rpc_method_handler(call, parse, handler.response_serializer)


def _packed(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed
