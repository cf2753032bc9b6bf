"""Fixed-length segmentation and the segment ids shared by every store."""

from __future__ import annotations

import numpy as np
import pytest

from spr import ids
from spr.segments import segment_bounds, segment_count, segment_rows, span_rows


def test_an_hour_is_900_four_second_segments_covering_it_exactly():
    b = segment_bounds(3600.0)
    assert len(b) == 900
    assert b.start_s[0] == 0.0 and b.end_s[-1] == 3600.0
    np.testing.assert_array_equal(b.start_s[1:], b.end_s[:-1])  # no gap, no overlap


def test_the_last_partial_segment_is_kept_with_its_short_end():
    b = segment_bounds(10.5, 4.0)
    assert b.ordinals.tolist() == [0, 1, 2]
    assert b.end_s.tolist() == [4.0, 8.0, 10.5]


def test_a_duration_a_hair_over_a_boundary_adds_no_sliver_segment():
    assert segment_count(12.0000001, 4.0) == 3
    assert segment_count(12.01, 4.0) == 4


def test_zero_duration_has_no_segments_and_bad_values_are_refused():
    assert len(segment_bounds(0.0)) == 0
    for duration, length in [(-1.0, 4.0), (float("nan"), 4.0), (10.0, 0.0), (10.0, float("inf"))]:
        with pytest.raises(ValueError):
            segment_bounds(duration, length)


def test_segment_ids_pack_the_video_and_the_ordinal_and_split_back():
    sid = ids.segment_id(7, 899)
    assert sid == (7 << 20) | 899
    assert ids.split_segment_id(sid) == (7, 899)
    np.testing.assert_array_equal(ids.segment_ids(7, 900), [ids.segment_id(7, i) for i in range(900)])
    lo, hi = ids.video_id_range(7)
    assert lo == ids.segment_id(7, 0) and hi == ids.segment_id(8, 0)


def test_out_of_range_videos_and_ordinals_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="video id"):
        ids.segment_id(0, 0)
    with pytest.raises(ValueError, match="longer segment length"):
        ids.segment_id(1, ids.MAX_ORDINAL + 1)
    assert ids.segment_ids(3, 0).shape == (0,)


# --- which feature rows a segment pools -------------------------------------------------------


def test_segments_pool_every_row_that_overlaps_them_in_time():
    # TVR's 1.5-s clips under 4-s segments: the clip straddling 4 s counts in both segments.
    starts, stops = segment_rows(40, 1 / 1.5, 59.8, 4.0)
    assert (starts.shape, stops.shape, starts.dtype) == ((15,), (15,), np.int64)
    assert np.stack([starts, stops], axis=1)[:3].tolist() == [[0, 3], [2, 6], [5, 8]]
    # 1 fps: whole blocks of 4 rows, the last partial segment its own rows.
    assert np.stack(segment_rows(10, 1.0, 9.5, 4.0), axis=1).tolist() == [[0, 4], [4, 8], [8, 10]]


def test_segment_rows_agree_with_the_feature_store_span_of_each_segment():
    for n_rows, rate, duration in [(40, 1 / 1.5, 59.8), (21, 1.0, 21.0), (7, 2.0, 3.3), (3, 1.0, 9.0), (0, 1.0, 8.0)]:
        bounds = segment_bounds(duration, 4.0)
        rows = segment_rows(n_rows, rate, duration, 4.0)
        assert len(rows) == len(bounds)
        spans = [span_rows(s, e, rate, n_rows) for s, e in zip(bounds.start_s, bounds.end_s)]
        assert list(zip(rows.starts.tolist(), rows.stops.tolist())) == spans, (n_rows, rate, duration)


def test_segment_rows_of_features_starting_later_and_bad_rates():
    # Rows 0.. start at 8 s: segment [8, 12) is rows 0-3 of the span.
    rows = segment_rows(8, 1.0, 16.0, 4.0, first_s=8.0)
    assert (rows.starts[2], rows.stops[2]) == (0, 4)
    with pytest.raises(ValueError, match="rate"):
        segment_rows(10, 0.0, 10.0)
