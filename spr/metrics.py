"""RVMR (ranked video moment retrieval) metrics with TVR-Ranking semantics.

A query's answer is a ranked list of moments ``(video_name, start_s, end_s)``; its ground truth
is a set of moments with graded relevance (TVR-Ranking uses 0-4). Two metrics are reported,
each at a cut-off ``K`` and a temporal-IoU threshold ``mu``:

* NDCG@K, IoU>=mu -- predictions are greedily matched to ground truth (see
  :func:`match_relevances`); a matched prediction earns its ground truth's relevance as gain
  ``2**rel - 1``, discounted by ``log2(rank + 1)``; normalised by the DCG of the ground-truth
  relevances sorted descending.
* Recall@K, IoU>=mu -- the fraction of relevant ground-truth moments matched in the top K.

Threshold comparison is ``IoU >= mu``, as in the paper's text (arXiv 2501.05072). The
TVR-Ranking reference script compares with strict ``>``; the two only differ for an IoU that
is exactly equal to ``mu``. Because a match also needs positive overlap (IoU > 0), ``mu = 0``
behaves like the reference script's ``> 0``.

All times are in seconds. Predictions are taken in the order given (rank 1 first); ``score``
is carried along but never used to re-sort.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "GroundTruthMoment",
    "PredictedMoment",
    "RankingReport",
    "dcg",
    "evaluate_rankings",
    "load_ground_truth",
    "load_predictions",
    "match_relevances",
    "ndcg_at_k",
    "recall_at_k",
    "temporal_iou",
]


def _check_interval(video_name: str, start_s: float, end_s: float) -> None:
    if not (math.isfinite(start_s) and math.isfinite(end_s)):
        raise ValueError(
            f"moment in video {video_name!r} has a non-finite time: "
            f"start_s={start_s!r}, end_s={end_s!r}"
        )
    if end_s < start_s:
        raise ValueError(
            f"moment in video {video_name!r} ends before it starts: "
            f"start_s={start_s!r}, end_s={end_s!r}"
        )


@dataclass(frozen=True)
class PredictedMoment:
    """One retrieved moment: ``[start_s, end_s]`` seconds of ``video_name``.

    ``score`` is informational; rank is the position in the prediction list.
    """

    video_name: str
    start_s: float
    end_s: float
    score: float = 0.0

    def __post_init__(self) -> None:
        _check_interval(self.video_name, self.start_s, self.end_s)


@dataclass(frozen=True)
class GroundTruthMoment:
    """One annotated moment with graded ``relevance`` (finite, >= 0; 0 means not relevant)."""

    video_name: str
    start_s: float
    end_s: float
    relevance: float

    def __post_init__(self) -> None:
        _check_interval(self.video_name, self.start_s, self.end_s)
        # A negative or NaN relevance would make gains negative/NaN and IDCG meaningless.
        if not (math.isfinite(self.relevance) and self.relevance >= 0):
            raise ValueError(
                f"moment in video {self.video_name!r} has invalid relevance "
                f"{self.relevance!r}; expected a finite number >= 0"
            )


def _check_k(k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")


def _check_iou_threshold(iou_threshold: float) -> None:
    # The negated form also rejects NaN.
    if not (0.0 <= iou_threshold <= 1.0):
        raise ValueError(f"iou_threshold must be in [0, 1], got {iou_threshold!r}")


def temporal_iou(a_start: float, a_end: float, b_start: float, b_end: float) -> float:
    """Temporal IoU of intervals ``[a_start, a_end]`` and ``[b_start, b_end]`` (seconds).

    Returns a value in [0, 1]. The union is the hull ``max(ends) - min(starts)``; when it is 0
    (two identical zero-length moments) the IoU is defined as 0.0, matching the TVR-Ranking
    reference code, so a zero-length moment never matches anything.
    """
    intersection = max(0.0, min(a_end, b_end) - max(a_start, b_start))
    union = max(a_end, b_end) - min(a_start, b_start)
    return intersection / union if union > 0 else 0.0


def _iou_matrix(
    predictions: Sequence[PredictedMoment], ground_truth: Sequence[GroundTruthMoment]
) -> np.ndarray:
    """IoU of every prediction (rows) with every ground truth (columns), shape ``(P, G)``.

    Pairs from different videos get -1 so that they lose to any same-video candidate and can
    never pass a threshold. Uses the same float operations as :func:`temporal_iou`, so results
    are bit-identical (threshold boundaries behave the same).
    """
    p_start = np.array([p.start_s for p in predictions], dtype=np.float64)[:, None]
    p_end = np.array([p.end_s for p in predictions], dtype=np.float64)[:, None]
    g_start = np.array([g.start_s for g in ground_truth], dtype=np.float64)[None, :]
    g_end = np.array([g.end_s for g in ground_truth], dtype=np.float64)[None, :]
    intersection = np.maximum(0.0, np.minimum(p_end, g_end) - np.maximum(p_start, g_start))
    union = np.maximum(p_end, g_end) - np.minimum(p_start, g_start)
    iou = np.divide(intersection, union, out=np.zeros_like(intersection), where=union > 0)
    same_video = np.array(
        [[p.video_name == g.video_name for g in ground_truth] for p in predictions], dtype=bool
    ).reshape(len(predictions), len(ground_truth))
    return np.where(same_video, iou, -1.0)


def _sort_ground_truth(ground_truth: Sequence[GroundTruthMoment]) -> list[GroundTruthMoment]:
    # Stable sort: among equal-IoU candidates the more relevant one wins, then input order.
    return sorted(ground_truth, key=lambda g: g.relevance, reverse=True)


def _greedy_match(iou: np.ndarray, iou_threshold: float) -> list[int | None]:
    """Per prediction (row, rank order): index of the ground-truth column it consumes, or None.

    Greedy in rank order, so the matching of a prefix never depends on later predictions;
    matching the longest list once therefore serves every smaller K.
    """
    available = iou.copy()
    matched: list[int | None] = []
    for row in available:
        if row.size == 0:
            matched.append(None)
            continue
        best = int(np.argmax(row))  # argmax returns the first maximum: the tie-break rule
        best_iou = float(row[best])
        # best_iou > 0 keeps mu = 0 from matching disjoint or other-video moments.
        if best_iou > 0.0 and best_iou >= iou_threshold:
            matched.append(best)
            available[:, best] = -np.inf  # each ground truth matches at most once
        else:
            matched.append(None)
    return matched


def match_relevances(
    predictions: Sequence[PredictedMoment],
    ground_truth: Sequence[GroundTruthMoment],
    iou_threshold: float,
) -> list[float]:
    """Relevance earned by each prediction, in rank order (length ``len(predictions)``).

    Ground truth is first sorted by relevance descending (stable). Walking the predictions in
    rank order, each one is compared with the not-yet-matched ground-truth moments of the same
    video and takes the one with the highest IoU (ties: first in the sorted ground truth). If
    that IoU is >= ``iou_threshold`` (and > 0), the prediction earns that moment's relevance and
    the moment is consumed; otherwise the prediction earns 0 and nothing is consumed. So a
    duplicate prediction can only earn a different, still-unmatched moment.
    """
    _check_iou_threshold(iou_threshold)
    if not predictions:
        return []
    gt_sorted = _sort_ground_truth(ground_truth)
    matched = _greedy_match(_iou_matrix(predictions, gt_sorted), iou_threshold)
    return [0.0 if j is None else float(gt_sorted[j].relevance) for j in matched]


def dcg(relevances: Sequence[float], k: int) -> float:
    """DCG@k of relevances in rank order: ``sum((2**rel - 1) / log2(rank + 1))``, rank from 1.

    Only the first ``k`` entries count; a shorter list simply sums fewer terms.
    """
    _check_k(k)
    return sum(
        (2.0 ** rel - 1.0) / math.log2(rank + 1)
        for rank, rel in enumerate(relevances[:k], start=1)
    )


def _has_relevant(ground_truth: Sequence[GroundTruthMoment]) -> bool:
    return any(g.relevance > 0 for g in ground_truth)


def _ideal_dcg(ground_truth: Sequence[GroundTruthMoment], k: int) -> float:
    return dcg(sorted((g.relevance for g in ground_truth), reverse=True), k)


def _ndcg_from_relevances(
    earned: Sequence[float], ground_truth: Sequence[GroundTruthMoment], k: int
) -> float:
    return dcg(earned, k) / _ideal_dcg(ground_truth, k)


def _recall_from_match(
    matched: Sequence[int | None], gt_sorted: Sequence[GroundTruthMoment], k: int
) -> float:
    num_relevant = sum(1 for g in gt_sorted if g.relevance > 0)
    hits = sum(1 for j in matched[:k] if j is not None and gt_sorted[j].relevance > 0)
    return hits / num_relevant


def _require_relevant(ground_truth: Sequence[GroundTruthMoment], metric: str) -> None:
    if not _has_relevant(ground_truth):
        raise ValueError(
            f"{metric} is undefined for a query without relevant ground truth "
            "(no moment with relevance > 0); evaluate_rankings skips such queries"
        )


def ndcg_at_k(
    predictions: Sequence[PredictedMoment],
    ground_truth: Sequence[GroundTruthMoment],
    k: int,
    iou_threshold: float,
) -> float:
    """NDCG@k at IoU >= ``iou_threshold`` for one query, in [0, 1].

    The ideal DCG uses all ground-truth relevances sorted descending and truncated at k.
    Raises ValueError if the ground truth has no moment with relevance > 0 (NDCG undefined).
    """
    _check_k(k)
    _check_iou_threshold(iou_threshold)
    _require_relevant(ground_truth, "NDCG")
    earned = match_relevances(predictions[:k], ground_truth, iou_threshold)
    return _ndcg_from_relevances(earned, ground_truth, k)


def recall_at_k(
    predictions: Sequence[PredictedMoment],
    ground_truth: Sequence[GroundTruthMoment],
    k: int,
    iou_threshold: float,
) -> float:
    """Recall@k at IoU >= ``iou_threshold`` for one query, in [0, 1].

    ``(relevant ground-truth moments matched by the top k) / (relevant ground-truth moments)``,
    with the same greedy matching as :func:`match_relevances`. Raises ValueError if the ground
    truth has no moment with relevance > 0.
    """
    _check_k(k)
    _check_iou_threshold(iou_threshold)
    _require_relevant(ground_truth, "recall")
    if not predictions:
        return 0.0
    gt_sorted = _sort_ground_truth(ground_truth)
    matched = _greedy_match(_iou_matrix(predictions[:k], gt_sorted), iou_threshold)
    return _recall_from_match(matched, gt_sorted, k)


def _iou_key(iou_threshold: float) -> str:
    return str(float(iou_threshold))


@dataclass(frozen=True)
class RankingReport:
    """Mean NDCG and recall over the counted queries.

    ``ndcg[K][iou]`` and ``recall[K][iou]`` are means over the ``num_queries`` queries that have
    at least one relevant ground-truth moment.
    """

    ndcg: dict[int, dict[float, float]]
    recall: dict[int, dict[float, float]]
    num_queries: int

    def to_json(self) -> dict:
        """JSON-serialisable form with string keys: ``{"ndcg": {"10": {"0.3": v}}, ...}``."""

        def table(values: dict[int, dict[float, float]]) -> dict[str, dict[str, float]]:
            return {
                str(k): {_iou_key(iou): float(v) for iou, v in row.items()}
                for k, row in values.items()
            }

        return {
            "ndcg": table(self.ndcg),
            "recall": table(self.recall),
            "num_queries": self.num_queries,
        }

    def format_table(self) -> str:
        """Human-readable tables (NDCG, then recall): one row per K, one column per IoU."""
        lines = [f"queries evaluated: {self.num_queries}"]
        for name, values in (("NDCG", self.ndcg), ("Recall", self.recall)):
            ious = sorted({iou for row in values.values() for iou in row})
            header = f"{name + '@K':<10}" + "".join(f"{'IoU>=' + format(i, 'g'):>11}" for i in ious)
            lines += ["", header]
            for k in sorted(values):
                cells = "".join(f"{values[k][i]:>11.4f}" for i in ious)
                lines.append(f"{k:<10}{cells}")
        return "\n".join(lines)


def evaluate_rankings(
    predictions: Mapping[str, Sequence[PredictedMoment]],
    ground_truth: Mapping[str, Sequence[GroundTruthMoment]],
    ks: Sequence[int] = (10, 20, 40),
    iou_thresholds: Sequence[float] = (0.3, 0.5, 0.7),
) -> RankingReport:
    """Mean NDCG@K and Recall@K for every K in ``ks`` and IoU threshold in ``iou_thresholds``.

    Queries are those in ``ground_truth`` (keys are query ids); predictions for other queries are
    ignored. A query whose ground truth has no moment with relevance > 0 is skipped; a counted
    query without predictions scores 0. Raises ValueError if no query can be counted.
    """
    ks = list(ks)
    iou_thresholds = list(iou_thresholds)
    if not ks or not iou_thresholds:
        raise ValueError("ks and iou_thresholds must be non-empty")
    for k in ks:
        _check_k(k)
    for mu in iou_thresholds:
        _check_iou_threshold(mu)
    max_k = max(ks)

    ndcg_sum = {k: {mu: 0.0 for mu in iou_thresholds} for k in ks}
    recall_sum = {k: {mu: 0.0 for mu in iou_thresholds} for k in ks}
    num_queries = 0
    for query_id, gt in ground_truth.items():
        if not _has_relevant(gt):
            continue
        num_queries += 1
        preds = list(predictions.get(query_id, ()))[:max_k]
        if not preds:
            continue  # contributes 0 to every cell
        gt_sorted = _sort_ground_truth(gt)
        iou = _iou_matrix(preds, gt_sorted)  # shared by all thresholds
        for mu in iou_thresholds:
            matched = _greedy_match(iou, mu)
            earned = [0.0 if j is None else float(gt_sorted[j].relevance) for j in matched]
            for k in ks:
                ndcg_sum[k][mu] += _ndcg_from_relevances(earned, gt_sorted, k)
                recall_sum[k][mu] += _recall_from_match(matched, gt_sorted, k)

    if num_queries == 0:
        raise ValueError("no query has relevant ground truth (relevance > 0); nothing to evaluate")
    return RankingReport(
        ndcg={k: {mu: s / num_queries for mu, s in row.items()} for k, row in ndcg_sum.items()},
        recall={k: {mu: s / num_queries for mu, s in row.items()} for k, row in recall_sum.items()},
        num_queries=num_queries,
    )


def _timestamp(value: object, where: str) -> tuple[float, float]:
    if not isinstance(value, Sequence) or isinstance(value, (str, bytes)) or len(value) != 2:
        raise ValueError(f"{where}: timestamp must be [start_s, end_s], got {value!r}")
    return float(value[0]), float(value[1])


def _field(record: Mapping, name: str, where: str) -> object:
    try:
        return record[name]
    except KeyError:
        raise ValueError(f"{where}: missing field {name!r}") from None


def load_ground_truth(records: Iterable[Mapping]) -> dict[str, list[GroundTruthMoment]]:
    """Group TVR-Ranking annotation records by query.

    Each record: ``{"query_id", "query", "video_name", "timestamp": [s, e], "duration",
    "relevance"}`` (``query`` and ``duration`` are not used). Returns ``{str(query_id): moments}``
    with moments in record order. Raises ValueError naming the query and video for a malformed
    record.
    """
    out: dict[str, list[GroundTruthMoment]] = {}
    for index, record in enumerate(records):
        where = f"ground-truth record {index}"
        query_id = str(_field(record, "query_id", where))
        video_name = _field(record, "video_name", where)
        where = f"query {query_id!r}, video {video_name!r}"
        start_s, end_s = _timestamp(_field(record, "timestamp", where), where)
        relevance = float(_field(record, "relevance", where))
        try:
            moment = GroundTruthMoment(str(video_name), start_s, end_s, relevance)
        except ValueError as exc:
            raise ValueError(f"query {query_id!r}: {exc}") from None
        out.setdefault(query_id, []).append(moment)
    return out


def load_predictions(obj: Mapping[object, Sequence[Mapping]]) -> dict[str, list[PredictedMoment]]:
    """Parse ``{query_id: [{"video_name", "timestamp": [s, e], "score"}, ...]}``, lists in rank order.

    Keys become ``str(query_id)`` so int ids line up with :func:`load_ground_truth` and with
    JSON (whose object keys are strings). ``score`` is optional (default 0.0). Raises ValueError
    naming the query and video for a malformed entry, or if two keys map to the same string.
    """
    out: dict[str, list[PredictedMoment]] = {}
    for raw_id, entries in obj.items():
        query_id = str(raw_id)
        if query_id in out:
            raise ValueError(f"query id {raw_id!r} appears twice (as int and str?)")
        moments: list[PredictedMoment] = []
        for rank, entry in enumerate(entries, start=1):
            where = f"query {query_id!r}, prediction rank {rank}"
            video_name = _field(entry, "video_name", where)
            where = f"query {query_id!r}, video {video_name!r} (rank {rank})"
            start_s, end_s = _timestamp(_field(entry, "timestamp", where), where)
            try:
                moment = PredictedMoment(
                    str(video_name), start_s, end_s, float(entry.get("score", 0.0))
                )
            except ValueError as exc:
                raise ValueError(f"query {query_id!r}: {exc}") from None
            moments.append(moment)
        out[query_id] = moments
    return out
