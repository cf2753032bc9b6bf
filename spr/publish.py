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
    bounds = segment_bounds(duration_s, segment_length_s)
    embeddings = np.asarray(embeddings, dtype=np.float32)
    if embeddings.ndim != 2 or len(embeddings) != len(bounds):
        raise ValueError(
            f"video {key!r} of {duration_s} s has {len(bounds)} segments of {segment_length_s} s, "
            f"but {embeddings.shape[0] if embeddings.ndim else 0} embeddings were given (shape {embeddings.shape})"
        )
    if (feature_store is None) != (frame_features is None):
        raise ValueError("pass feature_store and frame_features together")
    video = catalog.register_video(key, uri, duration_s, fps=fps, content_hash=content_hash, metadata=metadata)
    if feature_store is not None:
        feature_store.write(video.id, frame_features, feature_rate, feature_model)
    ids = catalog.replace_segments(video.id, bounds.ordinals, bounds.start_s, bounds.end_s)
    # A re-ingest that got shorter leaves vectors past the new last ordinal: remove them all
    # by video first, so the store holds exactly the catalog's segments.
    store.delete_videos(collection, [key])
    store.upsert(collection, ids, embeddings, [key] * len(ids))
    store.flush(collection)
    catalog.mark_ready(video.id)
    return PublishedVideo(catalog.get_video_by_id(video.id) or video, ids)


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
