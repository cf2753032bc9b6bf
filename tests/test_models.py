"""The CLIP towers, the projectors and the frame-feature store.

CLIP runs the built-in ``spr-tiny`` architecture and ViT-B-32 with RANDOM weights (nothing can
be downloaded here); checkpoints are files these tests write. What is checked is the loading
code, shapes, normalisation and masking, never retrieval quality.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from spr.features import FeatureNotFound, FrameFeatureStore, span_rows
from spr.segments import segment_rows
from spr.models.clip import load_clip, resolve_precision
from spr.models.projector import (
    ProjectorShape,
    build_projectors,
    load_projectors,
    save_projectors,
)

RNG = np.random.default_rng(0)


def frames(n: int, h: int = 48, w: int = 64) -> list[np.ndarray]:
    return list(RNG.integers(0, 256, (n, h, w, 3), dtype=np.uint8))


# --- CLIP ----------------------------------------------------------------------------------------


def test_tiny_clip_encodes_frames_and_texts_to_unit_vectors():
    clip = load_clip("spr-tiny", device="cpu")
    # "auto" on a CPU: bf16 where it has native bf16 dot products, fp32 elsewhere.
    assert clip.random_weights and clip.identity == "spr-tiny/random"
    assert clip.precision == resolve_precision("auto", "cpu")
    images = clip.encode_frames(frames(5), batch_size=2)
    texts = clip.encode_texts(["a woman walks into a room", "a man follows her"])
    assert images.shape == (5, clip.dim) and texts.shape == (2, clip.dim)
    assert np.allclose(np.linalg.norm(images, axis=1), 1, atol=1e-5)
    assert np.allclose(np.linalg.norm(texts, axis=1), 1, atol=1e-5)
    assert clip.encode_frames([]).shape == (0, clip.dim)


def test_random_weights_are_the_same_in_every_load():
    # An ingest worker and the search service must build the same random model.
    a, b = load_clip("spr-tiny"), load_clip("spr-tiny")
    x = frames(2)
    np.testing.assert_array_equal(a.encode_frames(x), b.encode_frames(x))
    np.testing.assert_array_equal(a.encode_texts(["q"]), b.encode_texts(["q"]))


def test_a_local_checkpoint_file_loads_through_open_clip(tmp_path):
    source = load_clip("spr-tiny")
    with torch.no_grad():
        for p in source.model.parameters():
            p.add_(0.01 * torch.randn_like(p))  # unlike the seeded random init
    path = tmp_path / "tiny.pt"
    torch.save(source.model.state_dict(), path)
    loaded = load_clip("spr-tiny", pretrained=str(path))
    assert not loaded.random_weights and loaded.identity.startswith("spr-tiny/file:")
    x = frames(3)
    np.testing.assert_allclose(loaded.encode_frames(x), source.encode_frames(x), atol=1e-6)
    assert not np.allclose(loaded.encode_frames(x), load_clip("spr-tiny").encode_frames(x), atol=1e-3)


def test_loading_errors_say_what_to_do(tmp_path):
    with pytest.raises(ValueError, match="unknown open_clip model"):
        load_clip("no-such-model")
    with pytest.raises(ValueError, match="neither a checkpoint file nor a pretrained tag"):
        load_clip("spr-tiny", pretrained="not-a-tag")
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="local file"):
        load_clip("spr-tiny", pretrained=str(broken))


def test_vit_b_32_builds_with_random_weights_on_cpu():
    clip = load_clip("ViT-B-32", device="cpu")
    assert clip.dim == 512 and clip.image_size == 224
    assert clip.encode_frames(frames(1, 240, 320)).shape == (1, 512)


# --- projectors ----------------------------------------------------------------------------------


def test_without_a_checkpoint_segments_are_the_mean_of_their_frames():
    projectors = load_projectors("", in_dim=8)
    assert not projectors.trained and projectors.dim == 8 and projectors.identity == "mean-pool"
    feats = RNG.standard_normal((10, 8)).astype(np.float32)  # 10 s at 1 fps -> 3 segments of 4 s
    emb = projectors.embed_segments(feats, segment_rows(10, rate=1.0, duration_s=10.0, length_s=4.0))
    assert emb.shape == (3, 8)
    expected_last = feats[8:].mean(0) / np.linalg.norm(feats[8:].mean(0))  # only 2 frames
    np.testing.assert_allclose(emb[2], expected_last, atol=1e-6)
    text = RNG.standard_normal((2, 8)).astype(np.float32)
    np.testing.assert_allclose(projectors.project_texts(text), text / np.linalg.norm(text, axis=1, keepdims=True), atol=1e-6)


def test_a_trained_projector_round_trips_and_ignores_padding(tmp_path):
    shape = ProjectorShape(in_dim=16, text_in_dim=16, dim=24, layers=2, heads=4, max_frames=8, dropout=0.0)
    projectors = build_projectors(shape).eval()
    path = tmp_path / "proj.pt"
    save_projectors(path, projectors, clip_model="spr-tiny", step=7)
    loaded = load_projectors(str(path), in_dim=16, clip_model="spr-tiny")
    assert loaded.trained and loaded.identity == "projector:proj.pt@7"
    feats = RNG.standard_normal((10, 16)).astype(np.float32)
    a = projectors.embed_segments(feats, segment_rows(10, 1.0, 10.0, 4.0))
    b = loaded.embed_segments(feats, segment_rows(10, 1.0, 10.0, 4.0))
    assert a.shape == (3, 24)
    np.testing.assert_allclose(a, b, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1, atol=1e-5)
    # The 2-frame last segment is padded to 4 frames with a mask: alone it embeds the same.
    alone = loaded.embed_segments(feats[8:], segment_rows(2, 1.0, 2.0, 4.0))
    np.testing.assert_allclose(alone[0], b[2], atol=1e-5)
    with pytest.raises(ValueError, match="expects 16-d"):
        load_projectors(str(path), in_dim=32)
    with pytest.raises(ValueError, match="trained on spr-tiny"):
        load_projectors(str(path), in_dim=16, clip_model="ViT-B-32")
    with pytest.raises(FileNotFoundError, match="spr train projector"):
        load_projectors(str(tmp_path / "missing.pt"), in_dim=16)


# --- frame-feature store -------------------------------------------------------------------------


@pytest.fixture(params=["local", "memory"])
def feature_store(request, tmp_path):
    """On a local folder and on an fsspec URL (``memory://``, as ``s3://`` would be)."""
    if request.param == "local":
        return FrameFeatureStore(tmp_path / "features")
    return FrameFeatureStore(f"memory://spr-test-{os.getpid()}-{id(request)}")


def test_features_are_kept_as_float16_and_read_back_by_time_span(feature_store):
    feats = RNG.standard_normal((30, 12)).astype(np.float32)
    feature_store.write(5, feats, rate=1 / 1.5, model="m")  # TVR-style 1.5-s clips
    whole = feature_store.read(5)
    assert whole.features.dtype == np.float16 and whole.features.shape == (30, 12)
    np.testing.assert_allclose(whole.features, feats, atol=2e-2)
    span = feature_store.read_span(5, 3.0, 9.0)  # clips 2..5 cover [3, 9)
    assert span.first_s == pytest.approx(3.0) and len(span.features) == 4
    np.testing.assert_array_equal(span.features, whole.features[2:6])
    many = feature_store.read_many([(5, 0.0, 1.0), (5, 44.0, 99.0)])
    assert len(many[0].features) == 1 and len(many[1].features) == 1  # clipped to the video
    assert feature_store.info(5) == (30, 12, pytest.approx(1 / 1.5), "m")
    assert feature_store.video_ids() == [5]
    assert feature_store.delete(5) and not feature_store.exists(5) and not feature_store.delete(5)
    with pytest.raises(FeatureNotFound, match="re-ingest"):
        feature_store.read(5)


def test_bad_features_are_refused_before_anything_is_written(feature_store):
    with pytest.raises(ValueError, match="shape"):
        feature_store.write(1, np.zeros((0, 4)), 1.0)
    with pytest.raises(ValueError, match="NaN"):
        feature_store.write(1, np.full((2, 4), np.nan), 1.0)
    with pytest.raises(ValueError, match="rate"):
        feature_store.write(1, np.zeros((2, 4)), 0.0)
    assert not feature_store.exists(1)


def test_a_local_write_leaves_no_temporary_files(tmp_path):
    store = FrameFeatureStore(tmp_path)
    store.write(300, np.ones((3, 4)), 1.0)
    store.write(300, np.zeros((5, 4)), 1.0)  # replaced in place
    files = [p.name for p in tmp_path.rglob("*") if p.is_file()]
    assert files == ["300.h5"]
    assert len(store.read(300).features) == 5


def test_a_replaced_or_deleted_file_is_never_served_from_an_old_mapping(tmp_path):
    """Local reads keep each file's layout across calls (a query reads ~200 spans); a write
    that replaces a video's file, or a delete, must show in the very next read."""
    store = FrameFeatureStore(tmp_path)
    store.write(7, np.ones((40, 4)), 1.0, model="old")
    first = store.read_span(7, 2.0, 6.0)
    assert first.model == "old" and first.first_row == 2 and float(first.features[0, 0]) == 1.0
    store.write(7, np.full((50, 4), 2.0), 1.0, model="new")  # same size class, new inode
    again = store.read_span(7, 2.0, 6.0)
    assert again.model == "new" and float(again.features[0, 0]) == 2.0 and store.read(7).features.shape == (50, 4)
    first.features[:] = 9.0  # a caller's own copy: writing to it never touches the file
    assert float(store.read_span(7, 2.0, 6.0).features[0, 0]) == 2.0
    store.delete(7)
    with pytest.raises(FeatureNotFound, match="re-ingest"):
        store.read_span(7, 2.0, 6.0)


@pytest.mark.parametrize(
    "start, end, rate, total, rows",
    [(0, 4, 1.0, 10, (0, 4)), (3.5, 4.2, 1.0, 10, (3, 5)), (8, 20, 1.0, 10, (8, 10)), (12, 14, 1.0, 10, (9, 10)), (0, 0, 1.0, 10, (0, 1))],
)
def test_span_rows_cover_every_overlapping_feature(start, end, rate, total, rows):
    assert span_rows(start, end, rate, total) == rows


def test_decoder_sized_frames_take_the_device_path_and_match_the_resizing_path():
    clip = load_clip("spr-tiny")
    square = frames(1, clip.image_size, clip.image_size)[0]
    fast = clip.preprocess([square])  # all frames S x S: normalised on the device
    slow = clip.preprocess([square, frames(1)[0]])  # mixed sizes: resized per frame
    assert fast.shape == (1, 3, clip.image_size, clip.image_size)
    torch.testing.assert_close(fast[0], slow[0], atol=1e-5, rtol=0)
