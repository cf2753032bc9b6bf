"""A started gRPC server that owns what its servicer holds open, and drains before releasing it.

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
from grpc_health.v1 import health


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
