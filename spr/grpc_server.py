"""What the gRPC servers share: their options (:data:`SERVER_OPTIONS`), server reflection v1 and
v1alpha (:func:`enable_reflection`), and a started server that owns what its servicer holds
open and drains before releasing it (:class:`DrainingServer`).

Both services wrap their :class:`grpc.Server` in a :class:`DrainingServer`: ``stop(grace)``
reports NOT_SERVING to health checks (load balancers stop sending), lets in-flight calls finish
within ``grace``, and only then runs the service's ``release`` (close the catalog, the batcher,
the metrics endpoint...), so no call ever meets a closed resource.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

__all__ = ["REFLECTION_V1", "SERVER_OPTIONS", "DrainingServer", "enable_reflection"]

# grpcio sets SO_REUSEPORT on listening sockets by default: a second server on a taken port then
# starts without error and the kernel splits new connections between the two (seen: two
# `spr serve` over different corpora answering alternately). Off, the bind fails and
# spr.grpc_security.add_server_port says "port N is in use".
SERVER_OPTIONS: tuple[tuple[str, Any], ...] = (("grpc.so_reuseport", 0),)

# Reflection v1 is what current clients (grpcurl, grpc-js, Postman) ask first; grpcio-reflection
# ships v1alpha only. The two protocols are the same messages field for field under another
# package, so v1 is served by the v1alpha servicer with the v1alpha codecs.
REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"
_REFLECTION_V1_FILE = "grpc/reflection/v1/reflection.proto"


def enable_reflection(server: grpc.Server, service_names: tuple[str, ...]) -> None:
    """Serve reflection v1 and v1alpha on ``server``, listing ``service_names`` and both
    reflection services."""
    _register_reflection_v1_descriptor()
    names = (*service_names, reflection.SERVICE_NAME, REFLECTION_V1)
    servicer = reflection.ReflectionServicer(names)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    info = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(REFLECTION_V1, {"ServerReflectionInfo": info}),))


def _register_reflection_v1_descriptor() -> None:
    """Put ``grpc/reflection/v1/reflection.proto`` in the default pool (v1alpha's file under the
    v1 package), so that reflection can describe its own v1 service too."""
    pool = descriptor_pool.Default()
    try:
        pool.FindFileByName(_REFLECTION_V1_FILE)
        return
    except KeyError:
        pass
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    old, new = proto.package, "grpc.reflection.v1"
    proto.name, proto.package = _REFLECTION_V1_FILE, new
    proto.options.Clear()  # v1alpha's java/csharp package options name v1alpha
    for message in proto.message_type:
        for f in message.field:
            if f.type_name.startswith(f".{old}."):
                f.type_name = f".{new}." + f.type_name[len(old) + 2 :]
    for service in proto.service:
        for method in service.method:
            method.input_type = f".{new}." + method.input_type[len(old) + 2 :]
            method.output_type = f".{new}." + method.output_type[len(old) + 2 :]
    try:
        pool.AddSerializedFile(proto.SerializeToString())
    except (TypeError, ValueError):  # added meanwhile by another thread or a newer grpcio-reflection
        pass


class DrainingServer(grpc.Server):
    """Delegates to ``server``; ``release`` runs once the server has stopped."""

    def __init__(self, server: grpc.Server, health_servicer: health.HealthServicer, name: str) -> None:
        self._server = server
        self.health = health_servicer
        self._name = name
        self.metrics_server: Any | None = None  # a /metrics endpoint to stop with the server
        self.metrics_port: int | None = None

    def release(self) -> None:
        """Close what the service holds open (override); called after the server stopped."""

    def stop(self, grace: float | None) -> threading.Event:
        self.health.enter_graceful_shutdown()
        stopped = self._server.stop(grace)
        done = threading.Event()

        def release() -> None:
            stopped.wait()
            self.release()
            if self.metrics_server is not None:
                self.metrics_server.stop()
            done.set()

        threading.Thread(target=release, name=f"{self._name}-stop", daemon=True).start()
        return done

    def start(self) -> None:
        self._server.start()

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        return self._server.wait_for_termination(timeout)

    def add_generic_rpc_handlers(self, generic_rpc_handlers: Any) -> None:
        self._server.add_generic_rpc_handlers(generic_rpc_handlers)

    def add_registered_method_handlers(self, service_name: str, method_handlers: Any) -> None:
        self._server.add_registered_method_handlers(service_name, method_handlers)

    def add_insecure_port(self, address: str) -> int:
        return self._server.add_insecure_port(address)

    def add_secure_port(self, address: str, server_credentials: grpc.ServerCredentials) -> int:
        return self._server.add_secure_port(address, server_credentials)
