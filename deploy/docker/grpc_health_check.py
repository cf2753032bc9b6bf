#!/usr/bin/env python3
"""Health check of an SPR gRPC service, for Docker ``HEALTHCHECK`` and Kubernetes ``exec`` probes.

Calls ``grpc.health.v1.Health/Check`` for the service's own name (``spr.v1.SearchService`` or
``spr.v1.RefinerService``) and exits 0 when it answers SERVING, 1 otherwise (NOT_SERVING while
draining on shutdown, unreachable, timed out). It reads the same configuration as the service
(``SPR_*`` variables, ``$SPR_CONFIG``), so the port is ``services.search_port`` /
``services.refiner_port`` and TLS is used when ``security.tls_cert`` (or ``tls_ca``) is set.

Why not the kubelet's built-in ``grpc:`` probe everywhere: it cannot speak TLS, so the cluster
overlay (TLS on) probes with this script instead; plaintext deployments use ``grpc:`` probes.
Health checks need no bearer token (the services exempt them).

    python /opt/spr/bin/grpc_health_check.py search
    python /opt/spr/bin/grpc_health_check.py refiner --tls-server-name spr-refiner
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# service -> (gRPC service name answered by the health servicer, ServicesConfig port field)
SERVICES = {
    "search": ("spr.v1.SearchService", "search_port"),
    "refiner": ("spr.v1.RefinerService", "refiner_port"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="grpc_health_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("service", choices=sorted(SERVICES))
    parser.add_argument("--host", default="127.0.0.1", help="address to dial (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default: the configured services.<service>_port)")
    parser.add_argument(
        "--tls-server-name",
        help="name to check the server certificate against (default: --host); the certificate "
        "must carry it, e.g. the Service name",
    )
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds (default 3)")
    args = parser.parse_args(argv)

    from spr.config import ConfigError, load_config

    try:
        config = load_config()
    except ConfigError as exc:
        print(f"grpc_health_check: configuration error: {exc}", file=sys.stderr)
        return 1

    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    name, port_field = SERVICES[args.service]
    port = args.port or getattr(config.services, port_field)
    target = f"{args.host}:{port}"
    security = config.security
    if security.tls_cert or security.tls_ca:
        # A CA when one is configured; otherwise the server's own certificate (self-signed).
        roots = Path(security.tls_ca or security.tls_cert).read_bytes()
        options = [("grpc.ssl_target_name_override", args.tls_server_name)] if args.tls_server_name else []
        channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=roots), options)
    else:
        channel = grpc.insecure_channel(target)
    with channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=name), timeout=args.timeout
            )
        except grpc.RpcError as exc:
            print(f"{name} at {target}: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    print(f"{name} at {target}: {status}")
    return 0 if response.status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    sys.exit(main())
