"""Media for players and pages, through the search service: GetVideo, ReadMedia, GetThumbnail.

Real gRPC over loopback and a real catalog and feature store. The "videos" are files of random
bytes (the service streams bytes; it never decodes them), so ranges can be checked byte for
byte. A video is found by its catalog key only: paths, traversal strings and videos that are
not ready are unknown keys.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import fsspec
import grpc
import numpy as np
import pytest
from PIL import Image

from spr.catalog import SegmentCatalog
from spr.config import ClipConfig, Config, FaissConfig, ProposalsConfig, VectorsConfig
from spr.engine import MomentSearch
from spr.features import FrameFeatureStore
from spr.ids import segment_id, split_segment_id
from spr.media import CHUNK_BYTES, MediaLibrary, content_type_of
from spr.models.query import QueryEncoder
from spr.publish import publish_video
from spr.search.client import SearchClient
from spr.search.service import SearchServicer, start_search_server
from spr.stores import Flat, index_spec_to_dict, l2_normalize, open_vector_store

DIM = 64
COLLECTION = "media_test"
FILE_BYTES = 3 * CHUNK_BYTES + 12_345  # several chunks and a ragged tail


@dataclass
class MediaCorpus:
    config: Config
    files: dict[str, Path]  # key -> the file the catalog's URI names
    event: np.ndarray  # the planted direction: seconds 8-16 of "show/e01"
    client: SearchClient
    thumbs: dict[int, list[bytes]]  # video id -> the JPEGs stored for it


def _jpeg(colour: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (32, 24), colour).save(out, "JPEG", quality=80)
    return out.getvalue()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Iterator[MediaCorpus]:
    root = tmp_path_factory.mktemp("media")
    config = Config(
        data_dir=str(root / "data"),
        clip=ClipConfig(model="spr-tiny", pretrained="", device="cpu", precision="fp32"),
        vectors=VectorsConfig(dim=DIM, collection=COLLECTION),
        proposals=ProposalsConfig(top_k_segments=8),
        faiss=FaissConfig(use_gpu=False),
    )
    rng = np.random.default_rng(0)
    event = l2_normalize(rng.standard_normal(DIM))
    files: dict[str, Path] = {}
    thumbs: dict[int, list[bytes]] = {}
    store, catalog, features = open_vector_store(config), SegmentCatalog.from_config(config), FrameFeatureStore.from_config(config)
    store.create_collection(COLLECTION, DIM, Flat())
    catalog.register_collection(COLLECTION, store.backend, DIM, "IP", index_spec_to_dict(Flat()), "spr-tiny/random")
    for n, (key, duration) in enumerate([("show/e01", 24.0), ("show/e02.mkv", 16.0)]):
        path = root / "videos" / (key if "." in key else f"{key}.mp4")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.integers(0, 256, FILE_BYTES, dtype=np.uint8).tobytes())
        files[key] = path
        feats = l2_normalize(rng.standard_normal((math.ceil(duration), DIM)))
        if n == 0:
            feats[8:16] = l2_normalize(event + 0.05 * rng.standard_normal((8, DIM)))
        segments = l2_normalize(feats.reshape(-1, 4, DIM).mean(1))
        published = publish_video(
            catalog, store, COLLECTION, key, path.resolve().as_uri(), duration, segments,
            metadata={"show": "show", "season": 2}, ingest_info={"path": str(path), "file_size": FILE_BYTES},
            feature_store=features, frame_features=feats,
        )
        if n == 0:  # only the first has thumbnails; the second is like an imported video
            thumbs[published.video_id] = [_jpeg((40 * i, 0, 0)) for i in range(len(published.segment_ids))]
            features.write_thumbnails(published.video_id, thumbs[published.video_id])
    # A video still being ingested: registered, never published.
    catalog.register_video("show/pending", (root / "videos" / "show/e01.mp4").resolve().as_uri(), 24.0)
    store.close()
    engine = MomentSearch.open(config, QueryEncoder.from_config(config), None)
    media = MediaLibrary(engine.catalog, FrameFeatureStore.from_config(config), config.segments.length_s)
    server, port = start_search_server(config, SearchServicer(engine, media=media), port=0, max_workers=4, refresh_s=0)
    client = SearchClient(f"127.0.0.1:{port}", timeout_s=60)
    yield MediaCorpus(config, files, event, client, thumbs)
    client.close()
    server.stop(0).wait()
    catalog.close()


def code_of(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        result = call()
        if not isinstance(result, (bytes, str)) and hasattr(result, "__iter__") and not hasattr(result, "DESCRIPTOR"):
            list(result)
    return info.value.code(), info.value.details()


def read_all(client: SearchClient, key: str, offset: int = 0, length: int = 0) -> tuple[bytes, list[int]]:
    chunks = list(client.read_media(key, offset, length))
    return b"".join(c.data for c in chunks), [len(c.data) for c in chunks]


# --- GetVideo -------------------------------------------------------------------------------


def test_get_video_describes_a_ready_video_without_ingest_bookkeeping(corpus: MediaCorpus) -> None:
    video = corpus.client.get_video("show/e01")
    assert (video.key, video.size_bytes, video.content_type) == ("show/e01", FILE_BYTES, "video/mp4")
    assert video.duration_s == 24.0 and video.segments == 6 and video.segment_length_s == 4.0
    assert video.thumbnails is True
    # The user's metadata as strings; where the server read the file is not shown.
    assert dict(video.metadata) == {"show": "show", "season": "2"}
    other = corpus.client.get_video("show/e02.mkv")
    assert other.content_type == "video/x-matroska" and other.thumbnails is False


def test_a_local_file_has_no_presigned_url(corpus: MediaCorpus) -> None:
    video = corpus.client.get_video("show/e01", presign=True)
    assert video.media_url == "" and video.media_url_expires_s == 0


@pytest.mark.parametrize(
    "key",
    ["no/such/video", "show/pending", "../catalog.db", "../../etc/passwd", "/etc/passwd", "show/../show/e01", "show/e01.mp4"],
)
def test_only_ready_catalog_keys_are_videos(corpus: MediaCorpus, key: str) -> None:
    """Traversal strings, paths and keys of unfinished videos are all just unknown keys."""
    code, message = code_of(lambda: corpus.client.get_video(key))
    assert code == grpc.StatusCode.NOT_FOUND and key in message
    code, _ = code_of(lambda: corpus.client.read_media(key))
    assert code == grpc.StatusCode.NOT_FOUND


def test_the_real_path_of_an_ingested_file_is_not_a_key(corpus: MediaCorpus) -> None:
    for key in (str(corpus.files["show/e01"]), corpus.files["show/e01"].as_uri()):
        assert code_of(lambda: corpus.client.get_video(key))[0] == grpc.StatusCode.NOT_FOUND


def test_a_missing_or_oversized_key_is_invalid(corpus: MediaCorpus) -> None:
    assert code_of(lambda: corpus.client.get_video(""))[0] == grpc.StatusCode.INVALID_ARGUMENT
    code, message = code_of(lambda: corpus.client.get_video("k" * 10_000))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "512" in message


# --- ReadMedia ------------------------------------------------------------------------------


def test_read_media_streams_the_whole_file_in_bounded_chunks(corpus: MediaCorpus) -> None:
    data, sizes = read_all(corpus.client, "show/e01")
    assert data == corpus.files["show/e01"].read_bytes()
    assert max(sizes) <= CHUNK_BYTES and len(sizes) == 4


@pytest.mark.parametrize(
    ("offset", "length"), [(0, 100), (1000, 1), (CHUNK_BYTES - 10, 20), (FILE_BYTES - 5, 0), (FILE_BYTES - 5, 1000)]
)
def test_read_media_returns_exactly_the_range(corpus: MediaCorpus, offset: int, length: int) -> None:
    whole = corpus.files["show/e01"].read_bytes()
    data, _ = read_all(corpus.client, "show/e01", offset, length)
    assert data == (whole[offset:] if length == 0 else whole[offset : offset + length])


def test_a_range_past_the_end_is_out_of_range_and_a_negative_one_invalid(corpus: MediaCorpus) -> None:
    code, message = code_of(lambda: corpus.client.read_media("show/e01", FILE_BYTES))
    assert code == grpc.StatusCode.OUT_OF_RANGE and str(FILE_BYTES) in message
    assert code_of(lambda: corpus.client.read_media("show/e01", -1))[0] == grpc.StatusCode.INVALID_ARGUMENT


def test_a_file_gone_since_ingest_is_not_found_with_what_to_do(corpus: MediaCorpus, tmp_path: Path) -> None:
    path = corpus.files["show/e02.mkv"]
    moved = tmp_path / "moved"
    path.rename(moved)
    try:
        code, message = code_of(lambda: corpus.client.read_media("show/e02.mkv"))
        assert code == grpc.StatusCode.NOT_FOUND and "re-ingest" in message
    finally:
        moved.rename(path)


# --- GetThumbnail ---------------------------------------------------------------------------


def test_get_thumbnail_returns_the_segments_jpeg(corpus: MediaCorpus) -> None:
    video = corpus.client.get_video("show/e01")
    for ordinal, jpeg in enumerate(corpus.thumbs[video.id]):
        thumb = corpus.client.get_thumbnail(segment_id(video.id, ordinal))
        assert (thumb.jpeg, thumb.placeholder, thumb.video_key) == (jpeg, False, "show/e01")


def test_a_video_without_thumbnails_gets_a_placeholder(corpus: MediaCorpus) -> None:
    video = corpus.client.get_video("show/e02.mkv")
    thumb = corpus.client.get_thumbnail(segment_id(video.id, 1))
    assert thumb.placeholder and thumb.jpeg == b"" and thumb.video_key == "show/e02.mkv"


def test_an_unknown_segment_is_not_found_and_a_bad_id_invalid(corpus: MediaCorpus) -> None:
    video = corpus.client.get_video("show/e01")
    for sid in (segment_id(video.id, 6), segment_id(video.id + 100, 0)):
        assert code_of(lambda: corpus.client.get_thumbnail(sid))[0] == grpc.StatusCode.NOT_FOUND
    for sid in (0, -5):
        assert code_of(lambda: corpus.client.get_thumbnail(sid))[0] == grpc.StatusCode.INVALID_ARGUMENT


# --- moments carry the ids a client fetches these with ---------------------------------------


def test_moments_name_their_video_and_the_segment_that_shows_them(corpus: MediaCorpus) -> None:
    response = corpus.client.search(embedding=corpus.event, top_k=3, refine=False)
    best = response.moments[0]
    assert best.video_key == "show/e01" and best.video_id == corpus.client.get_video("show/e01").id
    video_id, ordinal = split_segment_id(best.segment_id)
    assert video_id == best.video_id
    assert ordinal * 4.0 <= (best.start_s + best.end_s) / 2 < (ordinal + 1) * 4.0
    for moment in response.moments:
        assert split_segment_id(moment.segment_id)[0] == moment.video_id
        assert corpus.client.get_thumbnail(moment.segment_id).video_key == moment.video_key


def test_collection_stats_name_the_default_collection_and_its_modalities(corpus: MediaCorpus) -> None:
    stats = corpus.client.collection_stats()
    assert stats.default_collection == COLLECTION and list(stats.modalities) == ["visual"]


# --- object stores ---------------------------------------------------------------------------


def test_media_in_an_object_store_is_read_through_fsspec(corpus: MediaCorpus) -> None:
    """A URI like s3://bucket/x.mp4 is read through fsspec (memory:// stands in for S3)."""
    data = np.random.default_rng(1).integers(0, 256, 700_000, dtype=np.uint8).tobytes()
    fsspec.filesystem("memory").pipe_file("/bucket/remote.webm", data)
    config = corpus.config
    catalog = SegmentCatalog.from_config(config)
    store = open_vector_store(config)
    try:
        publish_video(catalog, store, COLLECTION, "remote/one", "memory://bucket/remote.webm", 8.0, l2_normalize(np.ones((2, DIM))))
        library = MediaLibrary(catalog, FrameFeatureStore.from_config(config), 4.0)
        view = library.video("remote/one", presign=True)
        assert (view.size_bytes, view.content_type, view.media_url) == (len(data), "video/webm", "")
        got = b"".join(chunk for _, chunk in library.read("remote/one", 300_000, 300_001))
        assert got == data[300_000:600_001]
    finally:
        store.close()
        catalog.close()


def test_content_types_follow_the_container() -> None:
    assert content_type_of("a/b.MP4") == "video/mp4"
    assert content_type_of("s3://bucket/x.webm?versionId=3") == "video/webm"
    assert content_type_of("file:///x/y.mov") == "video/quicktime"
    assert content_type_of("noext") == "application/octet-stream"
