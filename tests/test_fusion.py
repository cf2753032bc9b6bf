"""spr.fusion: weighted reciprocal-rank fusion and weighted normalised-score sum of the
per-modality ranked segment lists. The expected numbers are worked out by hand below."""

from __future__ import annotations

import math
import random

import pytest

from spr.config import FusionMethod
from spr.fusion import Contribution, FusedHit, fuse, fuse_rrf, fuse_weighted_sum

VISUAL = [(10, 0.30), (20, 0.25), (30, 0.20)]
SPEECH = [(20, 0.80), (40, 0.60), (50, 0.40)]


def ids(hits: list[FusedHit]) -> list[int]:
    return [h.segment_id for h in hits]


# -- RRF ----------------------------------------------------------------------------------


def test_rrf_hand_computed_with_weights():
    # k = 60, 1-based ranks, visual weight 1, speech weight 2:
    #   10: visual #1                 1/61               = 0.016393
    #   20: visual #2, speech #1      1/62 + 2/61        = 0.016129 + 0.032787 = 0.048916
    #   30: visual #3                 1/63               = 0.015873
    #   40: speech #2                 2/62               = 0.032258
    #   50: speech #3                 2/63               = 0.031746
    hits = fuse_rrf({"visual": VISUAL, "speech": SPEECH}, {"visual": 1.0, "speech": 2.0}, k=60)
    assert ids(hits) == [20, 40, 50, 10, 30]
    expected = {10: 1 / 61, 20: 1 / 62 + 2 / 61, 30: 1 / 63, 40: 2 / 62, 50: 2 / 63}
    assert {h.segment_id: h.score for h in hits} == pytest.approx(expected, rel=1e-12)


def test_contributions_are_sorted_by_modality_and_carry_raw_rank_and_score():
    hits = fuse_rrf({"visual": VISUAL, "speech": SPEECH}, {"visual": 1.0, "speech": 1.0})
    by_id = {h.segment_id: h for h in hits}
    # "speech" < "visual": ranks are 0-based positions in each modality's own list.
    assert by_id[20].contributions == (Contribution("speech", 0, 0.80), Contribution("visual", 1, 0.25))
    assert by_id[40].contributions == (Contribution("speech", 1, 0.60),)
    assert by_id[20].best_rank == 0


def test_rrf_a_segment_in_two_lists_outranks_the_top_of_one_list_with_equal_weights():
    # 7 is 6th in both lists: 2/66 = 0.0303 > 1/61 = 0.0164 for 1, first in visual only.
    visual = [(1, 0.9)] + [(100 + i, 0.5) for i in range(4)] + [(7, 0.4)]
    speech = [(200 + i, 0.5) for i in range(5)] + [(7, 0.3)]
    hits = fuse_rrf({"visual": visual, "speech": speech}, {"visual": 1.0, "speech": 1.0})
    assert hits[0].segment_id == 7
    assert hits[0].score == pytest.approx(2 / 66)
    assert ids(hits).index(7) < ids(hits).index(1)


def test_rrf_ties_break_by_best_single_rank_then_segment_id():
    # k = 1, visual weight 2, speech weight 3:
    #   4: speech #1  3/(1+1) = 1.5
    #   9: visual #1  2/(1+1) = 1.0   best rank 0
    #   1: speech #2  3/(1+2) = 1.0   best rank 1: after 9 despite the smaller id
    hits = fuse_rrf({"visual": [(9, 0.5)], "speech": [(4, 0.7), (1, 0.6)]}, {"visual": 2, "speech": 3}, k=1)
    assert [(h.segment_id, h.score) for h in hits] == [(4, 1.5), (9, 1.0), (1, 1.0)]
    # Same score and same best rank: smaller id first, whichever modality is listed first.
    swapped = {"speech": [(8, 0.2)], "visual": [(3, 0.1)]}
    assert ids(fuse_rrf(swapped, {"visual": 1, "speech": 1})) == [3, 8]


# -- weighted sum -------------------------------------------------------------------------


def test_weighted_sum_hand_computed():
    # Min-max per list: visual 0.30, 0.25, 0.20 -> 1, 0.5, 0;  speech 0.80, 0.60, 0.40 -> 1, 0.5, 0.
    # Weights visual 1, speech 3, so divide by 4:
    #   10: (1*1.0        ) / 4 = 0.25
    #   20: (1*0.5 + 3*1.0) / 4 = 0.875
    #   30: (1*0.0        ) / 4 = 0.0    best rank 2 \ tie: best ranks equal,
    #   40: (       3*0.5 ) / 4 = 0.375                  > smaller id first
    #   50: (       3*0.0 ) / 4 = 0.0    best rank 2 /
    hits = fuse_weighted_sum({"visual": VISUAL, "speech": SPEECH}, {"visual": 1.0, "speech": 3.0})
    assert ids(hits) == [20, 40, 10, 30, 50]
    expected = {20: 0.875, 40: 0.375, 10: 0.25, 30: 0.0, 50: 0.0}
    assert {h.segment_id: h.score for h in hits} == pytest.approx(expected, abs=1e-12)


def test_weighted_sum_constant_or_single_hit_list_normalises_to_one():
    # visual 0.9, 0.1 -> 1, 0; speech is constant -> 1, 1. Equal weights, divide by 2:
    #   7: 0.5 (visual rank 0), 5: 0.5 (speech rank 0), 2: 0.5 (speech rank 1), 3: 0.0
    lists = {"visual": [(7, 0.9), (3, 0.1)], "speech": [(5, 0.4), (2, 0.4)]}
    hits = fuse_weighted_sum(lists, {"visual": 1, "speech": 1})
    assert [(h.segment_id, h.score) for h in hits] == [(5, 0.5), (7, 0.5), (2, 0.5), (3, 0.0)]
    single = fuse_weighted_sum({"speech": [(11, 0.07)]}, {"speech": 2.0})
    assert [(h.segment_id, h.score) for h in single] == [(11, 1.0)]


def test_weighted_sum_counts_a_searched_modality_without_hits_in_the_denominator():
    # visual was searched (weight 1) and found nothing: speech's 1.0 is divided by 1 + 1.
    hits = fuse_weighted_sum({"visual": [], "speech": [(1, 0.5)]}, {"visual": 1.0, "speech": 1.0})
    assert [(h.segment_id, h.score) for h in hits] == [(1, 0.5)]


# -- both methods -------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["rrf", "sum"])
def test_weight_zero_or_missing_turns_a_modality_off(method):
    lists = {"visual": VISUAL, "speech": SPEECH, "subtitles": [(99, 0.99)]}
    hits = fuse(method, lists, {"visual": 0.0, "speech": 1.0})  # subtitles: no weight at all
    assert ids(hits) == [20, 40, 50]
    assert all(c.modality == "speech" for h in hits for c in h.contributions)
    if method == "sum":  # the switched-off modality is not in the denominator either
        assert hits[0].score == 1.0


@pytest.mark.parametrize("method", ["rrf", "sum", FusionMethod.RRF, FusionMethod.SUM, "RRF"])
def test_empty_inputs_give_an_empty_list(method):
    assert fuse(method, {}, {}) == []
    assert fuse(method, {"visual": [], "speech": []}, {"visual": 1, "speech": 1}) == []
    assert fuse(method, {"visual": VISUAL}, {"visual": 0}) == []


@pytest.mark.parametrize("method", ["rrf", "sum"])
def test_one_weighted_modality_keeps_its_order_exactly(method):
    rng = random.Random(1234)
    for trial in range(50):
        n = rng.randint(1, 40)
        scores = sorted((round(rng.uniform(-0.2, 0.9), 2) for _ in range(n)), reverse=True)  # with ties
        segment_ids = rng.sample(range(10_000), n)
        only = list(zip(segment_ids, scores))
        noise = [(rng.randrange(10_000), rng.random()) for _ in range(10)]
        lists = {"visual": noise, "speech": only, "subtitles": noise[::-1]}
        hits = fuse(method, lists, {"visual": 0, "speech": rng.uniform(0.1, 5), "subtitles": 0})
        assert ids(hits) == segment_ids, f"trial {trial}"
        assert [h.contributions[0].rank for h in hits] == list(range(n))


def test_a_segment_listed_twice_by_one_modality_keeps_its_first_place():
    hits = fuse_rrf({"visual": [(1, 0.9), (2, 0.8), (1, 0.7)]}, {"visual": 1.0})
    assert ids(hits) == [1, 2]
    assert hits[0].contributions == (Contribution("visual", 0, 0.9),)


# -- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method, weights, k, message",
    [
        ("max", {"visual": 1.0}, 60.0, "unknown fusion method"),
        ("rrf", {"visual": -0.5}, 60.0, "weight of 'visual'"),
        ("sum", {"visual": 1.0, "speech": math.nan}, 60.0, "weight of 'speech'"),
        ("rrf", {"visual": math.inf}, 60.0, "weight of 'visual'"),
        ("rrf", {"visual": "1"}, 60.0, "weight of 'visual'"),
        ("rrf", {"visual": 1.0}, 0.0, "k must be"),
        ("sum", {"visual": 1.0}, -1.0, "k must be"),
        ("rrf", {"visual": 1.0}, math.nan, "k must be"),
    ],
)
def test_bad_arguments_raise_value_error(method, weights, k, message):
    with pytest.raises(ValueError, match=message):
        fuse(method, {"visual": VISUAL}, weights, k)


def test_a_negative_weight_fails_even_for_a_modality_not_searched():
    with pytest.raises(ValueError, match="subtitles"):
        fuse_weighted_sum({"visual": VISUAL}, {"visual": 1.0, "subtitles": -1.0})


def test_non_finite_scores_are_rejected():
    with pytest.raises(ValueError, match="non-finite"):
        fuse_rrf({"visual": [(1, math.nan)]}, {"visual": 1.0})


# --- groups: modalities on one scale are ranked and normalised together -----------------------


def test_grouped_lists_are_ranked_jointly_by_score_under_rrf():
    # speech: A 0.6, B 0.3; subtitles: C 0.25. Alone, C heads its list and ties A (1/61 each).
    # Grouped: the joint list is A 0.6 (rank 0), B 0.3 (1), C 0.25 (2): A 1/61, B 1/62, C 1/63.
    lists = {"speech": [(1, 0.6), (2, 0.3)], "subtitles": [(3, 0.25)]}
    weights = {"speech": 1.0, "subtitles": 1.0}
    alone = fuse("rrf", lists, weights)
    assert alone[0].score == alone[1].score == pytest.approx(1 / 61)
    grouped = fuse("rrf", lists, weights, groups={"speech": "text", "subtitles": "text"})
    assert [h.segment_id for h in grouped] == [1, 2, 3]
    assert [h.score for h in grouped] == pytest.approx([1 / 61, 1 / 62, 1 / 63])
    # Contributions still report each modality's own rank.
    assert grouped[2].contributions[0].rank == 0


def test_grouped_lists_share_one_min_max_under_sum():
    # Joint range 0.2 .. 0.6: A (0.6) -> 1, B (0.4) -> 0.5, C (0.2) -> 0; mean over two weights.
    lists = {"speech": [(1, 0.6), (2, 0.4)], "subtitles": [(3, 0.2)]}
    weights = {"speech": 1.0, "subtitles": 1.0}
    grouped = fuse("sum", lists, weights, groups={"speech": "text", "subtitles": "text"})
    assert [h.segment_id for h in grouped] == [1, 2, 3]
    assert [h.score for h in grouped] == pytest.approx([0.5, 0.25, 0.0])


def test_a_group_of_one_searched_modality_changes_nothing():
    lists = {"visual": [(1, 0.3), (2, 0.2)], "speech": [(3, 0.9)]}
    weights = {"visual": 1.0, "speech": 1.0}
    assert fuse("rrf", lists, weights, groups={"speech": "text", "subtitles": "text"}) == fuse("rrf", lists, weights)
