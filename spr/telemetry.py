"""Prometheus metrics of the search service, the refiner and ingest, and their ``/metrics``
endpoints.

Every metric lives in a :class:`~prometheus_client.CollectorRegistry` of our own, never in
prometheus_client's global one, so one process can hold several servers (tests do) without
"duplicated timeseries" errors. Each component has a process-wide default registry
(:func:`default_registry`): ``spr serve`` runs the search service and the refiner in one
process, and each endpoint exposes only its own component, so Prometheus scraping both never
counts a series twice. Pass a fresh ``CollectorRegistry()`` for isolated counts.

Endpoints follow ``config.metrics``: ``enabled`` switches them all; a port of 0 binds a free
port (logged, and kept on the server object as ``metrics_port``). A port already taken, or any
other failure to start one, is logged as a warning and the service runs on without its
endpoint: metrics never stop a server from serving. Recording never raises either.

Metrics (seconds for every duration; ``code`` is the gRPC status code name, ``OK`` included):

search
    ``spr_search_requests_total{code}``, ``spr_search_stage_seconds{stage}`` (embed, ann,
    catalog, proposals, refine, total; observed once per answered request, 0 for a stage
    that did not run), ``spr_search_degraded_total{reason}`` (timeout, unavailable,
    refiner_error, no_refiner, no_features, other), ``spr_search_refined_total``.
refiner
    ``spr_refiner_requests_total{code}``, ``spr_refiner_batch_proposals`` and
    ``spr_refiner_batch_queries`` (once per forward batch), ``spr_refiner_stage_seconds{stage}``
    (features, queue, model, total; the stages a request ran),
    ``spr_refiner_dropped_proposals_total``.
ingest
    ``spr_ingest_videos_total{outcome}`` (published, skipped, failed),
    ``spr_ingest_segments_total``, ``spr_ingest_frames_total``,
    ``spr_ingest_video_seconds_total``, and the gauges ``spr_ingest_video_seconds_per_second``
    (video seconds published per wall second of the current run) and
    ``spr_ingest_videos_in_flight``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, start_http_server

from .config import MetricsConfig

log = logging.getLogger(__name__)

__all__ = [
    "COMPONENTS",
    "DEGRADED_REASONS",
    "INGEST_OUTCOMES",
    "LATENCY_BUCKETS_S",
    "REFINER_STAGES",
    "SEARCH_STAGES",
    "IngestMetrics",
    "MetricsServer",
    "RefinerMetrics",
    "SearchMetrics",
    "default_registry",
    "degraded_reason_label",
    "serve_metrics",
    "start_metrics_server",
]

COMPONENTS = ("search", "refiner", "ingest")
# 0.5 ms .. 5 s: an ANN probe on a small index is sub-millisecond, a cold refine seconds.
LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# A query has ~100 proposals; a GPU batch holds up to 4096 (refiner.max_batch_proposals).
BATCH_PROPOSALS_BUCKETS = (1, 10, 25, 50, 100, 200, 500, 1000, 2000, 4096, 8192)
BATCH_QUERIES_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
SEARCH_STAGES = ("embed", "ann", "fusion", "catalog", "proposals", "refine", "snippets", "total")
REFINER_STAGES = ("features", "queue", "model", "total")
INGEST_OUTCOMES = ("published", "skipped", "failed")
DEGRADED_REASONS = ("timeout", "unavailable", "refiner_error", "no_refiner", "no_features", "other")

_registries: dict[str, CollectorRegistry] = {}
_lock = threading.Lock()


def default_registry(component: str) -> CollectorRegistry:
    """The process-wide registry of ``component`` (``search``, ``refiner`` or ``ingest``),
    created on first use with the process collector (CPU, memory, open files)."""
    if component not in COMPONENTS:
        raise ValueError(f"component must be one of {COMPONENTS}, got {component!r}")
    with _lock:
        registry = _registries.get(component)
        if registry is None:
            registry = CollectorRegistry()
            ProcessCollector(registry=registry)
            _registries[component] = registry
        return registry


class _Metrics:
    """Per-registry singletons: metrics are created once per registry and shared after."""

    component: ClassVar[str]
    _instances: ClassVar[dict[int, Any]]

    @classmethod
    def for_registry(cls, registry: CollectorRegistry | None = None) -> Any:
        """The metrics in ``registry`` (None: :func:`default_registry` of this component)."""
        registry = registry if registry is not None else default_registry(cls.component)
        with _lock:
            # Keyed by id, holding the registry: the id can never be reused while we hold it.
            found = cls._instances.get(id(registry))
            if found is None:
                found = cls._instances[id(registry)] = cls._create(registry)
            return found

    @classmethod
    def _create(cls, registry: CollectorRegistry) -> Any:
        raise NotImplementedError


@dataclass(frozen=True)
class SearchMetrics(_Metrics):
    """The search service's metrics; :meth:`record` is called once per Search call."""

    registry: CollectorRegistry
    requests: Counter
    stage_seconds: Histogram
    degraded: Counter
    refined: Counter

    component: ClassVar[str] = "search"
    _instances: ClassVar[dict[int, "SearchMetrics"]] = {}

    @classmethod
    def _create(cls, registry: CollectorRegistry) -> "SearchMetrics":
        metrics = cls(
            registry,
            Counter("spr_search_requests", "Search calls by gRPC status code.", ["code"], registry=registry),
            Histogram(
                "spr_search_stage_seconds",
                "Time per stage of answered Search calls (embed, ann, catalog, proposals, refine, total).",
                ["stage"],
                buckets=LATENCY_BUCKETS_S,
                registry=registry,
            ),
            Counter(
                "spr_search_degraded",
                "Searches answered with coarse proposals because refinement failed, by reason.",
                ["reason"],
                registry=registry,
            ),
            Counter("spr_search_refined", "Searches answered with refined moments.", registry=registry),
        )
        metrics.requests.labels("OK")
        for stage in SEARCH_STAGES:
            metrics.stage_seconds.labels(stage)
        return metrics

    def record(self, code: str, response: Any = None) -> None:
        """One Search call that ended with status ``code``; ``response`` (a SearchResponse)
        when it was answered. Never raises."""
        try:
            self.requests.labels(code).inc()
            if response is None:
                return
            _observe_stages(self.stage_seconds, response.timings_ms, SEARCH_STAGES, all_stages=True)
            if response.degraded:
                self.degraded.labels(degraded_reason_label(response.degraded_reason)).inc()
            if response.refined:
                self.refined.inc()
        except Exception:  # pragma: no cover - metrics must never fail a request
            log.warning("recording search metrics failed", exc_info=True)


@dataclass(frozen=True)
class RefinerMetrics(_Metrics):
    """The refiner's metrics: :meth:`record` once per Refine call, :meth:`record_batch` once
    per forward batch of the dynamic batcher."""

    registry: CollectorRegistry
    requests: Counter
    batch_proposals: Histogram
    batch_queries: Histogram
    stage_seconds: Histogram
    dropped: Counter

    component: ClassVar[str] = "refiner"
    _instances: ClassVar[dict[int, "RefinerMetrics"]] = {}

    @classmethod
    def _create(cls, registry: CollectorRegistry) -> "RefinerMetrics":
        metrics = cls(
            registry,
            Counter("spr_refiner_requests", "Refine calls by gRPC status code.", ["code"], registry=registry),
            Histogram(
                "spr_refiner_batch_proposals",
                "Proposals per forward batch of the dynamic batcher.",
                buckets=BATCH_PROPOSALS_BUCKETS,
                registry=registry,
            ),
            Histogram(
                "spr_refiner_batch_queries",
                "Queries (Refine calls) sharing one forward batch.",
                buckets=BATCH_QUERIES_BUCKETS,
                registry=registry,
            ),
            Histogram(
                "spr_refiner_stage_seconds",
                "Time per stage of answered Refine calls (features, queue, model, total).",
                ["stage"],
                buckets=LATENCY_BUCKETS_S,
                registry=registry,
            ),
            Counter(
                "spr_refiner_dropped_proposals",
                "Proposals dropped because their video has no frame features.",
                registry=registry,
            ),
        )
        metrics.requests.labels("OK")
        for stage in REFINER_STAGES:
            metrics.stage_seconds.labels(stage)
        return metrics

    def record(self, code: str, response: Any = None) -> None:
        """One Refine call that ended with status ``code``; ``response`` (a RefineResponse)
        when it was answered. Never raises."""
        try:
            self.requests.labels(code).inc()
            if response is None:
                return
            _observe_stages(self.stage_seconds, response.timings_ms, REFINER_STAGES, all_stages=False)
            if response.dropped:
                self.dropped.inc(response.dropped)
        except Exception:  # pragma: no cover
            log.warning("recording refiner metrics failed", exc_info=True)

    def record_batch(self, proposals: int, queries: int) -> None:
        """One forward batch of ``proposals`` proposals from ``queries`` calls. Never raises."""
        try:
            self.batch_proposals.observe(proposals)
            self.batch_queries.observe(queries)
        except Exception:  # pragma: no cover
            log.warning("recording refiner batch metrics failed", exc_info=True)


@dataclass(frozen=True)
class IngestMetrics(_Metrics):
    """Ingest's counters, kept by the writer as videos are published, skipped or fail."""

    registry: CollectorRegistry
    videos: Counter
    segments: Counter
    frames: Counter
    video_seconds: Counter
    video_seconds_per_second: Gauge
    videos_in_flight: Gauge

    component: ClassVar[str] = "ingest"
    _instances: ClassVar[dict[int, "IngestMetrics"]] = {}

    @classmethod
    def _create(cls, registry: CollectorRegistry) -> "IngestMetrics":
        metrics = cls(
            registry,
            Counter("spr_ingest_videos", "Videos handled by ingest, by outcome.", ["outcome"], registry=registry),
            Counter("spr_ingest_segments", "Segments published.", registry=registry),
            Counter("spr_ingest_frames", "Frames (per-second features) published.", registry=registry),
            Counter("spr_ingest_video_seconds", "Seconds of video published.", registry=registry),
            Gauge(
                "spr_ingest_video_seconds_per_second",
                "Video seconds published per wall-clock second of the current run.",
                registry=registry,
            ),
            Gauge("spr_ingest_videos_in_flight", "Videos submitted to the encoders and not finished.", registry=registry),
        )
        for outcome in INGEST_OUTCOMES:
            metrics.videos.labels(outcome)
        return metrics

    def published(self, videos: int, segments: int, frames: int, video_seconds: float) -> None:
        try:
            self.videos.labels("published").inc(videos)
            self.segments.inc(segments)
            self.frames.inc(frames)
            self.video_seconds.inc(video_seconds)
        except Exception:  # pragma: no cover
            log.warning("recording ingest metrics failed", exc_info=True)

    def skipped(self, videos: int = 1) -> None:
        self.videos.labels("skipped").inc(videos)

    def failed(self, videos: int = 1) -> None:
        self.videos.labels("failed").inc(videos)

    def set_rate(self, video_seconds_per_second: float) -> None:
        self.video_seconds_per_second.set(video_seconds_per_second)

    def set_in_flight(self, videos: int) -> None:
        self.videos_in_flight.set(videos)


def _observe_stages(
    histogram: Histogram, timings_ms: Mapping[str, float], stages: Iterable[str], all_stages: bool
) -> None:
    """Observe ``timings_ms`` (milliseconds) in seconds; ``all_stages``: a missing stage counts 0."""
    for stage in stages:
        value = timings_ms.get(stage)
        if value is None:
            if not all_stages:
                continue
            value = 0.0
        histogram.labels(stage).observe(max(float(value), 0.0) / 1e3)


def degraded_reason_label(reason: str) -> str:
    """A low-cardinality label for a search's ``degraded_reason`` (which names addresses and
    details, unfit as a label): one of :data:`DEGRADED_REASONS`."""
    text = reason.lower()
    if "timed out" in text or "deadline" in text:
        return "timeout"
    if "unavailable" in text:
        return "unavailable"
    if "no refiner configured" in text:
        return "no_refiner"
    if "dropped all" in text or "no frame features" in text:
        return "no_features"
    if "failed with" in text:
        return "refiner_error"
    return "other"


# --- endpoints ---------------------------------------------------------------------------------


class MetricsServer:
    """A running ``/metrics`` HTTP endpoint (any path answers, as with prometheus_client)."""

    def __init__(self, httpd: WSGIServer, thread: threading.Thread, host: str) -> None:
        self._httpd = httpd
        self._thread = thread
        self.host = host
        self.port = int(httpd.server_address[1])
        self._stopped = False
        self._stop_lock = threading.Lock()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def stop(self) -> None:
        """Stop serving and release the port. Idempotent."""
        with self._stop_lock:
            if self._stopped:
                return
            self._stopped = True
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5.0)


def start_metrics_server(host: str, port: int, registry: CollectorRegistry) -> tuple[MetricsServer, int]:
    """Serve ``registry`` at ``http://host:port/metrics`` in a daemon thread; port 0 picks a free
    port. Returns the server (``stop()`` it) and the bound port; raises OSError when the port
    is taken."""
    # prometheus_client 0.26: start_http_server returns (WSGIServer, Thread).
    httpd, thread = start_http_server(port, addr=host, registry=registry)
    server = MetricsServer(httpd, thread, host)
    return server, server.port


def serve_metrics(
    config: MetricsConfig, port: int, registry: CollectorRegistry, component: str
) -> MetricsServer | None:
    """Start ``component``'s endpoint as ``config`` says (None when disabled or when it cannot
    start: a taken port is a warning, never an error). The bound port is logged."""
    if not config.enabled:
        return None
    try:
        server, bound = start_metrics_server(config.host, port, registry)
    except Exception as exc:  # a taken port (OSError) or anything else: serve on without metrics
        log.warning(
            "%s metrics endpoint not started on %s:%d (%s); serving without /metrics",
            component,
            config.host,
            port,
            exc,
            extra={"component": component, "metrics_host": config.host, "metrics_port": port},
        )
        return None
    log.info(
        "%s metrics on http://%s:%d/metrics",
        component,
        config.host,
        bound,
        extra={"component": component, "metrics_host": config.host, "metrics_port": bound},
    )
    return server
