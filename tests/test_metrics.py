"""Specification of the RVMR metrics (spr.metrics), with hand-computed expected values.

Notation in comments: log2(3) = 1.5849625, so 1/log2(3) = 0.6309298 (the rank-2 discount);
the rank-3 discount is 1/log2(4) = 1/2. Gain of relevance r is 2**r - 1.
"""

from __future__ import annotations

import json
import math

import pytest

from spr.metrics import (
    GroundTruthMoment,
    PredictedMoment,
    RankingReport,
    dcg,
    evaluate_rankings,
    load_ground_truth,
    load_predictions,
    match_relevances,
    ndcg_at_k,
    recall_at_k,
    temporal_iou,
)

RANK2 = 1 / math.log2(3)  # 0.6309298


def P(video: str, start: float, end: float) -> PredictedMoment:
    return PredictedMoment(video, start, end)


def G(video: str, start: float, end: float, relevance: float) -> GroundTruthMoment:
    return GroundTruthMoment(video, start, end, relevance)


# --- temporal IoU -----------------------------------------------------------------------------


def test_iou_identical_intervals_is_one():
    assert temporal_iou(0, 10, 0, 10) == 1.0


def test_iou_partial_overlap():
    # [0,10] vs [5,15]: intersection 5, union 15 -> 1/3
    assert temporal_iou(0, 10, 5, 15) == pytest.approx(1 / 3)
    assert temporal_iou(5, 15, 0, 10) == pytest.approx(1 / 3)  # symmetric


def test_iou_disjoint_and_touching_are_zero():
    assert temporal_iou(0, 5, 6, 10) == 0.0  # gap of 1s
    assert temporal_iou(0, 5, 5, 10) == 0.0  # share only the instant t=5


def test_iou_containment():
    # [2,4] inside [0,10]: intersection 2, union 10 -> 0.2
    assert temporal_iou(0, 10, 2, 4) == pytest.approx(0.2)


def test_iou_zero_length_moments():
    # Union 0 -> defined as 0, as in the TVR-Ranking reference code.
    assert temporal_iou(3, 3, 3, 3) == 0.0
    # A point inside an interval: intersection 0, union 10 -> 0
    assert temporal_iou(0, 10, 5, 5) == 0.0


# --- dcg ------------------------------------------------------------------------------------


def test_dcg_formula_and_truncation():
    # (2^3-1)/log2(2) + (2^1-1)/log2(3) + (2^2-1)/log2(4) = 7 + 0.6309298 + 1.5
    assert dcg([3, 1, 2], 3) == pytest.approx(7 + RANK2 + 1.5)
    assert dcg([3, 1, 2], 1) == pytest.approx(7.0)  # only rank 1
    assert dcg([3], 10) == pytest.approx(7.0)  # k beyond the list sums what is there
    assert dcg([], 5) == 0.0


# --- NDCG, one query --------------------------------------------------------------------------


def test_perfect_ranking_gives_one():
    gt = [G("v1", 0, 10, 3), G("v2", 0, 10, 1)]
    preds = [P("v1", 0, 10), P("v2", 0, 10)]
    # DCG = 7/1 + 1/log2(3) = IDCG
    assert ndcg_at_k(preds, gt, k=10, iou_threshold=0.7) == pytest.approx(1.0)


def test_relevant_hit_at_rank_two_instead_of_one():
    gt = [G("v1", 0, 10, 1)]
    preds = [P("v9", 0, 10), P("v1", 0, 10)]
    # DCG = 0 + 1/log2(3) = 0.6309298; IDCG = 1/log2(2) = 1
    assert ndcg_at_k(preds, gt, k=10, iou_threshold=0.5) == pytest.approx(0.6309298, abs=1e-7)


def test_iou_exactly_equal_to_threshold_counts():
    gt = [G("v1", 0, 10, 1)]
    # [0,5] vs [0,10]: 5/10 = 0.5 exactly; [0,3] vs [0,10]: 3/10 = 0.3 exactly (as doubles)
    assert ndcg_at_k([P("v1", 0, 5)], gt, k=1, iou_threshold=0.5) == 1.0
    assert ndcg_at_k([P("v1", 0, 3)], gt, k=1, iou_threshold=0.3) == 1.0
    # Just above the IoU: no match, NDCG 0
    assert ndcg_at_k([P("v1", 0, 5)], gt, k=1, iou_threshold=0.5000001) == 0.0


def test_wrong_video_never_matches_even_with_identical_times():
    gt = [G("v1", 0, 10, 2)]
    preds = [P("v2", 0, 10)]
    assert match_relevances(preds, gt, iou_threshold=0.0) == [0.0]
    assert ndcg_at_k(preds, gt, k=1, iou_threshold=0.3) == 0.0
    assert recall_at_k(preds, gt, k=1, iou_threshold=0.3) == 0.0


def test_threshold_zero_still_needs_positive_overlap():
    # Beyond the spec: at mu = 0 a disjoint moment of the same video does not match
    # (the reference's strict "> 0"), otherwise any same-video guess would score.
    gt = [G("v1", 0, 10, 1)]
    assert match_relevances([P("v1", 20, 30)], gt, iou_threshold=0.0) == [0.0]
    assert match_relevances([P("v1", 9, 30)], gt, iou_threshold=0.0) == [1.0]  # IoU 1/30


def test_prediction_takes_highest_iou_not_highest_relevance():
    gt = [G("v1", 0, 10, 3), G("v1", 0, 8, 1)]
    # [0,8] vs [0,10]: IoU 0.8; vs [0,8]: IoU 1.0 -> takes the rel-1 moment
    assert match_relevances([P("v1", 0, 8)], gt, iou_threshold=0.5) == [1.0]


def test_iou_tie_goes_to_more_relevant_ground_truth():
    gt = [G("v1", 0, 10, 1), G("v1", 0, 10, 3)]
    # IoU 1.0 with both; ground truth sorted by relevance first -> the rel-3 moment wins,
    # then the duplicate takes the remaining rel-1 moment.
    assert match_relevances([P("v1", 0, 10), P("v1", 0, 10)], gt, 0.5) == [3.0, 1.0]


def test_iou_tie_with_equal_relevance_goes_to_first_listed():
    a, b = G("v1", 0, 10, 2), G("v1", 5, 15, 2)
    preds = [P("v1", 0, 15), P("v1", 0, 10)]
    # Pred 1 [0,15]: IoU 10/15 with both a and b -> ties -> first listed is consumed.
    # Pred 2 [0,10]: IoU 1.0 with a, 5/15 = 0.333 with b.
    # a listed first: pred 1 takes a; pred 2 only has b at 0.333 < 0.5 -> 0.
    assert match_relevances(preds, [a, b], iou_threshold=0.5) == [2.0, 0.0]
    # b listed first: pred 1 takes b; pred 2 takes a at IoU 1.0.
    assert match_relevances(preds, [b, a], iou_threshold=0.5) == [2.0, 2.0]


def test_duplicate_prediction_matches_only_once():
    gt = [G("v1", 0, 10, 1)]
    preds = [P("v1", 0, 10), P("v1", 0, 10)]
    assert match_relevances(preds, gt, iou_threshold=0.5) == [1.0, 0.0]
    # DCG@2 = 1 + 0 = IDCG@2 (one ground truth) -> 1.0; the duplicate is not rewarded twice
    assert ndcg_at_k(preds, gt, k=2, iou_threshold=0.5) == pytest.approx(1.0)


def test_below_threshold_consumes_nothing():
    gt = [G("v1", 0, 10, 1)]
    # Pred 1 [0,2]: IoU 0.2 < 0.5 -> 0, ground truth stays available for pred 2 (IoU 1.0).
    assert match_relevances([P("v1", 0, 2), P("v1", 0, 10)], gt, 0.5) == [0.0, 1.0]


def test_k_beyond_the_prediction_list():
    gt = [G("v1", 0, 10, 1), G("v1", 20, 30, 1)]
    preds = [P("v1", 0, 10)]
    # DCG@10 = 1; IDCG@10 = 1 + 1/log2(3) = 1.6309298 -> 0.6131472
    assert ndcg_at_k(preds, gt, k=10, iou_threshold=0.5) == pytest.approx(0.6131472, abs=1e-7)
    assert recall_at_k(preds, gt, k=10, iou_threshold=0.5) == pytest.approx(0.5)  # 1 of 2


def test_k_truncates_the_ideal_list():
    gt = [G("v1", 0, 10, 1), G("v2", 0, 10, 1), G("v3", 0, 10, 1)]
    preds = [P("v1", 0, 10)]
    # K=1: DCG 1 / IDCG@1 1 -> 1.0, although two relevant moments are never retrieved
    assert ndcg_at_k(preds, gt, k=1, iou_threshold=0.5) == pytest.approx(1.0)
    # K=2: IDCG@2 = 1 + 0.6309298 -> 1/1.6309298 = 0.6131472
    assert ndcg_at_k(preds, gt, k=2, iou_threshold=0.5) == pytest.approx(0.6131472, abs=1e-7)


def test_predictions_beyond_k_are_ignored():
    gt = [G("v1", 0, 10, 1)]
    preds = [P("v9", 0, 10), P("v1", 0, 10)]
    assert ndcg_at_k(preds, gt, k=1, iou_threshold=0.5) == 0.0
    assert recall_at_k(preds, gt, k=1, iou_threshold=0.5) == 0.0


def test_multi_level_relevance_in_reversed_order():
    gt = [G("v1", 0, 10, 3), G("v2", 0, 10, 2), G("v3", 0, 10, 1)]
    preds = [P("v3", 0, 10), P("v2", 0, 10), P("v1", 0, 10)]
    # DCG  = (2^1-1)/1 + (2^2-1)/log2(3) + (2^3-1)/2 = 1 + 1.8927893 + 3.5 = 6.3927893
    # IDCG = (2^3-1)/1 + (2^2-1)/log2(3) + (2^1-1)/2 = 7 + 1.8927893 + 0.5 = 9.3927893
    # NDCG = 6.3927893 / 9.3927893 = 0.6806061
    assert ndcg_at_k(preds, gt, k=3, iou_threshold=0.5) == pytest.approx(0.6806061, abs=1e-7)


def test_ideal_dcg_counts_zero_relevance_ground_truth_as_zero_gain():
    gt = [G("v1", 0, 10, 0), G("v2", 0, 10, 1)]
    preds = [P("v1", 0, 10), P("v2", 0, 10)]
    # Pred 1 consumes the rel-0 moment (gain 0); DCG = 0 + 1/log2(3); IDCG = 1 + 0 -> 0.6309298
    assert ndcg_at_k(preds, gt, k=2, iou_threshold=0.5) == pytest.approx(RANK2)


def test_no_predictions_scores_zero():
    gt = [G("v1", 0, 10, 1)]
    assert ndcg_at_k([], gt, k=10, iou_threshold=0.5) == 0.0
    assert recall_at_k([], gt, k=10, iou_threshold=0.5) == 0.0


def test_single_query_metrics_undefined_without_relevant_ground_truth():
    with pytest.raises(ValueError, match="relevant"):
        ndcg_at_k([P("v1", 0, 10)], [G("v1", 0, 10, 0)], k=10, iou_threshold=0.5)
    with pytest.raises(ValueError, match="relevant"):
        recall_at_k([P("v1", 0, 10)], [], k=10, iou_threshold=0.5)


# --- recall -----------------------------------------------------------------------------------


def test_recall_counts_relevant_ground_truth_matched_in_top_k():
    gt = [G("v1", 0, 10, 2), G("v2", 0, 10, 1), G("v3", 0, 10, 1), G("v4", 0, 10, 0)]
    preds = [P("v4", 0, 10), P("v1", 0, 10), P("v2", 0, 10), P("v3", 0, 10)]
    # 3 relevant moments; the rel-0 match at rank 1 is not a recall hit.
    assert recall_at_k(preds, gt, k=1, iou_threshold=0.5) == pytest.approx(0.0)  # 0/3
    assert recall_at_k(preds, gt, k=2, iou_threshold=0.5) == pytest.approx(1 / 3)  # v1
    assert recall_at_k(preds, gt, k=3, iou_threshold=0.5) == pytest.approx(2 / 3)  # v1, v2
    assert recall_at_k(preds, gt, k=4, iou_threshold=0.5) == pytest.approx(1.0)


def test_recall_duplicates_do_not_double_count():
    gt = [G("v1", 0, 10, 1), G("v1", 40, 50, 1)]
    preds = [P("v1", 0, 10), P("v1", 0, 10)]
    # second copy: only [40,50] left, IoU 0 -> no hit; 1 of 2
    assert recall_at_k(preds, gt, k=2, iou_threshold=0.3) == pytest.approx(0.5)


# --- evaluate_rankings ------------------------------------------------------------------------


def _three_queries():
    ground_truth = {
        "q1": [G("v1", 0, 10, 1)],
        "q2": [G("v2", 0, 10, 1)],
        "q3": [G("v3", 0, 10, 1)],
    }
    predictions = {
        "q1": [P("v1", 0, 10)],  # hit at rank 1, IoU 1.0
        "q2": [P("v9", 0, 10), P("v2", 0, 10)],  # hit at rank 2
        "q3": [P("v3", 0, 5)],  # IoU 0.5: counts at 0.3 and 0.5, not at 0.7
    }
    return predictions, ground_truth


def test_evaluate_rankings_averages_over_queries():
    predictions, ground_truth = _three_queries()
    report = evaluate_rankings(predictions, ground_truth, ks=(1, 2), iou_thresholds=(0.3, 0.5, 0.7))
    assert report.num_queries == 3
    # Per-query NDCG@1: q1 1, q2 0, q3 1 (0 at 0.7)
    assert report.ndcg[1][0.3] == pytest.approx(2 / 3)  # (1 + 0 + 1) / 3
    assert report.ndcg[1][0.5] == pytest.approx(2 / 3)
    assert report.ndcg[1][0.7] == pytest.approx(1 / 3)  # (1 + 0 + 0) / 3
    # Per-query NDCG@2: q1 1, q2 0.6309298, q3 1 (0 at 0.7)
    assert report.ndcg[2][0.3] == pytest.approx(0.8769766, abs=1e-7)  # 2.6309298 / 3
    assert report.ndcg[2][0.5] == pytest.approx(0.8769766, abs=1e-7)
    assert report.ndcg[2][0.7] == pytest.approx(0.5436433, abs=1e-7)  # 1.6309298 / 3
    # Recall@1: q1 1, q2 0, q3 1|0 ; Recall@2: q1 1, q2 1, q3 1|0
    assert report.recall[1][0.5] == pytest.approx(2 / 3)
    assert report.recall[1][0.7] == pytest.approx(1 / 3)
    assert report.recall[2][0.5] == pytest.approx(1.0)
    assert report.recall[2][0.7] == pytest.approx(2 / 3)


def test_evaluate_rankings_agrees_with_single_query_functions():
    predictions, ground_truth = _three_queries()
    report = evaluate_rankings(predictions, ground_truth, ks=(1, 2), iou_thresholds=(0.3, 0.7))
    for k in (1, 2):
        for mu in (0.3, 0.7):
            ndcgs = [ndcg_at_k(predictions[q], ground_truth[q], k, mu) for q in ground_truth]
            recalls = [recall_at_k(predictions[q], ground_truth[q], k, mu) for q in ground_truth]
            assert report.ndcg[k][mu] == pytest.approx(sum(ndcgs) / 3)
            assert report.recall[k][mu] == pytest.approx(sum(recalls) / 3)


def test_queries_without_relevant_ground_truth_are_skipped_and_missing_predictions_count_zero():
    ground_truth = {
        "perfect": [G("v1", 0, 10, 1)],
        "all_irrelevant": [G("v2", 0, 10, 0)],  # skipped
        "empty": [],  # skipped
        "unanswered": [G("v3", 0, 10, 2)],  # counted, scores 0
    }
    predictions = {
        "perfect": [P("v1", 0, 10)],
        "all_irrelevant": [P("v2", 0, 10)],
        "not_in_ground_truth": [P("v4", 0, 10)],  # ignored
    }
    report = evaluate_rankings(predictions, ground_truth, ks=(10,), iou_thresholds=(0.5,))
    assert report.num_queries == 2
    assert report.ndcg[10][0.5] == pytest.approx(0.5)  # (1 + 0) / 2
    assert report.recall[10][0.5] == pytest.approx(0.5)


def test_evaluate_rankings_default_table_shape():
    predictions, ground_truth = _three_queries()
    report = evaluate_rankings(predictions, ground_truth)
    assert set(report.ndcg) == {10, 20, 40}
    assert all(set(row) == {0.3, 0.5, 0.7} for row in report.ndcg.values())
    # every prediction list fits in K=10, so the table is constant along K
    assert report.ndcg[10][0.5] == report.ndcg[40][0.5] == pytest.approx(0.8769766, abs=1e-7)


def test_evaluate_rankings_without_any_countable_query_raises():
    with pytest.raises(ValueError, match="relevant"):
        evaluate_rankings({}, {"q": [G("v1", 0, 10, 0)]})


def test_report_json_and_table():
    predictions, ground_truth = _three_queries()
    report = evaluate_rankings(predictions, ground_truth, ks=(1, 2), iou_thresholds=(0.3, 0.7))
    data = json.loads(json.dumps(report.to_json()))
    assert data["num_queries"] == 3
    assert set(data["ndcg"]) == {"1", "2"}
    assert set(data["ndcg"]["1"]) == {"0.3", "0.7"}
    assert data["ndcg"]["1"]["0.7"] == pytest.approx(1 / 3)
    assert data["recall"]["2"]["0.3"] == pytest.approx(1.0)
    table = report.format_table()
    assert "IoU>=0.3" in table and "IoU>=0.7" in table
    assert "0.3333" in table  # NDCG@1 at 0.7
    assert "0.8770" in table  # NDCG@2 at 0.3
    assert isinstance(report, RankingReport)


# --- loading ----------------------------------------------------------------------------------


def test_json_round_trip_with_int_query_ids():
    records = [
        {"query_id": 7, "query": "a man opens a door", "video_name": "vA",
         "timestamp": [0, 10], "duration": 60.0, "relevance": 3},
        {"query_id": 7, "query": "a man opens a door", "video_name": "vB",
         "timestamp": [5.5, 9], "duration": 30.0, "relevance": 1},
        {"query_id": 8, "query": "a dog runs", "video_name": "vC",
         "timestamp": [1, 2], "duration": 30.0, "relevance": 2},
    ]
    ground_truth = load_ground_truth(json.loads(json.dumps(records)))
    assert ground_truth == {
        "7": [G("vA", 0.0, 10.0, 3.0), G("vB", 5.5, 9.0, 1.0)],
        "8": [G("vC", 1.0, 2.0, 2.0)],
    }
    raw_predictions = {
        7: [{"video_name": "vA", "timestamp": [0, 10], "score": 0.9},
            {"video_name": "vB", "timestamp": [5.5, 9], "score": 0.8}],
        8: [{"video_name": "vC", "timestamp": [1, 2]}],  # score optional
    }
    # int keys directly, and after JSON (which turns them into strings) give the same result
    direct = load_predictions(raw_predictions)
    via_json = load_predictions(json.loads(json.dumps(raw_predictions)))
    assert direct == via_json
    assert direct["7"] == [PredictedMoment("vA", 0.0, 10.0, 0.9), PredictedMoment("vB", 5.5, 9.0, 0.8)]
    assert direct["8"] == [PredictedMoment("vC", 1.0, 2.0, 0.0)]
    report = evaluate_rankings(direct, ground_truth, ks=(10,), iou_thresholds=(0.7,))
    assert report.num_queries == 2
    assert report.ndcg[10][0.7] == pytest.approx(1.0)  # both queries ranked perfectly


def test_load_predictions_rejects_colliding_ids():
    with pytest.raises(ValueError, match="twice"):
        load_predictions({1: [], "1": []})


# --- validation -------------------------------------------------------------------------------


def test_end_before_start_raises():
    with pytest.raises(ValueError, match="'v1'"):
        PredictedMoment("v1", 5, 3)
    with pytest.raises(ValueError, match="'v1'"):
        GroundTruthMoment("v1", 5, 3, 1)


def test_nan_times_raise():
    with pytest.raises(ValueError, match="non-finite"):
        PredictedMoment("v1", math.nan, 3)
    with pytest.raises(ValueError, match="non-finite"):
        GroundTruthMoment("v1", 0, math.nan, 1)


def test_invalid_relevance_raises():
    with pytest.raises(ValueError, match="relevance"):
        GroundTruthMoment("v1", 0, 1, -1)
    with pytest.raises(ValueError, match="relevance"):
        GroundTruthMoment("v1", 0, 1, math.nan)


def test_loader_errors_name_query_and_video():
    bad_gt = [{"query_id": 3, "video_name": "vX", "timestamp": [9, 2], "relevance": 1}]
    with pytest.raises(ValueError, match=r"query '3'.*'vX'"):
        load_ground_truth(bad_gt)
    bad_pred = {5: [{"video_name": "vY", "timestamp": [float("nan"), 2]}]}
    with pytest.raises(ValueError, match=r"query '5'.*'vY'"):
        load_predictions(bad_pred)
    with pytest.raises(ValueError, match="timestamp"):
        load_predictions({5: [{"video_name": "vY", "timestamp": [1, 2, 3]}]})
    with pytest.raises(ValueError, match="relevance"):
        load_ground_truth([{"query_id": 3, "video_name": "vX", "timestamp": [0, 2]}])


@pytest.mark.parametrize("k", [0, -1])
def test_k_below_one_raises(k):
    gt, preds = [G("v1", 0, 10, 1)], [P("v1", 0, 10)]
    with pytest.raises(ValueError, match="k"):
        ndcg_at_k(preds, gt, k=k, iou_threshold=0.5)
    with pytest.raises(ValueError, match="k"):
        recall_at_k(preds, gt, k=k, iou_threshold=0.5)
    with pytest.raises(ValueError, match="k"):
        dcg([1.0], k)
    with pytest.raises(ValueError, match="k"):
        evaluate_rankings({}, {"q": gt}, ks=(10, k))


@pytest.mark.parametrize("mu", [-0.1, 1.5, math.nan])
def test_iou_threshold_outside_unit_interval_raises(mu):
    gt, preds = [G("v1", 0, 10, 1)], [P("v1", 0, 10)]
    with pytest.raises(ValueError, match="iou_threshold"):
        ndcg_at_k(preds, gt, k=10, iou_threshold=mu)
    with pytest.raises(ValueError, match="iou_threshold"):
        recall_at_k(preds, gt, k=10, iou_threshold=mu)
    with pytest.raises(ValueError, match="iou_threshold"):
        match_relevances(preds, gt, iou_threshold=mu)
    with pytest.raises(ValueError, match="iou_threshold"):
        evaluate_rankings({}, {"q": gt}, iou_thresholds=(0.5, mu))
