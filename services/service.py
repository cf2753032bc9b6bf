"""The search service (``spr.v1.SearchService``): a thin gRPC adapter over the moment search
engine, :class:`spr.engine.MomentSearch`, which runs the query path (embed, ANN, catalog,
proposals, refine; see there), each stage timed into ``timings_ms``.

A ``SearchRequest`` becomes a :class:`spr.engine.MomentQuery`, the
:class:`spr.engine.SearchResult` a ``SearchResponse``. The refiner is reached through
:class:`spr.refine_client.GrpcRefiner` under a deadline of ``refiner.timeout_ms`` or the
client's own less a reply margin, whichever comes first; a refiner
that is down, fails or is late never fails the search: the coarse proposals come back with
``degraded=true`` and the reason.

Bad requests are INVALID_ARGUMENT (request bytes that do not parse too), an unknown collection
NOT_FOUND, a query the service cannot answer as set up FAILED_PRECONDITION; anything unexpected is
INTERNAL with a short message and an incident id (the traceback goes to the log under it, never to
the client). Every error carries ``google.rpc`` details (:mod:`spr.grpc_errors`): an ``ErrorInfo``
(reason; field, limit or incident) and, for a refused field, a ``BadRequest``.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from concurrent import futures
from collections.abc import Iterator
from typing import Any, Callable, TypeVar

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from spr import grpc_errors
from spr.api.v1 import search_pb2, search_pb2_grpc
from spr.config import Config
from spr.engine import (
    STORE_REFRESH_S,
    CollectionSummary,
    InvalidSearch,
    MomentQuery,
    MomentSearch,
    SearchRefused,
    SearchResult,
    UnknownCollection,
    UnservableSearch,
)
from spr.grpc_security import add_server_port, server_interceptors
from spr.features import FrameFeatureStore
from spr.grpc_server import SERVER_OPTIONS, DrainingServer, enable_reflection
from spr.media import MediaLibrary, MediaNotFound, MediaRangeError, MediaRequestError, VideoView
from spr.models.query import QueryEncoder
from spr.models.text import load_text_encoder
from spr.refine_client import GrpcRefiner, moment_to_pb
from spr.telemetry import SearchMetrics, serve_metrics

log = logging.getLogger(__name__)

__all__ = ["SERVICE_NAME", "SearchServer", "SearchServicer", "search_response", "serve_search", "start_search_server"]

SERVICE_NAME = search_pb2.DESCRIPTOR.services_by_name["SearchService"].full_name  # "spr.v1.SearchService"
# A query's work is a few ms of torch and I/O waits; a handful of threads keeps the CPU busy
# without letting a burst queue hundreds of CLIP forward passes.
DEFAULT_WORKERS = 8
# How each refusal of the engine is answered.
_STATUS_OF_REFUSAL = {
    InvalidSearch: grpc.StatusCode.INVALID_ARGUMENT,
    UnknownCollection: grpc.StatusCode.NOT_FOUND,
    UnservableSearch: grpc.StatusCode.FAILED_PRECONDITION,
    MediaRequestError: grpc.StatusCode.INVALID_ARGUMENT,
    MediaNotFound: grpc.StatusCode.NOT_FOUND,
    MediaRangeError: grpc.StatusCode.OUT_OF_RANGE,
}
_REFUSALS = (SearchRefused, MediaRequestError, MediaNotFound, MediaRangeError)
# ErrorInfo.reason of the media refusals (the engine's refusals carry their own).
_REASON_OF_MEDIA_REFUSAL = {
    MediaRequestError: "INVALID_MEDIA_REQUEST",
    MediaNotFound: "MEDIA_NOT_FOUND",
    MediaRangeError: "OUT_OF_RANGE",
}

Request = TypeVar("Request")
Response = TypeVar("Response")


class SearchServicer(search_pb2_grpc.SearchServiceServicer):
    """Serves Search and CollectionStats with one :class:`MomentSearch` (which it closes), and
    GetVideo, ReadMedia and GetThumbnail with a :class:`~spr.media.MediaLibrary` over the
    engine's catalog (None: those answer UNIMPLEMENTED)."""

    def __init__(
        self, engine: MomentSearch, metrics: SearchMetrics | None = None, media: MediaLibrary | None = None
    ) -> None:
        self.engine = engine
        self.metrics = metrics if metrics is not None else SearchMetrics.for_registry()
        self.media = media

    def start_refreshing(self, interval_s: float = STORE_REFRESH_S) -> None:
        self.engine.start_refreshing(interval_s)

    def close(self) -> None:
        self.engine.close()

    # -- RPCs ---------------------------------------------------------------------------------

    def Search(self, request: search_pb2.SearchRequest, context: grpc.ServicerContext) -> search_pb2.SearchResponse:
        # The client's deadline bounds the refiner's wait (the engine keeps a margin to reply).
        time_left = context.time_remaining()
        # When the call was handed to the worker pool: total counts the wait for a worker.
        arrived = getattr(_call_queued, "at", None)
        return _answer(context, "Search", lambda r: self.search(r, time_left, arrived), request, self.metrics.record)

    def CollectionStats(
        self, request: search_pb2.CollectionStatsRequest, context: grpc.ServicerContext
    ) -> search_pb2.CollectionStatsResponse:
        return _answer(context, "CollectionStats", self.collection_stats, request)

    def GetVideo(self, request: search_pb2.GetVideoRequest, context: grpc.ServicerContext) -> search_pb2.Video:
        media = self._media(context)
        return _answer(context, "GetVideo", lambda r: _video_pb(media.video(r.key, r.presign)), request)

    def ReadMedia(
        self, request: search_pb2.ReadMediaRequest, context: grpc.ServicerContext
    ) -> Iterator[search_pb2.MediaChunk]:
        media = self._media(context)
        # The key and the range are checked before the first chunk, so a refusal is a status,
        # not a stream cut short.
        chunks = _answer(context, "ReadMedia", lambda r: media.read(r.video_key, r.offset, r.length), request)
        try:
            for offset, data in chunks:
                if not context.is_active():  # the player went away: stop reading
                    return
                yield search_pb2.MediaChunk(data=data, offset=offset)
        except Exception as exc:
            _abort_internal(context, "ReadMedia", exc)

    def GetThumbnail(
        self, request: search_pb2.GetThumbnailRequest, context: grpc.ServicerContext
    ) -> search_pb2.Thumbnail:
        media = self._media(context)

        def thumbnail(r: search_pb2.GetThumbnailRequest) -> search_pb2.Thumbnail:
            key, jpeg = media.thumbnail(r.segment_id)
            return search_pb2.Thumbnail(jpeg=jpeg or b"", placeholder=jpeg is None, video_key=key)

        return _answer(context, "GetThumbnail", thumbnail, request)

    def _media(self, context: grpc.ServicerContext) -> MediaLibrary:
        if self.media is None:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, "this search service serves no media")
        return self.media

    def search(
        self, request: search_pb2.SearchRequest, timeout_s: float | None = None, arrived_at: float | None = None
    ) -> search_pb2.SearchResponse:
        """One request through the engine (raises :class:`SearchRefused` to refuse it);
        ``arrived_at``: when (``time.perf_counter()``) it was queued for a worker."""
        return search_response(self.engine.search(moment_query(request), timeout_s=timeout_s, arrived_at=arrived_at))

    def collection_stats(self, request: search_pb2.CollectionStatsRequest) -> search_pb2.CollectionStatsResponse:
        stats = self.engine.collection_stats(request.collection)
        response = search_pb2.CollectionStatsResponse(
            segments=stats.segments, default_collection=stats.default_collection, modalities=list(stats.modalities)
        )
        response.videos.update(stats.videos)
        response.collections.extend(_collection_pb(c) for c in stats.collections)
        return response


# --- request/response mapping --------------------------------------------------------------------


def moment_query(request: search_pb2.SearchRequest) -> MomentQuery:
    """The wire request as the engine's query (checked by the engine, not here)."""
    which = request.WhichOneof("query")
    params = request.params if request.HasField("params") else None
    return MomentQuery(
        text=request.text if which == "text" else None,
        embedding=np.asarray(request.embedding.values, dtype=np.float32) if which == "embedding" else None,
        collection=request.collection,
        top_k=request.top_k,
        segments_k=request.segments_k,
        nprobe=params.nprobe if params is not None else None,
        ef=params.ef if params is not None else None,
        video_keys=tuple(request.video_keys),
        metadata=dict(request.metadata),
        refine=request.refine if request.HasField("refine") else None,
        weights=dict(request.modality_weights),
        fusion=request.fusion,
    )


def search_response(result: SearchResult) -> search_pb2.SearchResponse:
    response = search_pb2.SearchResponse(
        collection=result.collection,
        refined=result.refined,
        degraded=result.degraded,
        degraded_reason=result.degraded_reason,
        random_weights=result.random_weights,
        segments_retrieved=result.segments_retrieved,
        proposals=result.proposals,
        fusion=result.fusion,
        refine_note=result.refine_note,
    )
    response.modalities.extend(
        search_pb2.ModalitySearch(
            modality=m.modality, collection=m.collection, weight=m.weight, searched=m.searched, hits=m.hits,
            note=m.note, random_weights=m.random_weights,
        )
        for m in result.modalities
    )
    response.moments.extend(moment_to_pb(m) for m in result.moments)
    response.timings_ms.update(result.timings_ms)
    return response


def _collection_pb(summary: CollectionSummary) -> search_pb2.CollectionStats:
    stats = search_pb2.CollectionStats(
        name=summary.name,
        backend=summary.backend,
        dim=summary.dim,
        metric=summary.metric,
        index_kind=summary.index_kind,
        vectors=summary.vectors,
        feature_model=summary.feature_model,
    )
    stats.index_params.update(summary.index_params)
    return stats


def _video_pb(view: VideoView) -> search_pb2.Video:
    video = search_pb2.Video(
        key=view.key,
        id=view.id,
        duration_s=view.duration_s,
        size_bytes=view.size_bytes,
        content_type=view.content_type,
        segments=view.segments,
        segment_length_s=view.segment_length_s,
        thumbnails=view.thumbnails,
        tracks=list(view.tracks),
        warnings=list(view.warnings),
        media_url=view.media_url,
        media_url_expires_s=view.media_url_expires_s,
    )
    video.metadata.update(view.metadata)
    return video


def _answer(
    context: grpc.ServicerContext,
    method: str,
    handler: Callable[[Request], Response],
    request: Request,
    record: Callable[[str, Any], None] | None = None,
) -> Response:
    """Run ``handler``; refusals become their status, anything else INTERNAL with an incident id
    (the traceback is logged under it, never sent). ``record(code_name, response or None)``
    hears every outcome (metrics)."""
    try:
        response = handler(request)
    except _REFUSALS as exc:
        code = _STATUS_OF_REFUSAL.get(type(exc), grpc.StatusCode.INVALID_ARGUMENT)
        if record is not None:
            record(code.name, None)
        if isinstance(exc, SearchRefused):
            # google.rpc details: ErrorInfo (reason, field, limit) and BadRequest for the field.
            grpc_errors.abort(context, code, exc.message, reason=exc.reason, field=exc.field, limit=exc.limit)
        grpc_errors.abort(context, code, str(exc), reason=_REASON_OF_MEDIA_REFUSAL.get(type(exc), code.name))
    except Exception as exc:
        if record is not None:
            record(grpc.StatusCode.INTERNAL.name, None)
        _abort_internal(context, method, exc)
    else:
        if record is not None:
            record(grpc.StatusCode.OK.name, response)
        return response
    raise AssertionError("unreachable: context.abort raises")  # pragma: no cover


def _abort_internal(context: grpc.ServicerContext, method: str, exc: BaseException) -> None:
    """INTERNAL with an incident id; the traceback goes to the log under it, never to the client."""
    incident = uuid.uuid4().hex[:12]
    log.exception("%s failed unexpectedly (incident %s): %s", method, incident, exc, extra={"incident": incident})
    grpc_errors.abort(
        context,
        grpc.StatusCode.INTERNAL,
        f"internal error in {method} ({type(exc).__name__}); see the search service log, incident {incident}",
        reason="INTERNAL",
        metadata={"incident": incident, "method": method},
    )


# --- the server --------------------------------------------------------------------------------

# Set in a worker thread while it runs a call: when the call was queued for a worker.
_call_queued = threading.local()


class _QueueTimedPool(futures.ThreadPoolExecutor):
    """The server's worker pool, noting when each call was handed to it: grpcio submits a
    call once it has arrived, and with every worker busy it waits in this pool's queue, which
    the handler alone cannot see. The time is ``time.perf_counter()``'s, in ``_call_queued.at``."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> futures.Future:
        return super().submit(_run_queued, time.perf_counter(), fn, *args, **kwargs)


def _run_queued(queued_at: float, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    _call_queued.at = queued_at
    try:
        return fn(*args, **kwargs)
    finally:
        _call_queued.at = None



class SearchServer(DrainingServer):
    """A started search server that owns the servicer's catalog, store and refiner channel,
    closed after in-flight calls drained (see :class:`spr.grpc_server.DrainingServer`)."""

    def __init__(self, server: grpc.Server, servicer: SearchServicer, health_servicer: health.HealthServicer) -> None:
        super().__init__(server, health_servicer, "search")
        self.servicer = servicer

    def release(self) -> None:
        self.servicer.close()


def serve_search(
    config: Config,
    port: int | None = None,
    refiner_target: str | None = None,
    block: bool = False,
    max_workers: int = DEFAULT_WORKERS,
    metrics_port: int | None = None,
    metrics_registry: CollectorRegistry | None = None,
) -> tuple[SearchServer, int]:
    """Start the search service on ``config.services.host`` and ``port`` (None: the configured
    ``services.search_port``; 0: a free one) and return ``(server, bound_port)``.

    Loads CLIP and the projector once and opens the catalog and the vector store. With
    ``refiner_target`` (``host:port``; default ``services.refiner_target``) searches are refined
    there; without, they are not. Health
    (``""`` and ``spr.v1.SearchService``) and server reflection are served too; TLS and the bearer
    token follow ``config.security``. ``block`` waits until the server stops. ``server.stop(grace)``
    drains calls, then closes the catalog, the store and the refiner channel.

    Prometheus metrics go to ``metrics_registry`` (default: the process's search registry) and,
    when ``metrics.enabled``, are served on ``metrics.host``:``metrics_port`` (None: the
    configured ``metrics.search_port``; 0: a free one) as ``server.metrics_port``; an endpoint
    that cannot start is a warning, never an error."""
    refiner_target = refiner_target if refiner_target is not None else (config.services.refiner_target or None)
    encoder = QueryEncoder.from_config(config)
    refiner = GrpcRefiner(refiner_target, config.security, config.refiner.timeout_ms) if refiner_target else None
    try:
        engine = MomentSearch.open(config, encoder, refiner, text_encoder=load_text_encoder(config))
    except BaseException:
        if refiner is not None:
            refiner.close()
        raise
    metrics = SearchMetrics.for_registry(metrics_registry)
    media = MediaLibrary(engine.catalog, FrameFeatureStore.from_config(config), config.segments.length_s)
    servicer = SearchServicer(engine, metrics, media)
    try:
        server, bound = start_search_server(config, servicer, port, max_workers)
    except BaseException:
        servicer.close()
        raise
    server.metrics_server = serve_metrics(
        config.metrics, config.metrics.search_port if metrics_port is None else metrics_port, metrics.registry, "search"
    )
    server.metrics_port = server.metrics_server.port if server.metrics_server is not None else None
    log.info(
        "search service listening on %s:%d",
        config.services.host,
        bound,
        extra={
            "refiner": refiner_target or "",
            "collection": config.vectors.collection,
            "backend": engine.store.backend,
            "clip": encoder.clip.identity,
            "projector": encoder.projectors.identity,
            "random_weights": encoder.random_weights,
            "text_encoder": engine.text_encoder.identity if engine.text_encoder is not None else "",
            "tls": bool(config.security.tls_cert),
            "token": bool(config.security.token),
            "metrics_port": server.metrics_port,
        },
    )
    if encoder.random_weights:
        log.warning("search results come from untrained weights (CLIP random or no projector checkpoint)")
    if block:
        server.wait_for_termination()
    return server, bound


def start_search_server(
    config: Config,
    servicer: SearchServicer,
    port: int | None = None,
    max_workers: int = DEFAULT_WORKERS,
    refresh_s: float = STORE_REFRESH_S,
) -> tuple[SearchServer, int]:
    """Serve ``servicer`` (plus health and reflection) on ``config.services.host``:``port``; its
    store is refreshed every ``refresh_s`` seconds (0: never)."""
    grpc_server = grpc.server(
        _QueueTimedPool(max_workers=max_workers, thread_name_prefix="search"),
        interceptors=server_interceptors(config.security),
        options=SERVER_OPTIONS,  # no SO_REUSEPORT: a taken port fails start-up (PortInUse)
    )
    # Undecodable request bytes are INVALID_ARGUMENT, not grpcio's INTERNAL (spr.grpc_errors).
    grpc_errors.add_servicer(search_pb2_grpc.add_SearchServiceServicer_to_server, servicer, grpc_server)
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, grpc_server)
    enable_reflection(grpc_server, (SERVICE_NAME, health.SERVICE_NAME))
    address = f"{config.services.host}:{config.services.search_port if port is None else port}"
    bound = add_server_port(grpc_server, address, config.security)
    server = SearchServer(grpc_server, servicer, health_servicer)
    server.start()
    servicer.start_refreshing(refresh_s)
    for service in ("", SERVICE_NAME):
        health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    return server, bound
