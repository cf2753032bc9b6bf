"""The refiner's gRPC service end to end: a real server on a loopback port, a real feature
store on disk, real clients (Refine, health, reflection), dynamic batching under concurrent
calls, bearer-token auth and TLS."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from conftest import self_signed_certificate
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from spr.models.refiner import RefinerShape, build_refiner, save_refiner
from spr.refine.service import MAX_PROPOSALS, SERVICE_NAME, serve_refiner
from spr import grpc_security
from spr.api.v1 import moments_pb2, refiner_pb2, refiner_pb2_grpc
from spr.config import Config, FeaturesConfig, RefinerConfig, SecurityConfig, ServicesConfig
from spr.features import FrameFeatureStore

D = 16
VIDEO_SECONDS = {1: 90, 2: 45, 3: 120}  # features at 1 per second
SLOW_RATE_VIDEO = 4  # 1 feature per 1.5 s, like TVR's clips
TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def store_url(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("features")
    store = FrameFeatureStore(root)
    rng = np.random.default_rng(0)
    for video_id, seconds in VIDEO_SECONDS.items():
        store.write(video_id, rng.standard_normal((seconds, D)), rate=1.0)
    store.write(SLOW_RATE_VIDEO, rng.standard_normal((40, D)), rate=1 / 1.5)
    return str(root)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    """One set of weights for every server here, so results compare across servers."""
    import torch

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("refiner") / "refiner.pt"
    save_refiner(path, build_refiner(RefinerShape(in_dim=D, text_in_dim=D, dim=D, layers=2, heads=4)), step=7)
    return str(path)


def make_config(store_url: str, checkpoint: str = "", max_wait_ms: float = 1.0, **security: str) -> Config:
    return Config(
        features=FeaturesConfig(url=store_url),
        services=ServicesConfig(host="127.0.0.1"),
        refiner=RefinerConfig(checkpoint=checkpoint, device="cpu", max_wait_ms=max_wait_ms),
        security=SecurityConfig(**security),
    )


@contextmanager
def start(config: Config) -> Iterator[tuple[grpc.Channel, int]]:
    """A refiner server on a free loopback port and a channel to it (TLS when configured)."""
    server, port = serve_refiner(config, port=0, in_dim=D)
    channel = grpc_security.open_channel(f"127.0.0.1:{port}", config.security)
    try:
        yield channel, port
    finally:
        channel.close()
        server.stop(None).wait(10)


@pytest.fixture(scope="module")
def channel(store_url: str) -> Iterator[grpc.Channel]:
    """A server with random weights (no checkpoint) and a 1-ms batching window."""
    with start(make_config(store_url)) as (channel, _):
        yield channel


def proposal(video_id: int, start_s: float, end_s: float, rank: int, **extra) -> refiner_pb2.RefineProposal:
    duration = VIDEO_SECONDS.get(video_id, 60.0)
    return refiner_pb2.RefineProposal(
        video_id=video_id,
        video_key=f"video-{video_id}",
        uri=f"file:///videos/{video_id}.mp4",
        start_s=start_s,
        end_s=end_s,
        coarse_rank=rank,
        video_duration_s=extra.pop("video_duration_s", duration),
        coarse_start_s=start_s + 8,
        coarse_end_s=max(start_s + 8, end_s - 8),
    )


def request(seed: int, proposals: list[refiner_pb2.RefineProposal], dim: int = D, **kw) -> refiner_pb2.RefineRequest:
    values = np.random.default_rng(seed).standard_normal(dim).tolist()
    return refiner_pb2.RefineRequest(query=moments_pb2.Embedding(values=values), proposals=proposals, **kw)


def standard_proposals() -> list[refiner_pb2.RefineProposal]:
    return [
        proposal(1, 0.0, 20.0, 0),
        proposal(2, 12.5, 36.0, 1),
        proposal(1, 40.0, 72.0, 2),
        proposal(3, 100.0, 130.0, 3),  # runs past the 120-s video
        proposal(SLOW_RATE_VIDEO, 6.0, 33.0, 4),
        proposal(2, 0.3, 8.2, 5),
    ]


def refine(channel: grpc.Channel, req: refiner_pb2.RefineRequest, metadata=()) -> refiner_pb2.RefineResponse:
    return refiner_pb2_grpc.RefinerServiceStub(channel).Refine(req, timeout=30, metadata=metadata)


# --- Refine ----------------------------------------------------------------------------------


def test_refine_returns_moments_best_first_inside_their_padded_spans(channel: grpc.Channel) -> None:
    proposals = standard_proposals()
    response = refine(channel, request(1, proposals))
    assert len(response.moments) == len(proposals) and response.dropped == 0
    scores = [m.score for m in response.moments]
    assert scores == sorted(scores, reverse=True)
    assert all(-1.0 <= s <= 1.0 for s in scores)
    by_rank = {p.coarse_rank: p for p in proposals}
    for moment in response.moments:
        p = by_rank[moment.coarse_rank]
        assert p.start_s <= moment.start_s < moment.end_s <= min(p.end_s, p.video_duration_s)
        assert (moment.video_key, moment.uri) == (p.video_key, p.uri)
        assert (moment.coarse_start_s, moment.coarse_end_s) == (p.coarse_start_s, p.coarse_end_s)
        assert moment.video_duration_s == p.video_duration_s
    assert response.random_weights and response.model == "spr-clip/random"
    assert response.batch_proposals >= len(proposals) and response.batch_queries >= 1
    # The random refiner is windowed and nothing precomputed its context here: "context" is the
    # time it spent computing the rows from the frames.
    assert set(response.timings_ms) == {"features", "context", "queue", "model", "total"}


def test_refined_boundaries_fall_on_feature_rows(channel: grpc.Channel) -> None:
    """At 1-frame resolution: whole seconds at rate 1, multiples of 1.5 s at rate 1/1.5, except
    where clipped to the padded span or the video's end."""
    proposals = standard_proposals()
    by_rank = {p.coarse_rank: p for p in proposals}
    response = refine(channel, request(2, proposals))
    for m in response.moments:
        p = by_rank[m.coarse_rank]
        step = 1.5 if p.video_id == SLOW_RATE_VIDEO else 1.0
        clipped = {p.start_s, min(p.end_s, p.video_duration_s)}
        for t in (m.start_s, m.end_s):
            assert t in clipped or abs(t / step - round(t / step)) < 1e-9, (t, p)


def test_query_already_projected(channel: grpc.Channel) -> None:
    response = refine(channel, request(3, standard_proposals()[:2], query_projected=True))
    assert len(response.moments) == 2


def test_missing_features_are_dropped(channel: grpc.Channel) -> None:
    proposals = [
        proposal(1, 0.0, 20.0, 0),
        proposal(999, 0.0, 20.0, 1),
        proposal(2, 5.0, 25.0, 2),
        proposal(998, 3.0, 9.0, 3),
    ]
    response = refine(channel, request(4, proposals))
    assert response.dropped == 2
    assert sorted(m.coarse_rank for m in response.moments) == [0, 2]

    response = refine(channel, request(4, [proposal(999, 0.0, 20.0, 0)]))
    assert response.dropped == 1 and not response.moments


def test_no_proposals_no_moments(channel: grpc.Channel) -> None:
    response = refine(channel, request(5, []))
    assert not response.moments and response.dropped == 0 and response.model == "spr-clip/random"


@pytest.mark.parametrize(
    "req, message",
    [
        (request(6, [proposal(1, 0.0, 10.0, 0)], dim=D + 1), "expects a CLIP text feature of 16"),
        (request(6, [proposal(1, 0.0, 10.0, 0)], dim=8, query_projected=True), "projected query embedding of 16"),
        (request(6, [proposal(1, 0.0, 10.0, i) for i in range(MAX_PROPOSALS + 1)]), "at most 1000"),
        (request(6, [proposal(1, 0.0, 10.0, 0), proposal(1, 10.0, 10.0, 1)]), "proposal 1"),
        (request(6, [proposal(1, 12.0, 10.0, 0)]), "need 0 <= start_s < end_s"),
        (request(6, [proposal(1, -2.0, 10.0, 0)]), "proposal 0"),
        (request(6, [proposal(1, 0.0, float("nan"), 0)]), "proposal 0"),
    ],
    ids=["dimension", "projected-dimension", "too-many", "empty-span", "reversed-span", "negative", "nan"],
)
def test_invalid_requests(channel: grpc.Channel, req: refiner_pb2.RefineRequest, message: str) -> None:
    with pytest.raises(grpc.RpcError) as err:
        refine(channel, req)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in err.value.details()


def test_health_check_serving(channel: grpc.Channel) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    for service in ("", SERVICE_NAME):
        reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def list_services(channel: grpc.Channel, metadata=()) -> set[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    ask = iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    replies = stub.ServerReflectionInfo(ask, timeout=10, metadata=metadata)
    return {s.name for reply in replies for s in reply.list_services_response.service}


def test_reflection_lists_the_service(channel: grpc.Channel) -> None:
    assert {"spr.v1.RefinerService", "grpc.health.v1.Health"} <= list_services(channel)


# --- dynamic batching ------------------------------------------------------------------------


def test_concurrent_queries_share_batches_with_unchanged_results(store_url: str, checkpoint: str) -> None:
    requests = [request(100 + i, standard_proposals()[i % 3 :]) for i in range(8)]
    # A 300-ms window: callers released together surely land in it, even on a loaded machine.
    with start(make_config(store_url, checkpoint, max_wait_ms=300)) as (channel, _):
        sequential = [refine(channel, r) for r in requests]
        assert all(r.batch_queries == 1 and r.model == "spr-clip:refiner.pt@7" for r in sequential)
        for _ in range(3):  # the window makes sharing near certain; retry rather than flake
            barrier = threading.Barrier(len(requests))

            def call(req: refiner_pb2.RefineRequest) -> refiner_pb2.RefineResponse:
                barrier.wait(30)
                return refine(channel, req)

            with ThreadPoolExecutor(len(requests)) as pool:
                concurrent = list(pool.map(call, requests))
            if max(r.batch_queries for r in concurrent) > 1:
                break
        assert max(r.batch_queries for r in concurrent) > 1
        assert any(r.batch_proposals > len(req.proposals) for r, req in zip(concurrent, requests))
        for alone, shared in zip(sequential, concurrent):
            assert [(m.coarse_rank, m.start_s, m.end_s) for m in shared.moments] == [
                (m.coarse_rank, m.start_s, m.end_s) for m in alone.moments
            ]
            np.testing.assert_allclose([m.score for m in shared.moments], [m.score for m in alone.moments], atol=1e-5)


# --- security --------------------------------------------------------------------------------


def test_bearer_token_required(store_url: str) -> None:
    with start(make_config(store_url, token=TOKEN)) as (channel, _):
        req = request(7, standard_proposals()[:2])
        for metadata in ((), (("authorization", "Bearer wrong"),), (("authorization", TOKEN),)):
            with pytest.raises(grpc.RpcError) as err:
                refine(channel, req, metadata=metadata)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as err:  # reflection needs the token too
            list_services(channel)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED

        metadata = grpc_security.client_metadata(SecurityConfig(token=TOKEN))
        assert len(refine(channel, req, metadata=metadata).moments) == 2
        assert SERVICE_NAME in list_services(channel, metadata)
        # Probes check health without credentials.
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_tls_with_token(store_url: str, tmp_path: Path) -> None:
    cert, key = map(str, self_signed_certificate(tmp_path))
    security = SecurityConfig(tls_cert=cert, tls_key=key, tls_ca=cert, token=TOKEN)
    with start(make_config(store_url, tls_cert=cert, tls_key=key, tls_ca=cert, token=TOKEN)) as (channel, port):
        metadata = grpc_security.client_metadata(security)
        response = refine(channel, request(8, standard_proposals()[:3]), metadata=metadata)
        assert len(response.moments) == 3
        # A plaintext client cannot talk to the TLS port.
        with grpc.insecure_channel(f"127.0.0.1:{port}") as plain, pytest.raises(grpc.RpcError) as err:
            refiner_pb2_grpc.RefinerServiceStub(plain).Refine(request(8, []), timeout=5)
        assert err.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def test_tls_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="tls_key is empty"):
        grpc_security.server_credentials(SecurityConfig(tls_cert="/some/cert.pem"))
    with pytest.raises(ValueError, match="cannot be read"):
        grpc_security.server_credentials(SecurityConfig(tls_cert="/no/cert.pem", tls_key="/no/key.pem"))
    assert grpc_security.server_credentials(SecurityConfig()) is None
    assert grpc_security.channel_credentials(SecurityConfig()) is None
    assert grpc_security.client_metadata(SecurityConfig()) == []
    with pytest.raises(ValueError, match="non-empty token"):
        grpc_security.TokenAuthInterceptor("")
