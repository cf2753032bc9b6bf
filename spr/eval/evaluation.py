"""``spr eval``: the real query pipeline over a TVR-Ranking query file, scored with NDCG@K, IoU>=mu.

Every query runs the online path: the same search engine the search service adapts
(:class:`spr.engine.MomentSearch`), handed in by the command line over the configured stores and
with the refiner in this process (:func:`spr.cli.eval.evaluate`). Evaluation only encodes the
queries up front and scores what comes back:

``embed``
    the query text through the CLIP text tower and the text projector (``clip.*``,
    ``projector.checkpoint``), batched; or precomputed CLIP text features (HDF5 keyed by query
    id) through the text projector; or, with ``projected``, ready joint-space embeddings; the
    engine gets each as an :class:`spr.engine.EncodedQuery`;
``ann``, ``catalog``, ``proposals``
    the engine's coarse path: ANN top-k segments (``proposals.top_k_segments``, 200), one catalog
    round trip, proposals by the configured gap rule, tau_C padding;
``features``, ``refine``
    optional: the engine's refiner, as the refiner reports them: the padded proposals' frame
    features read from the feature store, then the SPR_CLIP refiner of ``refiner.checkpoint``
    (its dynamic batcher: concurrent queries share forward passes).

Queries run in batches of ``batch_queries`` on a thread pool (``workers``): the coarse half of a
batch is one store search of its ``(B, dim)`` embeddings and one catalog lookup of the union of
their hits (:meth:`spr.engine.MomentSearch.prepare_many`, the same proposals as one query at a
time; each query's ``ann`` and ``catalog`` times are its share of its batch's calls); then each
query's refinement runs on the pool by itself, so the refiner's batcher sees up
to ``workers`` queries at once, like the service under load. Up to ``workers`` coarse batches run
at once. ``batch_queries=1`` searches each query alone (:meth:`~spr.engine.MomentSearch.search`).

Two rankings come out per query: **SP**, the unpadded proposals ranked by their best segment
(what a search with ``refine=false`` answers), and **SPR**, what a refined search answers: the
refined moments ranked by the refiner's score, or, where the search degrades (e.g. all its
videos lack frame features), the coarse proposals, counted as degraded. Both are cut to
``max_moments`` and scored with :func:`spr.metrics.evaluate_rankings`.

**The upper bound** (SPR paper, section 4.6 and Table 4, "UB") scores a perfect refiner and a
perfect re-ranker on the same padded proposals; see :func:`upper_bound_relevances` for how it is
read and computed.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from spr.config import Config
from spr.engine import (
    MODALITIES,
    EncodedQuery,
    MomentQuery,
    MomentSearch,
    PreparedSearch,
    SearchResult,
    UnknownCollection,
)
from spr.features import VISUAL
from spr.limits import MAX_SEGMENTS_K, MAX_TOP_K
from spr.metrics import GroundTruthMoment, PredictedMoment, RankingReport, dcg, evaluate_rankings
from spr.refinement import Moment, RefinerLoadError

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_IOUS",
    "DEFAULT_KS",
    "EvalError",
    "EvalOptions",
    "EvalQuery",
    "EvalReport",
    "QueryOutcome",
    "STAGES",
    "load_eval_queries",
    "predictions_to_json",
    "run_evaluation",
    "upper_bound_relevances",
    "upper_bound_report",
    "write_outputs",
]

DEFAULT_KS = (10, 20, 40)
DEFAULT_IOUS = (0.3, 0.5, 0.7)
# Per-query stages, in pipeline order (``features`` and ``refine`` only when refining).
STAGES = ("embed", "ann", "catalog", "proposals", "features", "refine")

UPPER_BOUND_READING = (
    "SPR section 4.6: a perfect refiner turns a padded proposal into the ground-truth moment it "
    "overlaps, clipped to the proposal (a refined moment never leaves its padded span), so it "
    "matches at IoU>=mu iff |gt & proposal| / |gt| >= mu; each proposal yields one moment and each "
    "ground truth is matched once (an optimal one-to-one assignment, most relevant first); a "
    "perfect re-ranker orders the matched moments by relevance. NDCG@K of that list, per mu."
)


class EvalError(ValueError):
    """Evaluation cannot run as asked (unknown collection, dimensions that do not fit, bad
    options); the message says what to fix."""


@dataclass(frozen=True)
class EvalQuery:
    """One query of the query file: id, text and its ground-truth moments."""

    query_id: str
    text: str
    ground_truth: tuple[GroundTruthMoment, ...]


@dataclass(frozen=True)
class EvalOptions:
    """What to evaluate. ``collection``: default ``vectors.collection``; ``query_features``: HDF5
    of CLIP text features keyed by query id (default: encode the query texts); ``projected``: those
    features are already joint-space embeddings; ``top_k_segments``: default
    ``proposals.top_k_segments``; ``max_moments``: predictions kept per query."""

    collection: str | None = None
    query_features: str | None = None
    projected: bool = False
    refine: bool = True
    top_k_segments: int | None = None
    max_moments: int = 100
    workers: int = 4
    # Queries per coarse batch: one store search and one catalog lookup for each batch of this
    # many queries (1: each query searches alone, the path before batching).
    batch_queries: int = 64
    ks: tuple[int, ...] = DEFAULT_KS
    iou_thresholds: tuple[float, ...] = DEFAULT_IOUS
    # Also score each text track alone and the fusion, when the collection has text tracks.
    modalities: bool = True
    # Index search breadth, as `spr search --nprobe/--ef` (None: the collection's defaults).
    nprobe: int | None = None
    ef: int | None = None


@dataclass
class QueryOutcome:
    """One query's run. ``sp``/``spr``: ranked predictions (``spr`` None without refinement);
    ``padded``: every padded proposal (the upper bound's candidates); ``degraded``: why SPR fell
    back to SP for this query (empty when refined); ``dropped``: proposals left out of
    refinement because their video has no frame features; ``timings_ms`` per stage."""

    query_id: str
    sp: list[PredictedMoment]
    spr: list[PredictedMoment] | None
    padded: list[Any]  # spr.proposals.Proposal
    timings_ms: dict[str, float]
    degraded: str = ""
    dropped: int = 0
    batch_queries: int = 0  # queries in the refiner batch this one rode in (0: not refined)
    batch_proposals: int = 0
    by_modality: dict[str, list[PredictedMoment]] = field(default_factory=dict)


@dataclass
class EvalReport:
    """Everything one evaluation produced; :meth:`to_json` is ``metrics.json``."""

    collection: str
    backend: str
    num_queries: int
    top_k_segments: int
    max_moments: int
    pad_s: float
    gap_rule: str
    query_source: str  # "text", "features" or "projected features"
    workers: int
    sp: RankingReport
    spr: RankingReport | None
    upper_bound: RankingReport
    timings_ms: dict[str, dict[str, float]]
    wall_s: float
    outcomes: list[QueryOutcome] = field(default_factory=list)
    refiner: str = ""
    random_parts: tuple[str, ...] = ()  # models running on random weights ("CLIP", "refiner")
    degraded_queries: int = 0
    dropped_proposals: int = 0
    # SP (coarse) rankings of each text track alone and of the fusion, from the same run:
    # {"speech": report, "subtitles": report, "fused": report}; empty when the collection has
    # no text tracks (or the search no text encoder).
    by_modality: dict[str, RankingReport] = field(default_factory=dict)
    fused_modalities: tuple[str, ...] = ()  # what the fusion searched
    # The search parameters asked for (None: the index's defaults) and the proposal bounds.
    nprobe: int | None = None
    ef: int | None = None
    merge_score_window: float = 1.0
    max_length_s: float = 0.0
    batch_queries: int = 1

    @property
    def refiner_batches(self) -> dict[str, float] | None:
        """Mean queries and proposals per refiner forward batch, as the refined queries saw them."""
        rode = [o for o in self.outcomes if o.batch_queries]
        if not rode:
            return None
        return {
            "mean_queries": float(np.mean([o.batch_queries for o in rode])),
            "mean_proposals": float(np.mean([o.batch_proposals for o in rode])),
        }

    @property
    def random_weights(self) -> bool:
        return bool(self.random_parts)

    @property
    def sp_predictions(self) -> dict[str, list[PredictedMoment]]:
        return {o.query_id: o.sp for o in self.outcomes}

    @property
    def spr_predictions(self) -> dict[str, list[PredictedMoment]] | None:
        if self.spr is None:
            return None
        return {o.query_id: o.spr or [] for o in self.outcomes}

    def to_json(self) -> dict[str, Any]:
        return {
            "collection": self.collection,
            "backend": self.backend,
            "queries": self.num_queries,
            "queries_evaluated": self.sp.num_queries,
            "query_source": self.query_source,
            "top_k_segments": self.top_k_segments,
            "max_moments": self.max_moments,
            "pad_s": self.pad_s,
            "gap_rule": self.gap_rule,
            "merge_score_window": self.merge_score_window,
            "max_length_s": self.max_length_s,
            "search_params": {"nprobe": self.nprobe, "ef": self.ef},
            "workers": self.workers,
            "batch_queries": self.batch_queries,
            "refined": self.spr is not None,
            "refiner": self.refiner,
            "random_weights": self.random_weights,
            "random_parts": list(self.random_parts),
            "degraded_queries": self.degraded_queries,
            "dropped_proposals": self.dropped_proposals,
            "refiner_batches": self.refiner_batches,
            "sp": self.sp.to_json(),
            "spr": None if self.spr is None else self.spr.to_json(),
            "upper_bound": {**self.upper_bound.to_json(), "reading": UPPER_BOUND_READING},
            "by_modality": {name: report.to_json() for name, report in self.by_modality.items()},
            "fused_modalities": list(self.fused_modalities),
            "timings_ms": self.timings_ms,
            "wall_s": self.wall_s,
            "queries_per_s": self.num_queries / self.wall_s if self.wall_s > 0 else None,
        }

    def format_table(self) -> str:
        """The NDCG table (SP, SPR, UB side by side, the paper's Table 1/4 layout) and timings."""
        ks = sorted(self.sp.ndcg)
        ious = sorted({mu for row in self.sp.ndcg.values() for mu in row})
        width = 8 * len(ious) + 2
        lines = [
            f"spr eval: {self.num_queries} queries ({self.sp.num_queries} with relevant ground truth), "
            f"collection {self.collection!r} ({self.backend}), top-{self.top_k_segments} segments, "
            f"gap rule {self.gap_rule}, tau_C {self.pad_s:g} s, queries from {self.query_source}",
        ]
        if self.spr is not None:
            lines.append(f"refiner: {self.refiner}")
            batches = self.refiner_batches
            if batches is not None:
                lines.append(
                    f"  batches of {batches['mean_queries']:.1f} queries / {batches['mean_proposals']:.0f} proposals "
                    "on average (dynamic batching across concurrent queries)"
                )
            if self.degraded_queries or self.dropped_proposals:
                lines.append(
                    f"  {self.degraded_queries} queries answered unrefined (as the service would), "
                    f"{self.dropped_proposals} proposals without frame features dropped"
                )
        if self.random_parts:
            lines.append(
                f"NOTE: RANDOM weights ({', '.join(self.random_parts)}): these numbers check the pipeline, not a model"
            )
        lines += ["", (f"{'NDCG':<6}" + "".join(f"{'@' + str(k):<{width}}" for k in ks)).rstrip()]
        lines.append((f"{'IoU>=':<6}" + "".join("".join(f"{mu:<8g}" for mu in ious) + "  " for _ in ks)).rstrip())
        rows = [("SP", self.sp), ("SPR", self.spr), ("UB", self.upper_bound)]
        rows += [(f"SP:{name[:3]}", report) for name, report in self.by_modality.items()]
        for name, report in rows:
            if report is None:
                continue
            cells = "".join("".join(f"{report.ndcg[k][mu]:<8.4f}" for mu in ious) + "  " for k in ks)
            lines.append(f"{name:<6}{cells}".rstrip())
        lines.append("UB: perfect refinement and re-ranking of the padded proposals (paper Table 4)")
        if self.by_modality:
            lines.append(
                "SP: visual alone; SP:spe / SP:sub speech / subtitles alone; SP:fus the fusion of "
                f"{', '.join(self.fused_modalities)} (coarse rankings, one run)"
            )
        lines += ["", f"{'per query (ms)':<16}{'mean':>10}{'p50':>10}"]
        for stage, values in self.timings_ms.items():
            lines.append(f"{stage:<16}{values['mean']:>10.2f}{values['p50']:>10.2f}")
        qps = self.num_queries / self.wall_s if self.wall_s > 0 else float("nan")
        lines.append(
            f"wall {self.wall_s:.2f} s for {self.num_queries} queries ({qps:.1f} queries/s, {self.workers} workers, "
            f"batches of {self.batch_queries}; model loading excluded)"
        )
        return "\n".join(lines)


# --- query files ------------------------------------------------------------------------------


def load_eval_queries(path: str | os.PathLike[str]) -> list[EvalQuery]:
    """The queries of a TVR-Ranking file (JSONL, JSON array, or a JSON object holding the array;
    one record per query-moment pair with ``query_id``, ``query``, ``video_name``, ``timestamp``,
    ``duration``, ``relevance``), in first-seen order. Raises
    :class:`spr.data.tvr_ranking.AnnotationError` (a ValueError) naming the file and line."""
    from spr.data.tvr_ranking import load_query_records

    records = load_query_records(path, require_relevance=True)
    return [
        EvalQuery(
            r.query_id,
            r.query,
            tuple(GroundTruthMoment(m.video_name, m.start_s, m.end_s, m.relevance) for m in r.moments),
        )
        for r in records
    ]


# --- the upper bound --------------------------------------------------------------------------


class _Span(Protocol):
    video_key: str
    start_s: float
    end_s: float


def _coverage(gt: GroundTruthMoment, span: _Span) -> float:
    """``|gt & span| / |gt|``: the IoU with ``gt`` of ``gt`` clipped to ``span`` (0 when disjoint)."""
    if span.video_key != gt.video_name or gt.end_s <= gt.start_s:
        return 0.0
    overlap = min(gt.end_s, span.end_s) - max(gt.start_s, span.start_s)
    return max(0.0, overlap) / (gt.end_s - gt.start_s)


def upper_bound_relevances(
    proposals: Sequence[_Span],
    ground_truth: Sequence[GroundTruthMoment],
    iou_threshold: float,
    one_per_proposal: bool = True,
) -> list[float]:
    """Relevances of the moments a perfect refiner and re-ranker return from ``proposals`` (the
    padded ones), best first: the ideal ranked list's gains at IoU >= ``iou_threshold``.

    The reading of SPR section 4.6 implemented here:

    * *perfect refinement*: a proposal that fully or partially contains a ground-truth moment
      ``g`` (same video, positive overlap) can be refined to ``g`` clipped to the proposal, since
      the refiner's boundaries never leave the padded span (:func:`spr.models.refiner.frame_spans_to_seconds`
      clips them). That moment's IoU with ``g`` is ``|g & p| / |g|``, so it counts at ``mu`` iff
      that coverage is >= ``mu``: a fully contained ``g`` always counts, a partially contained one
      only at low enough ``mu``. This is why the paper's UB falls with ``mu`` and rises with tau_C;
      predicting ``g`` itself for any overlap would make UB the same at every ``mu``.
    * *one moment per proposal* (``one_per_proposal``, default): the refiner returns one moment per
      proposal and the metric matches each ground truth once, so proposals and ground truths are
      paired one-to-one. Among all such pairings the one taken is optimal for every K at once:
      ground truths in decreasing relevance, each kept if it can still be paired (an augmenting
      path); pairings form a matroid, so this greedy choice dominates any other pairing
      rank by rank. ``one_per_proposal=False`` lets one proposal yield every ground truth it
      covers (a looser bound, for comparison).
    * *perfect re-ranking*: the paired moments ranked by relevance, most relevant first.

    Ground truths with relevance 0 or zero length earn nothing and are left out. The list is not
    cut: take ``[:K]``. Any pipeline whose moments each lie inside a distinct padded proposal
    (SP's unpadded proposals, SPR's refined moments) earns, under :func:`spr.metrics.evaluate_rankings`,
    at most this list's DCG@K at every K."""
    candidates = [g for g in ground_truth if g.relevance > 0 and g.end_s > g.start_s]
    candidates.sort(key=lambda g: g.relevance, reverse=True)  # stable: file order among equals
    edges: list[list[int]] = []
    for g in candidates:
        edges.append(
            [
                j
                for j, p in enumerate(proposals)
                if (c := _coverage(g, p)) > 0.0 and c >= iou_threshold
            ]
        )
    if not one_per_proposal:
        return [float(g.relevance) for g, e in zip(candidates, edges) if e]
    owner: dict[int, int] = {}  # proposal index -> candidate index paired with it
    earned: list[float] = []
    for i, g in enumerate(candidates):
        if edges[i] and _augment(i, edges, owner, set()):
            earned.append(float(g.relevance))
    return earned


def _augment(i: int, edges: list[list[int]], owner: dict[int, int], seen: set[int]) -> bool:
    """Kuhn's augmenting path from ground truth ``i``; updates ``owner`` on success."""
    for j in edges[i]:
        if j in seen:
            continue
        seen.add(j)
        if j not in owner or _augment(owner[j], edges, owner, seen):
            owner[j] = i
            return True
    return False


def upper_bound_report(
    proposals: Mapping[str, Sequence[_Span]],
    ground_truth: Mapping[str, Sequence[GroundTruthMoment]],
    ks: Sequence[int] = DEFAULT_KS,
    iou_thresholds: Sequence[float] = DEFAULT_IOUS,
    one_per_proposal: bool = True,
) -> RankingReport:
    """Mean upper-bound NDCG@K and Recall@K over the queries of ``ground_truth`` that have a
    relevant moment (the queries :func:`spr.metrics.evaluate_rankings` counts), from each query's
    padded ``proposals`` (missing: none). NDCG is the DCG of :func:`upper_bound_relevances` over the
    ideal DCG of all the query's relevances; recall the paired relevant moments in the top K over
    all relevant ones."""
    ks, ious = list(ks), list(iou_thresholds)
    ndcg = {k: {mu: 0.0 for mu in ious} for k in ks}
    recall = {k: {mu: 0.0 for mu in ious} for k in ks}
    counted = 0
    for query_id, gt in ground_truth.items():
        relevant = sum(1 for g in gt if g.relevance > 0)
        if not relevant:
            continue
        counted += 1
        ideal = sorted((g.relevance for g in gt), reverse=True)
        spans = proposals.get(query_id, ())
        for mu in ious:
            earned = upper_bound_relevances(spans, gt, mu, one_per_proposal)
            for k in ks:
                ndcg[k][mu] += dcg(earned, k) / dcg(ideal, k)
                recall[k][mu] += min(k, len(earned)) / relevant
    if not counted:
        raise ValueError("no query has relevant ground truth (relevance > 0); nothing to evaluate")
    return RankingReport(
        ndcg={k: {mu: v / counted for mu, v in row.items()} for k, row in ndcg.items()},
        recall={k: {mu: v / counted for mu, v in row.items()} for k, row in recall.items()},
        num_queries=counted,
    )


# --- output -----------------------------------------------------------------------------------


def predictions_to_json(predictions: Mapping[str, Sequence[PredictedMoment]]) -> dict[str, list[dict[str, Any]]]:
    """``{query_id: [{"video_name", "timestamp": [s, e], "score"}, ...]}``, best first (the shape
    :func:`spr.metrics.load_predictions` reads). Times are written exactly, not rounded."""
    return {
        qid: [{"video_name": m.video_name, "timestamp": [m.start_s, m.end_s], "score": m.score} for m in moments]
        for qid, moments in predictions.items()
    }


def write_outputs(report: EvalReport, out_dir: str | os.PathLike[str]) -> list[Path]:
    """``sp_predictions.json``, ``spr_predictions.json`` (when refined) and ``metrics.json`` under
    ``out_dir`` (created), each written atomically; returns their paths."""
    folder = Path(out_dir).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    files = {"sp_predictions.json": predictions_to_json(report.sp_predictions)}
    spr = report.spr_predictions
    if spr is not None:
        files["spr_predictions.json"] = predictions_to_json(spr)
    files["metrics.json"] = report.to_json()
    written = []
    for name, payload in files.items():
        path = folder / name
        tmp = folder / f".{name}.tmp-{os.getpid()}"
        tmp.write_text(json.dumps(payload, indent=1 if name == "metrics.json" else None) + "\n")
        os.replace(tmp, path)
        written.append(path)
    return written


# --- the pipeline -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Embedded:
    """Queries ready to search: ``search`` ``(N, dim)`` unit vectors; ``refiner`` ``(N, D_q)``
    what the refiner gets (CLIP text features, or the embeddings when ``projected``)."""

    search: np.ndarray
    refiner: np.ndarray
    projected: bool
    ms_per_query: float
    source: str
    random_parts: tuple[str, ...]

    def query(self, index: int) -> EncodedQuery:
        """Query ``index`` as the engine takes a query encoded by its caller."""
        return EncodedQuery(self.search[index], self.refiner[index], self.projected, self.ms_per_query)


def run_evaluation(
    config: Config,
    queries: str | os.PathLike[str] | Sequence[EvalQuery],
    options: EvalOptions = EvalOptions(),
    *,
    search: MomentSearch,
    progress: Callable[[int, int], None] | None = None,
) -> EvalReport:
    """Run every query of ``queries`` (a TVR-Ranking file or loaded :class:`EvalQuery` s) through
    ``search`` and score SP, SPR (unless ``options.refine`` is False) and the upper bound.

    ``search`` is the engine over ``config``'s stores, with the refiner to score SPR (the
    command line opens it, with the refiner in this process: :func:`spr.cli.eval.evaluate`); the
    caller closes it. ``progress(done, total)`` is called as queries finish.

    Raises :class:`EvalError` for a setup that cannot work (unknown collection, dimensions that
    do not fit, a refiner that cannot load), :class:`spr.data.tvr_ranking.AnnotationError` for a
    bad query or feature file."""
    _check_options(options)
    items = load_eval_queries(queries) if isinstance(queries, (str, os.PathLike)) else list(queries)
    if not items:
        raise EvalError("no queries to evaluate")
    collection = options.collection or config.vectors.collection
    top_k = options.top_k_segments or config.proposals.top_k_segments
    if not 1 <= top_k <= MAX_SEGMENTS_K:
        raise EvalError(f"top-k segments must be in 1..{MAX_SEGMENTS_K}, got {top_k}")
    if options.refine and search.refiner is None:
        raise EvalError("refinement needs a refiner and the search has none; evaluate with --no-refine")

    dim = _collection_dim(search, collection)
    embedded = _embed_queries(config, items, options, collection, dim)
    visual_random = "CLIP" in embedded.random_parts and not config.fusion.include_random
    runs = _modality_runs(search, collection, visual_random) if options.modalities else {}
    runner = _Runner(search, collection, top_k, options, embedded, runs)
    try:
        runner.warm_up()
        t0 = time.perf_counter()
        outcomes = runner.run(items, progress)
    except RefinerLoadError as exc:
        raise EvalError(str(exc)) from None
    load_s = sum(o.timings_ms.pop("load", 0.0) for o in outcomes) / 1e3
    wall_s = time.perf_counter() - t0 - load_s + embedded.ms_per_query * len(items) / 1e3

    ground_truth = {q.query_id: list(q.ground_truth) for q in items}
    ks, ious = list(options.ks), list(options.iou_thresholds)
    try:
        sp = evaluate_rankings({o.query_id: o.sp for o in outcomes}, ground_truth, ks, ious)
        spr = (
            evaluate_rankings({o.query_id: o.spr or [] for o in outcomes}, ground_truth, ks, ious)
            if options.refine
            else None
        )
        ub = upper_bound_report({o.query_id: o.padded for o in outcomes}, ground_truth, ks, ious)
        by_modality = {
            name: evaluate_rankings({o.query_id: o.by_modality.get(name, []) for o in outcomes}, ground_truth, ks, ious)
            for name in runs
        }
    except ValueError as exc:
        raise EvalError(str(exc)) from None
    pc = config.proposals
    return EvalReport(
        collection=collection,
        backend=search.store.backend,
        num_queries=len(items),
        top_k_segments=top_k,
        max_moments=options.max_moments,
        pad_s=pc.pad_s,
        gap_rule=pc.gap_rule,
        query_source=embedded.source,
        workers=options.workers,
        sp=sp,
        spr=spr,
        upper_bound=ub,
        timings_ms=_timing_summary(outcomes, options.refine),
        wall_s=wall_s,
        outcomes=outcomes,
        refiner=runner.refiner_name,
        random_parts=embedded.random_parts + (("refiner",) if runner.refiner_random else ()),
        degraded_queries=sum(1 for o in outcomes if o.degraded),
        dropped_proposals=sum(o.dropped for o in outcomes),
        by_modality=by_modality,
        fused_modalities=runner.fused_modalities,
        nprobe=options.nprobe,
        ef=options.ef,
        merge_score_window=pc.merge_score_window,
        max_length_s=pc.max_length_s,
        batch_queries=options.batch_queries,
    )


def _modality_runs(search: MomentSearch, collection: str, visual_random: bool) -> dict[str, dict[str, float]]:
    """The extra searches of each query: every text track alone, then the fusion as a text
    query of the service gets it: every modality at its configured weight (the visual one with
    the query evaluation encoded), except a visual modality with random weights, which the
    service leaves out too (``fusion.include_random`` keeps it). Nothing when the collection has
    no text track or the search no text encoder."""
    if search.text_encoder is None:
        return {}
    tracks = [m for m in search.available_modalities(collection) if m != VISUAL]
    if not tracks:
        return {}
    off = {m: 0.0 for m in MODALITIES}
    runs = {m: {**off, m: 1.0} for m in tracks}
    runs["fused"] = {VISUAL: 0.0} if visual_random else {}
    return runs


def _check_options(options: EvalOptions) -> None:
    if not 1 <= options.max_moments <= MAX_TOP_K:
        raise EvalError(f"max moments must be in 1..{MAX_TOP_K}, got {options.max_moments}")
    if options.workers < 1:
        raise EvalError(f"workers must be at least 1, got {options.workers}")
    if options.batch_queries < 1:
        raise EvalError(f"batch queries must be at least 1, got {options.batch_queries}")
    if options.projected and not options.query_features:
        raise EvalError("--projected describes --query-features; pass the feature file too")
    for flag, value in (("--nprobe", options.nprobe), ("--ef", options.ef)):
        if value is not None and value < 1:
            raise EvalError(f"{flag} must be at least 1 (leave it out for the index's default), got {value}")
    if not options.ks or not options.iou_thresholds:
        raise EvalError("need at least one K and one IoU threshold")


def _collection_dim(search: MomentSearch, collection: str) -> int:
    """The collection's vector size, or an :class:`EvalError` saying how to fix the setup."""
    store = search.store
    record = search.catalog.get_collection(collection)
    if record is not None and not store.holds(record):
        raise EvalError(
            f"collection {collection!r} lives in the {record.backend} vector store; the configuration "
            f"reads {store.backend} (vectors.backend)"
        )
    try:
        return search.collection_dim(collection)
    except UnknownCollection:
        known = ", ".join(sorted(store.list_collections())) or "none"
        raise EvalError(
            f"collection {collection!r} does not exist in the {store.backend} store (collections: {known}); "
            f"pass --collection or import/ingest into it first"
        ) from None


def _embed_queries(
    config: Config, items: Sequence[EvalQuery], options: EvalOptions, collection: str, dim: int
) -> _Embedded:
    """Every query as a search vector and a refiner input, with the per-query embedding time."""
    from spr.stores import l2_normalize

    if options.query_features:
        from spr.data.tvr_ranking import load_query_features

        loaded = load_query_features(options.query_features, [q.query_id for q in items])
        raw = np.stack([loaded[q.query_id] for q in items]).astype(np.float32)
        zero = [q.query_id for q, row in zip(items, raw) if not np.any(row)]
        if zero:
            raise EvalError(
                f"{options.query_features}: the features of query {zero[0]!r} are all zeros ({len(zero)} such queries)"
            )
        if options.projected:
            _check_dim(raw.shape[1], dim, "the projected query features", collection)
            t0 = time.perf_counter()
            search = l2_normalize(raw)
            source = f"projected features ({options.query_features})"
            return _Embedded(search, search, True, _per_query_ms(t0, items), source, ())
        projectors = _text_projectors(config, raw.shape[1])
        t0 = time.perf_counter()  # the per-query cost excludes reading the file and loading the projector
        search = l2_normalize(_batched(projectors.project_texts, raw))
        what = f"the query features after the text projector ({projectors.identity})"
        _check_dim(search.shape[1], dim, what, collection)
        source = f"features ({options.query_features})"
        # Without a projector checkpoint queries pass through: the CLIP_mp baseline, not random weights.
        return _Embedded(search, raw, False, _per_query_ms(t0, items), source, ())

    from spr.models.clip import clip_feature_dim
    from spr.models.query import QueryEncoder

    if not config.projector.checkpoint:  # queries stay CLIP-sized: refuse before loading CLIP
        try:
            clip_dim = clip_feature_dim(config.clip.model)
        except ValueError as exc:
            raise EvalError(str(exc)) from None
        _check_dim(clip_dim, dim, f"text queries ({config.clip.model}, no projector)", collection)
    try:
        encoder = QueryEncoder.from_config(config)
    except (ValueError, RuntimeError, FileNotFoundError) as exc:  # unknown model, weights not found
        raise EvalError(f"cannot load the query encoder: {exc}") from None
    _check_dim(encoder.dim, dim, f"text queries ({encoder.identity})", collection)
    t1 = time.perf_counter()  # the per-query cost excludes loading the models
    features, search = encoder.encode_many([q.text for q in items])
    source = f"text ({encoder.identity})"
    random_parts = ("CLIP",) if encoder.clip.random_weights else ()
    return _Embedded(search, features, False, _per_query_ms(t1, items), source, random_parts)


def _batched(fn: Callable[[np.ndarray], np.ndarray], x: np.ndarray) -> np.ndarray:
    return np.concatenate([fn(x[i : i + 1024]) for i in range(0, len(x), 1024)])


def _per_query_ms(t0: float, items: Sequence[EvalQuery]) -> float:
    return (time.perf_counter() - t0) * 1e3 / len(items)


def _check_dim(got: int, dim: int, what: str, collection: str) -> None:
    if got != dim:
        raise EvalError(
            f"{what} are {got}-d but collection {collection!r} holds {dim}-d vectors; evaluate with the CLIP model and "
            f"projector that built it (or --query-features [--projected] of the right size)"
        )


def _text_projectors(config: Config, in_dim: int) -> Any:
    from spr.models.projector import load_projectors

    try:
        # Precomputed query features, and no segments embedded here: nothing to warn about.
        return load_projectors(config.projector.checkpoint, in_dim, device="cpu", uses=())
    except (ValueError, FileNotFoundError) as exc:
        raise EvalError(f"cannot project {in_dim}-d query features: {exc}") from None


class _Runner:
    """Runs queries through the engine on a thread pool; each worker waits for its own
    refinement, so the refiner sees up to ``workers`` queries at once, like the service under
    load."""

    def __init__(
        self,
        search: MomentSearch,
        collection: str,
        top_k: int,
        options: EvalOptions,
        embedded: _Embedded,
        runs: Mapping[str, Mapping[str, float]] | None = None,
    ) -> None:
        self.runs = dict(runs or {})
        self.fused_modalities: tuple[str, ...] = ()
        self.search = search
        self.collection = collection
        self.top_k = top_k
        self.options = options
        self.embedded = embedded
        self.refiner_name = ""  # the model that refined, as its answers name it
        self.refiner_random = False

    def warm_up(self) -> None:
        """One untimed query, so that the first timed one carries no index load, connection
        set-up or refiner load (an in-process refiner loads on first use)."""
        self._search(0)

    def run(self, items: Sequence[EvalQuery], progress: Callable[[int, int], None] | None) -> list[QueryOutcome]:
        if self.options.batch_queries > 1:
            return self._run_batched(items, progress)
        outcomes: list[QueryOutcome | None] = [None] * len(items)
        done = 0
        with ThreadPoolExecutor(max_workers=self.options.workers, thread_name_prefix="spr-eval") as pool:
            pending = {pool.submit(self.one, i, q): i for i, q in enumerate(items)}
            try:
                while pending:
                    finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for future in finished:
                        i = pending.pop(future)
                        outcomes[i] = future.result()  # re-raises a worker's error
                        done += 1
                        if progress is not None:
                            progress(done, len(items))
            except BaseException:
                for future in pending:
                    future.cancel()
                raise
        return [o for o in outcomes if o is not None]

    def _run_batched(
        self, items: Sequence[EvalQuery], progress: Callable[[int, int], None] | None
    ) -> list[QueryOutcome]:
        """Coarse batches of ``batch_queries`` on the pool (at most ``workers`` at once, so a
        17K-query file does not hold every coarse result at once), then each query's
        refinement and modality runs as its own task on the same pool."""
        size, workers = self.options.batch_queries, self.options.workers
        batches = [range(lo, min(len(items), lo + size)) for lo in range(0, len(items), size)]
        outcomes: list[QueryOutcome | None] = [None] * len(items)
        per_query = self.options.refine or bool(self.runs)  # SP alone needs the coarse half only
        done, queued, coarse_running = 0, 0, 0
        pending: dict[Any, tuple[str, Any]] = {}

        def finished_one(i: int, outcome: QueryOutcome) -> None:
            nonlocal done
            outcomes[i] = outcome
            done += 1
            if progress is not None:
                progress(done, len(items))

        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="spr-eval") as pool:
            try:
                while pending or queued < len(batches):
                    while queued < len(batches) and coarse_running < workers:
                        batch = batches[queued]
                        pending[pool.submit(self._coarse_batch, batch)] = ("coarse", batch)
                        queued += 1
                        coarse_running += 1
                    finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for future in finished:
                        kind, what = pending.pop(future)
                        if kind == "query":
                            finished_one(what, future.result())  # re-raises a worker's error
                            continue
                        coarse_running -= 1
                        for i, prepared in zip(what, future.result()):
                            if per_query:
                                pending[pool.submit(self._finish, i, items[i], prepared)] = ("query", i)
                            else:
                                finished_one(i, self._outcome(items[i], prepared.result))
            except BaseException:
                for future in pending:
                    future.cancel()
                raise
        return [o for o in outcomes if o is not None]

    def _coarse_batch(self, indices: Sequence[int]) -> list[PreparedSearch]:
        return self.search.prepare_many([self._query(i) for i in indices])

    def _finish(self, index: int, query: EvalQuery, prepared: PreparedSearch) -> QueryOutcome:
        """One query's refinement (the engine's :meth:`~spr.engine.MomentSearch.complete`) and
        its modality runs, from its coarse half."""
        result = self.search.complete(prepared) if self.options.refine else prepared.result
        self._note_refiner(result)
        return self._outcome(query, result, index)

    # -- one query --------------------------------------------------------------------------

    def _query(self, index: int) -> MomentQuery:
        return MomentQuery(
            encoded=self.embedded.query(index),
            collection=self.collection,
            top_k=self.options.max_moments,
            segments_k=self.top_k,
            nprobe=self.options.nprobe,
            ef=self.options.ef,
            refine=self.options.refine,
        )

    def _search(self, index: int) -> SearchResult:
        result = self.search.search(self._query(index))
        self._note_refiner(result)
        return result

    def _note_refiner(self, result: SearchResult) -> None:
        if result.refinement is not None and result.refinement.model:
            self.refiner_name = result.refinement.model
            self.refiner_random = self.refiner_random or result.refinement.random_weights

    def one(self, index: int, query: EvalQuery) -> QueryOutcome:
        return self._outcome(query, self._search(index), index)

    def _outcome(self, query: EvalQuery, result: SearchResult, index: int | None = None) -> QueryOutcome:
        """What evaluation keeps of one query's search; ``index`` (the query's row) runs its
        modality searches too (none without ``runs``)."""
        coarse = result.coarse
        assert coarse is not None  # no filters: every search retrieves
        timings = {stage: result.timings_ms[stage] for stage in ("embed", "ann", "catalog", "proposals")}
        # What coarse_moments(coarse, max_moments) answers, without building the Moments:
        # their video, span and score (the best segment's) are the proposal's own.
        sp = [
            PredictedMoment(p.video_key, p.start_s, p.end_s, float(p.best_score))
            for p in coarse.proposals[: self.options.max_moments]
        ]
        outcome = QueryOutcome(query.query_id, sp, None, list(coarse.padded), timings)
        if self.options.refine:
            _record_refinement(result, outcome)
        if index is None:
            return outcome
        for name, weights in self.runs.items():
            modal = self.search.search(
                MomentQuery(
                    text=query.text, encoded=self.embedded.query(index), collection=self.collection,
                    top_k=self.options.max_moments, segments_k=self.top_k, refine=False, weights=weights,
                    nprobe=self.options.nprobe, ef=self.options.ef,
                )
            )
            outcome.by_modality[name] = [_predicted(m) for m in modal.moments]
            if name == "fused":
                self.fused_modalities = tuple(m.modality for m in modal.modalities if m.searched)
        return outcome


def _record_refinement(result: SearchResult, outcome: QueryOutcome) -> None:
    """SPR as a refined search answers it (the coarse proposals where it degrades), and what the
    refiner reported: features read, proposals dropped, the batch it rode in. The ``refine``
    stage is the refiner's call without its feature reads (its own stage) and without waiting
    for the model to load (kept apart as ``load``, in no stage)."""
    refinement = result.refinement
    own = refinement.timings_ms if refinement is not None else {}
    features_ms, load_ms = own.get("features", 0.0), own.get("load", 0.0)
    outcome.timings_ms["features"] = features_ms
    outcome.timings_ms["refine"] = max(0.0, result.timings_ms["refine"] - features_ms - load_ms) if result.refined else 0.0
    if load_ms:
        outcome.timings_ms["load"] = load_ms
    outcome.spr = [_predicted(m) for m in result.moments]
    outcome.degraded = result.degraded_reason
    if refinement is not None:
        outcome.dropped = refinement.dropped
    if result.refined and refinement is not None:
        outcome.batch_queries, outcome.batch_proposals = refinement.batch_queries, refinement.batch_proposals


def _predicted(moment: Moment) -> PredictedMoment:
    return PredictedMoment(moment.video_key, moment.start_s, moment.end_s, float(moment.score))


def _timing_summary(outcomes: Sequence[QueryOutcome], refined: bool) -> dict[str, dict[str, float]]:
    """Mean and median per stage over the queries, and of their per-query totals."""
    stages = [s for s in STAGES if refined or s not in ("features", "refine")]
    out: dict[str, dict[str, float]] = {}
    if not outcomes:
        return out
    for stage in [*stages, "total"]:
        if stage == "total":
            values = np.array([sum(o.timings_ms.get(s, 0.0) for s in stages) for o in outcomes])
        else:
            values = np.array([o.timings_ms.get(stage, 0.0) for o in outcomes])
        out[stage] = {"mean": float(values.mean()), "p50": float(np.median(values))}
    return out
