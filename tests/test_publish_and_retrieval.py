"""Publishing to both stores and the coarse query path, on Faiss + SQLite and Milvus + PostgreSQL.

A video is searchable only once all its segments are in the catalog and the vector store; a
crash in between leaves it invisible, and publishing again finishes the job without duplicates.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import uuid

import numpy as np
import pytest

from spr.catalog import SegmentCatalog, VideoStatus
from spr.features import VISUAL, FrameFeatureStore, TimedFeatures
from spr.proposals import ConstantGap
from spr.publish import CollectionMismatch, VideoPayload, ensure_collection, publish_video, publish_videos, unpublish_video
from spr.retrieval import retrieve_proposals
from spr.stores import Flat, Hnsw, l2_normalize
from spr.stores.faiss_store import FaissStore
from spr.stores.milvus_store import MilvusStore

DIM = 16


@pytest.fixture(
    params=[
        "faiss-sqlite",
        pytest.param("milvus-postgresql", marks=[pytest.mark.milvus, pytest.mark.postgres]),
    ]
)
def stores(request, tmp_path):
    """(catalog, vector store, collection) on one pair of real backends."""
    if request.param == "faiss-sqlite":
        catalog = SegmentCatalog.open(f"sqlite:///{tmp_path / 'catalog.db'}")
        store = FaissStore(tmp_path / "faiss")
    else:
        catalog = SegmentCatalog.open(request.getfixturevalue("postgres_url"))
        store = MilvusStore(request.getfixturevalue("milvus_uri"), consistency_level="Strong")
    name = f"t_pub_{uuid.uuid4().hex[:8]}"
    store.create_collection(name, DIM, Flat())
    yield catalog, store, name
    store.drop_collection(name)
    store.close()
    catalog.close()


def embeddings(n: int, seed: int) -> np.ndarray:
    return l2_normalize(np.random.default_rng(seed).standard_normal((n, DIM)))


def test_a_published_video_is_found_at_its_segment_times(stores):
    catalog, store, name = stores
    emb = embeddings(5, 0)  # 18 s -> 5 segments, the last one 2 s long
    published = publish_video(catalog, store, name, "news/1", "file:///a.mp4", 18.0, emb)
    assert published.video.status == VideoStatus.READY
    coarse = retrieve_proposals(store, catalog, name, emb[4], top_k=3, pad_s=8.0)
    best = coarse.proposals[0]
    assert (best.video_key, best.start_s, best.end_s) == ("news/1", 16.0, 18.0)
    assert best.segment_ids[0] == published.segment_ids[4]
    padded = coarse.padded[0]
    assert (padded.start_s, padded.end_s) == (8.0, 18.0)  # clipped at the video's end
    assert set(coarse.timings_ms) == {"ann", "catalog", "proposals"}


def test_adjacent_hits_merge_into_one_proposal_and_the_gap_rule_applies(stores):
    catalog, store, name = stores
    emb = embeddings(10, 1)
    event = l2_normalize(np.random.default_rng(9).standard_normal(DIM))
    for i in (3, 4, 6):  # segments 3-4 and 6: one run, a hole, another run
        emb[i] = l2_normalize(event + 0.05 * np.random.default_rng(i).standard_normal(DIM))
    publish_video(catalog, store, name, "v", "file:///v.mp4", 40.0, emb)
    adjacent = retrieve_proposals(store, catalog, name, event, top_k=3)
    assert sorted((p.start_s, p.end_s) for p in adjacent.proposals) == [(12.0, 20.0), (24.0, 28.0)]
    bridged = retrieve_proposals(store, catalog, name, event, top_k=3, gap_rule=ConstantGap(1))
    assert [(p.start_s, p.end_s) for p in bridged.proposals] == [(12.0, 28.0)]


def test_a_video_whose_vectors_fail_to_write_stays_invisible_and_a_retry_publishes_it_once(stores):
    catalog, store, name = stores
    good = embeddings(4, 2)
    with pytest.raises(ValueError):
        # Wrong dimension: the store refuses after the catalog rows were written.
        publish_video(catalog, store, name, "v", "file:///v.mp4", 16.0, np.ones((4, DIM + 1), np.float32))
    assert catalog.get_video("v").status == VideoStatus.PENDING
    assert catalog.segment_count() == 4
    assert retrieve_proposals(store, catalog, name, good[0], top_k=5).proposals == []
    publish_video(catalog, store, name, "v", "file:///v.mp4", 16.0, good)
    assert catalog.get_video("v").status == VideoStatus.READY
    assert store.count(name) == 4 and catalog.segment_count() == 4
    assert retrieve_proposals(store, catalog, name, good[0], top_k=5).proposals[0].video_key == "v"


def test_republishing_a_shorter_version_leaves_no_stale_vectors(stores):
    catalog, store, name = stores
    publish_video(catalog, store, name, "v", "file:///v.mp4", 40.0, embeddings(10, 3))
    publish_video(catalog, store, name, "other", "file:///o.mp4", 8.0, embeddings(2, 4))
    second = publish_video(catalog, store, name, "v", "file:///v2.mp4", 12.0, embeddings(3, 5))
    assert store.count(name) == 3 + 2
    assert catalog.segment_count(second.video.id) == 3
    assert second.video.uri == "file:///v2.mp4"


def test_the_number_of_embeddings_must_match_the_segments(stores):
    catalog, store, name = stores
    with pytest.raises(ValueError, match="3 segments"):
        publish_video(catalog, store, name, "v", "file:///v.mp4", 12.0, embeddings(4, 0))
    assert catalog.get_video("v") is None  # refused before anything was written


def test_unpublishing_removes_the_video_from_both_stores(stores):
    catalog, store, name = stores
    emb = embeddings(3, 6)
    publish_video(catalog, store, name, "gone", "file:///g.mp4", 12.0, emb)
    publish_video(catalog, store, name, "kept", "file:///k.mp4", 12.0, embeddings(3, 7))
    assert unpublish_video(catalog, store, name, "gone") is True
    assert catalog.get_video("gone") is None and store.count(name) == 3
    assert all(p.video_key == "kept" for p in retrieve_proposals(store, catalog, name, emb[0], top_k=6).proposals)
    assert unpublish_video(catalog, store, name, "gone") is False


def test_a_process_killed_mid_publish_leaves_no_partial_video_and_a_rerun_completes(tmp_path):
    """kill -9 between the vector write and ``ready``: the video stays hidden; re-running
    the same publishing job makes every video ready once, with no duplicate ids."""
    job = textwrap.dedent(
        f"""
        import os, signal, sys
        import numpy as np
        from spr.catalog import SegmentCatalog
        from spr.publish import publish_video
        from spr.stores import Flat, l2_normalize
        from spr.stores.faiss_store import FaissStore

        crash_on = sys.argv[1]
        catalog = SegmentCatalog.open("sqlite:///{tmp_path}/catalog.db")
        store = FaissStore("{tmp_path}/faiss")
        store.create_collection("c", {DIM}, Flat())
        flush = store.flush
        def flush_or_die(name):
            flush(name)
            if current == crash_on:
                os.kill(os.getpid(), signal.SIGKILL)
        store.flush = flush_or_die
        for i in range(4):
            current = f"v{{i}}"
            emb = l2_normalize(np.random.default_rng(i).standard_normal((5, {DIM})))
            publish_video(catalog, store, "c", current, "file:///x", 20.0, emb)
        """
    )
    crashed = subprocess.run([sys.executable, "-c", job, "v2"], capture_output=True, text=True)
    assert crashed.returncode == -9, crashed.stderr
    with SegmentCatalog.open(f"sqlite:///{tmp_path}/catalog.db") as catalog:
        status = {v.key: v.status for v in catalog.list_videos()}
        assert status == {"v0": "ready", "v1": "ready", "v2": "pending"}
        store = FaissStore(tmp_path / "faiss")
        q = l2_normalize(np.random.default_rng(2).standard_normal((5, DIM)))[0]
        assert all(p.video_key != "v2" for p in retrieve_proposals(store, catalog, "c", q, top_k=20).proposals)
        store.close()
    rerun = subprocess.run([sys.executable, "-c", job, "none"], capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    with SegmentCatalog.open(f"sqlite:///{tmp_path}/catalog.db") as catalog:
        assert catalog.count_by_status()["ready"] == 4
        assert catalog.segment_count() == 20
        store = FaissStore(tmp_path / "faiss")
        assert store.count("c") == 20
        found = store.search("c", l2_normalize(np.random.default_rng(2).standard_normal((5, DIM))), k=20)
        assert len(set(found.ids[0].tolist())) == 20  # every id once


# --- the collection contract --------------------------------------------------------------------


def test_ensure_collection_creates_once_and_refuses_another_shape_or_model(stores):
    catalog, store, _ = stores
    name = f"t_ens_{uuid.uuid4().hex[:8]}"
    try:
        first = ensure_collection(catalog, store, name, DIM, "clip + mean-pool", Flat())
        assert (first.dim, first.backend, first.feature_model) == (DIM, store.backend, "clip + mean-pool")
        assert store.describe(name).dim == DIM
        assert ensure_collection(catalog, store, name, DIM, "clip + mean-pool", Flat()).id == first.id
        refusals = [
            ((name, DIM * 2, "clip + mean-pool", Flat()), "dim", f"{DIM}-d.*{DIM * 2}-d"),
            ((name, DIM, "other + model", Flat()), "model", "different models"),
            ((name, DIM, "clip + mean-pool", Hnsw()), "index", "vectors.index"),
        ]
        for args, kind, words in refusals:
            with pytest.raises(CollectionMismatch, match=words) as info:
                ensure_collection(catalog, store, *args)
            assert info.value.kind == kind
        assert catalog.get_collection(name).feature_model == "clip + mean-pool"  # nothing changed
        # The store lost the collection: the catalog's record is the contract it is made again to.
        store.drop_collection(name)
        ensure_collection(catalog, store, name, DIM, "clip + mean-pool", Flat())
        assert store.has_collection(name)
    finally:
        store.drop_collection(name)


def test_a_second_modality_is_published_beside_the_visual_features_and_deleted_with_them(tmp_path):
    catalog = SegmentCatalog.open(f"sqlite:///{tmp_path / 'catalog.db'}")
    store = FaissStore(tmp_path / "faiss")
    features = FrameFeatureStore(tmp_path / "features")
    try:
        store.create_collection("speech", DIM, Flat())
        frames = np.random.default_rng(0).standard_normal((12, 8)).astype(np.float32)
        speech = np.random.default_rng(1).standard_normal((3, 6)).astype(np.float32)  # one row per 4-s segment
        payload = VideoPayload(
            "talk", "file:///talk.mp4", 12.0, embeddings(3, 1),
            features={VISUAL: TimedFeatures(frames, 1.0), "speech": TimedFeatures(speech, 0.25)},
        )
        (published,) = publish_videos(catalog, store, "speech", [payload], 4.0, features, "test-encoders")
        video_id = published.video.id
        assert features.modalities(video_id) == ["speech", VISUAL]
        # The visual features are where they always were: the refiner's reads are unchanged.
        np.testing.assert_allclose(features.read(video_id).features, frames, atol=1e-2)
        read_back = features.read_span(video_id, 4.0, 8.0, modality="speech")
        assert (read_back.rate, read_back.first_s, read_back.features.shape) == (0.25, 4.0, (1, 6))
        assert features.info(video_id, "speech") == (3, 6, 0.25, "test-encoders")
        assert features.video_ids() == features.video_ids("speech") == [video_id]
        assert unpublish_video(catalog, store, "speech", "talk", features)
        assert features.modalities(video_id) == []
        with pytest.raises(ValueError, match="modality"):
            features.write(video_id, speech, 0.25, modality="../Speech")
    finally:
        store.close()
        catalog.close()
