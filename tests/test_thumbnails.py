"""Segment thumbnails: one small JPEG per segment, made at ingest from a frame it decodes anyway,
kept in the feature store beside the video's features, served by the web page.

The store part runs on a local directory and on ``memory://`` (an object store). The ingest part
runs real PyAV decoding and the built-in ``spr-tiny`` CLIP with random weights (its input, and
so its thumbnails, is 32 px); the synthetic videos' pixels say which second they show, so a
thumbnail can be checked to be the frame at its segment's midpoint.
"""

from __future__ import annotations

import csv
import io
import uuid
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import run_spr
from spr.catalog import SegmentCatalog
from spr.config import load_config
from spr.features import MAX_THUMBNAIL_BYTES, VISUAL, FeatureNotFound, FrameFeatureStore
from spr.ids import segment_id
from spr.ingest import decode as decode_module
from spr.ingest import encoder as encoder_module
from spr.ingest.encoder import THUMBNAIL_MAX_SIDE, thumbnail_frames, thumbnail_jpeg
from spr.ingest.importer import ImportOptions, import_features
from spr.ingest.pipeline import run_ingest
from spr.ingest.progress import IngestProgress
from spr.ingest.sources import sources_from_paths
from spr.ingest.synthetic_video import EVENTS_BACKGROUND, second_of_frame, write_video
from spr.media import MediaLibrary
from spr.publish import VideoPayload, publish_videos
from spr.stores import Flat, l2_normalize, open_vector_store

RED = (230, 30, 30)


def jpeg(colour: tuple[int, int, int], size: tuple[int, int] = (32, 24)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, "JPEG", quality=80)
    return out.getvalue()


def picture(data: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    assert image.format == "JPEG"
    return np.asarray(image.convert("RGB"))


def centre_colour(image: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2]
    return image[3 * h // 8 : 5 * h // 8, 3 * w // 8 : 5 * w // 8].reshape(-1, 3).mean(axis=0)


# --- the store ------------------------------------------------------------------------------


@pytest.fixture(params=["local", "memory"])
def store(request, tmp_path) -> FrameFeatureStore:
    if request.param == "local":
        return FrameFeatureStore(tmp_path / "features")
    return FrameFeatureStore(f"memory://thumbs-{uuid.uuid4().hex[:8]}")


def test_thumbnails_round_trip_one_per_segment_and_a_rewrite_replaces_them_all(store):
    shots = [jpeg((40 * i, 0, 0)) for i in range(5)]
    assert not store.has_thumbnails(7)
    store.write_thumbnails(7, shots)
    assert store.has_thumbnails(7) and not store.has_thumbnails(8)
    assert [store.read_thumbnail(7, i) for i in range(5)] == shots
    store.write_thumbnails(7, shots[:2])  # the video got shorter: segments 2-4 are gone
    assert store.read_thumbnail(7, 1) == shots[1]
    with pytest.raises(FeatureNotFound):
        store.read_thumbnail(7, 2)


def test_a_missing_video_or_segment_is_feature_not_found(store):
    store.write_thumbnails(3, [jpeg((0, 0, 0))])
    for video_id, ordinal in [(4, 0), (3, 1), (3, -1), (259, 0)]:  # 259 shares 3's shard
        with pytest.raises(FeatureNotFound):
            store.read_thumbnail(video_id, ordinal)


def test_all_of_a_videos_thumbnails_are_one_stored_zip_beside_its_features(tmp_path):
    store = FrameFeatureStore(tmp_path)
    shots = [jpeg((0, 200, 0)), jpeg((0, 0, 200))]
    store.write(300, np.ones((8, 4)), 1.0)
    store.write_thumbnails(300, shots)
    path = Path(store.thumbnails_path(300))
    assert path.parent == Path(store.path(300)).parent and path.name == "300.thumbs.zip"
    with zipfile.ZipFile(path) as archive:
        assert archive.namelist() == ["0.jpg", "1.jpg"]
        assert {i.compress_type for i in archive.infolist()} == {zipfile.ZIP_STORED}  # JPEGs do not deflate
    assert sorted(p.name for p in path.parent.iterdir()) == ["300.h5", "300.thumbs.zip"]  # no temp files left
    assert store.modalities(300) == [VISUAL]  # a thumbnail file is not a modality


@pytest.mark.parametrize(
    "bad",
    [
        [b"\xff\xd8" + bytes(MAX_THUMBNAIL_BYTES)],  # over the cap
        [jpeg((1, 2, 3)), b"GIF89a not a jpeg"],
        [],
    ],
    ids=["oversize", "not-a-jpeg", "none"],
)
def test_oversize_or_non_jpeg_thumbnails_are_refused_and_nothing_is_written(store, bad):
    with pytest.raises(ValueError):
        store.write_thumbnails(5, bad)
    assert not store.has_thumbnails(5)


def test_a_thumbnail_of_exactly_the_cap_is_taken(store):
    at_cap = b"\xff\xd8" + bytes(MAX_THUMBNAIL_BYTES - 2)
    store.write_thumbnails(6, [at_cap])
    assert store.read_thumbnail(6, 0) == at_cap


def test_deleting_a_video_removes_its_thumbnails_and_deleting_one_modality_keeps_them(store):
    store.write(9, np.ones((4, 3)), 1.0)
    store.write_thumbnails(9, [jpeg((9, 9, 9))])
    assert store.delete(9, VISUAL) and store.has_thumbnails(9)
    assert store.delete(9) and not store.has_thumbnails(9)
    assert store.delete(9) is False
    with pytest.raises(FeatureNotFound):
        store.read_thumbnail(9, 0)


# --- making them ----------------------------------------------------------------------------


def test_each_segment_takes_the_sampled_frame_nearest_its_midpoint():
    assert thumbnail_frames(12.0, 1.0, 4.0) == [2, 6, 10]
    assert thumbnail_frames(9.5, 1.0, 4.0) == [2, 6, 9]  # last segment [8, 9.5]: 8.75 s
    assert thumbnail_frames(9.5, 4.0, 4.0) == [8, 24, 35]
    assert thumbnail_frames(0.4, 1.0, 4.0) == [0]  # shorter than its midpoint frame: the only one


def test_a_thumbnail_is_a_small_jpeg_of_the_frame_in_its_colours():
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)  # the worst case for JPEG size
    small = picture(thumbnail_jpeg(noise))
    assert small.shape[:2] == (144, THUMBNAIL_MAX_SIDE) and len(thumbnail_jpeg(noise)) <= MAX_THUMBNAIL_BYTES
    tall = np.zeros((300, 100, 3), np.uint8)
    tall[:] = RED
    assert picture(thumbnail_jpeg(tall)).shape[:2] == (192, 64)
    np.testing.assert_allclose(centre_colour(picture(thumbnail_jpeg(tall))), RED, atol=12)
    # Floats in [0, 1] are scaled, not truncated to black.
    as_float = np.full((40, 40, 3), np.array(RED) / 255.0, np.float32)
    np.testing.assert_allclose(centre_colour(picture(thumbnail_jpeg(as_float))), RED, atol=12)
    assert picture(thumbnail_jpeg(np.zeros((20, 30), np.uint8))).shape == (20, 30, 3)  # grey is fine too


# --- publishing: before ready, exactly once ---------------------------------------------------


def _faiss_config(tmp_path: Path, **env: str):
    return load_config(environ={"SPR_DATA_DIR": str(tmp_path / "data"), **env})


def test_thumbnails_are_written_before_the_video_turns_ready_and_a_rerun_overwrites_them(tmp_path):
    config = _faiss_config(tmp_path)
    catalog, vectors, features = SegmentCatalog.from_config(config), open_vector_store(config), FrameFeatureStore.from_config(config)
    try:
        vectors.create_collection("c", 8, Flat())
        emb = l2_normalize(np.ones((3, 8)))
        first = VideoPayload("k", "file:///k.mp4", 12.0, emb, {VISUAL: _rows(12)}, thumbnails=[jpeg((1, 1, 1))] * 3)
        # The vector step fails (no such collection): the row stays pending, so the thumbnails
        # it left behind show nowhere.
        with pytest.raises(LookupError):
            publish_videos(catalog, vectors, "missing", [first], feature_store=features)
        video = catalog.get_video("k")
        assert video.status == "pending" and features.has_thumbnails(video.id)
        library = MediaLibrary(catalog, features, 4.0)
        with pytest.raises(LookupError):
            library.thumbnail(segment_id(video.id, 0))
        again = VideoPayload("k", "file:///k.mp4", 12.0, emb, {VISUAL: _rows(12)}, thumbnails=[jpeg((200, 0, 0))] * 3)
        publish_videos(catalog, vectors, "c", [again], feature_store=features)
        assert catalog.get_video("k").status == "ready"
        assert library.thumbnail(segment_id(video.id, 2)) == ("k", jpeg((200, 0, 0)))
    finally:
        vectors.close()
        catalog.close()


def test_a_payload_without_thumbnails_keeps_them_unless_it_replaces_the_frames_they_came_from(tmp_path):
    config = _faiss_config(tmp_path)
    catalog, vectors, features = SegmentCatalog.from_config(config), open_vector_store(config), FrameFeatureStore.from_config(config)
    try:
        vectors.create_collection("c", 8, Flat())
        emb = l2_normalize(np.ones((2, 8)))
        shots = [jpeg((0, 0, 250)), jpeg((0, 250, 0))]
        publish_videos(catalog, vectors, "c", [VideoPayload("k", "u", 8.0, emb, {VISUAL: _rows(8)}, thumbnails=shots)], feature_store=features)
        vid = catalog.get_video("k").id
        # New vectors from the stored features (what re-embedding writes): the pictures stay.
        publish_videos(catalog, vectors, "c", [VideoPayload("k", "u", 8.0, emb)], feature_store=features)
        assert features.read_thumbnail(vid, 1) == shots[1]
        # New frame features without pictures (`spr import` over an ingested key): the old
        # pictures show frames that are no longer there, so they go and the page shows a placeholder.
        publish_videos(catalog, vectors, "c", [VideoPayload("k", "u", 8.0, emb, {VISUAL: _rows(8)})], feature_store=features)
        assert not features.has_thumbnails(vid)
        assert MediaLibrary(catalog, features, 4.0).thumbnail(segment_id(vid, 1)) == ("k", None)
    finally:
        vectors.close()
        catalog.close()


def test_a_payload_with_the_wrong_number_of_thumbnails_is_refused_before_anything_is_written(tmp_path):
    config = _faiss_config(tmp_path)
    catalog, vectors, features = SegmentCatalog.from_config(config), open_vector_store(config), FrameFeatureStore.from_config(config)
    try:
        vectors.create_collection("c", 8, Flat())
        emb = l2_normalize(np.ones((3, 8)))
        for shots in ([jpeg((0, 0, 0))] * 2, [jpeg((0, 0, 0))] * 2 + [b"\xff\xd8" + bytes(MAX_THUMBNAIL_BYTES)]):
            with pytest.raises(ValueError, match="thumbnail"):
                publish_videos(catalog, vectors, "c", [VideoPayload("k", "u", 12.0, emb, thumbnails=shots)], feature_store=features)
        assert catalog.get_video("k") is None
        with pytest.raises(ValueError, match="feature store"):
            publish_videos(catalog, vectors, "c", [VideoPayload("k", "u", 12.0, emb, thumbnails=[jpeg((0, 0, 0))] * 3)])
    finally:
        vectors.close()
        catalog.close()


def _rows(seconds: int):
    from spr.features import TimedFeatures

    return TimedFeatures(np.ones((seconds, 4), np.float32), 1.0)


# --- ingest -----------------------------------------------------------------------------------


def ingest_env(tmp_path: Path) -> dict[str, str]:
    return {
        "SPR_DATA_DIR": str(tmp_path / "data"),
        "SPR_CLIP__MODEL": "spr-tiny",
        "SPR_CLIP__BATCH_SIZE": "16",
        "SPR_RAY__NUM_CPUS": "2",
        "SPR_LOGGING__JSON": "false",
    }


def ingest(tmp_path: Path, paths: list[Path], videos: int, executor: str = "inline"):
    config = load_config(environ=ingest_env(tmp_path))
    summary = run_ingest(config, sources_from_paths(paths), executor=executor, progress=IngestProgress(videos, stream=None))
    assert summary.videos_done == videos and not summary.failures
    return config


def thumbnails_of(config, key: str) -> list[bytes]:
    """Every stored thumbnail of video ``key``, one per catalog segment (asserted)."""
    features = FrameFeatureStore.from_config(config)
    with SegmentCatalog.from_config(config) as catalog:
        video = catalog.get_video(key)
        n = catalog.segment_count(video.id)
    shots = [features.read_thumbnail(video.id, i) for i in range(n)]
    with pytest.raises(FeatureNotFound):
        features.read_thumbnail(video.id, n)
    return shots


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("thumb-videos")
    # Grey, with a red block over [4, 8) s: segment 1 is the red one.
    write_video(root / "red.mp4", 12.0, fps=5, pattern="events", events=[(4.0, 8.0, RED)], seed=1)
    # Background colour codes the second: a thumbnail says which frame it was made from.
    write_video(root / "ramp.mkv", 9.5, fps=4, seed=2)
    return root


@pytest.fixture(scope="module")
def ingested(videos, tmp_path_factory):
    """Both videos ingested inline, with every call of the frame sampler counted by path."""
    decodes: Counter[str] = Counter()
    real = decode_module.sample_frames

    def counting(path, *args, **kwargs):
        decodes[Path(path).name] += 1
        return real(path, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        # Both names: the one the encoder calls and the module's own, for any other caller.
        patch.setattr(encoder_module, "sample_frames", counting)
        patch.setattr(decode_module, "sample_frames", counting)
        config = ingest(tmp_path_factory.mktemp("thumb-ingest"), [videos], 2)
    return config, decodes


def test_ingest_makes_one_decodable_small_jpeg_per_segment(ingested):
    config, _ = ingested
    for key, segments in [("red.mp4", 3), ("ramp.mkv", 3)]:
        shots = thumbnails_of(config, key)
        assert len(shots) == segments
        for shot in shots:
            image = Image.open(io.BytesIO(shot))
            image.load()  # decodes the whole picture: a truncated JPEG raises here
            assert image.format == "JPEG" and max(image.size) <= THUMBNAIL_MAX_SIDE and len(shot) <= MAX_THUMBNAIL_BYTES


def test_each_thumbnail_shows_its_segment(ingested):
    config, _ = ingested
    red = [centre_colour(picture(s)) for s in thumbnails_of(config, "red.mp4")]
    np.testing.assert_allclose(red[1], RED, atol=30)
    for grey in (red[0], red[2]):
        np.testing.assert_allclose(grey, EVENTS_BACKGROUND, atol=30)
    # The frames at the segments' midpoints: 2 s, 6 s and 8.75 s -> the sample at 9 s.
    assert [second_of_frame(picture(s)) for s in thumbnails_of(config, "ramp.mkv")] == [2, 6, 9]


def test_ingest_decodes_each_video_once_for_its_features_and_thumbnails(ingested):
    _, decodes = ingested
    assert decodes == {"red.mp4": 1, "ramp.mkv": 1}


def test_the_page_gets_the_ingested_thumbnails(ingested):
    config, _ = ingested
    with SegmentCatalog.from_config(config) as catalog:
        library = MediaLibrary(catalog, FrameFeatureStore.from_config(config), config.segments.length_s)
        assert library.video("red.mp4").thumbnails
        vid = catalog.get_video("red.mp4").id
        assert library.thumbnail(segment_id(vid, 1)) == ("red.mp4", thumbnails_of(config, "red.mp4")[1])


def test_ray_ingest_carries_the_same_thumbnails_to_the_writer(videos, ingested, tmp_path):
    config = ingest(tmp_path, [videos / "ramp.mkv"], 1, executor="ray")
    assert thumbnails_of(config, "ramp.mkv") == thumbnails_of(ingested[0], "ramp.mkv")


def test_spr_delete_removes_a_videos_thumbnails(videos, tmp_path):
    config = ingest(tmp_path, [videos / "red.mp4"], 1)
    features = FrameFeatureStore.from_config(config)
    with SegmentCatalog.from_config(config) as catalog:
        vid = catalog.get_video("red.mp4").id
    assert features.has_thumbnails(vid)
    done = run_spr("delete", "red.mp4", env=ingest_env(tmp_path))
    assert done.returncode == 0, done.stderr[-2000:]
    assert not features.has_thumbnails(vid) and not Path(features.thumbnails_path(vid)).exists()


def test_reembedding_keeps_the_thumbnails(videos, tmp_path):
    from spr.ingest.reembed import reembed_collection
    from spr.models.projector import ProjectorShape, build_projectors, save_projectors

    config = ingest(tmp_path, [videos / "red.mp4"], 1)
    before = thumbnails_of(config, "red.mp4")
    ckpt = tmp_path / "proj.pt"
    shape = ProjectorShape(in_dim=64, text_in_dim=64, dim=32, layers=1, heads=2)
    save_projectors(ckpt, build_projectors(shape).eval(), clip_model="spr-tiny", step=1)
    trained = load_config(environ={**ingest_env(tmp_path), "SPR_PROJECTOR__CHECKPOINT": str(ckpt)})
    assert reembed_collection(trained, "trained").videos == 1
    assert thumbnails_of(config, "red.mp4") == before


def test_an_imported_video_has_no_thumbnails_and_gets_a_placeholder(tmp_path):
    folder = tmp_path / "features"
    folder.mkdir()
    np.save(folder / "qv_a.npy", np.random.default_rng(0).standard_normal((10, 24)).astype(np.float32))
    manifest = tmp_path / "videos.csv"
    with manifest.open("w", newline="") as fh:
        csv.writer(fh).writerows([["video_id", "duration"], ["qv_a", 10]])
    config = _faiss_config(tmp_path)
    summary = import_features(config, folder, manifest, ImportOptions(feature_model="ViT-B-32/openai"))
    assert summary.imported == ["qv_a"]
    features = FrameFeatureStore.from_config(config)
    with SegmentCatalog.from_config(config) as catalog:
        video = catalog.get_video("qv_a")
        assert video.status == "ready" and features.exists(video.id) and not features.has_thumbnails(video.id)
        library = MediaLibrary(catalog, features, config.segments.length_s)
        assert library.video("qv_a").thumbnails is False
        assert library.thumbnail(segment_id(video.id, 2)) == ("qv_a", None)
