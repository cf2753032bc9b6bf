"""The search engine without a transport (spr.engine.MomentSearch): the same query path the gRPC
search service, ``spr eval`` and an HTTP gateway adapt, on real Faiss + SQLite, the real feature
store, and both refiners: the one in this process and the one behind a real gRPC server.

The corpus plants one event (seconds 20-32 of ``b``, frames close to one direction), so an
embedding query for that direction must rank it first. The refiner's weights are random but
saved once, so both refiners run exactly the same model.
"""

from __future__ import annotations

import math
import socket
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import torch

from spr import limits
from spr.catalog import SegmentCatalog
from spr.config import Config, FaissConfig, ProposalsConfig, RefinerConfig, VectorsConfig
from spr.engine import (
    EncodedQuery,
    InvalidSearch,
    MomentQuery,
    MomentSearch,
    UnknownCollection,
    UnservableSearch,
    coarse_moments,
    refine_request,
)
from spr.features import FrameFeatureStore
from spr.ids import split_segment_id
from spr.metrics import temporal_iou
from spr.models.refiner import RefinerShape, build_refiner, load_refiner, save_refiner
from spr.publish import publish_video
from spr.refine.inprocess import InProcessRefiner, start_batcher
from spr.refine.service import serve_refiner
from spr.refine_client import GrpcRefiner
from spr.refinement import RefineFailed, RefineRequest
from spr.stores import Flat, index_spec_to_dict, l2_normalize, open_vector_store

DIM = 32
COLLECTION = "engine"
VIDEOS = {"a": 60.0, "b": 75.0, "c": 90.0, "d": 48.0}
PLANTED = ("b", 20.0, 32.0)
SEGMENTS_K = 12  # of 69 segments: proposals stay apart


@dataclass(frozen=True)
class Corpus:
    config: Config
    event: np.ndarray  # (DIM,) unit vector of the planted event


def _mean_pool(feats: np.ndarray, per_segment: int = 4) -> np.ndarray:
    n = math.ceil(len(feats) / per_segment)
    return l2_normalize(np.stack([feats[i * per_segment : (i + 1) * per_segment].mean(0) for i in range(n)]))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Corpus:
    root = tmp_path_factory.mktemp("engine")
    torch.manual_seed(3)
    checkpoint = root / "refiner.pt"
    save_refiner(checkpoint, build_refiner(RefinerShape(in_dim=DIM, text_in_dim=DIM, dim=DIM, layers=1, heads=4)), step=1)
    config = Config(
        data_dir=str(root / "data"),
        vectors=VectorsConfig(dim=DIM, collection=COLLECTION),
        proposals=ProposalsConfig(top_k_segments=SEGMENTS_K),
        faiss=FaissConfig(use_gpu=False),
        refiner=RefinerConfig(checkpoint=str(checkpoint), device="cpu", precision="fp32", timeout_ms=60_000.0),
    )
    rng = np.random.default_rng(0)
    event = l2_normalize(rng.standard_normal(DIM))
    store, catalog = open_vector_store(config), SegmentCatalog.from_config(config)
    try:
        store.create_collection(COLLECTION, DIM, Flat())
        catalog.register_collection(COLLECTION, store.backend, DIM, "IP", index_spec_to_dict(Flat()), "test/random")
        for key, duration in VIDEOS.items():
            feats = l2_normalize(rng.standard_normal((math.ceil(duration), DIM)))
            if key == PLANTED[0]:
                lo, hi = int(PLANTED[1]), int(PLANTED[2])
                feats[lo:hi] = l2_normalize(event + 0.3 * rng.standard_normal((hi - lo, DIM)) / math.sqrt(DIM))
            publish_video(
                catalog, store, COLLECTION, key, f"file:///videos/{key}.mp4", duration, _mean_pool(feats),
                feature_store=FrameFeatureStore.from_config(config), frame_features=feats,
            )
    finally:
        store.close()
        catalog.close()
    return Corpus(config, event)


@pytest.fixture(scope="module")
def refiner_target(corpus: Corpus) -> Iterator[str]:
    server, port = serve_refiner(corpus.config, port=0, in_dim=DIM)
    yield f"127.0.0.1:{port}"
    server.stop(0).wait()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def spans(moments) -> list[tuple]:
    return [(m.video_key, m.uri, m.start_s, m.end_s, m.coarse_rank, m.coarse_start_s, m.coarse_end_s) for m in moments]


def engine_encoded(corpus: Corpus) -> EncodedQuery:
    """The planted event as a client's ready embedding (searched with, and sent to the refiner)."""
    return EncodedQuery(corpus.event.astype(np.float32), corpus.event.astype(np.float32), projected=True)


# --- the same answer from either refiner ---------------------------------------------------------


def test_the_in_process_and_the_grpc_refiner_give_the_same_moments(corpus: Corpus, refiner_target: str):
    query = MomentQuery(embedding=corpus.event, top_k=6)
    with MomentSearch.open(corpus.config, refiner=InProcessRefiner.loading_on_first_use(corpus.config)) as local:
        here = local.search(query)
    with MomentSearch.open(corpus.config, refiner=GrpcRefiner(refiner_target, timeout_ms=60_000)) as remote:
        there = remote.search(query)
    for result in (here, there):
        assert (result.refined, result.degraded, result.degraded_reason) == (True, False, "")
        assert len(result.moments) == 6 and result.collection == COLLECTION
        assert set(result.timings_ms) == {
            "embed", "ann", "ann.visual", "fusion", "catalog", "proposals", "refine", "snippets", "total"
        }
        assert result.timings_ms["refine"] > 0.0
        assert result.refinement.model == "spr-clip:refiner.pt@1" and not result.refinement.random_weights
        scores = [m.score for m in result.moments]
        assert scores == sorted(scores, reverse=True)
    assert spans(here.moments) == spans(there.moments)
    # The wire carries scores as float32; the in-process scores are the same float32 values.
    assert [m.score for m in here.moments] == [m.score for m in there.moments]
    assert here.segments_retrieved == there.segments_retrieved == SEGMENTS_K
    assert here.proposals == there.proposals > 0
    # Each refined moment lies inside its coarse proposal padded by tau_C.
    coarse = {m.coarse_rank: m for m in coarse_moments(here.coarse, 1000)}
    pad = corpus.config.proposals.pad_s
    for m in here.moments:
        source = coarse[m.coarse_rank]
        assert (m.coarse_start_s, m.coarse_end_s) == (source.start_s, source.end_s)
        assert max(0.0, source.start_s - pad) - 1e-6 <= m.start_s < m.end_s <= source.end_s + pad + 1e-6


def test_without_refinement_the_planted_event_comes_first_with_its_coarse_score(corpus: Corpus):
    with MomentSearch.open(corpus.config) as engine:
        result = engine.search(MomentQuery(embedding=corpus.event, top_k=3, refine=False))
    best = result.moments[0]
    assert (result.refined, result.degraded, result.refinement) == (False, False, None)
    assert best.video_key == PLANTED[0] and best.coarse_rank == 0 and best.score > 0.9
    assert temporal_iou(best.start_s, best.end_s, PLANTED[1], PLANTED[2]) >= 0.5
    # The coarse moments, annotated with the modality that found them (visual alone here) and
    # the ids a client fetches thumbnails with: the segment holding the moment's midpoint.
    assert [replace(m, modalities=(), video_id=0, segment_id=0) for m in result.moments] == coarse_moments(result.coarse, 3)
    length = corpus.config.segments.length_s
    for m in result.moments:
        video_id, ordinal = split_segment_id(m.segment_id)
        assert video_id == m.video_id > 0 and ordinal == int((m.start_s + m.end_s) / 2 // length)
    assert all([c.modality for c in m.modalities] == ["visual"] for m in result.moments)
    assert result.timings_ms["refine"] == 0.0


# --- degraded answers ----------------------------------------------------------------------------


def coarse_answer(corpus: Corpus, top_k: int = 5) -> list[tuple]:
    with MomentSearch.open(corpus.config) as engine:
        return spans(engine.search(MomentQuery(embedding=corpus.event, top_k=top_k, refine=False)).moments)


def test_a_dead_refiner_degrades_to_the_coarse_moments(corpus: Corpus):
    target = f"127.0.0.1:{closed_port()}"
    with MomentSearch.open(corpus.config, refiner=GrpcRefiner(target, timeout_ms=5_000)) as engine:
        result = engine.search(MomentQuery(embedding=corpus.event, top_k=5))
    assert (result.refined, result.degraded) == (False, True)
    assert target in result.degraded_reason and "unavailable" in result.degraded_reason
    assert spans(result.moments) == coarse_answer(corpus)
    assert result.refinement is None
    # The time spent trying is reported (a dead port answers at once, well inside the timeout).
    assert 0.0 <= result.timings_ms["refine"] < 5_000


def test_a_late_refiner_degrades_in_process_as_over_grpc(corpus: Corpus, refiner_target: str):
    # A 300-ms batching window: the batch cannot have started when the 1-ms deadline passes.
    slow = corpus.config.replace(refiner=replace(corpus.config.refiner, max_wait_ms=300.0))
    model = load_refiner(slow.refiner.checkpoint, DIM)
    late_here = InProcessRefiner(FrameFeatureStore.from_config(slow), start_batcher(slow, model), wait_s=0.001)
    late_there = GrpcRefiner(refiner_target, timeout_ms=0.001)
    for refiner, reason in ((late_here, "did not finish before the deadline"), (late_there, "timed out after 0.001 ms")):
        with MomentSearch.open(corpus.config, refiner=refiner) as engine:
            result = engine.search(MomentQuery(embedding=corpus.event, top_k=5))
        assert (result.refined, result.degraded) == (False, True) and reason in result.degraded_reason
        assert spans(result.moments) == coarse_answer(corpus)


def test_videos_without_frame_features_degrade_and_are_counted(corpus: Corpus, tmp_path: Path):
    empty = corpus.config.replace(features=replace(corpus.config.features, url=str(tmp_path / "no-features")))
    with MomentSearch.open(corpus.config, refiner=InProcessRefiner.loading_on_first_use(empty)) as engine:
        result = engine.search(MomentQuery(embedding=corpus.event, top_k=5))
    n = len(result.coarse.padded)
    assert result.degraded_reason == f"the refiner dropped all {n} proposals (no frame features)"
    assert result.refinement.dropped == n and not result.refinement.moments
    assert spans(result.moments) == coarse_answer(corpus)


def test_refinement_is_skipped_without_a_refiner_unless_asked_for(corpus: Corpus):
    with MomentSearch.open(corpus.config) as engine:
        default = engine.search(MomentQuery(embedding=corpus.event, top_k=3))
        asked = engine.search(MomentQuery(embedding=corpus.event, top_k=3, refine=True))
    assert (default.refined, default.degraded_reason) == (False, "")
    assert (asked.refined, asked.degraded_reason) == (False, "no refiner configured")


# --- the refiner contract ------------------------------------------------------------------------


def test_both_refiners_refuse_a_modality_they_do_not_read(corpus: Corpus, refiner_target: str):
    with MomentSearch.open(corpus.config) as engine:
        coarse = engine.search(MomentQuery(embedding=corpus.event, refine=False)).coarse
    visual = refine_request(engine_encoded(corpus), coarse)
    speech = RefineRequest(visual.query, visual.candidates, visual.query_projected, modality="speech")
    here = InProcessRefiner.loading_on_first_use(corpus.config)
    with GrpcRefiner(refiner_target, timeout_ms=60_000) as there:
        for refiner in (here, there):
            assert refiner.refine(visual).moments
            with pytest.raises(RefineFailed, match="speech") as refused:
                refiner.refine(speech)
            assert refused.value.kind == "invalid"
    here.close()


def test_a_refine_request_carries_the_best_proposals_up_to_the_limit(corpus: Corpus):
    with MomentSearch.open(corpus.config) as engine:
        coarse = engine.search(MomentQuery(embedding=corpus.event, segments_k=69, refine=False)).coarse
    request = refine_request(engine_encoded(corpus), coarse)
    assert 0 < len(request.candidates) == min(len(coarse.proposals), limits.MAX_REFINE_PROPOSALS)
    assert [c.coarse_rank for c in request.candidates] == list(range(len(request.candidates)))
    for c, proposal, padded in zip(request.candidates, coarse.proposals, coarse.padded):
        assert (c.video_key, c.start_s, c.end_s) == (proposal.video_key, padded.start_s, padded.end_s)
        assert (c.coarse_start_s, c.coarse_end_s) == (proposal.start_s, proposal.end_s)
    assert request.query_projected and request.modality == "visual"


# --- refusals ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "refusal", "message"),
    [
        (MomentQuery(), InvalidSearch, "no query"),
        (MomentQuery(text="a door", embedding=np.ones(DIM)), InvalidSearch, "one query per search"),
        (MomentQuery(text="  "), InvalidSearch, "empty"),
        (MomentQuery(text="x" * (limits.MAX_TEXT_CHARS + 1)), InvalidSearch, f"at most {limits.MAX_TEXT_CHARS}"),
        (MomentQuery(embedding=np.ones(DIM), top_k=limits.MAX_TOP_K + 1), InvalidSearch, f"1..{limits.MAX_TOP_K}"),
        (MomentQuery(embedding=np.ones(DIM), segments_k=limits.MAX_SEGMENTS_K + 1), InvalidSearch, "segments_k"),
        (MomentQuery(embedding=np.ones(DIM + 1)), InvalidSearch, f"needs {DIM}"),
        (MomentQuery(embedding=np.zeros(DIM)), InvalidSearch, "zeros"),
        (MomentQuery(embedding=np.ones(DIM), video_keys=("a", "")), InvalidSearch, "empty key"),
        (MomentQuery(embedding=np.ones(DIM), collection="nope"), UnknownCollection, "'nope' does not exist"),
        (MomentQuery(text="a door"), UnservableSearch, "no text encoder"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_refused_searches_say_why(corpus: Corpus, query: MomentQuery, refusal: type, message: str):
    with MomentSearch.open(corpus.config) as engine, pytest.raises(refusal, match=message):
        engine.search(query)


def test_collection_stats_are_plain_data(corpus: Corpus):
    with MomentSearch.open(corpus.config) as engine:
        stats = engine.collection_stats()
        with pytest.raises(UnknownCollection):
            engine.collection_stats("nope")
    (summary,) = stats.collections
    assert (summary.name, summary.backend, summary.dim, summary.index_kind) == (COLLECTION, "faiss", DIM, "FLAT")
    assert summary.vectors == stats.segments == sum(math.ceil(d / 4) for d in VIDEOS.values())
    assert stats.videos["ready"] == len(VIDEOS)
