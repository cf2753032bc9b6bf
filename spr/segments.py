"""Fixed-length segmentation of a video's timeline (SPR section 3.1: tau_S = 4 s).

A video of ``duration_s`` seconds is cut into ``ceil(duration_s / length_s)`` non-overlapping
segments ``[i * length_s, min((i + 1) * length_s, duration_s))``; the last, partial one is kept
so that no second of the video is unsearchable.

Features come in rows on their own grid (row ``r`` covers ``[r / rate, (r + 1) / rate)``
seconds: 1 fps CLIP frames, TVR's 1.5-s clips). :func:`segment_rows` is THE rule that says
which rows a segment pools: every row that overlaps it in time. Ingest, import, re-embedding and
training all pool through it, so a segment's vector always stands for the seconds the catalog
gives it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

# A duration like 12.000000001 s (container rounding) must not create a 1-ns fourth segment.
_EPSILON_S = 1e-6
# A row boundary computed as 12.0000000001 * rate must not pull in (or drop) a whole row.
_ROW_EPSILON = 1e-9


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


class SegmentRows(NamedTuple):
    """Which feature rows each segment pools: segment ``i`` pools rows ``[starts[i], stops[i])``.
    ``starts`` and ``stops`` are ``(n_segments,)`` int64."""

    starts: np.ndarray
    stops: np.ndarray

    def __len__(self) -> int:  # the number of segments, not the 2 of the tuple
        return len(self.starts)

    @property
    def widest(self) -> int:
        """Rows of the segment that pools the most (0 without segments)."""
        return int((self.stops - self.starts).max()) if len(self.starts) else 0


def span_rows(start_s: float, end_s: float, rate: float, total: int) -> tuple[int, int]:
    """Half-open row range ``[lo, hi)`` of every feature row (``rate`` per second) overlapping
    ``[start_s, end_s)``, clipped to ``[0, total)``; at least one row when ``total > 0``."""
    lo = int(math.floor(max(0.0, start_s) * rate + _ROW_EPSILON))
    hi = int(math.ceil(max(start_s, end_s) * rate - _ROW_EPSILON))
    lo = min(max(lo, 0), max(total - 1, 0))
    hi = min(max(hi, lo + 1), total)
    return lo, hi


def segment_rows(
    n_rows: int, rate: float, duration_s: float, length_s: float = 4.0, *, first_s: float = 0.0
) -> SegmentRows:
    """For each ``length_s`` segment of a ``duration_s`` video (:func:`segment_bounds`), the
    rows of its ``(n_rows, D)`` features that overlap it in time: :func:`span_rows` of the
    segment, at least one row per segment when ``n_rows > 0``. ``rate`` is rows per second and
    row 0 starts at ``first_s`` seconds.

    Returns ``(starts, stops)``, each ``(segment_count(duration_s, length_s),)`` int64. A row
    straddling a segment boundary counts in both segments; segments past the last row pool the
    last row (callers check that the features cover the duration)."""
    if not (rate > 0 and math.isfinite(rate)):
        raise ValueError(f"feature rate must be a positive number of rows per second, got {rate}")
    if n_rows < 0:
        raise ValueError(f"n_rows must be >= 0, got {n_rows}")
    bounds = segment_bounds(duration_s, length_s)
    start = bounds.start_s - first_s
    end = bounds.end_s - first_s
    # span_rows, vectorised: the same formulas, so a slice of the feature store and a
    # segment's pooled rows agree row for row.
    lo = np.floor(np.maximum(start, 0.0) * rate + _ROW_EPSILON).astype(np.int64)
    hi = np.ceil(np.maximum(start, end) * rate - _ROW_EPSILON).astype(np.int64)
    lo = np.minimum(np.maximum(lo, 0), max(n_rows - 1, 0))
    hi = np.minimum(np.maximum(hi, lo + 1), n_rows)
    return SegmentRows(lo, hi)


def _check(duration_s: float, length_s: float) -> None:
    if not length_s > 0 or not math.isfinite(length_s):
        raise ValueError(f"segment length must be a positive number of seconds, got {length_s}")
    if not duration_s >= 0 or not math.isfinite(duration_s):
        raise ValueError(f"video duration must be a finite number of seconds >= 0, got {duration_s}")
