"""Ingest: videos -> per-second CLIP features -> 4-s segment embeddings, on real Ray, real
stores (SQLite + Faiss, PostgreSQL + Milvus) and real PyAV decoding.

The CLIP model is the built-in ``spr-tiny`` with RANDOM weights: these tests check the
plumbing (times, ids, visibility, resumption), not retrieval quality. A planted event is found
by querying with its own stored frame features, which needs no trained model.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from spr.ingest.pipeline import delete_videos, run_ingest
from spr.ingest.progress import IngestProgress
from spr.ingest.sources import SourceError, sources_from_manifest, sources_from_paths
from spr.ingest.synthetic_video import write_video
from spr.catalog import SegmentCatalog
from spr.config import load_config
from spr.features import FrameFeatureStore
from spr.retrieval import retrieve_proposals
from spr.segments import segment_count, segment_rows
from spr.stores import l2_normalize, open_vector_store

from conftest import run_spr
from videos import truncate_copy, write_audio_only, write_corrupt

RED = (230, 30, 30)


def make_config(tmp_path: Path, **env: str):
    base = {
        "SPR_DATA_DIR": str(tmp_path / "data"),
        "SPR_CLIP__MODEL": "spr-tiny",
        "SPR_CLIP__BATCH_SIZE": "16",
        "SPR_RAY__NUM_CPUS": "2",
    }
    return load_config(environ={**base, **env})


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Four short videos; ``b.mp4`` shows a red block over [12, 20) s."""
    root = tmp_path_factory.mktemp("videos")
    write_video(root / "a.mp4", 21.0, fps=5, seed=1)
    write_video(root / "b.mp4", 30.0, fps=5, pattern="events", events=[(12.0, 20.0, RED)], seed=2)
    (root / "sub").mkdir()
    write_video(root / "sub" / "c.mkv", 9.5, fps=4, seed=3)
    write_video(root / "d.mp4", 14.0, fps=5, vfr=True, seed=4)
    return root


# --- reader ------------------------------------------------------------------------------------


def test_folders_give_relative_keys_and_files_give_their_names(corpus):
    sources = sources_from_paths([corpus, corpus / "a.mp4"])
    assert [s.key for s in sources] == ["a.mp4", "b.mp4", "d.mp4", "sub/c.mkv"]
    assert all(s.uri.startswith("file://") for s in sources)


def test_a_manifest_gives_keys_metadata_and_relative_paths(tmp_path, corpus):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(
        json.dumps({"key": "show/ep1", "path": str(corpus / "a.mp4"), "metadata": {"show": "x"}}) + "\n"
        + json.dumps({"path": os.path.relpath(corpus / "b.mp4", tmp_path)}) + "\n"
    )
    a, b = sources_from_manifest(manifest)
    assert (a.key, a.metadata) == ("show/ep1", {"show": "x"})
    assert b.key == "b.mp4" and Path(b.path).resolve() == (corpus / "b.mp4").resolve()
    manifest.write_text(json.dumps({"key": "x"}) + "\n")
    with pytest.raises(SourceError, match="needs 'path'"):
        sources_from_manifest(manifest)
    with pytest.raises(SourceError, match="does not exist"):
        sources_from_paths([tmp_path / "nope"])


# --- the whole pipeline on Ray -------------------------------------------------------------------


def test_ray_ingest_publishes_segments_features_and_vectors_under_one_id(tmp_path, corpus):
    config = make_config(tmp_path)
    sources = sources_from_paths([corpus])
    summary = run_ingest(config, sources, executor="ray", progress=IngestProgress(len(sources), stream=None))
    assert (summary.videos_done, summary.videos_failed) == (4, 0)
    durations = {"a.mp4": 21.0, "b.mp4": 30.0, "sub/c.mkv": 9.5, "d.mp4": 14.0}
    assert summary.segments_written == sum(segment_count(d) for d in durations.values())
    assert summary.encoder.random_weights

    catalog = SegmentCatalog.from_config(config)
    store = open_vector_store(config)
    features = FrameFeatureStore.from_config(config)
    try:
        assert store.count("segments") == catalog.segment_count() == summary.segments_written
        for key, duration in durations.items():
            video = catalog.get_video(key)
            assert video.status == "ready" and video.duration_s == pytest.approx(duration, abs=0.25)
            stored = features.read(video.id)
            assert stored.rate == 1.0 and stored.features.dtype == np.float16
            assert len(stored.features) == int(np.ceil(video.duration_s - 1e-6))  # one per second
            assert np.allclose(np.linalg.norm(stored.features.astype(np.float32), axis=1), 1.0, atol=1e-2)

        # Query with the red block's own frame features: the event's segments come first.
        b = catalog.get_video("b.mp4")
        event = features.read_span(b.id, 12.0, 20.0).features.astype(np.float32).mean(0)
        coarse = retrieve_proposals(store, catalog, "segments", l2_normalize(event), top_k=2, pad_s=8.0)
        best = coarse.proposals[0]
        assert (best.video_key, best.start_s, best.end_s) == ("b.mp4", 12.0, 20.0)
        assert (coarse.padded[0].start_s, coarse.padded[0].end_s) == (4.0, 28.0)
        run = catalog.get_run(summary.run_id)
        assert (run.status, run.videos_done, run.segments_written) == ("finished", 4, summary.segments_written)
        assert catalog.get_collection("segments").feature_model == "spr-tiny/random + mean-pool"
    finally:
        store.close()
        catalog.close()

    # The same command again skips every unchanged video and writes nothing.
    again = run_ingest(config, sources, executor="ray", progress=IngestProgress(4, stream=None))
    assert (again.videos_done, again.videos_skipped, again.segments_written) == (0, 4, 0)


def test_bad_files_fail_alone_with_the_reason_on_their_catalog_row(tmp_path, corpus):
    bad = tmp_path / "bad"
    bad.mkdir()
    write_corrupt(bad / "corrupt.mp4")
    write_audio_only(bad / "audio.m4a", 5.0)
    (bad / "empty.mp4").write_bytes(b"")
    write_video(bad / "long.mp4", 40.0, fps=5, seed=9)
    truncate_copy(bad / "long.mp4", bad / "truncated.mp4", 0.5)
    config = make_config(tmp_path)
    sources = sources_from_paths([bad / "corrupt.mp4", bad / "audio.m4a", bad / "empty.mp4", bad / "truncated.mp4", corpus / "a.mp4"])
    summary = run_ingest(config, sources, executor="ray", progress=IngestProgress(5, stream=None))
    assert (summary.videos_done, summary.videos_failed) == (1, 4)
    with SegmentCatalog.from_config(config) as catalog:
        assert catalog.get_video("a.mp4").status == "ready"
        for key, words in [("corrupt.mp4", "corrupt"), ("audio.m4a", "no video stream"), ("empty.mp4", ""), ("truncated.mp4", "truncat")]:
            video = catalog.get_video(key)
            assert video.status == "failed", key
            assert words.lower() in video.error.lower(), video.error
            assert catalog.segment_count(video.id) == 0
        # Failed videos are never searchable.
        assert catalog.count_by_status()["failed"] == 4


def test_inline_executor_gives_the_same_vectors_as_ray(tmp_path, corpus):
    ray_cfg = make_config(tmp_path / "ray")
    inline_cfg = make_config(tmp_path / "inline")
    sources = sources_from_paths([corpus / "a.mp4"])
    run_ingest(ray_cfg, sources, executor="ray", progress=IngestProgress(1, stream=None))
    run_ingest(inline_cfg, sources, executor="inline", progress=IngestProgress(1, stream=None))
    vectors = []
    for cfg in (ray_cfg, inline_cfg):
        with SegmentCatalog.from_config(cfg) as catalog:
            vectors.append(FrameFeatureStore.from_config(cfg).read(catalog.get_video("a.mp4").id).features)
    # Random weights come from a fixed seed, so both processes built the same model.
    np.testing.assert_allclose(vectors[0].astype(np.float32), vectors[1].astype(np.float32), atol=2e-3)


def test_a_changed_file_replaces_its_segments_and_delete_removes_everything(tmp_path):
    videos = tmp_path / "v"
    videos.mkdir()
    write_video(videos / "clip.mp4", 20.0, fps=5, seed=1)
    write_video(videos / "other.mp4", 8.0, fps=5, seed=2)
    config = make_config(tmp_path)
    sources = sources_from_paths([videos])
    run_ingest(config, sources, executor="inline", progress=IngestProgress(2, stream=None))
    with SegmentCatalog.from_config(config) as catalog:
        first = catalog.get_video("clip.mp4")
    time.sleep(0.01)
    write_video(videos / "clip.mp4", 10.0, fps=5, seed=3)  # shorter: 3 segments instead of 5
    summary = run_ingest(config, sources, executor="inline", progress=IngestProgress(2, stream=None))
    assert (summary.videos_done, summary.videos_skipped) == (1, 1)
    catalog = SegmentCatalog.from_config(config)
    store = open_vector_store(config)
    features = FrameFeatureStore.from_config(config)
    try:
        video = catalog.get_video("clip.mp4")
        assert video.id == first.id and video.content_hash != first.content_hash
        assert catalog.segment_count(video.id) == 3
        assert store.count("segments") == catalog.segment_count() == 3 + 2
        assert len(features.read(video.id).features) == 10

        assert delete_videos(config, ["clip.mp4", "nope"]) == {"clip.mp4": True, "nope": False}
        assert catalog.get_video("clip.mp4") is None
        store.close()
        store = open_vector_store(config)  # a Faiss reader sees another process's writes on open
        assert store.count("segments") == catalog.segment_count() == 2
        assert not features.exists(video.id)
    finally:
        store.close()
        catalog.close()


def test_a_collection_of_another_model_is_refused(tmp_path, corpus):
    config = make_config(tmp_path)
    sources = sources_from_paths([corpus / "sub" / "c.mkv"])
    run_ingest(config, sources, executor="inline", progress=IngestProgress(1, stream=None))
    other = make_config(tmp_path, SPR_CLIP__MODEL="ViT-B-32")
    from spr.ingest.pipeline import IngestError

    with pytest.raises(IngestError, match="new collection"):
        run_ingest(other, sources, executor="inline", progress=IngestProgress(1, stream=None))


def test_progress_reports_rates_eta_and_failures():
    lines = []

    class Sink:
        def write(self, text):
            lines.append(text)

        def flush(self):
            pass

    progress = IngestProgress(4, stream=Sink(), every_s=0)
    progress.update(done=1, video_s=60.0, segments=15)
    progress.update(failed=1)
    progress.finish()
    last = lines[-1]
    assert "2/4 videos" in last and "1 failed" in last
    assert "video-s/s" in last and "segments/s" in last and "ETA 0:" in last


# --- on PostgreSQL + Milvus, through the command line, killed and resumed -------------------------


@pytest.mark.milvus
@pytest.mark.postgres
def test_kill_9_mid_ingest_leaves_nothing_half_visible_and_a_rerun_finishes_without_duplicates(
    tmp_path, postgres_url, milvus_uri
):
    videos = tmp_path / "v"
    videos.mkdir()
    for i in range(10):
        write_video(videos / f"v{i:02d}.mp4", 40.0, fps=10, size=(160, 120), seed=i)
    collection = f"t_ingest_{uuid.uuid4().hex[:8]}"
    env = {
        "SPR_DATA_DIR": str(tmp_path / "data"),
        "SPR_CLIP__MODEL": "spr-tiny",
        "SPR_CATALOG__URL": postgres_url,
        "SPR_VECTORS__BACKEND": "milvus",
        "SPR_VECTORS__COLLECTION": collection,
        "SPR_MILVUS__URI": milvus_uri,
        "SPR_MILVUS__CONSISTENCY_LEVEL": "Strong",
        "SPR_INGEST__WRITE_BATCH_VIDEOS": "1",
        "SPR_RAY__NUM_CPUS": "2",
    }
    child = subprocess.Popen(
        [sys.executable, "-m", "spr.cli", "ingest", str(videos)],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    catalog = SegmentCatalog.open(postgres_url)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and child.poll() is None:
            if catalog.count_by_status()["ready"] >= 1:
                break
            time.sleep(0.1)
        assert child.poll() is None, "the ingest finished before it could be killed; give it more work"
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        counts = catalog.count_by_status()
        assert 1 <= counts["ready"] < 10
        # Whatever was half-written is invisible: every visible segment belongs to a ready video.
        all_ids = [sid for v in catalog.list_videos() for sid in range(v.id << 20, (v.id << 20) + 10)]
        visible = catalog.lookup_segments(all_ids)
        ready_ids = {v.id for v in catalog.list_videos(status="ready")}
        assert {loc.video_id for loc in visible.values()} <= ready_ids

        done = run_spr("ingest", str(videos), "--json", env=env, timeout=400)
        assert done.returncode == 0, done.stderr[-2000:]
        summary = json.loads(done.stdout)
        assert summary["videos"]["skipped"] == counts["ready"]
        assert summary["videos"]["done"] == 10 - counts["ready"]
        assert catalog.count_by_status()["ready"] == 10
        assert catalog.segment_count() == 10 * 10
        # The killed run never reached its refiner-context step; the re-run covers every video.
        context = summary["refiner_context"]
        assert context["written"] + context["current"] == 10 and not context["missing"], context
        from spr.stores.milvus_store import MilvusStore

        store = MilvusStore(milvus_uri, consistency_level="Strong")
        try:
            assert store.count(collection) == 100  # upserts by id: no duplicates
        finally:
            store.drop_collection(collection)
            store.close()
    finally:
        if child.poll() is None:
            child.kill()
        catalog.close()


def test_spr_ingest_status_and_delete_on_the_command_line(tmp_path, corpus):
    env = {
        "SPR_DATA_DIR": str(tmp_path / "data"),
        "SPR_CLIP__MODEL": "spr-tiny",
        "SPR_LOGGING__JSON": "false",
    }
    bad = tmp_path / "bad.mp4"
    write_corrupt(bad)
    done = run_spr("ingest", str(corpus / "a.mp4"), str(bad), "--executor", "inline", env=env)
    assert done.returncode == 1  # a failure is worth an exit code, and the rest is in
    assert "1 published" in done.stdout and "1 failed" in done.stdout
    assert "FAILED bad.mp4" in done.stderr and "corrupt" in done.stderr
    assert "video-s/s" in done.stderr and "ETA" in done.stderr
    assert "random" in done.stdout.lower()
    status = run_spr("status", env=env)
    assert "ready=1" in status.stdout and "failed=1" in status.stdout and "segments" in status.stdout
    gone = run_spr("delete", "a.mp4", env=env)
    assert gone.returncode == 0 and "deleted  a.mp4" in gone.stdout
    assert "ready=0" in run_spr("status", env=env).stdout
    missing = run_spr("ingest", str(tmp_path / "nothing-here"), env=env)
    assert missing.returncode == 2 and "does not exist" in missing.stderr


@pytest.mark.slow
def test_an_hour_long_video_ingests_on_ray_with_bounded_memory(tmp_path):
    video = tmp_path / "hour.mp4"
    write_video(video, 3600.0, fps=2, size=(64, 48), seed=5, gop=600)
    config = make_config(tmp_path)
    summary = run_ingest(config, sources_from_paths([video]), executor="ray", progress=IngestProgress(1, stream=None))
    assert summary.videos_done == 1 and summary.segments_written == 900 and summary.frames == 3600
    with SegmentCatalog.from_config(config) as catalog:
        video_id = catalog.get_video("hour.mp4").id
    assert FrameFeatureStore.from_config(config).info(video_id)[:3] == (3600, 64, 1.0)


def test_ingest_joins_an_existing_ray_cluster_with_ray_address(tmp_path, corpus):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    temp = f"/tmp/spr-ray-test-{uuid.uuid4().hex[:6]}"
    head = subprocess.Popen(
        [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block", f"--port={port}",
         "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}",
         "--node-ip-address=127.0.0.1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        # A test cluster on loopback; a real one keeps Ray's token auth (RAY_AUTH_TOKEN).
        env={**os.environ, "RAY_AUTH_MODE": "disabled"},
    )
    try:
        env = {"SPR_DATA_DIR": str(tmp_path / "data"), "SPR_CLIP__MODEL": "spr-tiny", "RAY_AUTH_MODE": "disabled"}
        deadline = time.monotonic() + 60
        done = None
        while time.monotonic() < deadline:
            done = run_spr("ingest", str(corpus / "a.mp4"), "--ray-address", f"127.0.0.1:{port}", "--json", env=env)
            if done.returncode == 0 or "Could not" not in done.stderr + done.stdout:
                break
            time.sleep(2)  # the head is still starting
        assert done.returncode == 0, done.stderr[-2000:]
        assert json.loads(done.stdout)["videos"]["done"] == 1
        # The head was not ours to stop: it is still there for the next job.
        assert head.poll() is None
    finally:
        head.terminate()
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            head.kill()
        subprocess.run(["rm", "-rf", temp])


def test_a_touched_but_unchanged_file_is_skipped_by_its_content_hash(tmp_path):
    videos = tmp_path / "v"
    videos.mkdir()
    write_video(videos / "same.mp4", 9.0, fps=5, seed=1)
    config = make_config(tmp_path)
    sources = sources_from_paths([videos])
    run_ingest(config, sources, executor="inline", progress=IngestProgress(1, stream=None))
    later = time.time() + 60
    os.utime(videos / "same.mp4", (later, later))  # new mtime, same bytes: hashed, then skipped
    summary = run_ingest(config, sources, executor="inline", progress=IngestProgress(1, stream=None))
    assert (summary.videos_done, summary.videos_skipped, summary.segments_written) == (0, 1, 0)


def test_reembed_fills_a_new_collection_from_stored_features_while_the_old_one_keeps_serving(tmp_path, corpus):
    from spr.models.projector import ProjectorShape, build_projectors, save_projectors

    config = make_config(tmp_path)
    run_ingest(config, sources_from_paths([corpus]), executor="inline", progress=IngestProgress(4, stream=None))
    ckpt = tmp_path / "proj.pt"
    save_projectors(ckpt, build_projectors(ProjectorShape(in_dim=64, text_in_dim=64, dim=32, layers=1, heads=2)).eval(), clip_model="spr-tiny", step=1)
    env = {"SPR_DATA_DIR": str(tmp_path / "data"), "SPR_CLIP__MODEL": "spr-tiny", "SPR_PROJECTOR__CHECKPOINT": str(ckpt)}
    with pytest.raises(Exception, match="searches use now"):
        from spr.ingest.reembed import reembed_collection

        reembed_collection(make_config(tmp_path, SPR_PROJECTOR__CHECKPOINT=str(ckpt)), "segments")
    done = run_spr("reembed", "--collection", "trained", "--json", env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    catalog = SegmentCatalog.from_config(config)
    store = open_vector_store(config)
    features = FrameFeatureStore.from_config(config)
    try:
        assert report["videos"] == 4 and report["segments"] == catalog.segment_count()
        assert report["feature_model"] == "spr-tiny/random + projector:proj.pt@1"
        assert store.describe("trained").dim == 32 and store.count("trained") == catalog.segment_count()
        assert store.count("segments") == catalog.segment_count()  # the old collection is untouched
        assert catalog.count_by_status()["ready"] == 4  # nothing went pending
        # Each video's vectors are its stored features through the projector, under the same ids.
        from spr.models.projector import load_projectors

        b = catalog.get_video("b.mp4")
        stored = features.read(b.id)
        rows = segment_rows(len(stored.features), 1.0, b.duration_s, 4.0)
        expected = load_projectors(str(ckpt), 64).embed_segments(stored.features.astype(np.float32), rows)
        hits = store.search("trained", expected[3], 1).hits(0)
        assert hits[0][0] == (b.id << 20) | 3 and hits[0][1] == pytest.approx(1.0, abs=1e-3)
    finally:
        store.close()
        catalog.close()


def test_more_encoder_actors_than_spare_cpus_still_leave_room_for_decoding(tmp_path, corpus):
    config = make_config(tmp_path)  # local Ray with 2 CPUs: 2 actors x 1 CPU would starve decoding
    summary = run_ingest(config, sources_from_paths([corpus / "a.mp4", corpus / "d.mp4"]), executor="ray", actors=2,
                         progress=IngestProgress(2, stream=None))
    assert (summary.videos_done, summary.videos_failed) == (2, 0)
