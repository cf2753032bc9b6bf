"""Issue #14, points 11 and 12: coarse moments that stay moments, and index / eval correctness.

Real stores throughout (SQLite catalog, Faiss on disk, the shared Milvus server where marked),
the real engine and the real command line.
"""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path

import faiss
import h5py
import numpy as np
import pytest

from conftest import run_spr
from spr.catalog import SegmentCatalog
from spr.config import CatalogConfig, Config, ConfigError, MilvusConfig, ProposalsConfig, VectorsConfig, load_config
from spr.engine import MomentQuery, MomentSearch
from spr.proposals import BoundedMerge, RetrievedSegment, gap_rule_from_config, propose_moments
from spr.publish import ensure_collection, publish_video
from spr.stores import l2_normalize, open_vector_store
from spr.stores.faiss_store import FaissStore
from spr.stores.index_spec import Flat, IvfFlat, SearchParams
from spr.stores.milvus_server import GRACEFUL_STOP_S, bound_graceful_stop

DIM = 16


# --- point 11: a moment stays a moment -----------------------------------------------------------


def _video_with_one_event(rng: np.random.Generator, segments: int, event: slice) -> tuple[np.ndarray, np.ndarray]:
    """Segment embeddings of one video: a background direction with noise, and an event (the
    query's direction) in ``event``; returns (embeddings, query)."""
    background, target = np.eye(DIM, dtype=np.float32)[0], np.eye(DIM, dtype=np.float32)[1]
    emb = background + 0.6 * rng.standard_normal((segments, DIM)).astype(np.float32)
    emb[event] = target + 0.2 * rng.standard_normal((event.stop - event.start, DIM)).astype(np.float32)
    # The rest of the video is still a little like the query, as real neighbouring shots are.
    emb[:, 1] += 0.35
    return l2_normalize(emb), l2_normalize(target[None, :])[0]


def test_a_video_filter_that_retrieves_every_segment_gives_the_moment_not_the_whole_video(tmp_path):
    """Seen: `w000.mp4 0-120` under a video_keys filter with segments_k=200: every segment of the
    video was retrieved and all of them merged. The default proposals config keeps the 12-s event."""
    rng = np.random.default_rng(3)
    config = Config(data_dir=str(tmp_path / "data"), vectors=VectorsConfig(collection="v", dim=DIM))
    catalog = SegmentCatalog.from_config(config)
    store = open_vector_store(config)
    try:
        ensure_collection(catalog, store, "v", DIM, "synthetic", Flat(), "IP")
        emb, query = _video_with_one_event(rng, 30, slice(12, 15))  # 120 s, the event at 48-60 s
        publish_video(catalog, store, "v", "w000.mp4", "synthetic://w000", 120.0, emb, 4.0)
        other, _ = _video_with_one_event(rng, 30, slice(0, 3))
        publish_video(catalog, store, "v", "w001.mp4", "synthetic://w001", 120.0, other, 4.0)
        store.flush("v")

        def top_moment(proposals: ProposalsConfig) -> tuple[float, float]:
            engine = MomentSearch(config.replace(proposals=proposals), catalog, store)
            result = engine.search(
                MomentQuery(embedding=query, collection="v", top_k=5, segments_k=200, video_keys=["w000.mp4"], refine=False)
            )
            assert result.segments_retrieved == 30  # the whole video came back
            return result.coarse.proposals[0].start_s, result.coarse.proposals[0].end_s

        # The paper's rule (merge every adjacent hit) reproduces the report ...
        assert top_moment(ProposalsConfig(merge_score_window=1.0, max_length_s=0.0)) == (0.0, 120.0)
        # ... the default caps the moment around the event ...
        start, end = top_moment(ProposalsConfig())
        assert end - start <= 30.0 and start <= 48.0 and end >= 60.0, (start, end)
        # ... and the score window keeps just the event (a noisy neighbour may ride along).
        start, end = top_moment(ProposalsConfig(merge_score_window=0.5))
        assert 44.0 <= start <= 48.0 and 60.0 <= end <= 64.0, (start, end)
    finally:
        store.close()
        catalog.close()


def _seg(ordinal: int, rank: int, score: float, video: str = "v") -> RetrievedSegment:
    return RetrievedSegment(ordinal + 1000 * (video != "v"), video, ordinal, 4.0 * ordinal, 4.0 * ordinal + 4, 400.0, score, rank)


def test_bounded_merge_keeps_every_segment_in_one_proposal_and_splits_by_score_and_length():
    # One run of 8 adjacent hits: a high block at ordinals 3-4 inside a low plateau.
    scores = {0: 0.1, 1: 0.12, 2: 0.15, 3: 0.9, 4: 0.85, 5: 0.2, 6: 0.11, 7: 0.1}
    order = sorted(scores, key=lambda o: -scores[o])
    segs = [_seg(o, order.index(o), scores[o]) for o in scores] + [_seg(0, 8, 0.05, "w")]
    unbounded = propose_moments(segs)
    assert [(p.start_s, p.end_s) for p in unbounded if p.video_key == "v"] == [(0.0, 32.0)]

    bounded = propose_moments(segs, BoundedMerge(score_window=0.5))
    assert (bounded[0].start_s, bounded[0].end_s) == (12.0, 20.0)  # the high block, best first
    covered = sorted(i for p in bounded for i in p.segment_ids)
    assert covered == sorted(s.segment_id for s in segs)  # every hit in exactly one proposal
    for p in bounded:
        assert max(p.segment_scores) <= p.best_score  # a proposal grows down from its best
    capped = propose_moments(segs, BoundedMerge(score_window=1.0, max_length_s=8.0))
    assert all(p.duration_s <= 8.0 for p in capped) and (capped[0].start_s, capped[0].end_s) == (12.0, 20.0)
    # Window 1 and no cap is the paper's rule exactly.
    assert propose_moments(segs, BoundedMerge()) == unbounded
    assert not isinstance(gap_rule_from_config("adjacent", merge_score_window=1.0), BoundedMerge)


def test_proposal_bounds_are_validated_at_load():
    assert load_config(environ={"SPR_PROPOSALS__MERGE_SCORE_WINDOW": "0.25"}).proposals.merge_score_window == 0.25
    for key, bad in (("MERGE_SCORE_WINDOW", "1.5"), ("MERGE_SCORE_WINDOW", "nan"), ("MAX_LENGTH_S", "-4"), ("MAX_LENGTH_S", "inf")):
        with pytest.raises(ConfigError, match=f"proposals.{key.lower()}"):
            load_config(environ={f"SPR_PROPOSALS__{key}": bad})


# --- point 12: IVF trained on the whole collection -------------------------------------------------


def _two_clusters(rng: np.random.Generator, n: int, centre: int) -> np.ndarray:
    c = np.zeros(DIM, np.float32)
    c[centre] = 1.0
    return l2_normalize(c + 0.3 * rng.standard_normal((n, DIM)).astype(np.float32))


def _centroids_near(store: FaissStore, name: str, axis: int) -> int:
    index = store._get(name).index  # the store's own index, as it is searched
    centroids = faiss.extract_index_ivf(index).quantizer.reconstruct_n(0, index.nlist)
    return int((np.argmax(np.abs(centroids), axis=1) == axis).sum())


def test_ivf_is_retrained_on_the_whole_collection_once_it_grew_past_its_first_training_set(tmp_path):
    """Seen: "training IVF_FLAT ... on 65536 of 68351 vectors": the first videos in import order.
    Here the first arrivals are all of one kind (axis 0) and the rest of another (axis 2)."""
    rng = np.random.default_rng(0)
    store = FaissStore(tmp_path / "faiss", use_gpu=False, train_points_per_list=16)
    store.create_collection("c", DIM, IvfFlat(nlist=8, nprobe=1))
    first = _two_clusters(rng, 200, 0)
    store.upsert("c", np.arange(200), first, ["a"] * 200)  # trains here: 200 >= 8 x 16
    assert store.index_state("c").trained_on == 200
    assert _centroids_near(store, "c", 2) == 0  # every centroid sits on the first kind
    later = _two_clusters(rng, 600, 2)
    store.upsert("c", np.arange(200, 800), later, ["b"] * 600)
    store.build_index("c")  # what `spr import` does when it is done: 800 >= 2 x 200
    assert store.index_state("c").trained_on == 800
    assert _centroids_near(store, "c", 2) >= 4  # now most lists serve the larger kind
    # Nothing was lost or changed by the retraining: an exact probe finds each vector itself.
    found = store.search("c", later[:20], 1, SearchParams(nprobe=8))
    assert found.ids[:, 0].tolist() == list(range(200, 220))
    store.close()
    reopened = FaissStore(tmp_path / "faiss", use_gpu=False, train_points_per_list=16)
    assert reopened.index_state("c").trained_on == 800 and reopened.count("c") == 800


def test_spr_reindex_and_spr_index_wait_and_status_say_when_an_index_is_not_built(tmp_path):
    data = tmp_path / "data"
    env = {"SPR_DATA_DIR": str(data), "SPR_LOGGING__LEVEL": "WARNING"}
    config = Config(data_dir=str(data), vectors=VectorsConfig(collection="ivf", dim=DIM))
    catalog = SegmentCatalog.from_config(config)
    store = open_vector_store(config)
    rng = np.random.default_rng(1)
    ensure_collection(catalog, store, "ivf", DIM, "synthetic", IvfFlat(nlist=4, nprobe=1), "IP")
    # 40 segments: under 4 x 64, so the collection stays untrained (searched exactly).
    publish_video(catalog, store, "ivf", "a.mp4", "synthetic://a", 160.0, _two_clusters(rng, 40, 0), 4.0)
    store.close()
    catalog.close()

    status = run_spr("status", env=env)
    assert status.returncode == 0, status.stderr
    assert "index building: untrained" in status.stdout

    waited = run_spr("index", "wait", "--collection", "ivf", env=env)
    assert waited.returncode == 0, waited.stderr
    assert "covers every row" in waited.stdout
    assert "index building" not in run_spr("status", env=env).stdout

    again = run_spr("reindex", "--collection", "ivf", env=env)
    assert again.returncode == 0, again.stderr
    assert "40 of 40 rows indexed" in again.stdout
    missing = run_spr("reindex", "--collection", "nope", env=env)
    assert missing.returncode == 2 and "does not exist" in missing.stderr


# --- point 12: spr eval takes the search parameters of spr search ------------------------------------


def test_eval_accepts_nprobe_and_ef_and_uses_them(tmp_path):
    from spr.cli.eval import evaluate
    from spr.eval.evaluation import EvalError, EvalOptions

    rng = np.random.default_rng(2)
    config = Config(data_dir=str(tmp_path / "data"), vectors=VectorsConfig(collection="e", dim=DIM))
    catalog = SegmentCatalog.from_config(config)
    store = FaissStore(config.faiss_path, use_gpu=False, train_points_per_list=4)
    ensure_collection(catalog, store, "e", DIM, "synthetic", IvfFlat(nlist=16, nprobe=1), "IP")
    queries, features = [], {}
    for v in range(24):
        emb = l2_normalize(rng.standard_normal((10, DIM)).astype(np.float32))
        publish_video(catalog, store, "e", f"v{v}", f"synthetic://v{v}", 40.0, emb, 4.0)
        queries.append({"query_id": v, "query": f"q{v}", "video_name": f"v{v}", "timestamp": [8, 12], "duration": 40, "relevance": 4})
        # The query is near its segment, not on it, so one probed list often misses it.
        features[str(v)] = l2_normalize(emb[2] + 0.35 * rng.standard_normal(DIM).astype(np.float32))
    store.wait_until_indexed("e")
    store.close()
    catalog.close()
    qfile = tmp_path / "q.jsonl"
    qfile.write_text("".join(json.dumps(q) + "\n" for q in queries))
    with h5py.File(tmp_path / "qf.h5", "w") as h5:
        for k, v in features.items():
            h5[k] = v

    def run(**params) -> dict:
        # Few segments per query: proposals stay single segments, so NDCG follows recall.
        options = EvalOptions(
            query_features=str(tmp_path / "qf.h5"), projected=True, refine=False, modalities=False, top_k_segments=5, **params
        )
        return evaluate(config, str(qfile), options).to_json()

    narrow, wide = run(), run(nprobe=16)
    assert wide["search_params"] == {"nprobe": 16, "ef": None}
    # All 16 lists probed is exact search; the collection's default (one list) misses some.
    print("NDCG@10 IoU0.5 nprobe 1 vs 16:", narrow["sp"]["ndcg"]["10"]["0.5"], wide["sp"]["ndcg"]["10"]["0.5"])
    assert narrow["search_params"] == {"nprobe": None, "ef": None}
    assert narrow["sp"]["ndcg"]["10"]["0.5"] < wide["sp"]["ndcg"]["10"]["0.5"]
    with pytest.raises(EvalError, match="--nprobe must be at least 1"):
        run(nprobe=0)
    done = run_spr("eval", str(qfile), "--ef", "0", env={"SPR_DATA_DIR": str(tmp_path / "data")})
    assert done.returncode == 2 and "--ef must be at least 1" in done.stderr


# --- point 12: the projector warning only where it applies -----------------------------------------


def test_the_no_projector_warning_names_only_what_the_caller_embeds(caplog):
    from spr.models.projector import load_projectors

    with caplog.at_level(logging.INFO, logger="spr.models.projector"):
        load_projectors("", 8, uses=())  # spr eval --query-features: precomputed queries
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
        load_projectors("", 8, uses=("segments",))  # spr import
        (warning,) = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert "mean pooling" in warning.getMessage() and "text feature" not in warning.getMessage()


# --- point 12: spr import waits for the Milvus index ------------------------------------------------


@pytest.mark.milvus
def test_import_into_milvus_returns_once_the_index_covers_every_row(tmp_path, milvus_uri):
    from spr.ingest.importer import ImportOptions, import_features

    name = f"t_h14_{uuid.uuid4().hex[:8]}"
    config = Config(
        data_dir=str(tmp_path / "data"),
        vectors=VectorsConfig(collection=name, backend="milvus", index=IvfFlat(nlist=8, nprobe=8)),
        milvus=MilvusConfig(uri=milvus_uri, consistency_level="Strong"),
    )
    rng = np.random.default_rng(4)
    with h5py.File(tmp_path / "f.h5", "w") as h5:
        for v in range(40):
            h5[f"v{v}"] = rng.standard_normal((400, 24)).astype(np.float32)  # 100 segments each
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps({"key": f"v{v}", "duration": 400.0}) + "\n" for v in range(40)))
    try:
        summary = import_features(config, tmp_path / "f.h5", manifest, ImportOptions())
        assert summary.segments_written == 4000 and not summary.index_note
        store = open_vector_store(config)
        try:
            state = store.index_state(name)
            assert (state.indexed, state.total) == (4000, 4000), state
        finally:
            store.close()
    finally:
        store = open_vector_store(config)
        if store.has_collection(name):
            store.drop_collection(name)
        store.close()


# --- point 12: spr milvus stop ------------------------------------------------------------------------


def test_the_embedded_milvus_config_bounds_its_graceful_stop(tmp_path):
    """The package's template leaves the query node's graceful stop at common.gracefulStopTimeout
    (1800 s), spent waiting to hand its segments to a query node standalone does not have. The
    configuration is rendered as `spr milvus start` renders it (nothing is started)."""
    yaml = pytest.importorskip("yaml")
    from milvus import MilvusServerConfig

    rendered = MilvusServerConfig(data_dir=str(tmp_path))
    rendered.resolve()  # writes configs/milvus.yaml, as EmbeddedMilvus.start does
    config = tmp_path / "configs" / "milvus.yaml"
    assert yaml.safe_load(config.read_text())["common"]["gracefulStopTimeout"] == 1800
    bound_graceful_stop(config)
    loaded = yaml.safe_load(config.read_text())
    for dotted, value in GRACEFUL_STOP_S.items():
        section, key = dotted.split(".")
        assert loaded[section][key] == value
    assert loaded["queryNode"]["dataSync"]["flowGraph"]["maxQueueLength"] == 16  # siblings kept
