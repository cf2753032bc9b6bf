"""The coarse query path: query embedding -> top-k segments -> catalog -> proposals.

SPR sections 3.1.2 and 3.2: an ANN search returns the top-k (200) segments, one catalog
round trip turns their ids into (video, start, end), adjacent segments of a video merge into
proposals ranked by their best segment, and each proposal is padded by tau_C for the refiner.
Segments of videos that are not ``ready`` are dropped by the catalog lookup.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from .catalog import SegmentCatalog, SegmentLocation
from .proposals import (
    AdjacentOnly,
    GapRule,
    Proposal,
    RetrievedSegment,
    pad_proposals,
    propose_arrays,
    retrieved_segments,
)
from .stores import SearchParams, VectorStore


@dataclass(frozen=True)
class CoarseResult:
    """``proposals`` best first, unpadded; ``padded`` the same widened by tau_C; per-stage
    ``timings_ms`` (``ann``, ``catalog``, ``proposals``); ``segments`` the visible hits;
    ``locations`` their catalog rows by segment id (the video's catalog id and URI, which
    the refiner needs and a :class:`Proposal` does not carry).

    ``segments`` may be given as a list or as a zero-argument function building it: the
    :class:`RetrievedSegment` objects are built on first use, since most callers only count
    them (``segment_count``) and building 200 of them was a fifth of a batched query's cost."""

    proposals: list[Proposal]
    padded: list[Proposal]
    _segments: list[RetrievedSegment] | Callable[[], list[RetrievedSegment]] = field(repr=False, compare=False)
    timings_ms: dict[str, float] = field(default_factory=dict)
    locations: dict[int, SegmentLocation] = field(default_factory=dict)
    segment_count: int = -1  # the visible hits (-1: len(segments))

    def __post_init__(self) -> None:
        if self.segment_count < 0:
            object.__setattr__(self, "segment_count", len(self.segments))

    @property
    def segments(self) -> list[RetrievedSegment]:
        built = self._segments
        if callable(built):
            built = built()  # two threads may both build it: the same list
            object.__setattr__(self, "_segments", built)
        return built

    def location_of(self, proposal: Proposal) -> SegmentLocation:
        """The catalog row of ``proposal``'s first segment: its video's id and URI."""
        return self.locations[proposal.segment_ids[0]]


def retrieve_proposals(
    store: VectorStore,
    catalog: SegmentCatalog,
    collection: str,
    query: np.ndarray,
    top_k: int = 200,
    params: SearchParams | None = None,
    gap_rule: GapRule = AdjacentOnly(),
    pad_s: float = 8.0,
    video_keys: Sequence[str] | None = None,
    max_proposals: int | None = None,
) -> CoarseResult:
    """Coarse proposals for one L2-normalised query embedding of shape ``(dim,)``."""
    t0 = time.perf_counter()
    found = store.search(collection, np.asarray(query, dtype=np.float32).reshape(1, -1), top_k, params, video_keys)
    ann_ms = (time.perf_counter() - t0) * 1e3
    result = propose_from_hits(catalog, found.hits(0), gap_rule, pad_s, max_proposals)
    result.timings_ms["ann"] = ann_ms
    return result


def propose_from_hits(
    catalog: SegmentCatalog,
    hits: Sequence[tuple[int, float]],
    gap_rule: GapRule = AdjacentOnly(),
    pad_s: float = 8.0,
    max_proposals: int | None = None,
) -> CoarseResult:
    """Coarse proposals from ranked segment hits ``[(segment id, score), ...]`` best first (one
    modality's ANN answer, or several fused by :mod:`spr.fusion`): one catalog round trip, then
    adjacent segments merged and padded."""
    t1 = time.perf_counter()
    locations = catalog.lookup_segments([sid for sid, _ in hits])
    t2 = time.perf_counter()
    segments, count, proposals, padded = _merge(hits, locations, gap_rule, pad_s, max_proposals)
    t3 = time.perf_counter()
    timings = {"ann": 0.0, "catalog": (t2 - t1) * 1e3, "proposals": (t3 - t2) * 1e3}
    return CoarseResult(proposals, padded, segments, timings, locations, count)


# Ids per catalog lookup of a batch: SQLite binds each id of an IN list as one variable (at
# most 32,766), and 64 queries x 200 hits stay one statement.
LOOKUP_CHUNK_IDS = 16_384


def propose_from_hits_many(
    catalog: SegmentCatalog,
    hit_lists: Sequence[Sequence[tuple[int, float]]],
    gap_rule: GapRule = AdjacentOnly(),
    pad_s: float = 8.0,
    max_proposals: int | None = None,
) -> list[CoarseResult]:
    """:func:`propose_from_hits` of each of ``hit_lists`` (one ranked ``[(segment id, score),
    ...]`` per query), the same results, with one catalog lookup for the union of their segment
    ids (in chunks of :data:`LOOKUP_CHUNK_IDS`) instead of one per query. Each result's
    ``locations`` holds its own hits' rows only; its ``catalog`` time is the lookup's time over
    the number of queries."""
    if not hit_lists:
        return []
    t1 = time.perf_counter()
    wanted = np.unique(np.fromiter((sid for hits in hit_lists for sid, _ in hits), dtype=np.int64))
    locations: dict[int, SegmentLocation] = {}
    for lo in range(0, len(wanted), LOOKUP_CHUNK_IDS):
        locations.update(catalog.lookup_segments(wanted[lo : lo + LOOKUP_CHUNK_IDS]))
    catalog_ms = (time.perf_counter() - t1) * 1e3 / len(hit_lists)
    out = []
    for hits in hit_lists:
        t2 = time.perf_counter()
        own = {sid: loc for sid, _ in hits if (loc := locations.get(sid)) is not None}
        segments, count, proposals, padded = _merge(hits, own, gap_rule, pad_s, max_proposals)
        timings = {"ann": 0.0, "catalog": catalog_ms, "proposals": (time.perf_counter() - t2) * 1e3}
        out.append(CoarseResult(proposals, padded, segments, timings, own, count))
    return out


def merge_hits(
    hits: Sequence[tuple[int, float]],
    locations: Mapping[int, SegmentLocation],
    gap_rule: GapRule = AdjacentOnly(),
    pad_s: float = 8.0,
    max_proposals: int | None = None,
) -> tuple[list[RetrievedSegment], list[Proposal], list[Proposal]]:
    """The proposals stage: ranked ``hits`` joined with their catalog ``locations`` (hits
    without one dropped) -> ``(segments, proposals, padded)``."""
    segments, _, proposals, padded = _merge(hits, locations, gap_rule, pad_s, max_proposals)
    return segments(), proposals, padded


def _merge(
    hits: Sequence[tuple[int, float]],
    locations: Mapping[int, SegmentLocation],
    gap_rule: GapRule,
    pad_s: float,
    max_proposals: int | None,
) -> tuple[Callable[[], list[RetrievedSegment]], int, list[Proposal], list[Proposal]]:
    """:func:`merge_hits` with the segments as a function that builds them, and their number."""
    ranks, ids, scores, locs = [], [], [], []
    for rank, (sid, score) in enumerate(hits):
        loc = locations.get(sid)
        if loc is not None:
            ranks.append(rank)
            ids.append(sid)
            scores.append(score)
            locs.append(loc)
    keys = [loc.video_key for loc in locs]
    ordinals = [loc.ordinal for loc in locs]
    starts = [loc.start_s for loc in locs]
    ends = [loc.end_s for loc in locs]
    durations = [loc.video_duration_s for loc in locs]

    def segments() -> list[RetrievedSegment]:
        return retrieved_segments(ids, keys, ordinals, starts, ends, durations, scores, ranks)

    # The merge runs on the columns (numpy), not on the segment objects: the same proposals
    # as propose_moments(segments, ...).
    proposals = propose_arrays(ids, keys, ordinals, starts, ends, durations, scores, ranks, gap_rule, max_proposals)
    padded = pad_proposals(proposals, pad_s)
    return segments, len(ids), proposals, padded
