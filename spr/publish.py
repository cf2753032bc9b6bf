"""Publishing a video's segments to both stores so that search sees all of it or none of it.

The protocol of ``DESIGN.md`` ("Two stores, one truth"): the catalog row goes ``pending``
first, then the segment rows and the vectors are written (same ids in both), the vector
store is flushed, and only then does the row become ``ready``. Searches keep only ``ready``
rows, so a crash anywhere in between leaves nothing half-visible, and publishing the same
video again upserts the same ids: a re-run finishes the job without duplicates.

Deleting runs the other way: ``deleted`` first (invisible at once), then the vectors, then
the rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .catalog import SegmentCatalog, VideoRecord
from .features import FrameFeatureStore
from .segments import segment_bounds
from .stores import VectorStore


@dataclass(frozen=True)
class PublishedVideo:
    video: VideoRecord
    segment_ids: np.ndarray  # (n,) int64, ordinal order


def publish_video(
    catalog: SegmentCatalog,
    store: VectorStore,
    collection: str,
    key: str,
    uri: str,
    duration_s: float,
    embeddings: np.ndarray,
    segment_length_s: float = 4.0,
    fps: float | None = None,
    content_hash: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    feature_store: FrameFeatureStore | None = None,
    frame_features: np.ndarray | None = None,
    feature_rate: float = 1.0,
    feature_model: str = "",
) -> PublishedVideo:
    """Write one video's segment embeddings ``(n, dim)`` (one per ``segment_length_s``
    segment, ordinal order) to the catalog and ``collection``, then make it visible.

    With ``feature_store``, its per-second ``frame_features`` ``(T, D)`` (``feature_rate``
    per second) are written first, under the same video id, for the refiner.

    Replaces whatever the video had before. On any error the video stays invisible
    (``pending``) and the error propagates; the caller records it with ``mark_failed``.
    """
    if (feature_store is None) != (frame_features is None):
        raise ValueError("pass feature_store and frame_features together")
    payload = VideoPayload(
        key, uri, duration_s, embeddings, frame_features, feature_rate, fps, content_hash, metadata
    )
    return publish_videos(catalog, store, collection, [payload], segment_length_s, feature_store, feature_model)[0]


def unpublish_video(
    catalog: SegmentCatalog,
    store: VectorStore,
    collection: str | Sequence[str],
    key: str,
    feature_store: FrameFeatureStore | None = None,
) -> bool:
    """Remove video ``key`` from search, the vector store (one or several collections), the
    feature store and the catalog; False if unknown.

    Safe to repeat after a crash: each step is idempotent."""
    video = catalog.get_video(key)
    if video is None:
        return False
    catalog.mark_deleted(video.id)
    for name in [collection] if isinstance(collection, str) else collection:
        if store.has_collection(name):
            store.delete_videos(name, [key])
            store.flush(name)
    if feature_store is not None:
        feature_store.delete(video.id)
    catalog.purge_video(video.id)
    return True


@dataclass(frozen=True)
class VideoPayload:
    """Everything one video contributes: its segment ``embeddings`` ``(n, dim)`` (ordinal
    order) and, optionally, its per-second ``frame_features`` ``(T, D)`` at ``feature_rate``."""

    key: str
    uri: str
    duration_s: float
    embeddings: np.ndarray
    frame_features: np.ndarray | None = None
    feature_rate: float = 1.0
    fps: float | None = None
    content_hash: str | None = None
    metadata: Mapping[str, Any] | None = None


def publish_videos(
    catalog: SegmentCatalog,
    store: VectorStore,
    collection: str,
    payloads: Sequence[VideoPayload],
    segment_length_s: float = 4.0,
    feature_store: FrameFeatureStore | None = None,
    feature_model: str = "",
) -> list[PublishedVideo]:
    """:func:`publish_video` for a batch, with one vector upsert and one flush for all of it
    (a Milvus flush costs about a second; per video it would dominate a big ingest).

    Every video is registered ``pending`` first and turns ``ready`` only after the flush, so
    a crash anywhere leaves the whole batch invisible and a re-run repeats it idempotently."""
    checked = []
    for p in payloads:
        bounds = segment_bounds(p.duration_s, segment_length_s)
        emb = np.asarray(p.embeddings, dtype=np.float32)
        if emb.ndim != 2 or len(emb) != len(bounds):
            raise ValueError(
                f"video {p.key!r} of {p.duration_s} s has {len(bounds)} segments of {segment_length_s} s, "
                f"but {emb.shape[0] if emb.ndim else 0} embeddings were given (shape {emb.shape})"
            )
        checked.append((p, bounds, emb))
    if not checked:
        return []
    written: list[tuple[VideoRecord, np.ndarray]] = []
    for p, bounds, _ in checked:
        video = catalog.register_video(
            p.key, p.uri, p.duration_s, fps=p.fps, content_hash=p.content_hash, metadata=p.metadata
        )
        if feature_store is not None and p.frame_features is not None:
            feature_store.write(video.id, p.frame_features, p.feature_rate, feature_model)
        ids = catalog.replace_segments(video.id, bounds.ordinals, bounds.start_s, bounds.end_s)
        written.append((video, ids))
    keys = [p.key for p, _, _ in checked]
    store.delete_videos(collection, keys)
    all_ids = np.concatenate([ids for _, ids in written])
    if len(all_ids):
        vectors = np.concatenate([emb for _, _, emb in checked])
        tags = [key for key, (_, ids) in zip(keys, written) for _ in range(len(ids))]
        store.upsert(collection, all_ids, vectors, tags)
    store.flush(collection)
    published = []
    for video, ids in written:
        catalog.mark_ready(video.id)
        published.append(PublishedVideo(catalog.get_video_by_id(video.id) or video, ids))
    return published
