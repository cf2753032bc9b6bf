"""The refiner's gRPC service (``spr.v1.RefinerService``): re-scores and sharpens the coarse
proposals of one query with SPR_CLIP.

Per call: validate the request, read each proposal's per-second features from the frame-feature
store (one file open per distinct video, videos read in parallel), drop proposals whose
features are gone (a video deleted meanwhile), run the rest through the shared
:class:`~refiner.batching.DynamicBatcher` (concurrent calls share forward passes), and answer
moments best first.

:func:`serve_refiner` starts the server with standard health checking (``grpc.health.v1``),
server reflection, and the TLS / bearer-token settings of :mod:`spr.grpc_security`.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry

from spr import grpc_security
from spr.grpc_server import DrainingServer
from spr.api.v1 import moments_pb2, refiner_pb2, refiner_pb2_grpc
from spr.features import FrameFeatures, FrameFeatureStore
from spr.telemetry import RefinerMetrics, serve_metrics

from .batching import BatcherClosed, DynamicBatcher, RefineOutcome, RefineWork
from spr.models.refiner import SPRClipRefiner, load_refiner, place_refined

log = logging.getLogger(__name__)

__all__ = [
    "MAX_PROPOSALS",
    "SERVICE_NAME",
    "RefinerServer",
    "RefinerServicer",
    "read_proposal_features",
    "serve_refiner",
]

SERVICE_NAME = refiner_pb2.DESCRIPTOR.services_by_name["RefinerService"].full_name  # "spr.v1.RefinerService"
# A query has ~100 proposals (top-200 segments merged); 1000 bounds a call's memory and time.
MAX_PROPOSALS = 1000
# Without a client deadline, a call still gives up eventually rather than holding a thread.
_DEFAULT_WAIT_S = 60.0


class _InvalidRequest(ValueError):
    """A request the client must fix (INVALID_ARGUMENT)."""


def read_proposal_features(
    store: FrameFeatureStore, requests: Sequence[tuple[int, float, float]], pool: Executor | None = None
) -> list[FrameFeatures | None]:
    """``[(video_id, start_s, end_s), ...]`` -> features in input order, None where the video has
    none (deleted meanwhile): a missing video costs only its own proposals."""
    return store.read_many(requests, missing="none", pool=pool)


class RefinerServicer(refiner_pb2_grpc.RefinerServiceServicer):
    """``Refine``: one query's proposals -> re-ranked, refined moments."""

    def __init__(
        self,
        model: SPRClipRefiner,
        store: FrameFeatureStore,
        batcher: DynamicBatcher,
        read_pool: Executor | None = None,
        max_proposals: int = MAX_PROPOSALS,
        metrics: RefinerMetrics | None = None,
    ) -> None:
        self.model = model
        self.store = store
        self.batcher = batcher
        self.read_pool = read_pool
        self.max_proposals = max_proposals
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
        started = time.perf_counter()
        try:
            query = self._validate(request)
        except _InvalidRequest as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        response = refiner_pb2.RefineResponse(model=self.model.name, random_weights=self.model.random_weights)
        if not request.proposals:
            return response

        proposals, features = self._read_features(request.proposals, context)
        response.dropped = len(request.proposals) - len(proposals)
        response.timings_ms["features"] = (time.perf_counter() - started) * 1000.0
        if proposals:
            work = RefineWork(query, [f.features for f in features], request.query_projected)
            outcome = self._run_model(work, context)
            self._add_moments(response, proposals, features, outcome)
            response.batch_proposals = outcome.batch_proposals
            response.batch_queries = outcome.batch_queries
            response.timings_ms["queue"] = outcome.queue_ms
            response.timings_ms["model"] = outcome.model_ms
        response.timings_ms["total"] = (time.perf_counter() - started) * 1000.0
        return response

    def _read_features(
        self, proposals: Sequence[refiner_pb2.RefineProposal], context: grpc.ServicerContext
    ) -> tuple[list[refiner_pb2.RefineProposal], list[FrameFeatures]]:
        """The proposals whose video still has features, and those features."""
        try:
            spans = [(p.video_id, p.start_s, p.end_s) for p in proposals]
            features = read_proposal_features(self.store, spans, self.read_pool)
        except OSError as exc:  # object store or disk trouble: worth a retry elsewhere
            log.exception("cannot read frame features")
            context.abort(grpc.StatusCode.UNAVAILABLE, f"cannot read frame features: {exc}")
        missing = sorted({p.video_id for p, f in zip(proposals, features) if f is None})
        if missing:
            log.warning("dropped proposals of videos without frame features", extra={"video_ids": missing[:20]})
        kept = [(p, f) for p, f in zip(proposals, features) if f is not None]
        self._check_features(context, kept)
        return [p for p, _ in kept], [f for _, f in kept]

    def _run_model(self, work: RefineWork, context: grpc.ServicerContext) -> RefineOutcome:
        """``work`` through the shared batcher, within the call's deadline."""
        try:
            future = self.batcher.submit(work)
        except BatcherClosed:
            context.abort(grpc.StatusCode.UNAVAILABLE, "the refiner is shutting down; retry on another replica")
        remaining = context.time_remaining()
        try:
            return future.result(timeout=_DEFAULT_WAIT_S if remaining is None else max(remaining, 0.0))
        except FutureTimeout:
            future.cancel()  # not computed if its batch has not started yet
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "the refiner did not finish before the deadline")
        except Exception as exc:  # the batch's forward pass failed (logged by the batcher)
            context.abort(grpc.StatusCode.INTERNAL, f"refiner forward pass failed: {type(exc).__name__}: {exc}")

    def _validate(self, request: refiner_pb2.RefineRequest) -> np.ndarray:
        """The query as ``(D,)`` float32; raises :class:`_InvalidRequest` naming the problem."""
        query = np.asarray(request.query.values, dtype=np.float32)
        expected = self.model.query_dim(request.query_projected)
        if query.shape != (expected,):
            kind = "a projected query embedding" if request.query_projected else "a CLIP text feature"
            raise _InvalidRequest(
                f"query has {query.size} values; this refiner ({self.model.name}) expects {kind} of {expected}"
            )
        if not np.isfinite(query).all():
            raise _InvalidRequest("query contains NaN or infinity")
        if len(request.proposals) > self.max_proposals:
            raise _InvalidRequest(f"{len(request.proposals)} proposals in one call; at most {self.max_proposals}")
        for i, p in enumerate(request.proposals):
            if not (math.isfinite(p.start_s) and math.isfinite(p.end_s) and 0.0 <= p.start_s < p.end_s):
                raise _InvalidRequest(
                    f"proposal {i} (video {p.video_id}) has span [{p.start_s}, {p.end_s}); need 0 <= start_s < end_s"
                )
        return query

    def _check_features(
        self, context: grpc.ServicerContext, kept: Sequence[tuple[refiner_pb2.RefineProposal, FrameFeatures]]
    ) -> None:
        shape = self.model.shape
        for p, f in kept:
            if f.features.shape[1] != shape.in_dim:
                context.abort(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"video {p.video_id} has {f.features.shape[1]}-d frame features, the refiner expects "
                    f"{shape.in_dim}-d: features and refiner come from different CLIP models",
                )
            if len(f.features) > shape.max_frames:
                context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"proposal of video {p.video_id} [{p.start_s}, {p.end_s}) spans {len(f.features)} frames; "
                    f"the refiner takes at most {shape.max_frames}",
                )

    @staticmethod
    def _add_moments(
        response: refiner_pb2.RefineResponse,
        proposals: Sequence[refiner_pb2.RefineProposal],
        features: Sequence[FrameFeatures],
        outcome: RefineOutcome,
    ) -> None:
        """Frame spans -> seconds inside each padded span and its video; moments best first."""
        start_s, end_s, order = place_refined(
            outcome.start_idx,
            outcome.end_idx,
            outcome.scores,
            np.array([f.first_s for f in features]),
            np.array([f.rate for f in features]),
            np.array([p.start_s for p in proposals]),
            np.array([p.end_s for p in proposals]),
            np.array([p.video_duration_s for p in proposals]),
            np.array([p.coarse_rank for p in proposals]),
        )
        for i in order:
            p = proposals[i]
            response.moments.append(
                moments_pb2.Moment(
                    video_key=p.video_key,
                    uri=p.uri,
                    start_s=float(start_s[i]),
                    end_s=float(end_s[i]),
                    score=float(outcome.scores[i]),
                    coarse_rank=p.coarse_rank,
                    coarse_start_s=p.coarse_start_s,
                    coarse_end_s=p.coarse_end_s,
                    video_duration_s=p.video_duration_s,
                )
            )


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
        self.servicer.batcher.close()
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
    from spr.models.clip import clip_feature_dim, resolve_device, resolve_precision

    in_dim = in_dim if in_dim is not None else clip_feature_dim(config.clip.model)
    device = resolve_device(config.refiner.device)
    model = load_refiner(config.refiner.checkpoint, in_dim, device)
    rc = config.refiner
    max_batch_proposals = rc.max_batch_proposals or (4096 if str(device).startswith("cuda") else 512)
    metrics = RefinerMetrics.for_registry(metrics_registry)
    batcher = DynamicBatcher(
        model, max_batch_proposals, rc.max_wait_ms, rc.max_batch_frames, resolve_precision(rc.precision, str(device)),
        metrics=metrics,
    )
    read_pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="refiner-read")
    servicer = RefinerServicer(model, FrameFeatureStore(config.features_url), batcher, read_pool, metrics=metrics)

    grpc_server = grpc.server(
        ThreadPoolExecutor(max_workers=rc.workers, thread_name_prefix="refiner-rpc"),
        interceptors=grpc_security.server_interceptors(config.security),
    )
    refiner_pb2_grpc.add_RefinerServiceServicer_to_server(servicer, grpc_server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, grpc_server)
    reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), grpc_server)
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
            "max_batch_proposals": max_batch_proposals,
            "max_wait_ms": config.refiner.max_wait_ms,
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
