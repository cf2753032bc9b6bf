"""The coarse query path: query embedding -> top-k segments -> catalog -> proposals.

SPR sections 3.1.2 and 3.2: an ANN search returns the top-k (200) segments, one catalog
round trip turns their ids into (video, start, end), adjacent segments of a video merge into
proposals ranked by their best segment, and each proposal is padded by tau_C for the refiner.
Segments of videos that are not ``ready`` are dropped by the catalog lookup.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
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
    the refiner needs and a :class:`Proposal` does not carry)."""

    proposals: list[Proposal]
    padded: list[Proposal]
    segments: list[RetrievedSegment]
    timings_ms: dict[str, float] = field(default_factory=dict)
    locations: dict[int, SegmentLocation] = field(default_factory=dict)

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
    segments, proposals, padded = merge_hits(hits, locations, gap_rule, pad_s, max_proposals)
    t3 = time.perf_counter()
    timings = {"ann": 0.0, "catalog": (t2 - t1) * 1e3, "proposals": (t3 - t2) * 1e3}
    return CoarseResult(proposals, padded, segments, timings, locations)


def merge_hits(
    hits: Sequence[tuple[int, float]],
    locations: Mapping[int, SegmentLocation],
    gap_rule: GapRule = AdjacentOnly(),
    pad_s: float = 8.0,
    max_proposals: int | None = None,
) -> tuple[list[RetrievedSegment], list[Proposal], list[Proposal]]:
    """The proposals stage: ranked ``hits`` joined with their catalog ``locations`` (hits
    without one dropped) -> ``(segments, proposals, padded)``."""
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
    segments = retrieved_segments(ids, keys, ordinals, starts, ends, durations, scores, ranks)
    # The merge runs on the columns (numpy), not on the segment objects: the same proposals
    # as propose_moments(segments, ...).
    proposals = propose_arrays(ids, keys, ordinals, starts, ends, durations, scores, ranks, gap_rule, max_proposals)
    padded = pad_proposals(proposals, pad_s)
    return segments, proposals, padded
