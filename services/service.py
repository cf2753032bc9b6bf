"""The search service (``spr.v1.SearchService``): query -> top-k segments -> proposals ->
refiner -> ranked moments (SPR sections 3.1.2, 3.2 and 3.3).

One request runs these stages, each timed into ``timings_ms``:

``embed``
    text through the CLIP text tower and the text projector (both loaded once at start-up),
    or a client's ready embedding checked against the collection's dimension;
``ann``, ``catalog``, ``proposals``
    :func:`spr.retrieval.retrieve_proposals`: ANN top-``segments_k``, one catalog round trip
    (``ready`` videos only), adjacent segments merged and padded by tau_C;
``refine``
    the padded proposals sent to ``spr.v1.RefinerService/Refine`` under a deadline of
    ``refiner.timeout_ms``. A refiner that is down, fails or is late never fails the search:
    the coarse proposals come back with ``degraded=true`` and the reason.

Bad requests are INVALID_ARGUMENT, an unknown collection NOT_FOUND; anything unexpected is
INTERNAL with a short message (the traceback goes to the log, never to the client).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from concurrent import futures
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry

from spr.api.v1 import moments_pb2, refiner_pb2, refiner_pb2_grpc, search_pb2, search_pb2_grpc
from spr.catalog import SegmentCatalog
from spr.config import Config, SecurityConfig
from spr.grpc_security import add_server_port, client_metadata, open_channel, server_interceptors
from spr.grpc_server import DrainingServer
from spr.proposals import GapRule, Proposal, gap_rule_from_config
from spr.retrieval import CoarseResult, retrieve_proposals
from spr.stores import CollectionNotFound, SearchParams, VectorStore, index_spec_to_dict, l2_normalize, open_vector_store
from spr.telemetry import SearchMetrics, serve_metrics

log = logging.getLogger(__name__)

SERVICE_NAME = search_pb2.DESCRIPTOR.services_by_name["SearchService"].full_name  # "spr.v1.SearchService"
MAX_TEXT_CHARS = 1000
DEFAULT_TOP_K = 10
MAX_TOP_K = 1000
MAX_SEGMENTS_K = 16384
# Collection shapes are looked up once per this many seconds, not once per query: on Milvus
# a describe is a network round trip, and a collection's dimension never changes in place.
COLLECTION_CACHE_S = 30.0
# How often a local store (Faiss) looks for collections an ingest process flushed meanwhile;
# a check is one small file read per collection, a reload happens only on change.
STORE_REFRESH_S = 5.0
# The refiner refuses calls with more proposals than this (refiner.service.MAX_PROPOSALS);
# the best-ranked ones are refined, the rest could never make a top_k <= 1000 anyway.
MAX_REFINE_PROPOSALS = 1000
# A query's work is a few ms of torch and I/O waits; a handful of threads keeps the CPU busy
# without letting a burst queue hundreds of CLIP forward passes.
DEFAULT_WORKERS = 8

Request = TypeVar("Request")
Response = TypeVar("Response")


class RequestError(Exception):
    """A request the service refuses: the gRPC ``code`` and a message for the client."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def invalid(message: str) -> RequestError:
    return RequestError(grpc.StatusCode.INVALID_ARGUMENT, message)


# --- the query encoder -------------------------------------------------------------------------


@dataclass
class QueryEncoder:
    """The CLIP text tower and the text projector, loaded once per process.

    ``clip_dim`` is the CLIP text feature size (what the refiner gets), ``dim`` the projected
    query size (what the index holds)."""

    clip: Any  # spr.models.clip.ClipEncoder
    projectors: Any  # spr.models.projector.Projectors

    @classmethod
    def from_config(cls, config: Config) -> "QueryEncoder":
        from spr.models.clip import load_clip
        from spr.models.projector import load_projectors

        clip = load_clip(config.clip.model, config.clip.pretrained, config.clip.device, config.clip.precision)
        projectors = load_projectors(config.projector.checkpoint, clip.dim, device=clip.device, clip_model=clip.model_name)
        return cls(clip, projectors)

    @property
    def clip_dim(self) -> int:
        return int(self.clip.dim)

    @property
    def dim(self) -> int:
        return int(self.projectors.dim)

    @property
    def random_weights(self) -> bool:
        """True when CLIP has random weights or the projector is the untrained fallback."""
        return bool(self.clip.random_weights or not self.projectors.trained)

    def encode(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """``text`` -> (CLIP text feature ``(clip_dim,)``, L2-normalised query embedding ``(dim,)``)."""
        feature = self.clip.encode_texts([text])  # (1, clip_dim)
        embedding = l2_normalize(self.projectors.project_texts(feature))  # (1, dim)
        return feature[0].astype(np.float32), embedding[0]


# --- the refiner client ------------------------------------------------------------------------


@dataclass(frozen=True)
class RefineOutcome:
    """What refinement gave: ``response`` when it worked, else ``degraded_reason``."""

    response: refiner_pb2.RefineResponse | None
    degraded_reason: str
    elapsed_ms: float


class RefinerClient:
    """One long-lived channel to the refiner (gRPC reconnects it by itself after an outage)."""

    def __init__(self, target: str, security: SecurityConfig, timeout_ms: float) -> None:
        self.target = target
        self.timeout_ms = float(timeout_ms)
        self._channel = open_channel(target, security)
        self._stub = refiner_pb2_grpc.RefinerServiceStub(self._channel)
        self._metadata = client_metadata(security)

    def refine(self, request: refiner_pb2.RefineRequest) -> RefineOutcome:
        """Call Refine under the deadline; every failure becomes a degraded outcome, not an error."""
        t0 = time.perf_counter()
        try:
            response = self._stub.Refine(request, timeout=self.timeout_ms / 1e3, metadata=self._metadata)
        except grpc.RpcError as exc:
            reason = self._describe_failure(exc)
            log.warning("refinement skipped: %s", reason, extra={"refiner": self.target})
            return RefineOutcome(None, reason, (time.perf_counter() - t0) * 1e3)
        return RefineOutcome(response, "", (time.perf_counter() - t0) * 1e3)

    def _describe_failure(self, exc: grpc.RpcError) -> str:
        code = exc.code() if hasattr(exc, "code") else None
        details = (exc.details() if hasattr(exc, "details") else "") or ""
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return f"refiner at {self.target} timed out after {self.timeout_ms:g} ms"
        if code == grpc.StatusCode.UNAVAILABLE:
            return f"refiner at {self.target} is unavailable: {_first_line(details)}"
        name = code.name if code is not None else "unknown error"
        return f"refiner at {self.target} failed with {name}: {_first_line(details)}"

    def close(self) -> None:
        self._channel.close()


# --- the servicer ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParsedQuery:
    """A validated request: the query embedding ``(dim,)`` to search with, and what to send the
    refiner (``refiner_query`` ``(clip_dim,)`` for text; the embedding itself, already projected,
    for a client's embedding)."""

    embedding: np.ndarray
    refiner_query: np.ndarray
    query_projected: bool
    embed_ms: float


class SearchServicer(search_pb2_grpc.SearchServiceServicer):
    """Serves Search and CollectionStats over one catalog, one vector store and one refiner."""

    def __init__(
        self,
        config: Config,
        catalog: SegmentCatalog,
        store: VectorStore,
        encoder: QueryEncoder,
        refiner: RefinerClient | None = None,
        metrics: SearchMetrics | None = None,
    ) -> None:
        self.config = config
        self.catalog = catalog
        self.store = store
        self.encoder = encoder
        self.refiner = refiner
        self.metrics = metrics if metrics is not None else SearchMetrics.for_registry()
        self.gap_rule: GapRule = gap_rule_from_config(
            config.proposals.gap_rule, config.proposals.max_missing_segments, config.proposals.adaptive_alpha
        )
        self._dims: dict[str, tuple[int, float]] = {}  # collection -> (dim, looked up at)
        self._dims_lock = threading.Lock()
        self._closing = threading.Event()
        self._refresher: threading.Thread | None = None

    def start_refreshing(self, interval_s: float = STORE_REFRESH_S) -> None:
        """Pick up new ingests every ``interval_s`` seconds in a background thread, off the
        query path (:meth:`refresh_store`); stopped by :meth:`close`."""
        if self._refresher is None and interval_s > 0:
            self._refresher = threading.Thread(
                target=self._refresh_loop, args=(interval_s,), name="search-refresh", daemon=True
            )
            self._refresher.start()

    def refresh_store(self) -> list[str]:
        """Reload the collections other processes flushed since we loaded them; their names."""
        reloaded = self.store.refresh()
        for name in reloaded:
            self._forget(name)
        if reloaded:
            log.info("reloaded collections changed by another process", extra={"collections": reloaded})
        return reloaded

    def _refresh_loop(self, interval_s: float) -> None:
        while not self._closing.wait(interval_s):
            try:
                self.refresh_store()
            except Exception:
                log.warning("refreshing the vector store failed; searching the copy already loaded", exc_info=True)

    def close(self) -> None:
        self._closing.set()
        if self._refresher is not None:
            self._refresher.join()
        if self.refiner is not None:
            self.refiner.close()
        self.store.close()
        self.catalog.close()

    # -- RPCs ---------------------------------------------------------------------------------

    def Search(self, request: search_pb2.SearchRequest, context: grpc.ServicerContext) -> search_pb2.SearchResponse:
        return _answer(context, "Search", self.search, request, self.metrics.record)

    def CollectionStats(
        self, request: search_pb2.CollectionStatsRequest, context: grpc.ServicerContext
    ) -> search_pb2.CollectionStatsResponse:
        return _answer(context, "CollectionStats", self.collection_stats, request)

    # -- Search -------------------------------------------------------------------------------

    def search(self, request: search_pb2.SearchRequest) -> search_pb2.SearchResponse:
        """The whole query path for one request (raises :class:`RequestError` to refuse it)."""
        t_start = time.perf_counter()
        top_k = _bounded("top_k", request.top_k, DEFAULT_TOP_K, MAX_TOP_K)
        segments_k = _bounded("segments_k", request.segments_k, self.config.proposals.top_k_segments, MAX_SEGMENTS_K)
        params = _search_params(request)
        self._check_query(request)
        collection = request.collection or self.config.vectors.collection
        dim = self._collection_dim(collection)
        query = self._parse_query(request, collection, dim)

        timings = {"embed": query.embed_ms, "ann": 0.0, "catalog": 0.0, "proposals": 0.0, "refine": 0.0}
        response = search_pb2.SearchResponse(collection=collection, random_weights=self.encoder.random_weights)
        video_keys = self._video_filter(request, timings)
        if video_keys is not None and not video_keys:
            # Filters that match no video: nothing to search, and nothing has failed.
            return _finish(response, timings, t_start)

        coarse = self._retrieve(collection, query.embedding, segments_k, params, video_keys)
        timings.update(coarse.timings_ms)
        response.segments_retrieved = len(coarse.segments)
        response.proposals = len(coarse.proposals)

        refined = self._refine(request, query, coarse, response)
        if refined is not None:
            timings["refine"] = refined.elapsed_ms
            response.moments.extend(list(refined.response.moments)[:top_k])
            response.refined = True
        else:
            response.moments.extend(coarse_moments(coarse, top_k))
        return _finish(response, timings, t_start)

    @staticmethod
    def _check_query(request: search_pb2.SearchRequest) -> None:
        """What can be checked without the collection: one query, sane text, finite values."""
        which = request.WhichOneof("query")
        if which is None:
            raise invalid("no query: set `text` or `embedding`")
        if which == "text":
            if not request.text.strip():
                raise invalid("query text is empty")
            if len(request.text) > MAX_TEXT_CHARS:
                raise invalid(f"query text has {len(request.text)} characters; at most {MAX_TEXT_CHARS} are allowed")
            return
        values = np.asarray(request.embedding.values, dtype=np.float32)
        if not np.isfinite(values).all():
            raise invalid("embedding contains NaN or infinity")
        if values.size and not np.any(values):
            raise invalid("embedding is all zeros")

    def _parse_query(self, request: search_pb2.SearchRequest, collection: str, dim: int) -> ParsedQuery:
        """The checked query as a ``(dim,)`` unit vector for a collection of ``dim``-d vectors."""
        t0 = time.perf_counter()
        if request.WhichOneof("query") == "text":
            if self.encoder.dim != dim:
                raise RequestError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"collection {collection!r} holds {dim}-d vectors but this service's text encoder "
                    f"gives {self.encoder.dim}-d queries; search it with an embedding or serve it "
                    f"with the CLIP model and projector that built it",
                )
            feature, embedding = self.encoder.encode(request.text)
            return ParsedQuery(embedding, feature, False, (time.perf_counter() - t0) * 1e3)
        values = np.asarray(request.embedding.values, dtype=np.float32)
        if values.shape != (dim,):
            raise invalid(f"embedding has {values.size} values; collection {collection!r} needs {dim}")
        embedding = l2_normalize(values)
        return ParsedQuery(embedding, embedding, True, (time.perf_counter() - t0) * 1e3)

    def _video_filter(self, request: search_pb2.SearchRequest, timings: dict[str, float]) -> list[str] | None:
        """The videos a request may see: its ``video_keys`` intersected with the ready videos
        whose metadata matches (None when it sets neither: all videos)."""
        keys = list(dict.fromkeys(request.video_keys)) if request.video_keys else None
        if keys is not None and not all(keys):
            raise invalid("video_keys contains an empty key")
        if not request.metadata:
            return keys
        t0 = time.perf_counter()
        try:
            matching = self.catalog.video_keys_matching(dict(request.metadata))
        except ValueError as exc:
            raise invalid(str(exc)) from None
        timings["filter"] = (time.perf_counter() - t0) * 1e3
        if keys is None:
            return matching
        allowed = set(matching)
        return [k for k in keys if k in allowed]

    def _retrieve(
        self,
        collection: str,
        embedding: np.ndarray,
        segments_k: int,
        params: SearchParams | None,
        video_keys: list[str] | None,
    ) -> CoarseResult:
        try:
            return retrieve_proposals(
                self.store,
                self.catalog,
                collection,
                embedding,
                top_k=segments_k,
                params=params,
                gap_rule=self.gap_rule,
                pad_s=self.config.proposals.pad_s,
                video_keys=video_keys,
            )
        except CollectionNotFound as exc:
            self._forget(collection)  # dropped since we cached its shape
            raise RequestError(grpc.StatusCode.NOT_FOUND, str(exc)) from None

    def _refine(
        self,
        request: search_pb2.SearchRequest,
        query: ParsedQuery,
        coarse: CoarseResult,
        response: search_pb2.SearchResponse,
    ) -> RefineOutcome | None:
        """The refiner's answer, or None with ``response.degraded`` set when it was wanted and failed."""
        asked_explicitly = request.HasField("refine")
        if asked_explicitly and not request.refine:
            return None
        if self.refiner is None:
            if asked_explicitly:
                _degrade(response, "no refiner configured")
            return None
        if not coarse.padded:
            return None  # nothing to refine
        outcome = self.refiner.refine(refine_request(query, coarse))
        if outcome.response is None:
            _degrade(response, outcome.degraded_reason)
            return None
        if not outcome.response.moments:
            _degrade(response, f"the refiner dropped all {len(coarse.padded)} proposals (no frame features)")
            return None
        response.random_weights = response.random_weights or outcome.response.random_weights
        return outcome

    # -- collections --------------------------------------------------------------------------

    def _collection_dim(self, name: str) -> int:
        """The vector size of collection ``name`` (NOT_FOUND when neither store knows it)."""
        now = time.monotonic()
        with self._dims_lock:
            cached = self._dims.get(name)
        if cached is not None and now - cached[1] < COLLECTION_CACHE_S:
            return cached[0]
        record = self.catalog.get_collection(name)
        if record is not None and record.backend != self.store.backend:
            raise RequestError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"collection {name!r} lives in the {record.backend} vector store; this service reads {self.store.backend}",
            )
        try:
            dim = self.store.describe(name).dim
        except CollectionNotFound:
            raise RequestError(
                grpc.StatusCode.NOT_FOUND,
                f"collection {name!r} does not exist; ingest videos into it (`spr ingest`) or search another",
            ) from None
        with self._dims_lock:
            self._dims[name] = (int(dim), now)
        return int(dim)

    def _forget(self, name: str) -> None:
        with self._dims_lock:
            self._dims.pop(name, None)

    # -- CollectionStats ----------------------------------------------------------------------

    def collection_stats(self, request: search_pb2.CollectionStatsRequest) -> search_pb2.CollectionStatsResponse:
        records = {r.name: r for r in self.catalog.list_collections()}
        names = sorted(set(records) | set(self.store.list_collections()))
        if request.collection:
            if request.collection not in names:
                raise RequestError(grpc.StatusCode.NOT_FOUND, f"collection {request.collection!r} does not exist")
            names = [request.collection]
        response = search_pb2.CollectionStatsResponse(segments=self.catalog.segment_count())
        response.videos.update(self.catalog.count_by_status())
        response.collections.extend(self._one_collection_stats(name, records.get(name)) for name in names)
        return response

    def _one_collection_stats(self, name: str, record: Any) -> search_pb2.CollectionStats:
        """Catalog record (when registered) plus the store's own view; ``vectors`` is -1 when
        this service's store cannot count the collection (another backend, or missing)."""
        info = None
        if (record is None or record.backend == self.store.backend) and self.store.has_collection(name):
            info = self.store.describe(name)
        spec = dict(record.index_spec) if record is not None else index_spec_to_dict(info.index)
        stats = search_pb2.CollectionStats(
            name=name,
            backend=record.backend if record is not None else self.store.backend,
            dim=record.dim if record is not None else info.dim,
            metric=record.metric if record is not None else info.metric,
            index_kind=str(spec.pop("kind", "")),
            vectors=info.count if info is not None else -1,
            feature_model=(record.feature_model or "") if record is not None else "",
        )
        stats.index_params.update({k: str(v) for k, v in spec.items()})
        return stats


# --- request/response helpers ------------------------------------------------------------------


def _bounded(name: str, value: int, default: int, maximum: int) -> int:
    """``value`` when in ``[1, maximum]``, ``default`` for 0, INVALID_ARGUMENT otherwise."""
    if value == 0:
        return default
    if not 1 <= value <= maximum:
        raise invalid(f"{name}={value} is out of range; use 1..{maximum} (0 = default {default})")
    return value


def _search_params(request: search_pb2.SearchRequest) -> SearchParams | None:
    if not request.HasField("params"):
        return None
    nprobe, ef = request.params.nprobe, request.params.ef
    try:
        return SearchParams(nprobe=nprobe or None, ef=ef or None)
    except ValueError as exc:
        raise invalid(str(exc)) from None


def refine_request(query: ParsedQuery, coarse: CoarseResult) -> refiner_pb2.RefineRequest:
    """The padded proposals of ``coarse`` with their catalog video ids, ``coarse_rank`` =
    position in the coarse ranking."""
    proposals = []
    pairs = zip(coarse.proposals[:MAX_REFINE_PROPOSALS], coarse.padded[:MAX_REFINE_PROPOSALS])
    for rank, (proposal, padded) in enumerate(pairs):
        location = coarse.location_of(proposal)
        proposals.append(
            refiner_pb2.RefineProposal(
                video_id=location.video_id,
                video_key=proposal.video_key,
                start_s=padded.start_s,
                end_s=padded.end_s,
                coarse_rank=rank,
                video_duration_s=proposal.video_duration_s,
                uri=location.uri,
                coarse_start_s=proposal.start_s,
                coarse_end_s=proposal.end_s,
            )
        )
    return refiner_pb2.RefineRequest(
        query=moments_pb2.Embedding(values=query.refiner_query.tolist()),
        proposals=proposals,
        query_projected=query.query_projected,
    )


def coarse_moments(coarse: CoarseResult, top_k: int) -> list[moments_pb2.Moment]:
    """The first ``top_k`` unpadded proposals as moments, scored by their best segment."""
    return [_coarse_moment(rank, p, coarse.location_of(p).uri) for rank, p in enumerate(coarse.proposals[:top_k])]


def _coarse_moment(rank: int, proposal: Proposal, uri: str) -> moments_pb2.Moment:
    return moments_pb2.Moment(
        video_key=proposal.video_key,
        uri=uri,
        start_s=proposal.start_s,
        end_s=proposal.end_s,
        score=proposal.best_score,
        coarse_rank=rank,
        coarse_start_s=proposal.start_s,
        coarse_end_s=proposal.end_s,
        video_duration_s=proposal.video_duration_s,
    )


def _degrade(response: search_pb2.SearchResponse, reason: str) -> None:
    response.degraded = True
    response.degraded_reason = reason


def _finish(response: search_pb2.SearchResponse, timings: dict[str, float], t_start: float) -> search_pb2.SearchResponse:
    timings["total"] = (time.perf_counter() - t_start) * 1e3
    response.timings_ms.update(timings)
    return response


def _first_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else "no details"
    return line[:300]


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
    except RequestError as exc:
        if record is not None:
            record(exc.code.name, None)
        context.abort(exc.code, exc.message)
    except Exception as exc:
        incident = uuid.uuid4().hex[:12]
        log.exception("%s failed unexpectedly (incident %s): %s", method, incident, exc, extra={"incident": incident})
        if record is not None:
            record(grpc.StatusCode.INTERNAL.name, None)
        context.abort(
            grpc.StatusCode.INTERNAL,
            f"internal error in {method} ({type(exc).__name__}); see the search service log, incident {incident}",
        )
    else:
        if record is not None:
            record(grpc.StatusCode.OK.name, response)
        return response
    raise AssertionError("unreachable: context.abort raises")  # pragma: no cover


# --- the server --------------------------------------------------------------------------------


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
    catalog = SegmentCatalog.from_config(config)
    store = open_vector_store(config)
    refiner = RefinerClient(refiner_target, config.security, config.refiner.timeout_ms) if refiner_target else None
    metrics = SearchMetrics.for_registry(metrics_registry)
    servicer = SearchServicer(config, catalog, store, encoder, refiner, metrics)
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
            "backend": store.backend,
            "clip": encoder.clip.identity,
            "projector": encoder.projectors.identity,
            "random_weights": encoder.random_weights,
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
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="search"),
        interceptors=server_interceptors(config.security),
    )
    search_pb2_grpc.add_SearchServiceServicer_to_server(servicer, grpc_server)
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, grpc_server)
    reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), grpc_server)
    address = f"{config.services.host}:{config.services.search_port if port is None else port}"
    bound = add_server_port(grpc_server, address, config.security)
    server = SearchServer(grpc_server, servicer, health_servicer)
    server.start()
    servicer.start_refreshing(refresh_s)
    for service in ("", SERVICE_NAME):
        health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    return server, bound
