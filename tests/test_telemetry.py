"""Prometheus metrics (spr.telemetry) on the real services: gRPC over loopback, spr-tiny random
CLIP, Faiss + SQLite, the real refiner, and ``/metrics`` scraped over HTTP from 127.0.0.1.

Every server here gets a fresh registry, so counts are exact; scrapes are compared before and
after, so the order of tests does not matter. Metric endpoints bind port 0 (a free port).
"""

from __future__ import annotations

import logging
import math
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from spr.ingest.pipeline import run_ingest
from spr.ingest.progress import IngestProgress
from spr.ingest.sources import sources_from_paths
from spr.ingest.synthetic_video import write_video
from videos import write_corrupt
from spr.search.client import SearchClient
from spr.search.service import serve_search
from spr.api.v1 import moments_pb2, refiner_pb2, refiner_pb2_grpc
from spr.catalog import SegmentCatalog
from spr.config import ClipConfig, Config, FaissConfig, MetricsConfig, ProposalsConfig, RefinerConfig, VectorsConfig
from spr.features import FrameFeatureStore
from spr.publish import publish_video
from spr.stores import Flat, index_spec_to_dict, l2_normalize, open_vector_store
from spr.telemetry import (
    IngestMetrics,
    RefinerMetrics,
    SearchMetrics,
    degraded_reason_label,
    default_registry,
    serve_metrics,
    start_metrics_server,
)

DIM = 64  # spr-tiny
COLLECTION = "segments_metrics"
VIDEOS = [("a", 60.0), ("b", 75.0), ("c", 48.0), ("d", 90.0)]
SEARCH_STAGES = ("embed", "ann", "fusion", "catalog", "proposals", "refine", "snippets", "total")
REFINER_STAGES = ("features", "queue", "model", "total")
# Scrapes bypass any proxy from the environment: only loopback is dialled.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# --- helpers -----------------------------------------------------------------------------------


Samples = dict[tuple[str, frozenset], float]


def scrape(port: int) -> Samples:
    """``GET http://127.0.0.1:port/metrics`` parsed: ``{(sample name, labels): value}``."""
    with _OPENER.open(f"http://127.0.0.1:{port}/metrics", timeout=30) as reply:
        assert reply.status == 200
        text = reply.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_config(data_dir: Path) -> Config:
    return Config(
        data_dir=str(data_dir),
        clip=ClipConfig(model="spr-tiny", pretrained="", device="cpu", precision="fp32", batch_size=16),
        vectors=VectorsConfig(dim=DIM, collection=COLLECTION),
        proposals=ProposalsConfig(top_k_segments=24),
        faiss=FaissConfig(use_gpu=False),
        refiner=RefinerConfig(device="cpu", timeout_ms=60_000.0),
        metrics=MetricsConfig(enabled=True, host="127.0.0.1", search_port=0, refiner_port=0, ingest_port=0),
    )


def publish_corpus(config: Config) -> None:
    """:data:`VIDEOS` with random 1-fps frame features and mean-pooled 4-s segments."""
    rng = np.random.default_rng(0)
    store = open_vector_store(config)
    catalog = SegmentCatalog.from_config(config)
    features = FrameFeatureStore.from_config(config)
    try:
        store.create_collection(COLLECTION, DIM, Flat())
        catalog.register_collection(COLLECTION, store.backend, DIM, "IP", index_spec_to_dict(Flat()), "spr-tiny/random")
        for key, duration in VIDEOS:
            feats = l2_normalize(rng.standard_normal((math.ceil(duration), DIM)))
            n = math.ceil(len(feats) / 4)
            segments = l2_normalize(np.stack([feats[i * 4 : (i + 1) * 4].mean(0) for i in range(n)]))
            publish_video(
                catalog, store, COLLECTION, key, f"file:///videos/{key}.mp4", duration, segments,
                feature_store=features, frame_features=feats, feature_rate=1.0,
            )
    finally:
        store.close()
        catalog.close()


@dataclass
class Service:
    server: object
    port: int
    metrics_port: int
    registry: CollectorRegistry


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Config:
    config = make_config(tmp_path_factory.mktemp("telemetry"))
    publish_corpus(config)
    return config


@pytest.fixture(scope="module")
def refiner(config: Config) -> Iterator[Service]:
    from spr.refine.service import serve_refiner

    registry = CollectorRegistry()
    server, port = serve_refiner(config, port=0, metrics_registry=registry)
    assert server.metrics_port  # config says 0: a free port was bound and reported
    yield Service(server, port, server.metrics_port, registry)
    server.stop(0).wait()


@pytest.fixture(scope="module")
def search(config: Config, refiner: Service) -> Iterator[Service]:
    registry = CollectorRegistry()
    server, port = serve_search(config, port=0, refiner_target=f"127.0.0.1:{refiner.port}", metrics_registry=registry)
    assert server.metrics_port and server.metrics_port != refiner.metrics_port
    yield Service(server, port, server.metrics_port, registry)
    server.stop(0).wait()


@pytest.fixture(scope="module")
def client(search: Service) -> Iterator[SearchClient]:
    with SearchClient(f"127.0.0.1:{search.port}", timeout_s=120) as c:
        yield c


# --- the search service and the refiner --------------------------------------------------------


def test_searches_count_by_code_with_one_stage_observation_per_answer(search, refiner, client, monkeypatch):
    search_before, refiner_before = scrape(search.metrics_port), scrape(refiner.metrics_port)

    answers = [client.search(text=t, top_k=5) for t in ("a red car", "a dog runs", "two people talk")]
    assert all(r.refined and not r.degraded for r in answers)
    with pytest.raises(grpc.RpcError) as bad:
        client.search(text="   ")
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as missing:
        client.search(text="a cat", collection="nope")
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND

    def boom(*args, **kwargs):
        raise RuntimeError("store exploded")

    monkeypatch.setattr(search.server.servicer.engine, "_search_modalities", boom)
    with pytest.raises(grpc.RpcError) as internal:
        client.search(text="a cat")
    assert internal.value.code() == grpc.StatusCode.INTERNAL
    monkeypatch.undo()

    after = scrape(search.metrics_port)
    assert delta(search_before, after, "spr_search_requests_total", code="OK") == 3
    assert delta(search_before, after, "spr_search_requests_total", code="INVALID_ARGUMENT") == 1
    assert delta(search_before, after, "spr_search_requests_total", code="NOT_FOUND") == 1
    assert delta(search_before, after, "spr_search_requests_total", code="INTERNAL") == 1
    assert delta(search_before, after, "spr_search_refined_total") == 3
    for stage in SEARCH_STAGES:  # once per answered request, never for refused ones
        assert delta(search_before, after, "spr_search_stage_seconds_count", stage=stage) == 3, stage
        # Every observation is also in the +Inf bucket (the 5 s bucket would be a timed assertion).
        assert delta(search_before, after, "spr_search_stage_seconds_bucket", stage=stage, le="+Inf") == 3
    total_ms = sum(r.timings_ms["total"] for r in answers)
    assert delta(search_before, after, "spr_search_stage_seconds_sum", stage="total") == pytest.approx(
        total_ms / 1e3, rel=1e-6
    )
    assert not any(name == "spr_search_degraded_total" and value > 0 for (name, _), value in after.items())

    refined = scrape(refiner.metrics_port)
    assert delta(refiner_before, refined, "spr_refiner_requests_total", code="OK") == 3
    for stage in REFINER_STAGES:
        assert delta(refiner_before, refined, "spr_refiner_stage_seconds_count", stage=stage) == 3, stage
    # Each forward batch is observed once: every refined proposal is in exactly one batch.
    batches = delta(refiner_before, refined, "spr_refiner_batch_proposals_count")
    assert 1 <= batches <= 3
    assert delta(refiner_before, refined, "spr_refiner_batch_queries_count") == batches
    assert delta(refiner_before, refined, "spr_refiner_batch_queries_sum") == 3
    assert delta(refiner_before, refined, "spr_refiner_batch_proposals_sum") == sum(r.proposals for r in answers)
    # The search endpoint holds search metrics only, the refiner's its own.
    assert not any(name.startswith("spr_refiner_") for name, _ in after)
    assert not any(name.startswith("spr_search_") for name, _ in refined)


def test_refiner_refusals_and_dropped_proposals_are_counted(config, refiner):
    with SegmentCatalog.from_config(config) as catalog:
        video_id = catalog.get_video("a").id
    before = scrape(refiner.metrics_port)
    with grpc.insecure_channel(f"127.0.0.1:{refiner.port}") as channel:
        stub = refiner_pb2_grpc.RefinerServiceStub(channel)
        with pytest.raises(grpc.RpcError) as bad:
            stub.Refine(refiner_pb2.RefineRequest(query=moments_pb2.Embedding(values=[1.0, 2.0])), timeout=60)
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        query = moments_pb2.Embedding(values=l2_normalize(np.ones(DIM, dtype=np.float32)).tolist())
        proposals = [
            refiner_pb2.RefineProposal(video_id=video_id, video_key="a", start_s=0.0, end_s=12.0),
            refiner_pb2.RefineProposal(video_id=999_999, video_key="gone", start_s=0.0, end_s=8.0),  # no features
        ]
        answer = stub.Refine(refiner_pb2.RefineRequest(query=query, proposals=proposals), timeout=60)
    assert answer.dropped == 1 and len(answer.moments) == 1
    after = scrape(refiner.metrics_port)
    assert delta(before, after, "spr_refiner_requests_total", code="INVALID_ARGUMENT") == 1
    assert delta(before, after, "spr_refiner_requests_total", code="OK") == 1
    assert delta(before, after, "spr_refiner_dropped_proposals_total") == 1
    assert delta(before, after, "spr_refiner_batch_proposals_sum") == 1


def test_a_search_degraded_by_a_refiner_that_is_down_is_counted_by_reason(config):
    registry = CollectorRegistry()
    server, port = serve_search(config, port=0, refiner_target=f"127.0.0.1:{free_port()}", metrics_registry=registry)
    try:
        with SearchClient(f"127.0.0.1:{port}", timeout_s=120) as c:
            response = c.search(text="a red car", top_k=5)
        assert response.degraded and not response.refined
        samples = scrape(server.metrics_port)
    finally:
        server.stop(0).wait()
    assert value(samples, "spr_search_requests_total", code="OK") == 1
    assert value(samples, "spr_search_degraded_total", reason="unavailable") == 1
    assert value(samples, "spr_search_refined_total") == 0
    for stage in SEARCH_STAGES:
        assert value(samples, "spr_search_stage_seconds_count", stage=stage) == 1
    with pytest.raises(urllib.error.URLError):  # stop() released the endpoint
        scrape(server.metrics_port)


def test_a_taken_metrics_port_only_warns_and_the_service_still_serves(config, caplog):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        caplog.set_level(logging.WARNING, logger="spr.telemetry")
        server, search_port = serve_search(config, port=0, metrics_port=port, metrics_registry=CollectorRegistry())
        try:
            assert server.metrics_port is None and server.metrics_server is None
            with SearchClient(f"127.0.0.1:{search_port}", timeout_s=120) as c:
                assert c.search(text="a dog", top_k=3, refine=False).moments
        finally:
            server.stop(0).wait()
    warnings = [r for r in caplog.records if r.name == "spr.telemetry" and r.levelno == logging.WARNING]
    assert warnings and warnings[0].metrics_port == port and "serving without /metrics" in warnings[0].getMessage()


# --- ingest ------------------------------------------------------------------------------------


def test_ingest_serves_its_counters_while_it_runs_and_they_match_the_summary(tmp_path, caplog):
    videos = tmp_path / "videos"
    videos.mkdir()
    write_video(videos / "one.mp4", 9.0, fps=4, seed=1)
    write_video(videos / "two.mp4", 6.0, fps=4, seed=2)
    write_corrupt(videos / "broken.mp4")
    config = make_config(tmp_path / "data")
    sources = sources_from_paths([videos])
    registry = CollectorRegistry()
    caplog.set_level(logging.INFO, logger="spr.telemetry")
    scraped: list[Samples] = []

    def on_published(keys: list[str]) -> None:
        started = [r for r in caplog.records if r.name == "spr.telemetry" and getattr(r, "component", "") == "ingest"]
        scraped.append(scrape(started[-1].metrics_port))

    summary = run_ingest(
        config, sources, executor="inline", progress=IngestProgress(3, stream=None),
        on_published=on_published, metrics_registry=registry,
    )
    assert (summary.videos_done, summary.videos_failed) == (2, 1)
    assert len(scraped) == 1  # one publish batch
    live = scraped[0]
    assert value(live, "spr_ingest_videos_total", outcome="published") == summary.videos_done
    assert value(live, "spr_ingest_videos_total", outcome="failed") == summary.videos_failed
    assert value(live, "spr_ingest_videos_total", outcome="skipped") == 0
    assert value(live, "spr_ingest_segments_total") == summary.segments_written == 3 + 2
    assert value(live, "spr_ingest_frames_total") == summary.frames
    assert value(live, "spr_ingest_video_seconds_total") == pytest.approx(summary.video_seconds)
    assert value(live, "spr_ingest_video_seconds_per_second") > 0
    assert ("spr_ingest_videos_in_flight", frozenset()) in live
    port = [r for r in caplog.records if getattr(r, "component", "") == "ingest"][-1].metrics_port
    with pytest.raises(urllib.error.URLError):  # the endpoint lives only as long as the run
        scrape(port)

    # A re-run skips the unchanged videos and retries the broken one.
    again = run_ingest(config, sources, executor="inline", progress=IngestProgress(3, stream=None), metrics_registry=registry)
    assert (again.videos_skipped, again.videos_failed) == (2, 1)
    metrics = IngestMetrics.for_registry(registry)
    assert metrics.videos.labels("skipped")._value.get() == 2
    assert metrics.videos.labels("failed")._value.get() == 2
    assert metrics.videos_in_flight._value.get() == 0


# --- the module itself -------------------------------------------------------------------------


def test_metrics_are_created_once_per_registry_and_default_registries_are_per_component():
    registry = CollectorRegistry()
    assert SearchMetrics.for_registry(registry) is SearchMetrics.for_registry(registry)
    assert RefinerMetrics.for_registry(registry).registry is registry  # search and refiner can share one
    assert SearchMetrics.for_registry(CollectorRegistry()) is not SearchMetrics.for_registry(registry)
    assert SearchMetrics.for_registry().registry is default_registry("search")
    assert default_registry("search") is not default_registry("refiner")
    with pytest.raises(ValueError):
        default_registry("nope")


def test_start_metrics_server_reports_a_free_port_and_stop_releases_it():
    registry = CollectorRegistry()
    SearchMetrics.for_registry(registry).record("OK")
    server, port = start_metrics_server("127.0.0.1", 0, registry)
    try:
        assert port == server.port > 0 and server.url == f"http://127.0.0.1:{port}/metrics"
        assert value(scrape(port), "spr_search_requests_total", code="OK") == 1
        with pytest.raises(OSError):  # a second server cannot take the same port
            start_metrics_server("127.0.0.1", port, registry)
    finally:
        server.stop()
    server.stop()  # idempotent
    again, _ = start_metrics_server("127.0.0.1", port, registry)  # the port is free again
    again.stop()
    assert serve_metrics(MetricsConfig(enabled=False), 0, registry, "search") is None


@pytest.mark.parametrize(
    ("reason", "label"),
    [
        ("refiner at 127.0.0.1:1 timed out after 2000 ms", "timeout"),
        ("refiner at 127.0.0.1:1 is unavailable: failed to connect", "unavailable"),
        ("refiner at 127.0.0.1:1 failed with INTERNAL: boom", "refiner_error"),
        ("no refiner configured", "no_refiner"),
        ("the refiner dropped all 3 proposals (no frame features)", "no_features"),
        ("something new", "other"),
    ],
)
def test_degraded_reasons_become_few_labels(reason, label):
    assert degraded_reason_label(reason) == label
