"""Issue #14, serving: what an outside probe broke at the edges of the gRPC services.

Everything runs for real on loopback: the search service in this process over a small Faiss +
SQLite corpus (the one of ``test_search_service.py``), the refiner either in this process or,
where it has to die or hang, in a child process started with ``spr refiner`` and then killed
(SIGKILL), stopped (SIGSTOP) and continued.

- Two servers on one port: a second refiner or search service on a taken port fails to start
  ("port N is in use"; ``spr refiner``/``spr serve`` exit 2) instead of sharing it through
  SO_REUSEPORT.
- A client deadline shorter than ``refiner.timeout_ms`` degrades to the coarse results (never
  DEADLINE_EXCEEDED) and ``timings_ms.refine`` says how long the refiner was waited for.
- After the refiner restarts, search is refined again within 2 s; "refinement skipped" is logged
  once per change of state plus a periodic count, not once per request.
- Reflection v1 is served beside v1alpha; the ``Bearer`` scheme is case-insensitive.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2

from conftest import run_spr
from spr.catalog import SegmentCatalog
from spr.config import Config, RefinerConfig, SecurityConfig
from spr.engine import MomentSearch
from spr.grpc_security import PortInUse
from spr.models.query import QueryEncoder
from spr.refine_client import GrpcRefiner
from spr.search.client import SearchClient
from spr.search.service import SearchServicer, start_search_server
from spr.stores import open_vector_store
from test_search_service import COLLECTION, DIM, PLANTED_KEY, Corpus, closed_port, make_config, publish_corpus

# The refiner deadline the probe ran with (the default): longer than the clients' deadlines.
REFINER_TIMEOUT_MS = 2000.0
TOKEN = "case-token"


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Corpus:
    config = make_config(tmp_path_factory.mktemp("hardening"))
    config = config.replace(refiner=RefinerConfig(device="cpu", timeout_ms=REFINER_TIMEOUT_MS))
    return publish_corpus(config)


@pytest.fixture(scope="module")
def encoder(corpus: Corpus) -> QueryEncoder:
    return QueryEncoder.from_config(corpus.config)


@pytest.fixture
def start_search(corpus: Corpus, encoder: QueryEncoder) -> Iterator:
    """``start_search(refiner=None, config=None, port=0) -> (server, port)``: search servers
    over the corpus, stopped after the test."""
    servers = []

    def start(refiner: GrpcRefiner | None = None, config: Config | None = None, port: int = 0):
        config = config or corpus.config
        engine = MomentSearch(config, SegmentCatalog.from_config(config), open_vector_store(config), encoder, refiner)
        servicer = SearchServicer(engine)
        try:
            server, bound = start_search_server(config, servicer, port=port, max_workers=4, refresh_s=0)
        except BaseException:
            servicer.close()
            raise
        servers.append(server)
        return server, bound

    yield start
    for server in servers:
        server.stop(0).wait()


def child_env(config: Config) -> dict[str, str]:
    """The settings a ``spr`` child process serves ``config``'s corpus with."""
    return {
        **os.environ,
        "SPR_DATA_DIR": config.data_dir,
        "SPR_CLIP__MODEL": "spr-tiny",
        "SPR_CLIP__DEVICE": "cpu",
        "SPR_REFINER__DEVICE": "cpu",
        "SPR_FAISS__USE_GPU": "false",
        "SPR_VECTORS__COLLECTION": COLLECTION,
        "SPR_VECTORS__DIM": str(DIM),
        # Several refiners come and go in one test: none of them may hold the metrics port.
        "SPR_METRICS__ENABLED": "false",
    }


class RefinerProcess:
    """``spr refiner --port PORT`` in a child process; ``listening_at`` is when (perf_counter)
    it printed that it listens."""

    def __init__(self, config: Config, port: int, timeout_s: float = 120.0) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "spr.cli", "refiner", "--port", str(port)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=child_env(config),
        )
        deadline = time.monotonic() + timeout_s
        seen = []
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 1.0)
            if not ready:
                continue
            line = self.proc.stdout.readline()
            if not line:
                break
            seen.append(line)
            if line.startswith("refiner  listening on"):
                self.listening_at = time.perf_counter()
                self.port = int(line.split()[-1].rsplit(":", 1)[1])
                self.target = f"127.0.0.1:{self.port}"
                return
        self.kill()
        raise AssertionError(f"`spr refiner` did not start: {seen}")

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a stopped process must run to die cleanly
            self.proc.kill()
        self.proc.wait(30)


@pytest.fixture
def refiner_processes(corpus: Corpus) -> Iterator:
    """``start(port=0) -> RefinerProcess``; every child is killed after the test."""
    started: list[RefinerProcess] = []

    def start(port: int = 0) -> RefinerProcess:
        started.append(RefinerProcess(corpus.config, port))
        return started[-1]

    yield start
    for child in started:
        child.kill()


def search_until(client: SearchClient, corpus: Corpus, refined: bool, timeout_s: float, **kwargs):
    """Search every 50 ms until a response is (or is not) ``refined``; (response, seconds)."""
    t0 = time.perf_counter()
    while True:
        response = client.search(embedding=corpus.event, top_k=3, **kwargs)
        if response.refined == refined:
            return response, time.perf_counter() - t0
        assert time.perf_counter() - t0 < timeout_s, f"still refined={response.refined} after {timeout_s} s"
        time.sleep(0.05)


# --- 1. two servers on one port ------------------------------------------------------------------


def test_a_second_refiner_on_a_taken_port_fails_to_start(corpus: Corpus):
    from spr.refine.service import serve_refiner

    first, port = serve_refiner(corpus.config, port=0, metrics_port=0)
    try:
        # grpcio's default SO_REUSEPORT let this bind succeed and split connections between the two.
        with pytest.raises(PortInUse, match=f"port {port} is in use"):
            serve_refiner(corpus.config, port=port, metrics_port=0)
    finally:
        first.stop(0).wait()


def test_a_second_search_service_on_a_taken_port_fails_to_start(start_search, corpus: Corpus):
    _, port = start_search()
    with pytest.raises(PortInUse, match=f"port {port} is in use"):
        start_search(port=port)
    # The first one still has the port to itself and answers.
    with SearchClient(f"127.0.0.1:{port}", timeout_s=60) as client:
        for _ in range(10):
            assert client.search(embedding=corpus.event, top_k=1, refine=False).moments[0].video_key == PLANTED_KEY


def test_spr_refiner_on_a_taken_port_exits_2(corpus: Corpus):
    from spr.refine.service import serve_refiner

    holder, port = serve_refiner(corpus.config, port=0, metrics_port=0)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "spr.cli", "refiner", "--port", str(port)],
            capture_output=True, text=True, timeout=120, env=child_env(corpus.config),
        )
    finally:
        holder.stop(0).wait()
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert f"port {port} is in use" in result.stderr and "Traceback" not in result.stderr
    assert "listening" not in result.stdout


def test_spr_serve_on_a_taken_search_port_exits_2(start_search, corpus: Corpus):
    _, port = start_search()
    env = {k: v for k, v in child_env(corpus.config).items()}
    result = run_spr("serve", "--search-port", str(port), "--no-refiner", env=env, timeout=120)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert f"port {port} is in use" in result.stderr and "--search-port" in result.stderr
    assert "Traceback" not in result.stderr


# --- 3. the client's deadline bounds the refiner wait ---------------------------------------------


@pytest.mark.parametrize("deadline_s", [0.5, 1.5])
def test_a_client_deadline_shorter_than_the_refiner_timeout_degrades(
    start_search, refiner_processes, corpus: Corpus, deadline_s: float
):
    refiner = refiner_processes()
    _, port = start_search(refiner=GrpcRefiner(refiner.target, SecurityConfig(), REFINER_TIMEOUT_MS))
    with SearchClient(f"127.0.0.1:{port}", timeout_s=60) as warm:
        # Connected, warmed up and refining before the refiner hangs.
        search_until(warm, corpus, refined=True, timeout_s=60)
    refiner.signal(signal.SIGSTOP)  # hung: the connection stays up, nothing answers
    with SearchClient(f"127.0.0.1:{port}", timeout_s=deadline_s) as client:
        t0 = time.perf_counter()
        response = client.search(embedding=corpus.event, top_k=3)  # was DEADLINE_EXCEEDED
        wall_ms = (time.perf_counter() - t0) * 1e3
    assert (response.refined, response.degraded) == (False, True)
    assert "timed out" in response.degraded_reason
    assert response.moments[0].video_key == PLANTED_KEY  # the documented coarse results
    # The time actually spent waiting for the refiner (it was 0): most of the deadline, and
    # within it together with everything else.
    waited = response.timings_ms["refine"]
    assert 0.5 * deadline_s * 1e3 <= waited < deadline_s * 1e3, response.timings_ms
    assert response.timings_ms["total"] >= waited and wall_ms < deadline_s * 1e3
    refiner.signal(signal.SIGCONT)
    with SearchClient(f"127.0.0.1:{port}", timeout_s=60) as client:
        _, seconds = search_until(client, corpus, refined=True, timeout_s=10)
    assert seconds <= 2.0


# --- 4. recovery and the skip log ------------------------------------------------------------------


def test_search_is_refined_again_within_2_s_of_a_killed_refiner_listening_again(
    start_search, refiner_processes, corpus: Corpus
):
    port = closed_port()
    first = refiner_processes(port)
    _, search_port = start_search(refiner=GrpcRefiner(first.target, SecurityConfig(), REFINER_TIMEOUT_MS))
    with SearchClient(f"127.0.0.1:{search_port}", timeout_s=60) as client:
        search_until(client, corpus, refined=True, timeout_s=60)
        killed_at = time.perf_counter()
        first.signal(signal.SIGKILL)
        first.proc.wait(30)
        response, _ = search_until(client, corpus, refined=False, timeout_s=10)
        assert response.degraded and "unavailable" in response.degraded_reason
        # Searches keep coming while the refiner is down, long enough for grpcio's default
        # backoff (1 s x 1.6 per attempt) to grow past 2 s; the restart takes ~5 s more.
        while time.perf_counter() - killed_at < 4.0:
            assert client.search(embedding=corpus.event, top_k=3).degraded
            time.sleep(0.1)
        second = refiner_processes(port)
        _, seconds = search_until(client, corpus, refined=True, timeout_s=30)
        recovered_after = time.perf_counter() - second.listening_at
    assert recovered_after <= 2.0, f"refined again {recovered_after:.1f} s after the refiner listened"


def test_refinement_skipped_is_logged_per_state_change_with_a_periodic_count(
    start_search, corpus: Corpus, caplog: pytest.LogCaptureFixture
):
    from spr.refine.service import serve_refiner

    port = closed_port()
    refiner = GrpcRefiner(f"127.0.0.1:{port}", SecurityConfig(), REFINER_TIMEOUT_MS, skip_log_every_s=1.0)
    _, search_port = start_search(refiner=refiner)
    caplog.set_level(logging.INFO, logger="spr.refine_client")

    def lines(text: str) -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "spr.refine_client" and text in r.getMessage()]

    with SearchClient(f"127.0.0.1:{search_port}", timeout_s=60) as client:
        for _ in range(20):
            assert client.search(embedding=corpus.event, top_k=3).degraded
        # One line for the refiner going down, not one per request (the probe saw 2,762).
        assert len(lines("refinement skipped")) == 1 and "unavailable" in lines("refinement skipped")[0]
        time.sleep(1.1)
        assert client.search(embedding=corpus.event, top_k=3).degraded
        counted = lines("refinement skipped 20 more times")
        assert len(counted) == 1 and len(lines("refinement skipped")) == 2, lines("refinement skipped")
        server, _ = serve_refiner(corpus.config, port=port, metrics_port=0)
        try:
            search_until(client, corpus, refined=True, timeout_s=30)
            for _ in range(5):
                assert client.search(embedding=corpus.event, top_k=3).refined
        finally:
            server.stop(0).wait()
    # Back: one line with the total (21, plus any call made before the channel reconnected).
    (back,) = lines("answers again")
    assert int(back.split("; ")[1].split()[0]) >= 21, back
    assert len(lines("refinement skipped")) == 2


# --- 9. reflection v1, the Bearer scheme -------------------------------------------------------


def reflect_v1(channel: grpc.Channel, request: reflection_pb2.ServerReflectionRequest, metadata=()):
    """One request to ``grpc.reflection.v1.ServerReflection`` (the same messages as v1alpha)."""
    call = channel.stream_stream(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    return list(call(iter([request]), metadata=metadata, timeout=30))[0]


def test_reflection_v1_is_served_beside_v1alpha(start_search):
    from google.protobuf import descriptor_pb2

    _, port = start_search()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = reflect_v1(channel, reflection_pb2.ServerReflectionRequest(list_services=""))
        names = {s.name for s in reply.list_services_response.service}
        assert {
            "spr.v1.SearchService", "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection",
        } <= names
        for symbol in ("spr.v1.SearchService", "grpc.reflection.v1.ServerReflection"):
            reply = reflect_v1(channel, reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol))
            assert not reply.HasField("error_response"), reply.error_response
            files = [descriptor_pb2.FileDescriptorProto.FromString(b) for b in reply.file_descriptor_response.file_descriptor_proto]
            assert any(symbol.rsplit(".", 1)[1] in {s.name for s in f.service} for f in files)


def test_the_bearer_scheme_is_case_insensitive(start_search, corpus: Corpus):
    config = corpus.config.replace(security=SecurityConfig(token=TOKEN))
    _, port = start_search(config=config)
    stats = "/spr.v1.SearchService/CollectionStats"
    from spr.api.v1 import search_pb2

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(
            stats,
            request_serializer=search_pb2.CollectionStatsRequest.SerializeToString,
            response_deserializer=search_pb2.CollectionStatsResponse.FromString,
        )
        for value in (f"Bearer {TOKEN}", f"bearer {TOKEN}", f"BEARER {TOKEN}", f"bEaReR  {TOKEN}"):
            assert call(search_pb2.CollectionStatsRequest(), metadata=[("authorization", value)], timeout=30).segments
        for value in (f"Basic {TOKEN}", f"Bearer{TOKEN}", "bearer wrong", TOKEN, "bearer"):
            with pytest.raises(grpc.RpcError) as info:
                call(search_pb2.CollectionStatsRequest(), metadata=[("authorization", value)], timeout=30)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED, value
