"""Fixed-length segmentation of a video's timeline (SPR section 3.1: tau_S = 4 s).

A video of ``duration_s`` seconds is cut into ``ceil(duration_s / length_s)`` non-overlapping
segments ``[i * length_s, min((i + 1) * length_s, duration_s))``; the last, partial one is kept
so that no second of the video is unsearchable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# A duration like 12.000000001 s (container rounding) must not create a 1-ns fourth segment.
_EPSILON_S = 1e-6


@dataclass(frozen=True)
class SegmentBounds:
    """Segments of one video: ``ordinals`` ``(n,)`` int64 and ``start_s``/``end_s`` ``(n,)`` float64."""

    ordinals: np.ndarray
    start_s: np.ndarray
    end_s: np.ndarray

    def __len__(self) -> int:
        return len(self.ordinals)


def segment_count(duration_s: float, length_s: float = 4.0) -> int:
    """Number of segments of a ``duration_s`` video: the last partial one counts."""
    _check(duration_s, length_s)
    return max(0, math.ceil(duration_s / length_s - _EPSILON_S / length_s))


def segment_bounds(duration_s: float, length_s: float = 4.0) -> SegmentBounds:
    """The fixed-length segments covering ``[0, duration_s]``."""
    n = segment_count(duration_s, length_s)
    ordinals = np.arange(n, dtype=np.int64)
    start = ordinals * float(length_s)
    end = np.minimum(start + float(length_s), float(duration_s))
    return SegmentBounds(ordinals, start, end)


def _check(duration_s: float, length_s: float) -> None:
    if not length_s > 0 or not math.isfinite(length_s):
        raise ValueError(f"segment length must be a positive number of seconds, got {length_s}")
    if not duration_s >= 0 or not math.isfinite(duration_s):
        raise ValueError(f"video duration must be a finite number of seconds >= 0, got {duration_s}")
