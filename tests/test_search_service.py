"""The search service end to end: real gRPC over loopback, real stores, the real refiner service.

A small corpus is published with per-second frame features (random unit vectors of the tiny
CLIP's 64 dimensions) and one planted event: seconds 20-32 of ``friends/e02`` are all close to
one vector, so a query with that vector must find them first. CLIP is ``spr-tiny`` with random
weights and the refiner is untrained, so text queries and refined results are checked for
shape, ordering and flags only; the coarse path is checked for the right answer.

Faiss + SQLite by default; one test runs the same path on Milvus + PostgreSQL.
"""

from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from conftest import run_spr, self_signed_certificate
from spr.search.client import SearchClient
from spr.search.service import SearchServicer, serve_search, start_search_server
from spr.catalog import SegmentCatalog
from spr.config import (
    CatalogConfig,
    ClipConfig,
    Config,
    FaissConfig,
    MilvusConfig,
    ProposalsConfig,
    RefinerConfig,
    SecurityConfig,
    VectorsConfig,
)
from spr.engine import MomentSearch
from spr.features import FrameFeatureStore
from spr.metrics import temporal_iou
from spr.models.query import QueryEncoder
from spr.publish import publish_video
from spr.refine_client import GrpcRefiner
from spr.stores import Flat, index_spec_to_dict, l2_normalize, open_vector_store

DIM = 64  # spr-tiny's embedding size
COLLECTION = "segments_test"
PLANTED_KEY = "friends/e02"
PLANTED_SPAN = (20.0, 32.0)
# (key, duration_s, metadata); the planted event lives in the second video.
VIDEOS = [
    ("friends/e01", 60.0, {"show": "friends", "season": 1}),
    (PLANTED_KEY, 75.0, {"show": "friends", "season": 1}),
    ("friends/e03", 90.0, {"show": "friends", "season": 2}),
    ("house/e01", 48.0, {"show": "house", "season": 1}),
    ("house/e02", 120.0, {"show": "house", "season": 2}),
    ("house/e03", 64.0, {"show": "house", "season": 2}),
]
TOKEN = "s3cret-token"
# The corpus has 115 segments: the default 200 would retrieve them all and every video would
# merge into one proposal. 24 keeps proposals separate (the paper retrieves 200 of 384K).
SEGMENTS_K = 24


# --- corpus --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Corpus:
    config: Config
    event: np.ndarray  # (DIM,) the planted event's direction, L2-normalised
    segments: int


def make_config(data_dir: Path, **sections) -> Config:
    """The embedded setup under ``data_dir`` with the tiny random CLIP on the CPU."""
    base = Config(
        data_dir=str(data_dir),
        clip=ClipConfig(model="spr-tiny", pretrained="", device="cpu", precision="fp32"),
        vectors=VectorsConfig(dim=DIM, collection=COLLECTION),
        proposals=ProposalsConfig(top_k_segments=SEGMENTS_K),
        faiss=FaissConfig(use_gpu=False),
        # Generous: the first refine call on a busy 2-core machine pays torch's warm-up.
        refiner=RefinerConfig(device="cpu", timeout_ms=60_000.0),
    )
    return base.replace(**sections)


def frame_features(duration_s: float, rng: np.random.Generator, event: np.ndarray | None) -> np.ndarray:
    """``(ceil(duration_s), DIM)`` unit vectors at 1 fps; with ``event``, the planted span's
    frames are noisy copies of it."""
    feats = l2_normalize(rng.standard_normal((math.ceil(duration_s), DIM)))
    if event is not None:
        lo, hi = int(PLANTED_SPAN[0]), int(PLANTED_SPAN[1])
        feats[lo:hi] = l2_normalize(event + 0.3 * rng.standard_normal((hi - lo, DIM)) / math.sqrt(DIM))
    return feats


def mean_pool_segments(feats: np.ndarray, per_segment: int = 4) -> np.ndarray:
    """The untrained projector's segment embeddings (CLIP_mp): the mean of each 4 s, normalised."""
    n = math.ceil(len(feats) / per_segment)
    return l2_normalize(np.stack([feats[i * per_segment : (i + 1) * per_segment].mean(0) for i in range(n)]))


def publish_corpus(config: Config, seed: int = 0) -> Corpus:
    """Create the collection (registered in the catalog) and publish :data:`VIDEOS` to it."""
    rng = np.random.default_rng(seed)
    event = l2_normalize(rng.standard_normal(DIM))
    store = open_vector_store(config)
    catalog = SegmentCatalog.from_config(config)
    features = FrameFeatureStore.from_config(config)
    collection = config.vectors.collection
    try:
        store.create_collection(collection, DIM, Flat())
        catalog.register_collection(collection, store.backend, DIM, "IP", index_spec_to_dict(Flat()), "spr-tiny/random")
        segments = 0
        for key, duration, metadata in VIDEOS:
            feats = frame_features(duration, rng, event if key == PLANTED_KEY else None)
            published = publish_video(
                catalog, store, collection, key, f"file:///videos/{key}.mp4", duration, mean_pool_segments(feats),
                metadata=metadata, feature_store=features, frame_features=feats, feature_rate=1.0,
            )
            segments += len(published.segment_ids)
    finally:
        store.close()
        catalog.close()
    return Corpus(config, event, segments)


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Corpus:
    return publish_corpus(make_config(tmp_path_factory.mktemp("search")))


@pytest.fixture(scope="module")
def refiner_target(corpus: Corpus) -> Iterator[str]:
    from spr.refine.service import serve_refiner

    server, port = serve_refiner(corpus.config, port=0)
    yield f"127.0.0.1:{port}"
    server.stop(0).wait()


@pytest.fixture(scope="module")
def search_target(corpus: Corpus, refiner_target: str) -> Iterator[str]:
    """The search service, refining with the real refiner."""
    server, port = serve_search(corpus.config, port=0, refiner_target=refiner_target)
    yield f"127.0.0.1:{port}"
    server.stop(0).wait()


@pytest.fixture(scope="module")
def client(search_target: str) -> Iterator[SearchClient]:
    with SearchClient(search_target, timeout_s=120) as c:
        yield c


@pytest.fixture(scope="module")
def encoder(corpus: Corpus) -> QueryEncoder:
    return QueryEncoder.from_config(corpus.config)


@dataclass
class Variant:
    client: SearchClient
    engine: MomentSearch


@pytest.fixture(scope="module")
def start_variant(corpus: Corpus, encoder: QueryEncoder) -> Iterator:
    """Starts extra search servers (shared encoder; no background store refresh, so tests
    decide when it happens), stopped at the end of the module:
    ``start_variant(refiner=..., store=..., config=...) -> Variant``."""
    servers, clients = [], []

    def start(refiner: GrpcRefiner | None = None, store=None, config: Config | None = None) -> Variant:
        config = config or corpus.config
        engine = MomentSearch(config, SegmentCatalog.from_config(config), store or open_vector_store(config), encoder, refiner)
        server, port = start_search_server(config, SearchServicer(engine), port=0, max_workers=2, refresh_s=0)
        servers.append(server)
        clients.append(SearchClient(f"127.0.0.1:{port}", config.security, timeout_s=120))
        return Variant(clients[-1], engine)

    yield start
    for c in clients:
        c.close()
    for server in servers:
        server.stop(0).wait()


def assert_well_formed(response, top_k: int) -> None:
    """Moments within their videos, at most ``top_k``, coarse ranks inside the proposals."""
    assert 0 < len(response.moments) <= top_k
    assert len(response.moments) == min(top_k, response.proposals) or response.refined
    for m in response.moments:
        assert 0.0 <= m.start_s < m.end_s <= m.video_duration_s + 1e-6
        assert 0.0 <= m.coarse_start_s < m.coarse_end_s <= m.video_duration_s + 1e-6
        assert 0 <= m.coarse_rank < response.proposals
        assert m.uri == f"file:///videos/{m.video_key}.mp4"
    assert set(response.timings_ms) >= {"embed", "ann", "catalog", "proposals", "refine", "total"}
    assert response.timings_ms["total"] >= response.timings_ms["ann"]


def rpc_error(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


# --- search ----------------------------------------------------------------------------------


def test_search_by_embedding_finds_the_planted_event_first(client: SearchClient, corpus: Corpus):
    response = client.search(embedding=corpus.event, top_k=5, refine=False)
    assert_well_formed(response, 5)
    best = response.moments[0]
    assert best.video_key == PLANTED_KEY and best.coarse_rank == 0
    assert temporal_iou(best.start_s, best.end_s, *PLANTED_SPAN) >= 0.5
    scores = [m.score for m in response.moments]
    assert scores == sorted(scores, reverse=True) and scores[0] > 0.9
    assert (response.refined, response.degraded, response.degraded_reason) == (False, False, "")
    assert response.random_weights  # random CLIP and no projector checkpoint
    assert response.collection == COLLECTION
    assert response.segments_retrieved == SEGMENTS_K
    # Its 3 segments merged (a neighbour retrieved by chance may widen the span).
    assert best.start_s <= PLANTED_SPAN[0] and best.end_s >= PLANTED_SPAN[1]
    assert response.timings_ms["refine"] == 0.0


def test_refined_search_goes_through_the_refiner(client: SearchClient, corpus: Corpus):
    coarse = client.search(embedding=corpus.event, top_k=1000, refine=False)
    refined = client.search(embedding=corpus.event, top_k=7)  # refine defaults to on
    assert (refined.refined, refined.degraded) == (True, False)
    assert_well_formed(refined, 7)
    assert len(refined.moments) == 7
    assert refined.timings_ms["refine"] > 0.0
    assert (refined.segments_retrieved, refined.proposals) == (coarse.segments_retrieved, coarse.proposals)
    scores = [m.score for m in refined.moments]
    assert scores == sorted(scores, reverse=True)
    # Each refined moment lies inside its coarse proposal padded by tau_C = 8 s.
    by_rank = {rank: m for rank, m in enumerate(coarse.moments)}
    for m in refined.moments:
        source = by_rank[m.coarse_rank]
        assert (m.video_key, m.coarse_start_s, m.coarse_end_s) == (source.video_key, source.start_s, source.end_s)
        assert max(0.0, source.start_s - 8.0) - 1e-6 <= m.start_s < m.end_s <= source.end_s + 8.0 + 1e-6


def test_search_by_text_runs_end_to_end(client: SearchClient, corpus: Corpus):
    for refine in (False, True):
        response = client.search(text="a man opens the door of a red car", top_k=4, refine=refine)
        assert_well_formed(response, 4)
        assert response.refined is refine and not response.degraded
        assert response.random_weights
        assert response.timings_ms["embed"] > 0.0
        scores = [m.score for m in response.moments]
        assert scores == sorted(scores, reverse=True)


def test_a_refiner_that_is_down_degrades_to_the_coarse_proposals(start_variant, corpus: Corpus, client: SearchClient):
    target = f"127.0.0.1:{closed_port()}"
    degraded_client = start_variant(refiner=GrpcRefiner(target, SecurityConfig(), 5_000)).client
    response = degraded_client.search(embedding=corpus.event, top_k=5)
    assert (response.refined, response.degraded) == (False, True)
    assert target in response.degraded_reason and "unavailable" in response.degraded_reason
    coarse = client.search(embedding=corpus.event, top_k=5, refine=False)
    assert [(m.video_key, m.start_s, m.end_s) for m in response.moments] == [
        (m.video_key, m.start_s, m.end_s) for m in coarse.moments
    ]


def test_a_refiner_that_times_out_degrades(start_variant, corpus: Corpus, refiner_target: str):
    late_client = start_variant(refiner=GrpcRefiner(refiner_target, SecurityConfig(), timeout_ms=0.001)).client
    response = late_client.search(embedding=corpus.event, top_k=3)
    assert (response.refined, response.degraded) == (False, True)
    assert "timed out after 0.001 ms" in response.degraded_reason
    assert response.moments[0].video_key == PLANTED_KEY


def test_without_a_refiner_refinement_is_skipped_unless_asked_for(start_variant, corpus: Corpus):
    coarse_client = start_variant(refiner=None).client
    default = coarse_client.search(embedding=corpus.event, top_k=3)
    assert (default.refined, default.degraded, default.degraded_reason) == (False, False, "")
    asked = coarse_client.search(embedding=corpus.event, top_k=3, refine=True)
    assert (asked.refined, asked.degraded, asked.degraded_reason) == (False, True, "no refiner configured")
    assert asked.moments[0].video_key == PLANTED_KEY


def test_videos_ingested_after_start_become_searchable_on_refresh(start_variant, tmp_path: Path):
    fresh = publish_corpus(make_config(tmp_path), seed=2)
    variant = start_variant(config=fresh.config)
    late_event = l2_normalize(np.random.default_rng(7).standard_normal(DIM))
    assert variant.client.search(embedding=late_event, refine=False).moments  # collection loaded
    # Another process ingests: its own store object, flushed before the video turns ready.
    store, catalog = open_vector_store(fresh.config), SegmentCatalog.from_config(fresh.config)
    feats = l2_normalize(np.random.default_rng(8).standard_normal((40, DIM)))
    feats[8:16] = late_event
    try:
        publish_video(
            catalog, store, COLLECTION, "late/e01", "file:///videos/late/e01.mp4", 40.0, mean_pool_segments(feats),
            feature_store=FrameFeatureStore.from_config(fresh.config), frame_features=feats,
        )
    finally:
        store.close()
        catalog.close()
    stale = variant.client.search(embedding=late_event, top_k=3, refine=False)
    assert "late/e01" not in {m.video_key for m in stale.moments}  # the copy loaded at start
    assert variant.engine.refresh_store() == [COLLECTION]
    fresh_result = variant.client.search(embedding=late_event, top_k=3, refine=False)
    assert (fresh_result.moments[0].video_key, fresh_result.moments[0].start_s) == ("late/e01", 8.0)


# --- filters -----------------------------------------------------------------------------------


def test_video_keys_restrict_the_search(client: SearchClient, corpus: Corpus):
    response = client.search(embedding=corpus.event, top_k=20, video_keys=["house/e01", "friends/e03"], refine=False)
    assert {m.video_key for m in response.moments} == {"house/e01", "friends/e03"}
    unknown = client.search(embedding=corpus.event, video_keys=["no/such/video"])
    assert len(unknown.moments) == 0 and unknown.segments_retrieved == 0


def test_metadata_filters_keep_matching_ready_videos(client: SearchClient, corpus: Corpus):
    house = client.search(embedding=corpus.event, top_k=50, metadata={"show": "house"}, refine=False)
    assert {m.video_key for m in house.moments} == {"house/e01", "house/e02", "house/e03"}
    assert "filter" in house.timings_ms
    # Numbers match their JSON spelling; several pairs must all hold.
    season_one = client.search(embedding=corpus.event, top_k=50, metadata={"show": "friends", "season": "1"}, refine=False)
    assert {m.video_key for m in season_one.moments} == {"friends/e01", PLANTED_KEY}
    # Intersected with video_keys.
    both = client.search(
        embedding=corpus.event, top_k=50, metadata={"show": "house"}, video_keys=["house/e02", PLANTED_KEY], refine=False
    )
    assert {m.video_key for m in both.moments} == {"house/e02"}
    nothing = client.search(embedding=corpus.event, metadata={"show": "seinfeld"})
    assert len(nothing.moments) == 0 and not nothing.degraded and nothing.segments_retrieved == 0


def test_catalog_metadata_matching_agrees_on_both_dialects(catalog_url: str):
    with SegmentCatalog.open(catalog_url) as catalog:
        rows = {
            "a": {"show": "friends", "season": 3, "hd": True, "rating": 2.5, "a.b": "dotted"},
            "b": {"show": "friends", "season": "3", "hd": False},
            "c": {"show": "house"},
            "pending": {"show": "friends"},
        }
        for key, metadata in rows.items():
            video = catalog.register_video(key, f"file:///{key}.mp4", 10.0, metadata=metadata)
            if key != "pending":
                catalog.mark_ready(video.id)
        assert catalog.video_keys_matching({"show": "friends"}) == ["a", "b"]
        assert catalog.video_keys_matching({"show": "friends"}, ready_only=False) == ["a", "b", "pending"]
        assert catalog.video_keys_matching({"season": "3"}) == ["a", "b"]  # number or string
        assert catalog.video_keys_matching({"hd": "true"}) == ["a"] and catalog.video_keys_matching({"hd": "false"}) == ["b"]
        assert catalog.video_keys_matching({"rating": "2.5", "a.b": "dotted"}) == ["a"]
        assert catalog.video_keys_matching({"show": "friends", "season": "4"}) == []
        assert catalog.video_keys_matching({"missing": "x"}) == []
        assert catalog.video_keys_matching({}) == ["a", "b", "c"]
        with pytest.raises(ValueError, match="double quote"):
            catalog.video_keys_matching({'a"b': "x"})


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (dict(text=""), "empty"),
        (dict(text=" \t\n "), "empty"),
        (dict(text="x" * 1001), "1001 characters"),
        (dict(embedding=np.ones(DIM + 1)), f"needs {DIM}"),
        (dict(embedding=np.full(DIM, np.nan)), "NaN"),
        (dict(embedding=np.zeros(DIM)), "zeros"),
        (dict(text="a door", top_k=-1), "top_k=-1"),
        (dict(text="a door", top_k=1001), "top_k=1001"),
        (dict(text="a door", segments_k=16385), "segments_k=16385"),
        (dict(text="a door", segments_k=-3), "segments_k=-3"),
        (dict(text="a door", nprobe=-2), "nprobe"),
        (dict(text="a door", metadata={'we"ird': "x"}), "double quote"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_bad_requests_are_invalid_argument(client: SearchClient, arguments: dict, message: str):
    error = rpc_error(lambda: client.search(**arguments))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in error.details()


def test_a_request_without_a_query_is_invalid(client: SearchClient):
    from spr.api.v1 import search_pb2, search_pb2_grpc

    stub = search_pb2_grpc.SearchServiceStub(client.channel)
    error = rpc_error(lambda: stub.Search(search_pb2.SearchRequest(top_k=3), timeout=60))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "no query" in error.details()


def test_an_unknown_collection_is_not_found(client: SearchClient, corpus: Corpus):
    error = rpc_error(lambda: client.search(embedding=corpus.event, collection="no_such_collection"))
    assert error.code() == grpc.StatusCode.NOT_FOUND and "no_such_collection" in error.details()


def test_an_unexpected_failure_is_internal_without_a_traceback(start_variant, corpus: Corpus, caplog):
    class BrokenStore:
        """Describes collections but fails every search, as a corrupt index would."""

        backend = "faiss"

        def __init__(self, inner):
            self.inner = inner

        def describe(self, name):
            return self.inner.describe(name)

        def holds(self, record):
            return self.inner.holds(record)

        def search(self, *args, **kwargs):
            raise RuntimeError("disk on fire at /secret/path")

        def refresh(self):
            return []

        def close(self):
            self.inner.close()

    broken = start_variant(store=BrokenStore(open_vector_store(corpus.config))).client
    with caplog.at_level("ERROR", logger="spr.search.service"):
        error = rpc_error(lambda: broken.search(embedding=corpus.event))
    assert error.code() == grpc.StatusCode.INTERNAL
    assert "incident" in error.details() and "RuntimeError" in error.details()
    assert "/secret/path" not in error.details() and "Traceback" not in error.details()
    (logged,) = [r for r in caplog.records if r.exc_info and "disk on fire" in str(r.exc_info[1])]
    assert logged.incident in error.details()  # the client's message points at the logged traceback


# --- operations --------------------------------------------------------------------------------


def test_collection_stats(client: SearchClient, corpus: Corpus):
    stats = client.collection_stats()
    assert stats.segments == corpus.segments
    assert stats.videos["ready"] == len(VIDEOS) and stats.videos["pending"] == 0
    (collection,) = [c for c in stats.collections if c.name == COLLECTION]
    assert (collection.backend, collection.dim, collection.metric, collection.index_kind) == ("faiss", DIM, "IP", "FLAT")
    assert collection.vectors == corpus.segments
    assert collection.feature_model == "spr-tiny/random"
    assert [c.name for c in client.collection_stats(COLLECTION).collections] == [COLLECTION]
    error = rpc_error(lambda: client.collection_stats("no_such_collection"))
    assert error.code() == grpc.StatusCode.NOT_FOUND


def test_health_reports_serving(client: SearchClient):
    health = health_pb2_grpc.HealthStub(client.channel)
    for service in ("", "spr.v1.SearchService"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=30)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def list_services(channel: grpc.Channel, metadata=()) -> list[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    replies = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), metadata=metadata, timeout=30)
    return [s.name for reply in replies for s in reply.list_services_response.service]


def test_reflection_lists_the_search_service(client: SearchClient):
    services = list_services(client.channel)
    assert {"spr.v1.SearchService", "grpc.health.v1.Health"} <= set(services)


# --- TLS and the bearer token ------------------------------------------------------------------


def test_tls_and_token(corpus: Corpus, tmp_path: Path):
    from spr.refine.service import serve_refiner

    cert, key = self_signed_certificate(tmp_path)
    security = SecurityConfig(tls_cert=str(cert), tls_key=str(key), tls_ca=str(cert), token=TOKEN)
    config = corpus.config.replace(security=security)
    refiner, refiner_port = serve_refiner(config, port=0)
    server, port = serve_search(config, port=0, refiner_target=f"127.0.0.1:{refiner_port}")
    target = f"127.0.0.1:{port}"
    try:
        with SearchClient(target, security, timeout_s=120) as secure:
            response = secure.search(embedding=corpus.event, top_k=3)
            # The search service reached the refiner over TLS with the token too.
            assert (response.refined, response.degraded) == (True, False)
            assert "spr.v1.SearchService" in list_services(secure.channel, secure.metadata)
        with SearchClient(target, SecurityConfig(tls_ca=str(cert)), timeout_s=30) as no_token:
            error = rpc_error(lambda: no_token.search(embedding=corpus.event))
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED
            # Probes check health without credentials.
            reply = health_pb2_grpc.HealthStub(no_token.channel).Check(health_pb2.HealthCheckRequest(), timeout=30)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with SearchClient(target, SecurityConfig(tls_ca=str(cert), token="wrong"), timeout_s=30) as wrong:
            assert rpc_error(lambda: wrong.search(embedding=corpus.event)).code() == grpc.StatusCode.UNAUTHENTICATED
        with SearchClient(target, timeout_s=30) as plaintext:
            assert rpc_error(lambda: plaintext.search(embedding=corpus.event)).code() == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop(0).wait()
        refiner.stop(0).wait()


# --- the command line --------------------------------------------------------------------------


def test_spr_search_prints_a_table(search_target: str):
    result = run_spr("search", "a man opens a door", "--target", search_target, "--k", "3", "--no-refine")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["#", "video", "start", "end", "score", "coarse", "found", "by"]
    rows = lines[1:4]
    assert [row.split()[0] for row in rows] == ["0", "1", "2"]
    assert all(row.split()[1] in {key for key, _, _ in VIDEOS} for row in rows)
    assert all(len(row.split()[2].split(":")) == 3 for row in rows)  # h:mm:ss.s
    assert "coarse (not refined)" in result.stdout
    assert "timings: embed" in result.stdout and "total" in result.stdout
    assert "runs on untrained or random weights" in result.stdout


def test_spr_search_json_and_filters(search_target: str):
    import json

    result = run_spr(
        "search", "a door", "--target", search_target, "--k", "5", "--video", "house/e02", "--meta", "show=house", "--json"
    )
    assert result.returncode == 0, result.stderr
    response = json.loads(result.stdout)
    assert response["refined"] is True and response["degraded"] is False
    assert {m["video_key"] for m in response["moments"]} == {"house/e02"}
    assert set(response["timings_ms"]) >= {"embed", "ann", "catalog", "proposals", "refine", "total"}


def test_spr_search_without_a_service_says_how_to_start_one():
    target = f"127.0.0.1:{closed_port()}"
    result = run_spr("search", "a door", "--target", target)
    assert result.returncode == 2
    assert f"no search service at {target}; start one with `spr serve`" in result.stderr
    assert "Traceback" not in result.stderr


def test_spr_search_reports_a_bad_request(search_target: str):
    result = run_spr("search", "   ", "--target", search_target)
    assert result.returncode == 2 and "query text is empty" in result.stderr


def test_spr_serve_serves_until_sigterm(corpus: Corpus):
    env = {
        **os.environ,
        "SPR_DATA_DIR": corpus.config.data_dir,
        "SPR_CLIP__MODEL": "spr-tiny",
        "SPR_CLIP__DEVICE": "cpu",
        "SPR_REFINER__DEVICE": "cpu",
        "SPR_FAISS__USE_GPU": "false",
        "SPR_VECTORS__COLLECTION": COLLECTION,
        "SPR_VECTORS__DIM": str(DIM),
        "SPR_REFINER__TIMEOUT_MS": "60000",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "spr.cli", "serve", "--search-port", "0", "--refiner-port", "0", "--web", "--web-port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    watchdog = threading.Timer(240, proc.kill)  # never hang the suite on a stuck server
    watchdog.start()
    try:
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if line.startswith("web "):
                break
        assert seen and seen[-1].startswith("web "), f"no web address printed: {seen} {proc.stderr.read()}"
        assert any(line.startswith("refiner ") for line in seen)
        search_line = next(line for line in seen if line.startswith("search "))
        target = "127.0.0.1:" + search_line.split()[3].rsplit(":", 1)[1]
        with SearchClient(target, timeout_s=120) as c:
            response = c.search(text="a woman laughs", top_k=2)
        assert (response.refined, response.degraded) == (True, False) and len(response.moments) == 2
        # The page's JSON API answers through the same search service.
        url = seen[-1].split()[1]
        assert url.startswith("http://127.0.0.1:")
        page = httpx.get(f"{url}api/search", params={"q": "a woman laughs", "k": 2}, timeout=120)
        assert page.status_code == 200 and len(page.json()["moments"]) == 2
        proc.send_signal(signal.SIGTERM)
        rest, errors = proc.communicate(timeout=120)
        assert proc.returncode == 0, errors
        assert "stopped" in rest
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_spr_web_serves_the_page_against_a_running_search_service(search_target: str):
    proc = subprocess.Popen(
        [sys.executable, "-m", "spr.cli", "web", "--target", search_target, "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    watchdog = threading.Timer(120, proc.kill)
    watchdog.start()
    try:
        line = proc.stdout.readline()
        assert line.startswith("web "), f"{line!r} {proc.stderr.read() if proc.poll() is not None else ''}"
        url = line.split()[1]
        assert httpx.get(url, timeout=30).status_code == 200
        # A second gateway on the same port is a usage error naming the port, not a traceback.
        port = url.rstrip("/").rsplit(":", 1)[1]
        busy = run_spr("web", "--target", search_target, "--port", port)
        assert busy.returncode == 2 and f"port {port}" in busy.stderr and "in use" in busy.stderr
        assert "Traceback" not in busy.stderr
        proc.send_signal(signal.SIGTERM)
        rest, errors = proc.communicate(timeout=60)
        assert proc.returncode == 0, errors
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# --- Milvus + PostgreSQL -----------------------------------------------------------------------


@pytest.mark.milvus
@pytest.mark.postgres
def test_search_on_milvus_and_postgresql(tmp_path: Path, milvus_uri: str, postgres_url: str):
    from spr.refine.service import serve_refiner

    collection = f"t_search_{uuid.uuid4().hex[:8]}"
    config = make_config(
        tmp_path,
        catalog=CatalogConfig(url=postgres_url),
        vectors=VectorsConfig(backend="milvus", dim=DIM, collection=collection),
        milvus=MilvusConfig(uri=milvus_uri, consistency_level="Strong"),
    )
    corpus = publish_corpus(config, seed=1)
    refiner, refiner_port = serve_refiner(config, port=0)
    server, port = serve_search(config, port=0, refiner_target=f"127.0.0.1:{refiner_port}")
    try:
        with SearchClient(f"127.0.0.1:{port}", timeout_s=120) as c:
            coarse = c.search(embedding=corpus.event, top_k=3, refine=False)
            assert coarse.moments[0].video_key == PLANTED_KEY
            assert temporal_iou(coarse.moments[0].start_s, coarse.moments[0].end_s, *PLANTED_SPAN) >= 0.5
            refined = c.search(text="two people talk in a kitchen", top_k=3)
            assert (refined.refined, refined.degraded) == (True, False) and len(refined.moments) == 3
            house = c.search(embedding=corpus.event, top_k=50, metadata={"show": "house", "season": "2"}, refine=False)
            assert {m.video_key for m in house.moments} == {"house/e02", "house/e03"}
            (stats,) = c.collection_stats(collection).collections
            assert (stats.backend, stats.dim, stats.vectors) == ("milvus", DIM, corpus.segments)
    finally:
        server.stop(0).wait()
        refiner.stop(0).wait()
        store = open_vector_store(config)
        store.drop_collection(collection)
        store.close()
