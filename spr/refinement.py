"""What refinement takes and gives, independent of where the refiner runs (SPR section 3.3).

The search engine (:class:`spr.engine.MomentSearch`) hands one query's padded proposals to a
:class:`Refiner` and gets refined, re-ranked moments back. Two implementations exist:

* in this process (:class:`spr.refine.inprocess.InProcessRefiner`: the feature store, the dynamic
  batcher, the SPR_CLIP model), used by ``spr eval`` and by the refiner's gRPC service;
* over gRPC (:class:`spr.refine_client.GrpcRefiner`, a client of ``spr.v1.RefinerService``),
  used by the search service.

Both answer the same :class:`Refinement` for the same request, and both report a refinement that
did not happen the same way: :class:`RefineFailed`, which the engine turns into a degraded
answer (the coarse proposals), never into a failed search.

Plain dataclasses and numpy only: no protobuf, no grpc, no torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from spr.features import VISUAL

__all__ = [
    "FAILURE_KINDS",
    "Moment",
    "RefineCandidate",
    "RefineFailed",
    "RefineRequest",
    "Refinement",
    "Refiner",
    "RefinerLoadError",
    "VISUAL",
]

# VISUAL (re-exported from spr.features, where modalities are named) is the modality of the
# per-time-step features a request carries: CLIP frame features, the only one today. Speech or
# subtitles would be another name, read from the same feature store.

# Why a refinement did not happen (RefineFailed.kind); the gRPC service answers them as
# INVALID_ARGUMENT, FAILED_PRECONDITION, UNAVAILABLE, DEADLINE_EXCEEDED and INTERNAL.
FAILURE_KINDS = ("invalid", "precondition", "unavailable", "timeout", "internal")


@dataclass(frozen=True)
class Moment:
    """One ranked moment of a video: ``[start_s, end_s)`` and its ``score``, with where it came
    from: the coarse proposal ``[coarse_start_s, coarse_end_s)`` at ``coarse_rank`` in the coarse
    ranking."""

    video_key: str
    uri: str
    start_s: float
    end_s: float
    score: float
    coarse_rank: int
    coarse_start_s: float
    coarse_end_s: float
    video_duration_s: float
    # Which modalities' ANN lists found this moment's segments, and at what rank and score
    # (spr.fusion.Contribution, one per modality: its best-ranked segment); () from a refiner,
    # the engine fills it in.
    modalities: tuple = ()
    # What was said (speech) or written (subtitles) during the moment, and which track it is.
    snippet: str = ""
    snippet_track: str = ""
    # The catalog id of the video, and the segment that shows the moment (the one holding its
    # midpoint: thumbnails, players); 0 from a refiner, the engine fills them in.
    video_id: int = 0
    segment_id: int = 0


@dataclass(frozen=True)
class RefineCandidate:
    """One padded proposal to refine: ``[start_s, end_s)`` is the span the refiner reads and
    stays inside; ``[coarse_start_s, coarse_end_s)`` the unpadded proposal it came from."""

    video_id: int  # the catalog id, which keys the feature store
    video_key: str
    uri: str
    start_s: float
    end_s: float
    coarse_rank: int
    video_duration_s: float
    coarse_start_s: float
    coarse_end_s: float


@dataclass(frozen=True)
class RefineRequest:
    """One query and its candidates, best coarse rank first.

    ``query`` ``(D_q,)`` float32: the CLIP text feature, or the joint-space embedding when
    ``query_projected``. ``modality`` names the features the refiner reads for each candidate's
    span (:data:`VISUAL`: the video's CLIP frame features)."""

    query: np.ndarray
    candidates: Sequence[RefineCandidate]
    query_projected: bool = False
    modality: str = VISUAL
    # At most this many moments come back, best first; 0: one per candidate. Ranking needs only
    # the scores, so a refiner may sharpen the boundaries of these alone (what a search returns).
    top_k: int = 0


@dataclass(frozen=True)
class Refinement:
    """The refiner's answer: ``moments`` best first (at most one per candidate; candidates whose
    video has no features are left out and counted in ``dropped``), the ``model`` that scored
    them, and the batch the query rode in. ``timings_ms``: ``features``, ``queue``, ``model``,
    ``total`` (and ``load`` when this call waited for the model to load, ``context`` when a
    windowed refiner computed context rows it found no current ones of)."""

    moments: list[Moment]
    model: str
    random_weights: bool
    dropped: int = 0
    batch_proposals: int = 0
    batch_queries: int = 0
    timings_ms: dict[str, float] = field(default_factory=dict)
    # A windowed refiner: proposals whose context rows it computed from frames (none stored,
    # or stored by other weights) instead of reading them; their time is timings_ms["context"].
    context_computed: int = 0


class RefineFailed(Exception):
    """This query's refinement did not happen; the search answers its coarse proposals, degraded,
    with ``str(exc)`` as the reason. ``kind`` is one of :data:`FAILURE_KINDS`."""

    def __init__(self, kind: str, message: str) -> None:
        if kind not in FAILURE_KINDS:
            raise ValueError(f"kind must be one of {FAILURE_KINDS}, got {kind!r}")
        super().__init__(message)
        self.kind = kind
        self.message = message


class RefinerLoadError(RuntimeError):
    """The refiner cannot work at all here (its checkpoint is missing, or it does not fit the
    features or the queries). Not a degraded query: the caller's setup is wrong, so it fails
    loudly. The message says what to fix."""


@runtime_checkable
class Refiner(Protocol):
    """Re-scores and sharpens one query's padded proposals."""

    def refine(self, request: RefineRequest, timeout_s: float | None = None) -> Refinement:
        """The refined moments of ``request``, within ``timeout_s`` (None: the refiner's own
        deadline). Raises :class:`RefineFailed` when this query cannot be refined."""
        ...

    def close(self) -> None:
        """Release what the refiner holds (a channel, a batcher thread)."""
        ...
