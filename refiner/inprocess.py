"""The refiner in this process: :class:`InProcessRefiner`, the :class:`spr.refinement.Refiner`
that ``spr eval`` refines with and that the refiner's gRPC service serves.

Per call: check the request, read each candidate's per-time-step features for its span (one file
open per distinct video, videos read in parallel on ``read_pool``), drop candidates whose video
has none (deleted meanwhile); a windowed refiner reads its precomputed context rows instead
(:mod:`refiner.context`; computed from the frames where missing or stale); run the rest through the shared
:class:`~spr.refine.batching.DynamicBatcher` (concurrent calls share forward passes), and place
the refined frame spans in seconds inside each padded span, best first
(:func:`spr.models.refiner.place_refined`).

A request that cannot be refined raises :class:`spr.refinement.RefineFailed` with a ``kind`` the
gRPC service answers as a status code, so the in-process and the remote refiner fail alike.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import numpy as np

from spr.features import FeatureNotFound, FrameFeatures, FrameFeatureStore
from spr.limits import (
    MAX_REFINE_PROPOSALS,
    REFINE_WAIT_S,
    default_batch_frames,
    default_batch_proposals,
    default_batch_wait_ms,
)
from spr.models.refiner import CONTEXT_MODALITY, SPRClipRefiner, load_refiner, place_refined
from spr.refinement import VISUAL, Moment, RefineCandidate, RefineFailed, Refinement, RefineRequest, RefinerLoadError

from .batching import MODEL_MODALITIES, BatcherClosed, DynamicBatcher, RefineWork, ScoredSpans
from .context import contexts_for_spans, usable_context

log = logging.getLogger(__name__)

__all__ = ["InProcessRefiner", "load_model", "read_proposal_features", "start_batcher"]

# Frames of the untimed forward pass a lazily loaded refiner runs before its first real query.
_WARM_UP_FRAMES = 4


def read_proposal_features(
    store: FrameFeatureStore,
    requests: Sequence[tuple[int, float, float]],
    pool: Executor | None = None,
    modality: str = VISUAL,
) -> list[FrameFeatures | None]:
    """``[(video_id, start_s, end_s), ...]`` -> features of ``modality`` in input order, None
    where the video has none (deleted meanwhile): a missing video costs only its own proposals."""
    return store.read_many(requests, missing="none", pool=pool, modality=modality)


def load_model(config: Any, in_dim: int) -> SPRClipRefiner:
    """``refiner.checkpoint`` on ``refiner.device`` for ``in_dim``-d frame features (empty
    checkpoint: random weights). Raises :class:`RefinerLoadError` naming what to fix."""
    from spr.models.clip import resolve_device

    try:
        return load_refiner(config.refiner.checkpoint, in_dim, resolve_device(config.refiner.device))
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        raise RefinerLoadError(str(exc)) from None


def start_batcher(config: Any, model: SPRClipRefiner, metrics: Any = None) -> DynamicBatcher:
    """The dynamic batcher of ``model`` with ``config.refiner``'s batching and precision (auto
    values: :func:`spr.limits.default_batch_proposals`, ``default_batch_wait_ms`` and
    ``default_batch_frames`` of its device)."""
    from spr.models.clip import resolve_precision

    rc = config.refiner
    device = str(model.device)
    return DynamicBatcher(
        model,
        rc.max_batch_proposals or default_batch_proposals(device),
        default_batch_wait_ms(device) if rc.max_wait_ms < 0 else rc.max_wait_ms,
        rc.max_batch_frames or default_batch_frames(device),
        resolve_precision(rc.precision, device),
        metrics=metrics,
    )


class InProcessRefiner:
    """Refines with a model in this process.

    ``features``: the store the candidates' per-time-step features are read from, in the
    modality each request names (the model reads :data:`~spr.refine.batching.MODEL_MODALITIES`).
    ``batcher``: the model's running :class:`DynamicBatcher`, or None with ``start`` to build one
    on first use for the size of the first features read (``start(in_dim) -> batcher``;
    :meth:`loading_on_first_use` does this when that size is not known up front). ``wait_s``
    bounds a call without a deadline. :meth:`close` stops the batcher and nothing else."""

    def __init__(
        self,
        features: FrameFeatureStore,
        batcher: DynamicBatcher | None = None,
        *,
        start: Callable[[int], DynamicBatcher] | None = None,
        read_pool: Executor | None = None,
        max_proposals: int = MAX_REFINE_PROPOSALS,
        wait_s: float = REFINE_WAIT_S,
    ) -> None:
        if batcher is None and start is None:
            raise ValueError("give the refiner's batcher, or how to start one")
        self.features = features
        self.read_pool = read_pool
        self.max_proposals = max_proposals
        self.wait_s = wait_s
        self._batcher = batcher
        self._start = start
        self._lock = threading.Lock()
        self._load_error: RefinerLoadError | None = None  # a refiner that cannot load fails every call alike

    @classmethod
    def loading_on_first_use(
        cls, config: Any, *, model: SPRClipRefiner | None = None, metrics: Any = None, read_pool: Executor | None = None
    ) -> "InProcessRefiner":
        """The refiner of ``config.refiner`` over ``config.features_url``'s frame features, started
        on first use for the size of the first features read (``spr eval``: the corpus decides the
        size), then warmed up with one untimed forward pass. ``model``: use it instead of loading
        ``refiner.checkpoint``."""

        def start(in_dim: int) -> DynamicBatcher:
            chosen = model if model is not None else load_model(config, in_dim)
            if chosen.shape.in_dim != in_dim:
                raise RefinerLoadError(
                    f"frame features are {in_dim}-d but the refiner ({chosen.name}) takes {chosen.shape.in_dim}-d: "
                    "features and refiner come from different CLIP models"
                )
            return start_batcher(config, chosen, metrics)

        return cls(FrameFeatureStore.from_config(config), start=start, read_pool=read_pool)

    # -- what it runs -------------------------------------------------------------------------

    @property
    def batcher(self) -> DynamicBatcher | None:
        """The running batcher (None until a lazily started refiner's first use)."""
        return self._batcher

    @property
    def model(self) -> SPRClipRefiner | None:
        return self._batcher.model if self._batcher is not None else None

    def close(self) -> None:
        if self._batcher is not None:
            self._batcher.close()

    def __enter__(self) -> "InProcessRefiner":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- Refiner ------------------------------------------------------------------------------

    def refine(self, request: RefineRequest, timeout_s: float | None = None) -> Refinement:
        """The refined moments of ``request``, waiting at most ``timeout_s`` (None: ``wait_s``)
        for the model. Raises :class:`RefineFailed`, or :class:`RefinerLoadError` when a lazily
        started model cannot load or does not fit the features or the query."""
        started = time.perf_counter()
        query = self._check_request(request)
        if not request.candidates:
            return self._answer([], 0, None, {})
        model = self.model
        if model is not None and model.windowed:
            kept, features, rows, computed, context_ms = self._read_context(model, request)
        else:
            kept, features = self._read_features(request)
            rows = None
        timings = {"features": (time.perf_counter() - started) * 1e3}
        dropped = len(request.candidates) - len(kept)
        if not kept:
            timings["total"] = (time.perf_counter() - started) * 1e3
            return self._answer([], dropped, None, timings)
        batcher = self._ready_batcher(features[0].features.shape[1], request, timings)
        if batcher.model.windowed and rows is None:  # the first call of a lazily started refiner
            kept, features, rows, computed, context_ms = self._read_context(batcher.model, request)
        self._check_features(batcher.model, kept, features, rows is not None)
        if rows is not None:
            work = RefineWork(
                query, rows, request.query_projected, request.modality, context=True,
                top_k=request.top_k, ranks=[c.coarse_rank for c in kept],
            )
            if computed:
                timings["context"] = context_ms
        else:
            computed = 0
            work = RefineWork(query, [f.features for f in features], request.query_projected, request.modality)
        scored = self._score(batcher, work, timeout_s)
        moments = _placed_moments(kept, features, scored, request.top_k)
        timings["queue"] = scored.queue_ms
        timings["model"] = scored.model_ms
        timings["total"] = (time.perf_counter() - started) * 1e3
        return self._answer(moments, dropped, scored, timings, computed)

    def _answer(
        self, moments: list[Moment], dropped: int, scored: ScoredSpans | None, timings: dict, context_computed: int = 0
    ) -> Refinement:
        model = self.model
        return Refinement(
            moments=moments,
            model=model.name if model is not None else "",
            random_weights=bool(model is not None and model.random_weights),
            dropped=dropped,
            batch_proposals=scored.batch_proposals if scored is not None else 0,
            batch_queries=scored.batch_queries if scored is not None else 0,
            timings_ms=timings,
            context_computed=context_computed,
        )

    def _check_request(self, request: RefineRequest) -> np.ndarray:
        """The query as ``(D,)`` float32; raises ``RefineFailed("invalid")`` naming the problem.
        The query's size is checked here once the model is known (else when it loads)."""
        if request.modality not in MODEL_MODALITIES:
            raise RefineFailed(
                "invalid", f"this refiner reads {', '.join(MODEL_MODALITIES)} features, not {request.modality!r}"
            )
        query = np.asarray(request.query, dtype=np.float32)
        model = self.model
        if model is not None:
            expected = model.query_dim(request.query_projected)
            if query.shape != (expected,):
                kind = "a projected query embedding" if request.query_projected else "a CLIP text feature"
                raise RefineFailed(
                    "invalid", f"query has {query.size} values; this refiner ({model.name}) expects {kind} of {expected}"
                )
        if not np.isfinite(query).all():
            raise RefineFailed("invalid", "query contains NaN or infinity")
        if not 0 <= request.top_k <= self.max_proposals:
            raise RefineFailed("invalid", f"top_k must be in [0, {self.max_proposals}] (0: one moment per proposal), got {request.top_k}")
        if len(request.candidates) > self.max_proposals:
            raise RefineFailed("invalid", f"{len(request.candidates)} proposals in one call; at most {self.max_proposals}")
        for i, c in enumerate(request.candidates):
            if not (math.isfinite(c.start_s) and math.isfinite(c.end_s) and 0.0 <= c.start_s < c.end_s):
                raise RefineFailed(
                    "invalid",
                    f"proposal {i} (video {c.video_id}) has span [{c.start_s}, {c.end_s}); need 0 <= start_s < end_s",
                )
        return query

    def _read_features(self, request: RefineRequest) -> tuple[list[RefineCandidate], list[FrameFeatures]]:
        """The candidates whose video still has features, and those features."""
        candidates = request.candidates
        spans = [(c.video_id, c.start_s, c.end_s) for c in candidates]
        try:
            read = read_proposal_features(self.features, spans, self.read_pool, request.modality)
        except OSError as exc:  # object store or disk trouble: worth a retry elsewhere
            log.exception("cannot read frame features")
            raise RefineFailed("unavailable", f"cannot read frame features: {exc}") from None
        missing = sorted({c.video_id for c, f in zip(candidates, read) if f is None})
        if missing:
            log.warning("dropped proposals of videos without frame features", extra={"video_ids": missing[:20]})
        kept = [(c, f) for c, f in zip(candidates, read) if f is not None]
        return [c for c, _ in kept], [f for _, f in kept]

    def _read_context(
        self, model: SPRClipRefiner, request: RefineRequest
    ) -> tuple[list[RefineCandidate], list[FrameFeatures], list[np.ndarray], int, float]:
        """A windowed refiner's inputs: the candidates whose video still has features, where
        each lies (``FrameFeatures`` of its rows), its context rows ``(T_i, 2 dim)``, how many
        of those were computed here and the milliseconds that took. Stored rows are used where
        they carry this model's version; the others are computed from the frames around the
        span, and rows of other weights are never used (``spr refiner precompute`` makes them
        current)."""
        candidates = request.candidates
        spans = [(c.video_id, c.start_s, c.end_s) for c in candidates]
        try:
            stored = self.features.read_many(spans, missing="none", pool=self.read_pool, modality=CONTEXT_MODALITY)
            todo = [i for i, f in enumerate(stored) if not usable_context(model, f)]
            visual: list[FrameFeatures | None] = []
            if todo:
                visual = read_proposal_features(self.features, [spans[i] for i in todo], self.read_pool)
            found = [f for f in visual if f is not None]
            if found:
                self._check_features(model, [candidates[i] for i, f in zip(todo, visual) if f is not None], found)
            t0 = time.perf_counter()
            computed = iter(contexts_for_spans(model, self.features, found, self.read_pool, self._autocast_dtype()))
            context_ms = (time.perf_counter() - t0) * 1e3
        except (OSError, FeatureNotFound) as exc:  # object store or disk trouble: worth a retry elsewhere
            log.exception("cannot read frame context")
            raise RefineFailed("unavailable", f"cannot read frame features or context: {exc}") from None
        fallback = dict(zip(todo, visual))
        stale = sorted({candidates[i].video_id for i in todo if stored[i] is not None})
        if stale:
            log.warning(
                "refiner context rows of other weights ignored and recomputed from frames; run `spr refiner precompute`",
                extra={"video_ids": stale[:20], "version": model.context_version()},
            )
        missing = sorted({candidates[i].video_id for i, f in fallback.items() if f is None})
        if missing:
            log.warning("dropped proposals of videos without frame features", extra={"video_ids": missing[:20]})
        kept, where, rows = [], [], []
        for i, c in enumerate(candidates):
            if i in fallback:
                f = fallback[i]
                if f is None:
                    continue
                kept.append(c)
                where.append(f)
                rows.append(next(computed))
            else:
                kept.append(c)
                where.append(stored[i])
                rows.append(stored[i].features)
        return kept, where, rows, len(found), context_ms

    def _autocast_dtype(self) -> "torch.dtype | None":
        """The serving precision's autocast dtype (None for fp32), for rows computed here."""
        import torch

        precision = self._batcher.precision if self._batcher is not None else "fp32"
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

    def _ready_batcher(self, in_dim: int, request: RefineRequest, timings: dict[str, float]) -> DynamicBatcher:
        """The running batcher; a lazily started one is started here (the time this call waited
        for it goes to ``timings["load"]``)."""
        if self._batcher is not None:
            return self._batcher
        t0 = time.perf_counter()
        with self._lock:
            if self._load_error is not None:
                raise self._load_error
            if self._batcher is None:
                try:
                    self._batcher = self._started(in_dim, request)
                except RefinerLoadError as exc:
                    self._load_error = exc
                    raise
        timings["load"] = (time.perf_counter() - t0) * 1e3
        return self._batcher

    def _started(self, in_dim: int, request: RefineRequest) -> DynamicBatcher:
        """Start the batcher, check the model takes this request's query, and run one untimed
        forward pass (the first one pays for lazy initialisation)."""
        assert self._start is not None
        batcher = self._start(in_dim)
        model = batcher.model
        expected = model.query_dim(request.query_projected)
        got = int(np.asarray(request.query).size)
        if got != expected:
            batcher.close()
            kind = "projected embeddings" if request.query_projected else "CLIP text features"
            raise RefinerLoadError(f"the refiner ({model.name}) takes {expected}-d {kind}; the queries give {got}-d")
        warm = np.zeros(expected, dtype=np.float32)
        warm[0] = 1.0
        width = 2 * model.shape.dim if model.windowed else in_dim
        frames = [np.zeros((_WARM_UP_FRAMES, width), dtype=np.float16)]
        batcher.refine(RefineWork(warm, frames, request.query_projected, request.modality, context=model.windowed))
        if model.windowed:
            model.context_version()  # digest the weights now, not in the first query
        return batcher

    @staticmethod
    def _check_features(
        model: SPRClipRefiner, kept: Sequence[RefineCandidate], features: Sequence[FrameFeatures], context: bool = False
    ) -> None:
        shape = model.shape
        for c, f in zip(kept, features):
            if not context and f.features.shape[1] != shape.in_dim:
                raise RefineFailed(
                    "precondition",
                    f"video {c.video_id} has {f.features.shape[1]}-d frame features, the refiner expects "
                    f"{shape.in_dim}-d: features and refiner come from different CLIP models",
                )
            if len(f.features) > shape.max_frames:
                raise RefineFailed(
                    "invalid",
                    f"proposal of video {c.video_id} [{c.start_s}, {c.end_s}) spans {len(f.features)} frames; "
                    f"the refiner takes at most {shape.max_frames}",
                )

    def _score(self, batcher: DynamicBatcher, work: RefineWork, timeout_s: float | None) -> ScoredSpans:
        """``work`` through the shared batcher, within the deadline."""
        try:
            future = batcher.submit(work)
        except BatcherClosed:
            raise RefineFailed("unavailable", "the refiner is shutting down; retry on another replica") from None
        except ValueError as exc:  # work the model cannot take (checked before it could fail a batch)
            raise RefineFailed("invalid", str(exc)) from None
        try:
            return future.result(timeout=self.wait_s if timeout_s is None else max(timeout_s, 0.0))
        except FutureTimeout:
            future.cancel()  # not computed if its batch has not started yet
            raise RefineFailed("timeout", "the refiner did not finish before the deadline") from None
        except Exception as exc:  # the batch's forward pass failed (logged by the batcher)
            raise RefineFailed("internal", f"refiner forward pass failed: {type(exc).__name__}: {exc}") from None


def _placed_moments(
    candidates: Sequence[RefineCandidate], features: Sequence[FrameFeatures], scored: ScoredSpans, top_k: int = 0
) -> list[Moment]:
    """Frame spans -> seconds inside each padded span and its video; moments best first (ties
    by coarse rank), the first ``top_k`` of them (0: all)."""
    start_s, end_s, order = place_refined(
        scored.start_idx,
        scored.end_idx,
        scored.scores,
        np.array([f.first_s for f in features]),
        np.array([f.rate for f in features]),
        np.array([c.start_s for c in candidates]),
        np.array([c.end_s for c in candidates]),
        np.array([c.video_duration_s for c in candidates]),
        np.array([c.coarse_rank for c in candidates]),
    )
    order = [i for i in order if scored.start_idx[i] >= 0]  # a windowed refiner spans only its top_k
    if top_k:
        order = order[:top_k]
    return [
        Moment(
            video_key=candidates[i].video_key,
            uri=candidates[i].uri,
            start_s=float(start_s[i]),
            end_s=float(end_s[i]),
            score=float(scored.scores[i]),
            coarse_rank=candidates[i].coarse_rank,
            coarse_start_s=candidates[i].coarse_start_s,
            coarse_end_s=candidates[i].coarse_end_s,
            video_duration_s=candidates[i].video_duration_s,
        )
        for i in order
    ]
