"""``spr import``: precomputed features (TVR HDF5, moment_detr .npy/.npz) and ready-made
segment embeddings into real stores, through the projector (mean pooling here) and the
two-store protocol. Features are 24-d on purpose: nothing may assume CLIP's 768."""

from __future__ import annotations

import csv
import json
import uuid
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import run_spr
from spr.ingest.importer import (
    ImportInputError,
    ImportOptions,
    import_features,
    read_manifest,
)
from spr.ingest.reembed import reembed_collection
from spr.catalog import SegmentCatalog
from spr.config import CatalogConfig, Config, MilvusConfig, VectorsConfig
from spr.features import FrameFeatureStore
from spr.retrieval import retrieve_proposals
from spr.segments import segment_count, segment_rows
from spr.stores import l2_normalize, open_vector_store

D = 24
TVR_CLIP_S = 1.5


def make_config(tmp_path: Path, catalog_url: str | None = None, milvus_uri: str | None = None) -> Config:
    """Faiss + SQLite under ``tmp_path``, or Milvus (read-after-write) + the given catalog."""
    collection = f"t_imp_{uuid.uuid4().hex[:8]}"
    config = Config(
        data_dir=str(tmp_path / "data"),
        catalog=CatalogConfig(url=catalog_url or ""),
        vectors=VectorsConfig(collection=collection, backend="milvus" if milvus_uri else "faiss"),
    )
    if milvus_uri:
        config = config.replace(milvus=MilvusConfig(uri=milvus_uri, consistency_level="Strong"))
    return config


@pytest.fixture(
    params=[
        "faiss-sqlite",
        pytest.param("milvus-postgresql", marks=[pytest.mark.milvus, pytest.mark.postgres]),
    ]
)
def config(request, tmp_path):
    if request.param == "faiss-sqlite":
        yield make_config(tmp_path)
        return
    cfg = make_config(tmp_path, request.getfixturevalue("postgres_url"), request.getfixturevalue("milvus_uri"))
    yield cfg
    drop_collections(cfg)


def drop_collections(cfg: Config) -> None:
    """Drop the test's collection and its text-track collections from the shared Milvus server."""
    from spr.text_tracks import TEXT_TRACKS, track_collection

    store = open_vector_store(cfg)
    try:
        for name in [cfg.vectors.collection] + [track_collection(cfg.vectors.collection, t) for t in TEXT_TRACKS]:
            if store.has_collection(name):
                store.drop_collection(name)
    finally:
        store.close()


@pytest.fixture
def faiss_config(tmp_path) -> Config:
    return make_config(tmp_path)


def features(rows: int, seed: int, dim: int = D) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, dim)).astype(np.float32)


def write_h5(path: Path, videos: dict[str, np.ndarray]) -> Path:
    with h5py.File(path, "w") as h5:
        for key, array in videos.items():
            h5.create_dataset(key, data=array)
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def open_stores(config: Config):
    return SegmentCatalog.from_config(config), open_vector_store(config)


# --- the time grid --------------------------------------------------------------------------


def test_1_5_s_clips_are_pooled_by_the_4_s_segments_they_overlap():
    starts, stops = segment_rows(40, 1 / TVR_CLIP_S, 60.0, 4.0)
    ranges = np.stack([starts, stops], axis=1)
    assert len(ranges) == 15
    # [0, 4) s: clips 0-2 (0-4.5 s); [4, 8) s: clips 2-5 (3-9 s), the straddling clip 2 in both.
    assert ranges[:3].tolist() == [[0, 3], [2, 6], [5, 8]]
    assert ranges[-1].tolist() == [37, 40]


def test_whole_row_grids_pool_whole_blocks_of_rows_as_ingest_does():
    from spr.models.projector import untrained_projectors

    projectors = untrained_projectors(D)
    feats = features(18, 0)  # 1 fps, 18 s: 5 segments, the last 2 s long
    rows = segment_rows(18, 1.0, 18.0, 4.0)
    assert np.stack(rows, axis=1).tolist() == [[0, 4], [4, 8], [8, 12], [12, 16], [16, 18]]
    via_import = projectors.embed_segments(feats, rows)
    blocks = [l2_normalize(feats[lo : lo + 4].mean(0)) for lo in range(0, 18, 4)]
    np.testing.assert_allclose(via_import, np.stack(blocks), atol=1e-6)
    # T a little short of the duration: the last segment pools the rows it overlaps.
    short = projectors.embed_segments(feats[:17], segment_rows(17, 1.0, 18.0, 4.0))
    assert short.shape == (5, D)
    np.testing.assert_allclose(short[4], l2_normalize(feats[16:17].mean(0)), atol=1e-6)


# --- HDF5, the TVR layout -------------------------------------------------------------------


def test_tvr_clip_features_import_searchable_at_their_times_with_features_for_the_refiner(config, tmp_path):
    event = 10 * l2_normalize(features(1, 99)[0])
    videos = {f"show_s01e0{i}_clip": features(40, i) for i in range(3)}  # 40 clips of 1.5 s = 60 s
    videos["show_s01e01_clip"][8:11] = event  # clips 8-10 = 12-16.5 s: all of segment [12, 16)
    h5 = write_h5(tmp_path / "tvr_i3d_cl-1.5.h5", videos)
    # TVR annotations repeat a video once per query; the rows agree on its duration.
    rows = [{"vid_name": k, "duration": 59.8, "desc": f"query {q}"} for k in videos for q in range(2)]
    manifest = write_jsonl(tmp_path / "tvr_train.jsonl", rows)
    options = ImportOptions(clip_length_s=TVR_CLIP_S)

    summary = import_features(config, h5, manifest, options)
    assert sorted(summary.imported) == sorted(videos) and not summary.failed
    assert summary.dim == D and summary.embedder == "mean-pool"
    assert summary.segments_written == 3 * segment_count(59.8, 4.0) == 45
    catalog, store = open_stores(config)
    try:
        name = config.vectors.collection
        best = retrieve_proposals(store, catalog, name, l2_normalize(event), top_k=1).proposals[0]
        assert (best.video_key, best.start_s, best.end_s) == ("show_s01e01_clip", 12.0, 16.0)
        video = catalog.get_video("show_s01e01_clip")
        assert video.status == "ready" and video.duration_s == 59.8 and video.content_hash.startswith("sha256:")
        assert video.uri == f"{h5.resolve().as_uri()}#show_s01e01_clip"
        stored = FrameFeatureStore.from_config(config).read(video.id)
        assert stored.rate == pytest.approx(1 / TVR_CLIP_S)
        np.testing.assert_allclose(stored.features, videos["show_s01e01_clip"], atol=2e-2)
        coll = catalog.get_collection(name)
        assert (coll.dim, coll.feature_model) == (D, "imported:tvr_i3d_cl-1.5.h5 + mean-pool")
        run = catalog.get_run(summary.run_id)
        assert (run.status, run.videos_done, run.videos_failed, run.segments_written) == ("finished", 3, 0, 45)

        again = import_features(config, h5, manifest, options)
        assert sorted(again.skipped) == sorted(videos) and again.imported == [] and again.segments_written == 0
        assert catalog.segment_count() == store.count(name) == 45
    finally:
        store.close()
        catalog.close()


def test_reembedding_imported_tvr_clips_gives_the_vectors_the_import_gave(faiss_config, tmp_path):
    """1.5-s clips do not fall on the 4-s grid: import and re-embedding must pool the same
    clips for each segment (the catalog's 4i..4i+4 s), not 3 clips (4.5 s) per segment."""
    videos = {"a": features(40, 1), "b": features(27, 2)}  # 60 s and 40.5 s of 1.5-s clips
    h5 = write_h5(tmp_path / "tvr.h5", videos)
    manifest = write_jsonl(tmp_path / "m.jsonl", [{"key": "a", "duration": 59.8}, {"key": "b", "duration": 40.2}])
    imported = import_features(faiss_config, h5, manifest, ImportOptions(clip_length_s=TVR_CLIP_S))
    assert sorted(imported.imported) == ["a", "b"]
    again = reembed_collection(faiss_config, "reembedded")
    assert (again.videos, again.segments, again.missing) == (2, imported.segments_written, [])

    from spr.models.projector import untrained_projectors

    projectors = untrained_projectors(D)
    catalog, store = open_stores(faiss_config)
    try:
        for key, feats in videos.items():
            video = catalog.get_video(key)
            rows = segment_rows(len(feats), 1 / TVR_CLIP_S, video.duration_s, 4.0)
            expected = projectors.embed_segments(feats, rows)  # the import's vectors
            ids = (video.id << 20) + np.arange(len(expected))
            for name in (faiss_config.vectors.collection, "reembedded"):
                found = store.search(name, expected, 1)
                # Each segment's own vector comes first, at cosine 1 (features kept as float16).
                assert found.ids[:, 0].tolist() == ids.tolist(), name
                np.testing.assert_allclose(found.scores[:, 0], 1.0, atol=2e-3)
    finally:
        store.close()
        catalog.close()


def test_a_reembedding_that_fails_mid_way_leaves_search_untouched_and_a_rerun_fills_the_new_collection_once(
    faiss_config, tmp_path, monkeypatch
):
    from spr.config import IngestConfig
    from spr.models.projector import untrained_projectors
    from spr.stores.faiss_store import FaissStore

    config = faiss_config.replace(ingest=IngestConfig(write_batch_videos=1))  # one video per batch
    videos = {k: features(20, i) for i, k in enumerate(["a", "b", "c", "d"])}
    manifest = write_jsonl(tmp_path / "m.jsonl", [{"key": k, "duration": 20} for k in videos])
    assert import_features(config, write_h5(tmp_path / "f.h5", videos), manifest).imported == list(videos)
    catalog, store = open_stores(config)
    rows_before = {v.key: (v.status, v.metadata) for v in catalog.list_videos()}
    store.close()
    catalog.close()

    flush, flushes = FaissStore.flush, []

    def flush_then_fail(self, name):
        flush(self, name)
        flushes.append(name)
        if name == "v2" and flushes.count("v2") == 2:  # b's vectors are durable, its batch not counted yet
            raise RuntimeError("the machine went away")

    monkeypatch.setattr(FaissStore, "flush", flush_then_fail)
    with pytest.raises(RuntimeError, match="went away"):
        reembed_collection(config, "v2")
    monkeypatch.setattr(FaissStore, "flush", flush)

    projectors = untrained_projectors(D)
    old = config.vectors.collection

    def own_vectors(video):
        return projectors.embed_segments(videos[video.key], segment_rows(20, 1.0, 20.0, 4.0))

    catalog, store = open_stores(config)
    try:
        # The catalog's video rows are not the re-embedding's: every video is still ready, as it was.
        assert {v.key: (v.status, v.metadata) for v in catalog.list_videos()} == rows_before
        assert [catalog.get_run(i).config["command"] for i in (1, 2)] == ["import", "reembed"]
        assert catalog.get_run(2).status == "failed" and "went away" in catalog.get_run(2).error
        assert store.count("v2") == 5 + 5  # a's and b's vectors
        # The live collection still answers for every video, the failed batch's included.
        for key in videos:
            video = catalog.get_video(key)
            hits = retrieve_proposals(store, catalog, old, own_vectors(video)[2], top_k=5).proposals
            assert any(p.video_key == key for p in hits), key
        # Only ready videos are re-embedded: one pending after a crashed import is the import's to finish.
        catalog.register_video("e", "file:///e", 8.0)

        again = reembed_collection(config, "v2")
        assert again.videos == 4 and again.segments == 20
        store.close()
        store = open_vector_store(config)
        assert {v.key: (v.status, v.metadata) for v in catalog.list_videos() if v.key != "e"} == rows_before
        assert catalog.get_video("e").status == "pending"
        # One vector per catalog segment: the re-run upserted b's ids again instead of adding them.
        assert store.count("v2") == catalog.segment_count() == 20
        for key in videos:
            video = catalog.get_video(key)
            found = store.search("v2", own_vectors(video), 1)
            assert found.ids[:, 0].tolist() == ((video.id << 20) + np.arange(5)).tolist()
        assert store.count(old) == 20  # the old collection was never written
    finally:
        store.close()
        catalog.close()


# --- directories of arrays (moment_detr / lighthouse) ---------------------------------------


def test_npy_and_npz_directories_import_with_a_csv_manifest(faiss_config, tmp_path):
    folder = tmp_path / "clip_features"
    folder.mkdir()
    np.save(folder / "qv_a.npy", features(20, 1))  # 1 fps
    np.savez(folder / "qv_b.npz", features(16, 2))  # the only array, whatever its name
    np.savez(folder / "qv_c.npz", features=features(12, 3), mask=np.ones(12))
    manifest = tmp_path / "videos.csv"
    with manifest.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["video_id", "duration", "uri"])
        writer.writerows([["qv_a", 20, "https://example.org/a.mp4"], ["qv_b", 16, ""], ["qv_c", 11.5, ""]])

    clip = ImportOptions(feature_model="ViT-B-32/openai")
    summary = import_features(faiss_config, folder, manifest, clip)
    assert summary.imported == ["qv_a", "qv_b", "qv_c"] and not summary.failed
    with SegmentCatalog.from_config(faiss_config) as catalog:
        a, c = catalog.get_video("qv_a"), catalog.get_video("qv_c")
        assert a.uri == "https://example.org/a.mp4"
        assert c.uri == (folder / "qv_c.npz").resolve().as_uri()
        assert catalog.segment_count(a.id) == 5 and catalog.segment_count(c.id) == 3

    # Several arrays and none called "features": the file says which one to take.
    other = tmp_path / "slowfast"
    other.mkdir()
    np.savez(other / "qv_d.npz", slowfast=features(8, 4), clip=features(8, 5, dim=12))
    rows = [{"vid": "qv_d", "duration": 8}]
    ambiguous = import_features(faiss_config, other, write_jsonl(tmp_path / "d.jsonl", rows), clip)
    assert "--dataset-key" in ambiguous.failed["qv_d"]
    picked = ImportOptions(feature_model="ViT-B-32/openai", dataset_key="clip", collection="clip_12d")
    assert import_features(faiss_config, other, tmp_path / "d.jsonl", picked).imported == ["qv_d"]
    # Without a model name, vectors from elsewhere must not join the collection unannounced.
    with pytest.raises(ImportInputError, match="--feature-model"):
        import_features(faiss_config, other, tmp_path / "d.jsonl", ImportOptions(dataset_key="slowfast"))


# --- ready-made segment embeddings ----------------------------------------------------------


def test_ready_made_segment_embeddings_are_published_as_they_are_without_frame_features(faiss_config, tmp_path):
    folder = tmp_path / "segments"
    folder.mkdir()
    emb = l2_normalize(features(5, 7))
    np.save(folder / "ok.npy", emb)  # 18 s -> 5 segments of 4 s
    np.save(folder / "short.npy", features(3, 8))  # 18 s needs 5
    manifest = write_jsonl(tmp_path / "m.jsonl", [{"key": "ok", "duration": 18}, {"key": "short", "duration": 18}])

    summary = import_features(faiss_config, folder, manifest, ImportOptions(segments=True))
    assert summary.imported == ["ok"] and summary.embedder == "ready-made"
    assert "3 segment embeddings" in summary.failed["short"] and "5 segments" in summary.failed["short"]
    assert FrameFeatureStore.from_config(faiss_config).video_ids() == []
    catalog, store = open_stores(faiss_config)
    try:
        best = retrieve_proposals(store, catalog, faiss_config.vectors.collection, emb[4], top_k=1).proposals[0]
        assert (best.video_key, best.start_s, best.end_s, round(best.best_score, 4)) == ("ok", 16.0, 18.0, 1.0)
    finally:
        store.close()
        catalog.close()


# --- failures -------------------------------------------------------------------------------


def test_bad_videos_fail_alone_and_the_summary_and_catalog_say_why(faiss_config, tmp_path):
    nan = features(10, 3)
    nan[4, 5] = np.nan
    h5 = write_h5(
        tmp_path / "f.h5",
        {
            "a_wide": features(10, 1, dim=30),  # first in the file: the majority still sets 24-d
            "good1": features(10, 2),
            "good2": features(12, 4),
            "nan": nan,
            "unlisted": features(6, 5),
            "wrong_clip": features(10, 6),
        },
    )
    rows = [{"key": k, "duration": 10} for k in ("a_wide", "good1", "nan")]
    rows += [{"key": "good2", "duration": 12}, {"key": "wrong_clip", "duration": 30}, {"key": "ghost", "duration": 5}]
    manifest = write_jsonl(tmp_path / "m.jsonl", rows)

    summary = import_features(faiss_config, h5, manifest)
    assert sorted(summary.imported) == ["good1", "good2"]
    assert set(summary.failed) == {"a_wide", "nan", "unlisted", "wrong_clip"}
    assert "30-d" in summary.failed["a_wide"] and "24-d" in summary.failed["a_wide"]
    assert "1 NaN" in summary.failed["nan"]
    assert "--duration-from-features" in summary.failed["unlisted"]
    assert "--clip-length" in summary.failed["wrong_clip"]
    assert summary.not_in_manifest == ["unlisted"] and summary.not_in_features == ["ghost"]
    with SegmentCatalog.from_config(faiss_config) as catalog:
        for key, why in summary.failed.items():
            row = catalog.get_video(key)
            assert (row.status, row.error) == ("failed", why)
        assert catalog.get_video("ghost") is None
        run = catalog.get_run(summary.run_id)
        assert (run.videos_total, run.videos_done, run.videos_failed) == (6, 2, 4)

    # Durations from the features instead: 6 rows at 1 per second.
    fixed = import_features(faiss_config, h5, manifest, ImportOptions(duration_from_features=True))
    assert "unlisted" in fixed.imported and sorted(fixed.skipped) == ["good1", "good2"]
    with SegmentCatalog.from_config(faiss_config) as catalog:
        assert (catalog.get_video("unlisted").status, catalog.get_video("unlisted").duration_s) == ("ready", 6.0)


def test_a_video_whose_publishing_fails_inside_a_batch_fails_alone(faiss_config, tmp_path, monkeypatch):
    write = FrameFeatureStore.write

    def write_or_refuse(self, video_id, feats, rate, model="", modality="visual"):
        if len(feats) == 13:  # the marked video
            raise ValueError("disk says no")
        write(self, video_id, feats, rate, model, modality)

    monkeypatch.setattr(FrameFeatureStore, "write", write_or_refuse)
    videos = {"a": features(8, 1), "b": features(13, 2), "c": features(8, 3), "k" * 600: features(8, 4)}
    rows = [{"key": k, "duration": len(v)} for k, v in videos.items()]
    h5, manifest = write_h5(tmp_path / "f.h5", videos), write_jsonl(tmp_path / "m.jsonl", rows)
    summary = import_features(faiss_config, h5, manifest)
    assert summary.imported == ["a", "c"] and summary.failed["b"] == "publishing failed: disk says no"
    assert "600 bytes" in summary.failed["k" * 600]  # too long for the catalog: reported, no row
    with SegmentCatalog.from_config(faiss_config) as catalog:
        assert (catalog.get_video("b").status, catalog.count_by_status()["ready"]) == ("failed", 2)


def test_when_the_first_videos_all_fail_the_first_usable_one_sets_the_dimension(faiss_config, tmp_path):
    h5 = write_h5(tmp_path / "f.h5", {**{f"a{i}": features(4, i) for i in range(9)}, "b": features(8, 9)})
    summary = import_features(faiss_config, h5, write_jsonl(tmp_path / "m.jsonl", [{"key": "b", "duration": 8}]))
    assert summary.imported == ["b"] and len(summary.failed) == 9 and summary.dim == D


def test_a_trained_projector_sets_the_collection_dimension(faiss_config, tmp_path):
    from spr.config import ProjectorConfig
    from spr.models.projector import ProjectorShape, build_projectors, save_projectors

    checkpoint = tmp_path / "projector.pt"
    shape = ProjectorShape(in_dim=D, text_in_dim=16, dim=32, layers=1, heads=4, max_frames=8)
    save_projectors(checkpoint, build_projectors(shape), step=7)
    config = faiss_config.replace(projector=ProjectorConfig(checkpoint=str(checkpoint)))
    h5 = write_h5(tmp_path / "f.h5", {"v": features(40, 0)})
    summary = import_features(config, h5, write_jsonl(tmp_path / "m.jsonl", [{"key": "v", "duration": 60}]),
                              ImportOptions(clip_length_s=TVR_CLIP_S))
    assert summary.imported == ["v"] and (summary.dim, summary.embedder) == (32, "projector:projector.pt@7")
    with SegmentCatalog.from_config(config) as catalog:
        assert catalog.get_collection(config.vectors.collection).dim == 32


def test_a_collection_of_another_dimension_is_refused_naming_both(faiss_config, tmp_path):
    manifest = write_jsonl(tmp_path / "m.jsonl", [{"key": "v", "duration": 8}])
    import_features(faiss_config, write_h5(tmp_path / "a.h5", {"v": features(8, 0)}), manifest)
    with pytest.raises(ImportInputError, match=r"24-d.*16-d"):
        import_features(faiss_config, write_h5(tmp_path / "b.h5", {"v": features(8, 0, dim=16)}), manifest)


def test_a_manifest_whose_rows_disagree_rejects_only_that_video(tmp_path):
    rows = [{"vid_name": "x", "duration": 10}, {"vid_name": "x", "duration": 12}, {"vid_name": "y", "duration": 3}]
    manifest = write_jsonl(tmp_path / "m.jsonl", rows)
    table = read_manifest(manifest)
    assert "two durations" in table.get("x").problem and table.get("y").duration_s == 3.0
    with pytest.raises(ImportInputError, match="video key"):
        read_manifest(write_jsonl(tmp_path / "bad.jsonl", [{"name": "z", "duration": 1}]))


# --- re-imports -----------------------------------------------------------------------------


def test_reimporting_adds_no_duplicates_and_a_changed_file_replaces_its_segments(faiss_config, tmp_path):
    videos = {"v1": features(20, 1), "v2": features(12, 2)}
    h5 = write_h5(tmp_path / "f.h5", videos)
    manifest = write_jsonl(tmp_path / "m.jsonl", [{"key": "v1", "duration": 20}, {"key": "v2", "duration": 12}])
    first = import_features(faiss_config, h5, manifest)
    catalog, store = open_stores(faiss_config)
    name = faiss_config.vectors.collection
    try:
        ids = {k: catalog.get_video(k).id for k in videos}
        assert catalog.segment_count() == store.count(name) == 5 + 3 == first.segments_written

        forced = import_features(faiss_config, h5, manifest, ImportOptions(force=True))
        assert sorted(forced.imported) == ["v1", "v2"]
        store.close()
        store = open_vector_store(faiss_config)
        assert catalog.segment_count() == store.count(name) == 8
        assert {k: catalog.get_video(k).id for k in videos} == ids

        # v2 re-extracted: 30 s now.
        write_h5(h5, {"v1": videos["v1"], "v2": features(30, 9)})
        write_jsonl(manifest, [{"key": "v1", "duration": 20}, {"key": "v2", "duration": 30}])
        changed = import_features(faiss_config, h5, manifest)
        assert (changed.imported, changed.skipped) == (["v2"], ["v1"])
        store.close()
        store = open_vector_store(faiss_config)
        assert catalog.get_video("v2").id == ids["v2"] and catalog.segment_count(ids["v2"]) == 8
        assert catalog.segment_count() == store.count(name) == 5 + 8
        assert FrameFeatureStore.from_config(faiss_config).info(ids["v2"])[0] == 30
    finally:
        store.close()
        catalog.close()


# --- the command line -----------------------------------------------------------------------


def test_spr_import_prints_the_summary_and_a_missing_file_is_a_one_line_error(tmp_path):
    h5 = write_h5(tmp_path / "tvr.h5", {f"v{i}": features(8, i) for i in range(3)})
    manifest = write_jsonl(tmp_path / "m.jsonl", [{"vid_name": f"v{i}", "duration": 12} for i in range(3)])
    env = {"SPR_DATA_DIR": str(tmp_path / "data"), "SPR_CONFIG": "", "SPR_LOGGING__JSON": "false"}

    args = ("import", str(h5), "--manifest", str(manifest), "--clip-length", "1.5")
    run = run_spr(*args, "--progress-every", "1", env=env)
    assert run.returncode == 0, run.stderr
    assert "3 imported, 0 skipped, 0 failed; 9 segments written" in run.stdout
    assert "import 3/3 videos" in run.stderr
    again = run_spr(*args, "--json", env=env)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["videos"] == {"imported": 0, "skipped": 3, "failed": 0}

    missing = run_spr("import", str(tmp_path / "nope.h5"), "--manifest", str(manifest), env=env)
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == [f"spr: error: features {tmp_path / 'nope.h5'} do not exist; "
                                                   "give an HDF5 file or a directory of .npy/.npz files"]
