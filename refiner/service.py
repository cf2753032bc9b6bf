"""The refiner's gRPC service (``spr.v1.RefinerService``): re-scores and sharpens the coarse
proposals of one query with SPR_CLIP.

A thin adapter over :class:`~spr.refine.inprocess.InProcessRefiner`, which does the work (feature
reads, the shared dynamic batcher, placing refined spans): a call's request becomes the core's
:class:`spr.refinement.RefineRequest` (visual features: the only ones on the wire), the call's
deadline bounds the wait, a :class:`spr.refinement.RefineFailed` becomes its status code, and the
:class:`spr.refinement.Refinement` becomes the response (:mod:`spr.refine_client` holds the
mapping both ways).

:func:`serve_refiner` starts the server with standard health checking (``grpc.health.v1``),
server reflection, and the TLS / bearer-token settings of :mod:`spr.grpc_security`.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from spr import grpc_errors, grpc_security
from spr.api.v1 import refiner_pb2, refiner_pb2_grpc
from spr.features import FrameFeatureStore
from spr.grpc_server import SERVER_OPTIONS, DrainingServer, enable_reflection
from spr.limits import MAX_REFINE_PROPOSALS
from spr.models.refiner import load_refiner
from spr.refine_client import STATUS_OF_FAILURE, refinement_to_pb, request_from_pb
from spr.refinement import RefineFailed, RefinerLoadError
from spr.telemetry import RefinerMetrics, serve_metrics

from .inprocess import InProcessRefiner, start_batcher

log = logging.getLogger(__name__)

__all__ = [
    "MAX_PROPOSALS",
    "SERVICE_NAME",
    "RefinerServer",
    "RefinerServicer",
    "serve_refiner",
]

SERVICE_NAME = refiner_pb2.DESCRIPTOR.services_by_name["RefinerService"].full_name  # "spr.v1.RefinerService"
# The most proposals one call may carry (spr.limits: the search engine never sends more).
MAX_PROPOSALS = MAX_REFINE_PROPOSALS
# Read threads per refiner process: one feature file open per distinct video of a call.
_READ_THREADS = 8
# The smallest query norm refined (spr.stores.l2_normalize floors norms at 1e-12).
_MIN_QUERY_NORM = 1e-12


class RefinerServicer(refiner_pb2_grpc.RefinerServiceServicer):
    """``Refine``: one query's proposals -> re-ranked, refined moments, by ``refiner``."""

    def __init__(self, refiner: InProcessRefiner, metrics: RefinerMetrics | None = None) -> None:
        self.refiner = refiner
        self.metrics = metrics if metrics is not None else RefinerMetrics.for_registry()

    def Refine(self, request: refiner_pb2.RefineRequest, context: grpc.ServicerContext) -> refiner_pb2.RefineResponse:
        """:meth:`_refine`, its outcome recorded by status code (an aborted call's code comes
        from the context; an unexpected exception is UNKNOWN, as gRPC reports it)."""
        try:
            response = self._refine(request, context)
        except BaseException:
            code = context.code() if hasattr(context, "code") else None
            self.metrics.record(code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN")
            raise
        self.metrics.record("OK", response)
        return response

    def _refine(self, request: refiner_pb2.RefineRequest, context: grpc.ServicerContext) -> refiner_pb2.RefineResponse:
        core = request_from_pb(request)
        # A query whose float32 norm overflows (every value 3e38) or vanishes would score every
        # frame 0 or NaN; refused like the search service refuses such an embedding.
        # (NaN and infinity are the refiner's own refusal.)
        query = np.asarray(core.query, dtype=np.float32)
        with np.errstate(over="ignore"):
            norm = float(np.linalg.norm(query)) if query.size and np.isfinite(query).all() else 1.0
        if not math.isfinite(norm) or norm < _MIN_QUERY_NORM:
            grpc_errors.abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"query's L2 norm is {norm:g} in float32; it must be finite and at least {_MIN_QUERY_NORM:g}",
                reason="INVALID_QUERY",
                field="query",
                limit=f"finite float32 norm >= {_MIN_QUERY_NORM:g}",
            )
        try:
            refinement = self.refiner.refine(core, timeout_s=context.time_remaining())
        except RefineFailed as exc:
            grpc_errors.abort(context, STATUS_OF_FAILURE[exc.kind], exc.message, reason=f"REFINE_{exc.kind.upper()}")
        except RefinerLoadError as exc:  # not on this path (the model is loaded at start), but never UNKNOWN
            grpc_errors.abort(context, grpc.StatusCode.FAILED_PRECONDITION, str(exc), reason="REFINER_NOT_LOADED")
        return refinement_to_pb(refinement)


class RefinerServer(DrainingServer):
    """A started refiner server that also owns the batcher and the read pool, closed after
    in-flight calls drained (see :class:`spr.grpc_server.DrainingServer`)."""

    def __init__(
        self,
        server: grpc.Server,
        servicer: RefinerServicer,
        health_servicer: health.HealthServicer,
        read_pool: ThreadPoolExecutor,
    ) -> None:
        super().__init__(server, health_servicer, "refiner")
        self.servicer = servicer
        self._read_pool = read_pool

    def release(self) -> None:
        self.servicer.refiner.close()
        self._read_pool.shutdown(wait=False)


def serve_refiner(
    config: Any,
    port: int | None = None,
    block: bool = False,
    *,
    in_dim: int | None = None,
    metrics_port: int | None = None,
    metrics_registry: CollectorRegistry | None = None,
) -> tuple[RefinerServer, int]:
    """Start the refiner on ``config.services.host``:``port`` (default ``services.refiner_port``;
    0 picks a free port) and return the server and its bound port. ``block`` waits until the
    server stops (SIGTERM stops it gracefully when called from the main thread).

    ``in_dim`` is the CLIP feature size (default: that of ``clip.model``); the refiner comes from
    ``refiner.checkpoint`` (empty: random weights, flagged in every response); batching,
    precision and worker threads from ``config.refiner``.

    Prometheus metrics go to ``metrics_registry`` (default: the process's refiner registry) and,
    when ``metrics.enabled``, are served on ``metrics.host``:``metrics_port`` (None: the
    configured ``metrics.refiner_port``; 0: a free one) as ``server.metrics_port``; an endpoint
    that cannot start is a warning, never an error."""
    from spr.models.clip import clip_feature_dim, resolve_device

    in_dim = in_dim if in_dim is not None else clip_feature_dim(config.clip.model)
    device = resolve_device(config.refiner.device)
    model = load_refiner(config.refiner.checkpoint, in_dim, device)
    rc = config.refiner
    metrics = RefinerMetrics.for_registry(metrics_registry)
    batcher = start_batcher(config, model, metrics)
    read_pool = ThreadPoolExecutor(max_workers=_READ_THREADS, thread_name_prefix="refiner-read")
    refiner = InProcessRefiner(FrameFeatureStore(config.features_url), batcher, read_pool=read_pool)
    servicer = RefinerServicer(refiner, metrics=metrics)

    grpc_server = grpc.server(
        ThreadPoolExecutor(max_workers=rc.workers, thread_name_prefix="refiner-rpc"),
        interceptors=grpc_security.server_interceptors(config.security),
        options=SERVER_OPTIONS,  # no SO_REUSEPORT: a taken port fails start-up (PortInUse)
    )
    # Undecodable request bytes are INVALID_ARGUMENT, not grpcio's INTERNAL (spr.grpc_errors).
    grpc_errors.add_servicer(refiner_pb2_grpc.add_RefinerServiceServicer_to_server, servicer, grpc_server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, grpc_server)
    enable_reflection(grpc_server, (SERVICE_NAME, health.SERVICE_NAME))
    server = RefinerServer(grpc_server, servicer, health_servicer, read_pool)
    address = f"{config.services.host}:{config.services.refiner_port if port is None else port}"
    try:
        bound = grpc_security.add_server_port(grpc_server, address, config.security)
    except Exception:
        batcher.close()
        read_pool.shutdown(wait=False)
        raise
    server.start()
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    server.metrics_server = serve_metrics(
        config.metrics, config.metrics.refiner_port if metrics_port is None else metrics_port, metrics.registry, "refiner"
    )
    server.metrics_port = server.metrics_server.port if server.metrics_server is not None else None
    log.info(
        "refiner listening",
        extra={
            "address": f"{config.services.host}:{bound}",
            "model": model.name,
            "device": str(device),
            "tls": bool(config.security.tls_cert),
            "token": bool(config.security.token),
            "max_batch_proposals": batcher.max_batch_proposals,
            "max_wait_ms": batcher.max_wait_s * 1000.0,
            "max_batch_frames": batcher.max_batch_frames,
            "context_window": model.shape.context_window,
            "metrics_port": server.metrics_port,
        },
    )
    if block:
        _block(server)
    return server, bound


def _block(server: RefinerServer, grace_s: float = 5.0) -> None:
    """Wait for termination; SIGTERM (Kubernetes) and Ctrl-C drain calls for ``grace_s`` first."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: server.stop(grace_s))
    try:
        server.wait_for_termination()
    except KeyboardInterrupt:
        server.stop(grace_s).wait()
