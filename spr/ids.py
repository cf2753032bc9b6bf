"""Segment ids: one int64 shared by the catalog, the vector store and the feature store.

``segment_id = video_id << 20 | ordinal``. 2^20 four-second segments is 48 days of video,
and 2^43 video ids is more than any archive. Re-ingesting a video upserts the same ids and
all of a video's segments form one contiguous id range.
"""

from __future__ import annotations

import numpy as np

ORDINAL_BITS = 20
MAX_ORDINAL = (1 << ORDINAL_BITS) - 1
MAX_VIDEO_ID = (1 << (63 - ORDINAL_BITS)) - 1


def segment_id(video_id: int, ordinal: int) -> int:
    """The id of segment ``ordinal`` (0-based) of catalog video ``video_id`` (>= 1)."""
    if not 1 <= video_id <= MAX_VIDEO_ID:
        raise ValueError(f"video id {video_id} out of range [1, {MAX_VIDEO_ID}]")
    if not 0 <= ordinal <= MAX_ORDINAL:
        raise ValueError(
            f"segment ordinal {ordinal} out of range [0, {MAX_ORDINAL}]: the video is longer than "
            f"{MAX_ORDINAL + 1} segments; use a longer segment length"
        )
    return (video_id << ORDINAL_BITS) | ordinal


def segment_ids(video_id: int, count: int) -> np.ndarray:
    """Ids of segments ``0..count-1`` of one video, shape ``(count,)`` int64."""
    if count == 0:
        return np.empty(0, dtype=np.int64)
    segment_id(video_id, count - 1)  # validates both ends
    return (np.int64(video_id) << ORDINAL_BITS) | np.arange(count, dtype=np.int64)


def split_segment_id(sid: int) -> tuple[int, int]:
    """``(video_id, ordinal)`` of a segment id."""
    return sid >> ORDINAL_BITS, sid & MAX_ORDINAL


def video_id_range(video_id: int) -> tuple[int, int]:
    """Half-open id range ``[lo, hi)`` holding every segment of ``video_id``."""
    lo = segment_id(video_id, 0)
    return lo, lo + MAX_ORDINAL + 1
