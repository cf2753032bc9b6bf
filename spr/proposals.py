"""Coarse moment proposals from retrieved segments (SPR, arXiv 2501.05072, section 3.2).

The ANN search returns the top-k segments for a query. Segments that sit next to each other in
the same video are merged into one coarse proposal, and a proposal is ranked by the best (lowest)
rank among its segments. Before refinement every proposal is padded by ``tau_C`` seconds on both
sides (section 4.2), clipped to the video.

All times are in seconds from the start of the video; ranks are 0-based positions in the ANN
result list. This runs on every query, so everything here is O(n log n) in the number of retrieved
segments: :func:`propose_arrays` sorts, groups and cuts runs with numpy and keeps Python for the
sequential parts only (an adaptive gap's chain, a bounded merge's growth from each seed). The
first, pure-Python implementation stays as ``_propose_moments_reference``: the tests check that
both give the same proposals, and the benchmark times both.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = [
    "AdaptiveGap",
    "AdjacentOnly",
    "BoundedMerge",
    "ConstantGap",
    "GapRule",
    "Proposal",
    "RetrievedSegment",
    "gap_rule_from_config",
    "Span",
    "pad_proposals",
    "propose_arrays",
    "propose_moments",
    "retrieved_segments",
]

# Segment boundaries are sums of float seconds (e.g. 3 * 0.1), so a gap that is "exactly" on the
# AdaptiveGap threshold can miss it by one ulp; a nanosecond is far below any segment length.
_TIME_TOLERANCE_S = 1e-9


@dataclass(frozen=True)
class RetrievedSegment:
    """One ANN hit joined with its catalog row.

    ``start_s``/``end_s`` and ``video_duration_s`` are seconds; ``ordinal`` is the segment's
    position (0, 1, 2, ...) in time order within its video; ``rank`` is its 0-based position in
    the ANN result list and ``score`` the similarity the index reported for it.
    """

    segment_id: int
    video_key: str
    ordinal: int
    start_s: float
    end_s: float
    video_duration_s: float
    score: float
    rank: int

    def __post_init__(self) -> None:
        if self.end_s < self.start_s:
            raise ValueError(
                f"segment {self.segment_id} of video {self.video_key!r} ends before it starts "
                f"(start_s={self.start_s}, end_s={self.end_s})"
            )
        if self.rank < 0:
            raise ValueError(f"segment {self.segment_id} has negative rank {self.rank}")
        if self.ordinal < 0:
            raise ValueError(f"segment {self.segment_id} has negative ordinal {self.ordinal}")
        if not self.video_duration_s >= 0:
            raise ValueError(
                f"video {self.video_key!r} has invalid duration {self.video_duration_s} s"
            )


@dataclass(frozen=True)
class Proposal:
    """A coarse moment: a time span of one video built from one or more retrieved segments.

    ``start_s``/``end_s`` are seconds within ``[0, video_duration_s]``. ``segment_ids`` are in
    time order and ``segment_ranks``/``segment_scores`` are aligned with them. With a gap rule the
    span also covers segments that were not retrieved, so it may be longer than its segments.
    """

    video_key: str
    start_s: float
    end_s: float
    video_duration_s: float
    segment_ids: tuple[int, ...]
    segment_ranks: tuple[int, ...]
    segment_scores: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.segment_ids:
            raise ValueError(f"a proposal in video {self.video_key!r} needs at least one segment")
        if not len(self.segment_ids) == len(self.segment_ranks) == len(self.segment_scores):
            raise ValueError(
                "segment_ids, segment_ranks and segment_scores must have the same length "
                f"(got {len(self.segment_ids)}, {len(self.segment_ranks)}, "
                f"{len(self.segment_scores)})"
            )
        if self.end_s < self.start_s:
            raise ValueError(
                f"proposal in video {self.video_key!r} ends before it starts "
                f"(start_s={self.start_s}, end_s={self.end_s})"
            )

    @property
    def best_rank(self) -> int:
        """Lowest (best) 0-based ANN rank among the proposal's segments."""
        return min(self.segment_ranks)

    @property
    def best_score(self) -> float:
        """Score of the best-ranked segment (not necessarily the maximum score)."""
        best = min(range(len(self.segment_ranks)), key=self.segment_ranks.__getitem__)
        return self.segment_scores[best]

    @property
    def duration_s(self) -> float:
        """Length of the proposal in seconds."""
        return self.end_s - self.start_s


@dataclass(frozen=True)
class Span:
    """What a gap rule sees of a proposal-in-progress or of a run.

    A run is a maximal block of retrieved, ordinal-adjacent segments of one video. Times are
    seconds, already clipped to the video.
    """

    first_ordinal: int
    last_ordinal: int
    start_s: float
    end_s: float

    @property
    def duration_s(self) -> float:
        """Length of the span in seconds."""
        return self.end_s - self.start_s


@runtime_checkable
class GapRule(Protocol):
    """Decides whether the next run of a video joins the proposal built so far.

    ``current`` is the proposal being built (possibly several runs already joined) and
    ``following`` the next run in time order; both belong to the same video and
    ``following.first_ordinal > current.last_ordinal + 1``.
    """

    def joins(self, current: Span, following: Span) -> bool: ...


@dataclass(frozen=True)
class AdjacentOnly:
    """The SPR rule: only ordinal-adjacent segments merge, so runs never join each other."""

    def joins(self, current: Span, following: Span) -> bool:
        return following.first_ordinal <= current.last_ordinal + 1


@dataclass(frozen=True)
class ConstantGap:
    """Join runs separated by at most ``max_missing`` unretrieved segments (0 == AdjacentOnly).

    This is the paper's tau_G variant, counted in segments rather than seconds.
    """

    max_missing: int

    def __post_init__(self) -> None:
        if self.max_missing < 0:
            raise ValueError(f"max_missing must be >= 0, got {self.max_missing}")

    def joins(self, current: Span, following: Span) -> bool:
        missing = following.first_ordinal - current.last_ordinal - 1
        return missing <= self.max_missing


@dataclass(frozen=True)
class AdaptiveGap:
    """Join when the gap in seconds is at most ``alpha`` times the two spans' summed lengths.

    Long proposals can bridge longer holes than short ones; the comparison is inclusive.
    """

    alpha: float

    def __post_init__(self) -> None:
        if not self.alpha >= 0:  # also rejects NaN
            raise ValueError(f"alpha must be >= 0, got {self.alpha}")

    def joins(self, current: Span, following: Span) -> bool:
        gap_s = following.start_s - current.end_s
        allowed_s = self.alpha * (current.duration_s + following.duration_s)
        return gap_s <= allowed_s + _TIME_TOLERANCE_S


@dataclass(frozen=True)
class BoundedMerge:
    """A gap rule plus two bounds that keep a merged proposal a moment, not a whole video.

    ``rule`` decides which runs may join, as without bounds. Then, inside each merged group, a
    proposal grows from its best-ranked segment and takes a neighbouring segment only while

    * the neighbour's score is at least ``best - score_window * (best hit - worst hit)``: the
      window is a fraction of the score range of the whole retrieved list, so it means the same
      for cosine scores, negated L2 distances and fused (RRF) scores; 1.0 (or more) never splits;
    * and (when ``max_length_s`` > 0) the proposal stays at most ``max_length_s`` seconds long.

    A segment left out starts a proposal of its own (best-ranked first), so every retrieved
    segment still lies in exactly one proposal. Without bounds, a small or filtered collection
    where all of a video's segments are retrieved gave one proposal spanning the whole video.
    """

    rule: GapRule = AdjacentOnly()
    score_window: float = 1.0
    max_length_s: float = 0.0

    def __post_init__(self) -> None:
        if not self.score_window >= 0:  # also rejects NaN
            raise ValueError(f"score_window must be >= 0, got {self.score_window}")
        if not self.max_length_s >= 0:
            raise ValueError(f"max_length_s must be >= 0 seconds (0: no cap), got {self.max_length_s}")

    def joins(self, current: Span, following: Span) -> bool:
        return self.rule.joins(current, following)

    @property
    def splits(self) -> bool:
        """Whether the bounds can split anything (a window under 1 or a length cap)."""
        return self.score_window < 1.0 or self.max_length_s > 0


def propose_moments(
    segments: Sequence[RetrievedSegment],
    gap_rule: GapRule = AdjacentOnly(),
    max_proposals: int | None = None,
) -> list[Proposal]:
    """Merge retrieved segments into coarse proposals, best-ranked first.

    Segments are grouped by video and sorted by ordinal; ordinal-adjacent segments always form
    one run, and consecutive runs join when ``gap_rule`` says so. A proposal spans from the start
    of its first segment to the end of its last (seconds, clipped to ``[0, video_duration_s]``).
    A :class:`BoundedMerge` rule then splits merged groups by score and length.
    Proposals are sorted by ``best_rank``; ``max_proposals`` keeps only the first ones.

    If a segment id occurs more than once, only its best-ranked occurrence is used.
    (:func:`propose_arrays` on the segments' fields.)
    """
    return propose_arrays(
        [s.segment_id for s in segments],
        [s.video_key for s in segments],
        [s.ordinal for s in segments],
        [s.start_s for s in segments],
        [s.end_s for s in segments],
        [s.video_duration_s for s in segments],
        [s.score for s in segments],
        [s.rank for s in segments],
        gap_rule,
        max_proposals,
    )


def propose_arrays(
    segment_ids: Sequence[int] | np.ndarray,
    video_keys: Sequence[str],
    ordinals: Sequence[int] | np.ndarray,
    start_s: Sequence[float] | np.ndarray,
    end_s: Sequence[float] | np.ndarray,
    video_duration_s: Sequence[float] | np.ndarray,
    scores: Sequence[float] | np.ndarray,
    ranks: Sequence[int] | np.ndarray,
    gap_rule: GapRule = AdjacentOnly(),
    max_proposals: int | None = None,
) -> list[Proposal]:
    """:func:`propose_moments` on the retrieved segments as ``(n,)`` columns (one entry per
    segment, in any order): the same proposals, computed with numpy where it can be."""
    if max_proposals is not None and max_proposals < 0:
        raise ValueError(f"max_proposals must be >= 0 or None, got {max_proposals}")
    sid = np.asarray(segment_ids, dtype=np.int64).reshape(-1)
    n = len(sid)
    if n == 0:
        return []
    rank = np.asarray(ranks, dtype=np.int64).reshape(-1)
    pos = np.arange(n)
    # Dedupe: each id's best rank (its first occurrence among equals), listed where the id
    # first occurred, as the reference's dict does.
    by_id = np.lexsort((pos, rank, sid))
    first_of_id = np.ones(n, bool)
    first_of_id[1:] = sid[by_id[1:]] != sid[by_id[:-1]]
    kept = by_id[first_of_id]  # one row per id: the one that is used
    by_pos = np.lexsort((pos, sid))  # ... listed at the id's first position
    first_pos = by_pos[np.r_[True, sid[by_pos[1:]] != sid[by_pos[:-1]]]]
    # kept and first_pos are both in id order: pair them, then order by first position.
    order = np.argsort(first_pos, kind="stable")
    rows = kept[order]  # the deduplicated segments, in the reference's order
    keys = [video_keys[i] for i in rows.tolist()]
    codes_of: dict[str, int] = {}
    video = np.fromiter((codes_of.setdefault(k, len(codes_of)) for k in keys), np.int64, len(keys))
    names = list(codes_of)
    ords = np.asarray(ordinals, dtype=np.int64).reshape(-1)[rows]
    starts = np.asarray(start_s, dtype=np.float64).reshape(-1)[rows]
    ends = np.asarray(end_s, dtype=np.float64).reshape(-1)[rows]
    durs = np.asarray(video_duration_s, dtype=np.float64).reshape(-1)[rows]
    score = np.asarray(scores, dtype=np.float64).reshape(-1)[rows]
    rank = rank[rows]
    m = len(rows)

    bounds = gap_rule if isinstance(gap_rule, BoundedMerge) and gap_rule.splits else None
    score_range = 0.0
    if bounds is not None:
        # Best and worst by rank (the first of equals), not by value, as the reference.
        score_range = max(0.0, float(score[int(np.argmin(rank))] - score[int(np.argmax(rank))]))

    # Time order within each video (ties: rank, then list order); videos in order of appearance.
    t = np.lexsort((np.arange(m), rank, ords, video))
    video, ords, starts, ends, durs, score, rank, rows = (
        video[t], ords[t], starts[t], ends[t], durs[t], score[t], rank[t], rows[t]
    )
    new_video = np.r_[True, video[1:] != video[:-1]]
    group_lo = np.flatnonzero(new_video)
    group_hi = np.r_[group_lo[1:], m]
    bad = np.minimum.reduceat(durs, group_lo) != np.maximum.reduceat(durs, group_lo)
    if bad.any():
        g = int(np.flatnonzero(bad)[0])
        durations = {float(d) for d in durs[group_lo[g] : group_hi[g]]}
        raise ValueError(f"segments of video {names[int(video[group_lo[g]])]!r} disagree on its duration: {sorted(durations)}")
    # Runs: a new video, or an ordinal more than one past the previous segment's.
    new_run = new_video.copy()
    new_run[1:] |= ords[1:] > ords[:-1] + 1
    run_lo = np.flatnonzero(new_run)
    run_hi = np.r_[run_lo[1:], m] - 1  # inclusive
    # A run's span: its first segment's start and last segment's end, clipped to the video.
    d = durs[run_lo]
    run_start = np.minimum(np.maximum(0.0, starts[run_lo]), d)
    run_end = np.maximum(run_start, np.minimum(d, ends[run_hi]))
    run_new_video = new_video[run_lo]

    # Which runs join the proposal before them (never across videos).
    rule = gap_rule.rule if isinstance(gap_rule, BoundedMerge) and type(gap_rule).joins is BoundedMerge.joins else gap_rule
    groups = _joined_runs(rule, run_lo, run_hi, run_start, run_end, run_new_video, ords)

    ids_l, rank_l, score_l = sid[rows].tolist(), rank.tolist(), score.tolist()
    st_l, en_l, video_l, durs_l = starts.tolist(), ends.tolist(), video.tolist(), durs.tolist()
    lo_l, hi_l = run_lo.tolist(), run_hi.tolist()
    proposals: list[Proposal] = []
    for first_run, last_run, p_start, p_end in groups:
        lo, hi = lo_l[first_run], hi_l[last_run]
        key, duration = names[video_l[lo]], durs_l[lo]
        if bounds is not None and hi > lo:
            pieces = _split_slice(score_l[lo : hi + 1], rank_l[lo : hi + 1], st_l[lo : hi + 1], en_l[lo : hi + 1],
                                  bounds, score_range)
            if len(pieces) > 1:
                for a, b in pieces:
                    a, b = lo + a, lo + b
                    s0 = min(max(0.0, st_l[a]), duration)
                    e0 = max(s0, min(duration, en_l[b]))
                    proposals.append(_new_proposal(key, s0, e0, duration, tuple(ids_l[a : b + 1]),
                                                   tuple(rank_l[a : b + 1]), tuple(score_l[a : b + 1])))
                continue
        proposals.append(_new_proposal(key, p_start, p_end, duration, tuple(ids_l[lo : hi + 1]),
                                       tuple(rank_l[lo : hi + 1]), tuple(score_l[lo : hi + 1])))
    sort_keys = [(min(p.segment_ranks), p.video_key, p.start_s) for p in proposals]
    out = [proposals[i] for i in sorted(range(len(proposals)), key=sort_keys.__getitem__)]
    if max_proposals is not None:
        del out[max_proposals:]
    return out


def retrieved_segments(
    segment_ids: Sequence[int],
    video_keys: Sequence[str],
    ordinals: Sequence[int],
    start_s: Sequence[float],
    end_s: Sequence[float],
    video_duration_s: Sequence[float],
    scores: Sequence[float],
    ranks: Sequence[int],
) -> list[RetrievedSegment]:
    """``RetrievedSegment(*fields)`` for each position of the aligned columns, as the
    constructor builds them; the checks run once over the columns (numpy) instead of once per
    object, and a column that fails them is built object by object so that the same error is raised."""
    starts = np.asarray(start_s, dtype=np.float64)
    ends = np.asarray(end_s, dtype=np.float64)
    durs = np.asarray(video_duration_s, dtype=np.float64)
    if len(segment_ids) and (
        not (ends >= starts).all() or not (durs >= 0).all()
        or min(ranks) < 0 or min(ordinals) < 0
    ):
        return [RetrievedSegment(*row) for row in zip(segment_ids, video_keys, ordinals, start_s, end_s,
                                                      video_duration_s, scores, ranks)]
    out = []
    new = object.__new__
    for sid, key, ordinal, start, end, duration, score, rank in zip(
        segment_ids, video_keys, ordinals, start_s, end_s, video_duration_s, scores, ranks
    ):
        seg = new(RetrievedSegment)
        seg.__dict__.update(segment_id=sid, video_key=key, ordinal=ordinal, start_s=start, end_s=end,
                            video_duration_s=duration, score=score, rank=rank)
        out.append(seg)
    return out


def _new_proposal(
    video_key: str, start_s: float, end_s: float, video_duration_s: float,
    segment_ids: tuple[int, ...], segment_ranks: tuple[int, ...], segment_scores: tuple[float, ...],
) -> Proposal:
    """A :class:`Proposal` built without the frozen dataclass's per-field ``__setattr__`` and
    checks (a third of the merge's time): what :func:`propose_arrays` builds meets them by
    construction (one or more segments, aligned tuples, ``start_s <= end_s``)."""
    p = object.__new__(Proposal)
    p.__dict__.update(
        video_key=video_key, start_s=start_s, end_s=end_s, video_duration_s=video_duration_s,
        segment_ids=segment_ids, segment_ranks=segment_ranks, segment_scores=segment_scores,
    )
    return p


def _joined_runs(
    rule: GapRule,
    run_lo: np.ndarray,
    run_hi: np.ndarray,
    run_start: np.ndarray,
    run_end: np.ndarray,
    run_new_video: np.ndarray,
    ords: np.ndarray,
) -> list[tuple[int, int, float, float]]:
    """``[(first run, last run, start_s, end_s), ...]`` of each proposal before splitting: runs
    joined by ``rule`` (the adjacent rule and the constant gap in numpy, others run by run)."""
    r = len(run_lo)
    if type(rule) in (AdjacentOnly, ConstantGap):
        joins = np.zeros(r, bool)
        if type(rule) is ConstantGap and r > 1:
            missing = ords[run_lo[1:]] - ords[run_hi[:-1]] - 1
            joins[1:] = missing <= rule.max_missing
        joins &= ~run_new_video
        first = np.flatnonzero(~joins)
        last = np.r_[first[1:], r] - 1
        starts = np.minimum.reduceat(run_start, first) if r else run_start
        ends = np.maximum.reduceat(run_end, first) if r else run_end
        return list(zip(first.tolist(), last.tolist(), starts.tolist(), ends.tolist()))
    lo_ord, hi_ord = ords[run_lo].tolist(), ords[run_hi].tolist()
    rs, re_, new_v = run_start.tolist(), run_end.tolist(), run_new_video.tolist()
    adaptive = type(rule) is AdaptiveGap
    out: list[tuple[int, int, float, float]] = []
    first, c_first, c_last, c_start, c_end = 0, lo_ord[0], hi_ord[0], rs[0], re_[0]
    for i in range(1, r):
        if new_v[i]:
            joined = False
        elif adaptive:
            joined = rs[i] - c_end <= rule.alpha * ((c_end - c_start) + (re_[i] - rs[i])) + _TIME_TOLERANCE_S
        else:
            joined = rule.joins(Span(c_first, c_last, c_start, c_end), Span(lo_ord[i], hi_ord[i], rs[i], re_[i]))
        if joined:
            c_last, c_start, c_end = hi_ord[i], min(c_start, rs[i]), max(c_end, re_[i])
        else:
            out.append((first, i - 1, c_start, c_end))
            first, c_first, c_last, c_start, c_end = i, lo_ord[i], hi_ord[i], rs[i], re_[i]
    out.append((first, r - 1, c_start, c_end))
    return out


def _split_slice(
    scores: list[float], ranks: list[int], st: list[float], en: list[float], bounds: BoundedMerge, score_range: float
) -> list[tuple[int, int]]:
    """The pieces ``[(lo, hi), ...]`` (inclusive, sorted) of one merged proposal's members in
    time order, as :func:`_split` cuts them."""
    n = len(scores)
    window = bounds.score_window * score_range
    cap = bounds.max_length_s
    taken = [False] * n
    pieces: list[tuple[int, int]] = []
    for seed in sorted(range(n), key=lambda i: (ranks[i], i)):
        if taken[seed]:
            continue
        taken[seed] = True
        floor = scores[seed] - window
        lo = hi = seed
        while True:
            best: Any = None
            for j, new_lo, new_hi in ((lo - 1, lo - 1, hi), (hi + 1, lo, hi + 1)):
                if not 0 <= j < n or taken[j] or scores[j] < floor:
                    continue
                if cap > 0 and en[new_hi] - st[new_lo] > cap + _TIME_TOLERANCE_S:
                    continue
                option = (-scores[j], j, new_lo, new_hi)
                if best is None or option < best:
                    best = option
            if best is None:
                break
            _, j, lo, hi = best  # the better-scoring neighbour first
            taken[j] = True
        pieces.append((lo, hi))
    pieces.sort()
    return pieces


def _propose_moments_reference(
    segments: Sequence[RetrievedSegment],
    gap_rule: GapRule = AdjacentOnly(),
    max_proposals: int | None = None,
) -> list[Proposal]:
    """The first, pure-Python :func:`propose_moments`: kept as the specification that
    :func:`propose_arrays` is tested against, and timed beside it by the benchmark."""
    if max_proposals is not None and max_proposals < 0:
        raise ValueError(f"max_proposals must be >= 0 or None, got {max_proposals}")

    unique = _dedupe_by_id(segments)
    bounds = gap_rule if isinstance(gap_rule, BoundedMerge) and gap_rule.splits else None
    score_range = 0.0
    if bounds is not None and unique:
        # Best and worst by rank, not by value: ranks are what the ANN (or fusion) ordered by.
        best = min(unique, key=lambda s: s.rank)
        worst = max(unique, key=lambda s: s.rank)
        score_range = max(0.0, best.score - worst.score)
    proposals: list[Proposal] = []
    for video_segments in _group_by_video(unique):
        merged = _propose_in_video(video_segments, gap_rule)
        if bounds is None:
            proposals.extend(merged)
        else:
            for proposal in merged:
                proposals.extend(_split(proposal, video_segments, bounds, score_range))

    # Ranks are unique in a well-formed ANN result; the rest of the key only makes the order
    # deterministic if a caller passes duplicated ranks.
    proposals.sort(key=lambda p: (p.best_rank, p.video_key, p.start_s))
    if max_proposals is not None:
        del proposals[max_proposals:]
    return proposals


def pad_proposals(proposals: Sequence[Proposal], tau_c_s: float = 8.0) -> list[Proposal]:
    """Widen each proposal by ``tau_c_s`` seconds on both sides, clipped to the video.

    The padding gives the refiner context around the coarse span (the paper's tau_C, best at 8 s).
    Segments, ranks, scores and the order of ``proposals`` are unchanged.
    """
    if not tau_c_s >= 0:  # also rejects NaN
        raise ValueError(f"tau_c_s must be >= 0 seconds, got {tau_c_s}")
    out = []
    for p in proposals:
        start_s, end_s = max(0.0, p.start_s - tau_c_s), min(p.video_duration_s, p.end_s + tau_c_s)
        # Without the dataclass's checks where they hold (this runs for every proposal of
        # every query); the constructor raises for a proposal that ends past its video.
        make = _new_proposal if start_s <= end_s else Proposal
        out.append(make(p.video_key, start_s, end_s, p.video_duration_s, p.segment_ids, p.segment_ranks, p.segment_scores))
    return out


def _dedupe_by_id(segments: Iterable[RetrievedSegment]) -> list[RetrievedSegment]:
    best: dict[int, RetrievedSegment] = {}
    for seg in segments:
        kept = best.get(seg.segment_id)
        if kept is None or seg.rank < kept.rank:
            best[seg.segment_id] = seg
    return list(best.values())


def _group_by_video(segments: Iterable[RetrievedSegment]) -> list[list[RetrievedSegment]]:
    """Group by video, each group in time order (ties on ordinal broken by rank)."""
    by_video: dict[str, list[RetrievedSegment]] = {}
    for seg in segments:
        by_video.setdefault(seg.video_key, []).append(seg)
    groups = list(by_video.values())
    for group in groups:
        group.sort(key=lambda s: (s.ordinal, s.rank))
        _check_one_duration(group)
    return groups


def _check_one_duration(group: Sequence[RetrievedSegment]) -> None:
    # A disagreement means the catalog is inconsistent; clipping to either value would be a guess.
    durations = {seg.video_duration_s for seg in group}
    if len(durations) > 1:
        raise ValueError(
            f"segments of video {group[0].video_key!r} disagree on its duration: "
            f"{sorted(durations)}"
        )


def _runs(group: Sequence[RetrievedSegment]) -> list[list[RetrievedSegment]]:
    """Split a time-ordered group into maximal blocks of ordinal-adjacent segments.

    Two distinct segment ids with the same ordinal (a catalog oddity) stay in the same run rather
    than producing overlapping proposals.
    """
    runs: list[list[RetrievedSegment]] = [[group[0]]]
    for seg in group[1:]:
        if seg.ordinal <= runs[-1][-1].ordinal + 1:
            runs[-1].append(seg)
        else:
            runs.append([seg])
    return runs


def _span(run: Sequence[RetrievedSegment]) -> Span:
    """Clipped span of a run; ordinals are in time order, so the ends come from the end segments."""
    first, last = run[0], run[-1]
    duration_s = first.video_duration_s
    start_s = min(max(0.0, first.start_s), duration_s)
    end_s = max(start_s, min(duration_s, last.end_s))
    return Span(first.ordinal, last.ordinal, start_s, end_s)


def _propose_in_video(
    group: Sequence[RetrievedSegment], gap_rule: GapRule
) -> list[Proposal]:
    runs = _runs(group)
    proposals: list[Proposal] = []
    members = list(runs[0])
    current = _span(runs[0])
    for run in runs[1:]:
        following = _span(run)
        if gap_rule.joins(current, following):
            members.extend(run)
            current = Span(
                current.first_ordinal,
                following.last_ordinal,
                min(current.start_s, following.start_s),
                max(current.end_s, following.end_s),
            )
        else:
            proposals.append(_to_proposal(members, current))
            members, current = list(run), following
    proposals.append(_to_proposal(members, current))
    return proposals


def _to_proposal(members: Sequence[RetrievedSegment], span: Span) -> Proposal:
    return Proposal(
        video_key=members[0].video_key,
        start_s=span.start_s,
        end_s=span.end_s,
        video_duration_s=members[0].video_duration_s,
        segment_ids=tuple(s.segment_id for s in members),
        segment_ranks=tuple(s.rank for s in members),
        segment_scores=tuple(s.score for s in members),
    )


def _split(
    proposal: Proposal,
    video_segments: Sequence[RetrievedSegment],
    bounds: BoundedMerge,
    score_range: float,
) -> list[Proposal]:
    """``proposal`` cut into pieces that each grow from their best-ranked segment (see
    :class:`BoundedMerge`); one pass per seed, each member is taken once: O(n log n)."""
    if len(proposal.segment_ids) == 1:
        return [proposal]
    wanted = set(proposal.segment_ids)
    members = [s for s in video_segments if s.segment_id in wanted]  # time order
    window = bounds.score_window * score_range
    cap = bounds.max_length_s
    taken = [False] * len(members)
    pieces: list[tuple[int, int]] = []
    for seed in sorted(range(len(members)), key=lambda i: (members[i].rank, i)):
        if taken[seed]:
            continue
        taken[seed] = True
        floor = members[seed].score - window
        lo = hi = seed
        while True:
            options = []
            for j, (new_lo, new_hi) in ((lo - 1, (lo - 1, hi)), (hi + 1, (lo, hi + 1))):
                if not 0 <= j < len(members) or taken[j] or members[j].score < floor:
                    continue
                if cap > 0 and members[new_hi].end_s - members[new_lo].start_s > cap + _TIME_TOLERANCE_S:
                    continue
                options.append((-members[j].score, j, (new_lo, new_hi)))
            if not options:
                break
            _, j, (lo, hi) = min(options)  # the better-scoring neighbour first
            taken[j] = True
        pieces.append((lo, hi))
    if len(pieces) == 1:
        return [proposal]
    pieces.sort()
    return [_to_proposal(members[lo : hi + 1], _span(members[lo : hi + 1])) for lo, hi in pieces]


def gap_rule_from_config(
    gap_rule: str,
    max_missing_segments: int = 1,
    adaptive_alpha: float = 0.5,
    *,
    merge_score_window: float = 1.0,
    max_length_s: float = 0.0,
) -> GapRule:
    """The rule named in ``[proposals]``: ``adjacent`` (SPR), ``constant`` or ``adaptive``;
    wrapped in :class:`BoundedMerge` when ``merge_score_window`` < 1 or ``max_length_s`` > 0."""
    name = gap_rule.strip().lower()
    rule: GapRule
    if name == "adjacent":
        rule = AdjacentOnly()
    elif name == "constant":
        rule = ConstantGap(max_missing_segments)
    elif name == "adaptive":
        rule = AdaptiveGap(adaptive_alpha)
    else:
        raise ValueError(f"unknown gap rule {gap_rule!r}; choose 'adjacent', 'constant' or 'adaptive'")
    bounded = BoundedMerge(rule, merge_score_window, max_length_s)
    return bounded if bounded.splits else rule
