"""Specification of coarse proposal generation and padding (SPR section 3.2 / 4.2)."""

from __future__ import annotations

import random
import zlib

import pytest

from spr.proposals import (
    AdaptiveGap,
    AdjacentOnly,
    ConstantGap,
    GapRule,
    Proposal,
    RetrievedSegment,
    pad_proposals,
    propose_moments,
)

SEGMENT_S = 4.0


def _default_id(video: str, ordinal: int) -> int:
    # Deterministic across processes (str hash() is salted), unique per (video, ordinal).
    return (zlib.crc32(video.encode()) << 20) | ordinal


def seg(
    ordinal: int,
    rank: int,
    video: str = "v1",
    *,
    segment_id: int | None = None,
    duration_s: float = 100.0,
    score: float | None = None,
    end_s: float | None = None,
) -> RetrievedSegment:
    """A 4 s segment at ``ordinal`` (start = 4 * ordinal); id and score derived unless given."""
    start_s = ordinal * SEGMENT_S
    return RetrievedSegment(
        segment_id=segment_id if segment_id is not None else _default_id(video, ordinal),
        video_key=video,
        ordinal=ordinal,
        start_s=start_s,
        end_s=end_s if end_s is not None else start_s + SEGMENT_S,
        video_duration_s=duration_s,
        score=score if score is not None else 1.0 - rank / 1000,
        rank=rank,
    )


def spans(proposals: list[Proposal]) -> list[tuple[str, float, float]]:
    return [(p.video_key, p.start_s, p.end_s) for p in proposals]


# --- the SPR rule: adjacent segments merge ---------------------------------------------------


def test_empty_input_gives_no_proposals() -> None:
    assert propose_moments([]) == []


def test_single_segment_is_its_own_proposal() -> None:
    (p,) = propose_moments([seg(5, rank=0, segment_id=42, score=0.9)])
    assert (p.video_key, p.start_s, p.end_s) == ("v1", 20.0, 24.0)
    assert p.segment_ids == (42,)
    assert p.duration_s == 4.0
    assert p.best_rank == 0
    assert p.best_score == 0.9


def test_adjacent_segments_merge_into_one_proposal_spanning_all_of_them() -> None:
    proposals = propose_moments([seg(3, rank=0), seg(4, rank=1), seg(5, rank=2)])
    assert spans(proposals) == [("v1", 12.0, 24.0)]
    assert proposals[0].duration_s == 12.0


def test_non_adjacent_segments_of_one_video_stay_separate() -> None:
    proposals = propose_moments([seg(3, rank=0), seg(5, rank=1)])
    assert spans(proposals) == [("v1", 12.0, 16.0), ("v1", 20.0, 24.0)]


def test_same_ordinals_in_different_videos_never_merge() -> None:
    proposals = propose_moments([seg(3, rank=0, video="a"), seg(4, rank=1, video="b")])
    assert spans(proposals) == [("a", 12.0, 16.0), ("b", 16.0, 20.0)]
    proposals = propose_moments([seg(3, rank=0, video="a"), seg(3, rank=1, video="b")])
    assert spans(proposals) == [("a", 12.0, 16.0), ("b", 12.0, 16.0)]


def test_default_rule_is_adjacent_only() -> None:
    segments = [seg(0, rank=0), seg(1, rank=3), seg(3, rank=1), seg(7, rank=2)]
    assert propose_moments(segments) == propose_moments(segments, AdjacentOnly())
    assert propose_moments(segments) == propose_moments(segments, ConstantGap(0))


# --- ranking ---------------------------------------------------------------------------------


def test_proposal_with_the_rank_0_segment_comes_first_even_if_another_has_more_segments() -> None:
    # video "long": three adjacent segments ranked 1, 2, 3; video "short": one segment ranked 0.
    segments = [
        seg(10, rank=1, video="long"),
        seg(11, rank=2, video="long"),
        seg(12, rank=3, video="long"),
        seg(0, rank=0, video="short"),
    ]
    proposals = propose_moments(segments)
    assert [p.video_key for p in proposals] == ["short", "long"]
    assert [p.best_rank for p in proposals] == [0, 1]
    assert [len(p.segment_ids) for p in proposals] == [1, 3]


def test_proposals_are_ordered_by_best_rank_not_by_time_or_video() -> None:
    segments = [
        seg(0, rank=4, video="a"),  # a[0-4] best 4
        seg(9, rank=2, video="a"),  # a[36-44] best 1 (joined with ordinal 10)
        seg(10, rank=1, video="a"),
        seg(2, rank=3, video="b"),  # b[8-12] best 3
        seg(7, rank=0, video="c"),  # c[28-32] best 0
    ]
    proposals = propose_moments(segments)
    assert spans(proposals) == [
        ("c", 28.0, 32.0),
        ("a", 36.0, 44.0),
        ("b", 8.0, 12.0),
        ("a", 0.0, 4.0),
    ]
    assert [p.best_rank for p in proposals] == [0, 1, 3, 4]


def test_ranks_and_scores_are_kept_and_aligned_with_segment_ids_in_time_order() -> None:
    segments = [
        seg(6, rank=0, segment_id=106, score=0.91),
        seg(4, rank=1, segment_id=104, score=0.88),
        seg(5, rank=2, segment_id=105, score=0.80),
    ]
    (p,) = propose_moments(segments)
    assert p.segment_ids == (104, 105, 106)
    assert p.segment_ranks == (1, 2, 0)
    assert p.segment_scores == (0.88, 0.80, 0.91)
    assert p.best_rank == 0
    assert p.best_score == 0.91


def test_best_score_is_the_score_of_the_best_ranked_segment_not_the_maximum() -> None:
    # Scores need not be monotone in rank (e.g. after a re-scoring step); rank decides.
    (p,) = propose_moments([seg(0, rank=0, score=0.5), seg(1, rank=1, score=0.7)])
    assert p.best_score == 0.5


def test_out_of_order_input_gives_the_same_proposals() -> None:
    segments = [
        seg(1, rank=0, video="a"),
        seg(2, rank=1, video="a"),
        seg(3, rank=2, video="a"),
        seg(8, rank=3, video="a"),
        seg(0, rank=4, video="b"),
        seg(1, rank=5, video="b"),
    ]
    expected = [("a", 4.0, 16.0), ("a", 32.0, 36.0), ("b", 0.0, 8.0)]
    assert spans(propose_moments(segments)) == expected
    shuffled = list(segments)
    random.Random(7).shuffle(shuffled)
    assert propose_moments(shuffled) == propose_moments(segments)
    assert propose_moments(list(reversed(segments))) == propose_moments(segments)


# --- clipping --------------------------------------------------------------------------------


def test_last_partial_segment_keeps_its_short_end() -> None:
    # A 10.5 s video: segments [0,4), [4,8), [8,10.5).
    segments = [seg(1, rank=0, duration_s=10.5), seg(2, rank=1, duration_s=10.5, end_s=10.5)]
    (p,) = propose_moments(segments)
    assert (p.start_s, p.end_s, p.duration_s) == (4.0, 10.5, 6.5)


def test_segment_end_past_the_video_duration_is_clipped_to_it() -> None:
    # The catalog says [8, 12) but the video is only 10.5 s long.
    (p,) = propose_moments([seg(2, rank=0, duration_s=10.5)])
    assert (p.start_s, p.end_s) == (8.0, 10.5)
    assert p.video_duration_s == 10.5


# --- gap rules -------------------------------------------------------------------------------


def test_constant_gap_1_joins_across_one_missing_segment() -> None:
    # ordinals 2 and 4: ordinal 3 missing -> one proposal [8, 20) that covers the hole.
    proposals = propose_moments([seg(2, rank=0), seg(4, rank=1)], ConstantGap(1))
    assert spans(proposals) == [("v1", 8.0, 20.0)]
    assert proposals[0].segment_ids == (seg(2, 0).segment_id, seg(4, 1).segment_id)


def test_constant_gap_1_does_not_join_across_two_missing_segments() -> None:
    proposals = propose_moments([seg(2, rank=0), seg(5, rank=1)], ConstantGap(1))
    assert spans(proposals) == [("v1", 8.0, 12.0), ("v1", 20.0, 24.0)]


def test_constant_gap_chains_several_runs() -> None:
    # ordinals 0,1 | 3 | 5,6 | 9 with one-segment holes except before 9 (two missing).
    segments = [seg(o, rank=r) for r, o in enumerate([5, 0, 9, 3, 1, 6])]
    proposals = propose_moments(segments, ConstantGap(1))
    assert spans(proposals) == [("v1", 0.0, 28.0), ("v1", 36.0, 40.0)]
    assert proposals[0].segment_ranks == (1, 4, 3, 0, 5)  # ordinals 0, 1, 3, 5, 6


def test_constant_gap_never_joins_across_videos() -> None:
    segments = [seg(2, rank=0, video="a"), seg(3, rank=1, video="b")]
    proposals = propose_moments(segments, ConstantGap(5))
    assert len(proposals) == 2


def test_adaptive_gap_joins_at_exactly_the_threshold() -> None:
    # current [0, 12) (ordinals 0-2, 12 s), next run [20, 24) (4 s): gap 8 s == 0.5 * (12 + 4).
    segments = [seg(0, rank=0), seg(1, rank=1), seg(2, rank=2), seg(5, rank=3)]
    proposals = propose_moments(segments, AdaptiveGap(0.5))
    assert spans(proposals) == [("v1", 0.0, 24.0)]


def test_adaptive_gap_does_not_join_just_above_the_threshold() -> None:
    # Same layout: allowed gap 0.49 * 16 = 7.84 s < 8 s.
    segments = [seg(0, rank=0), seg(1, rank=1), seg(2, rank=2), seg(5, rank=3)]
    proposals = propose_moments(segments, AdaptiveGap(0.49))
    assert spans(proposals) == [("v1", 0.0, 12.0), ("v1", 20.0, 24.0)]


def test_adaptive_gap_threshold_tolerates_float_rounding_in_seconds() -> None:
    # 0.1 * (0.3 + 0.3) is 0.06000000000000001 in floats; a 0.06 s gap must still join.
    a = RetrievedSegment(1, "v", 0, 0.0, 0.3, 10.0, 0.9, 0)
    b = RetrievedSegment(2, "v", 2, 0.36, 0.66, 10.0, 0.8, 1)
    assert len(propose_moments([a, b], AdaptiveGap(0.1))) == 1


def test_adaptive_gap_chains_using_the_grown_proposal_length() -> None:
    # Runs: [0,8) 8 s | [12,16) 4 s | [28,32) 4 s.
    segments = [seg(0, rank=0), seg(1, rank=1), seg(3, rank=2), seg(7, rank=3)]
    # alpha 0.5: gap 4 <= 0.5 * (8 + 4) = 6 joins -> [0,16) is 16 s;
    #            gap 12 <= 0.5 * (16 + 4) = 10 fails.
    assert spans(propose_moments(segments, AdaptiveGap(0.5))) == [
        ("v1", 0.0, 16.0),
        ("v1", 28.0, 32.0),
    ]
    # alpha 0.6: gap 4 <= 7.2 joins; gap 12 <= 0.6 * (16 + 4) = 12 joins. Measured against the
    # lone [12,16) run instead it would be 12 <= 0.6 * (4 + 4) = 4.8 and stay apart.
    (p,) = propose_moments(segments, AdaptiveGap(0.6))
    assert (p.start_s, p.end_s) == (0.0, 32.0)
    assert p.segment_ranks == (0, 1, 2, 3)


def test_adaptive_gap_zero_is_adjacent_only() -> None:
    segments = [seg(0, rank=0), seg(1, rank=1), seg(3, rank=2)]
    assert propose_moments(segments, AdaptiveGap(0.0)) == propose_moments(segments)


def test_custom_gap_rule_is_accepted() -> None:
    class Always:
        def joins(self, current, following) -> bool:  # noqa: ANN001
            return True

    assert isinstance(Always(), GapRule)
    proposals = propose_moments([seg(0, rank=1), seg(20, rank=0)], Always())
    assert spans(proposals) == [("v1", 0.0, 84.0)]


# --- padding ---------------------------------------------------------------------------------


def test_padding_widens_both_sides_by_tau_c() -> None:
    (p,) = pad_proposals(propose_moments([seg(5, rank=0), seg(6, rank=1)]), tau_c_s=8.0)
    assert (p.start_s, p.end_s) == (12.0, 36.0)  # [20, 28) +- 8


def test_padding_is_clipped_at_zero_and_at_the_video_duration() -> None:
    proposals = propose_moments(
        [seg(1, rank=0, duration_s=30.0), seg(6, rank=1, duration_s=30.0, end_s=27.0)]
    )
    padded = pad_proposals(proposals, tau_c_s=8.0)
    assert spans(padded) == [("v1", 0.0, 16.0), ("v1", 16.0, 30.0)]  # [4,8) and [24,27)


def test_padding_keeps_segments_ranks_scores_and_order() -> None:
    proposals = propose_moments([seg(9, rank=1), seg(2, rank=0), seg(3, rank=2)])
    padded = pad_proposals(proposals)
    assert [p.segment_ids for p in padded] == [p.segment_ids for p in proposals]
    assert [p.segment_ranks for p in padded] == [p.segment_ranks for p in proposals]
    assert [p.segment_scores for p in padded] == [p.segment_scores for p in proposals]
    assert spans(padded) == [("v1", 0.0, 24.0), ("v1", 28.0, 48.0)]


def test_padding_default_is_8_seconds() -> None:
    proposals = propose_moments([seg(10, rank=0)])
    assert pad_proposals(proposals) == pad_proposals(proposals, tau_c_s=8.0)


def test_padding_0_is_identity() -> None:
    proposals = propose_moments([seg(0, rank=0), seg(4, rank=1), seg(5, rank=2)])
    assert pad_proposals(proposals, tau_c_s=0.0) == proposals


def test_padding_nothing_gives_nothing() -> None:
    assert pad_proposals([]) == []


# --- truncation and duplicates ---------------------------------------------------------------


def test_max_proposals_keeps_the_best_ranked_ones() -> None:
    segments = [seg(o, rank=r) for r, o in enumerate([0, 10, 20, 30])]
    proposals = propose_moments(segments, max_proposals=2)
    assert spans(proposals) == [("v1", 0.0, 4.0), ("v1", 40.0, 44.0)]
    assert propose_moments(segments, max_proposals=0) == []
    assert len(propose_moments(segments, max_proposals=10)) == 4
    assert len(propose_moments(segments, max_proposals=None)) == 4


def test_max_proposals_counts_proposals_not_segments() -> None:
    segments = [seg(0, rank=0), seg(1, rank=1), seg(2, rank=2), seg(9, rank=3)]
    (p,) = propose_moments(segments, max_proposals=1)
    assert p.segment_ranks == (0, 1, 2)


def test_duplicate_segment_id_keeps_the_best_ranked_occurrence() -> None:
    segments = [
        seg(4, rank=3, segment_id=7, score=0.2),
        seg(4, rank=1, segment_id=7, score=0.8),
        seg(5, rank=2, segment_id=8, score=0.7),
        seg(4, rank=5, segment_id=7, score=0.1),
    ]
    (p,) = propose_moments(segments)
    assert p.segment_ids == (7, 8)
    assert p.segment_ranks == (1, 2)
    assert p.segment_scores == (0.8, 0.7)
    assert (p.start_s, p.end_s) == (16.0, 24.0)


# --- validation ------------------------------------------------------------------------------


def test_segment_ending_before_it_starts_is_rejected() -> None:
    with pytest.raises(ValueError, match="ends before it starts"):
        RetrievedSegment(1, "v", 0, 4.0, 3.0, 10.0, 0.5, 0)


def test_negative_rank_is_rejected() -> None:
    with pytest.raises(ValueError, match="negative rank"):
        seg(0, rank=-1)


def test_negative_ordinal_is_rejected() -> None:
    with pytest.raises(ValueError, match="negative ordinal"):
        RetrievedSegment(1, "v", -1, 0.0, 4.0, 10.0, 0.5, 0)


def test_zero_length_segment_is_allowed() -> None:
    (p,) = propose_moments([RetrievedSegment(1, "v", 0, 0.0, 0.0, 0.0, 0.5, 0)])
    assert p.duration_s == 0.0


def test_negative_max_missing_is_rejected() -> None:
    with pytest.raises(ValueError, match="max_missing"):
        ConstantGap(-1)


@pytest.mark.parametrize("alpha", [-0.1, float("nan")])
def test_negative_or_nan_alpha_is_rejected(alpha: float) -> None:
    with pytest.raises(ValueError, match="alpha"):
        AdaptiveGap(alpha)


@pytest.mark.parametrize("tau", [-1.0, float("nan")])
def test_negative_or_nan_tau_c_is_rejected(tau: float) -> None:
    with pytest.raises(ValueError, match="tau_c_s"):
        pad_proposals(propose_moments([seg(0, rank=0)]), tau_c_s=tau)


def test_negative_max_proposals_is_rejected() -> None:
    with pytest.raises(ValueError, match="max_proposals"):
        propose_moments([seg(0, rank=0)], max_proposals=-1)


def test_conflicting_durations_within_a_video_are_rejected() -> None:
    with pytest.raises(ValueError, match="disagree on its duration"):
        propose_moments([seg(0, rank=0, duration_s=100.0), seg(1, rank=1, duration_s=90.0)])


def test_proposal_with_misaligned_tuples_is_rejected() -> None:
    with pytest.raises(ValueError, match="same length"):
        Proposal("v", 0.0, 4.0, 10.0, (1, 2), (0,), (0.5, 0.4))


# --- scale -----------------------------------------------------------------------------------


def test_top_200_from_many_videos_covers_every_segment_exactly_once() -> None:
    rng = random.Random(0)
    picks = rng.sample([(f"v{v}", o) for v in range(20) for o in range(60)], 200)
    segments = [
        seg(o, rank=r, video=v, segment_id=r + 1000, duration_s=240.0)
        for r, (v, o) in enumerate(picks)
    ]
    proposals = propose_moments(segments)
    assert sorted(i for p in proposals for i in p.segment_ids) == list(range(1000, 1200))
    ranks = [p.best_rank for p in proposals]
    assert ranks == sorted(ranks) and ranks[0] == 0
    for p in proposals:
        assert p.duration_s == SEGMENT_S * len(p.segment_ids)  # adjacent-only: no holes
