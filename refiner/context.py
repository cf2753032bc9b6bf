"""Precomputed frame context for a windowed refiner (``shape.context_window > 0``).

The query-independent half of SPR_CLIP, ``[F^M | G]`` per frame
(:meth:`spr.models.refiner.SPRClipRefiner.video_context`), lives in the feature store as the
modality :data:`~spr.models.refiner.CONTEXT_MODALITY`, one file per video, tagged with the
refiner's :meth:`~spr.models.refiner.SPRClipRefiner.context_version`. Query time reads those
rows; a proposal whose rows are missing or were made by other weights gets its rows computed
from the CLIP frame features around it instead (:func:`contexts_for_spans`), never stale ones.

:func:`precompute_contexts` fills the store: ``spr refiner precompute`` runs it over every video,
``spr ingest``, ``spr import`` and ``spr reembed`` after they wrote videos.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np
import torch

from spr.features import FeatureNotFound, FrameFeatures, FrameFeatureStore
from spr.models.refiner import CONTEXT_MODALITY, SPRClipRefiner, context_rows, window_of

log = logging.getLogger(__name__)

__all__ = ["ContextReport", "contexts_for_spans", "precompute_contexts", "usable_context"]


def usable_context(model: SPRClipRefiner, rows: FrameFeatures | None) -> bool:
    """True when stored context ``rows`` were made by ``model``'s weights and fit its size."""
    return (
        rows is not None
        and rows.model == model.context_version()
        and rows.features.ndim == 2
        and rows.features.shape[1] == 2 * model.shape.dim
    )


def contexts_for_spans(
    model: SPRClipRefiner,
    store: FrameFeatureStore,
    visual: Sequence[FrameFeatures],
    pool: Executor | None = None,
    autocast: torch.dtype | None = None,
) -> list[np.ndarray]:
    """Context rows ``(T_i, 2 dim)`` float16 for spans whose stored rows cannot be used,
    computed from the CLIP frame features of the windows their rows take context from
    (``visual``: the spans' own frame features, as read for the proposals), exactly as
    :func:`precompute_contexts` would store them (same windows, same float16 rounding).

    Each needed window is encoded once however many spans share it: a query's proposals of
    one video overlap in their padding and in their windows. ``autocast``: the serving
    precision's dtype on a CPU or GPU (None: float32, what precompute uses)."""
    if not visual:
        return []
    window = model.shape.context_window
    s = window // 2
    by_video: dict[int, list[int]] = {}
    for i, f in enumerate(visual):
        by_video.setdefault(f.video_id, []).append(i)
    needed = {}  # video -> sorted window indices its spans need
    for vid, items in by_video.items():
        ks: set[int] = set()
        for i in items:
            lo = visual[i].first_row
            c_lo, c_hi = context_rows(lo, lo + len(visual[i].features), window)
            ks.update(range(c_lo // s, (c_hi - window) // s + 1))
        needed[vid] = sorted(ks)
    videos = list(needed)
    rate = {vid: visual[by_video[vid][0]].rate for vid in videos}
    wide = store.read_many(
        [(vid, needed[vid][0] * s / rate[vid], (needed[vid][-1] * s + window) / rate[vid]) for vid in videos],
        missing="raise",
        pool=pool,
    )
    out: list[np.ndarray | None] = [None] * len(visual)
    with torch.inference_mode():
        windows, slot = [], {}
        for vid, rows in zip(videos, wide):
            frames = torch.from_numpy(rows.features.astype(np.float32)).to(model.device)
            first = rows.first_row
            for k in needed[vid]:
                slot[(vid, k)] = len(windows)
                windows.append(frames[k * s - first : k * s - first + window])
        with torch.autocast(model.device.type, dtype=autocast) if autocast is not None else contextlib.nullcontext():
            encoded = model.encode_window_batch(windows).float()  # (windows, W, dim)
        for i, f in enumerate(visual):
            j = torch.arange(f.first_row, f.first_row + len(f.features), device=encoded.device)
            k = window_of(j, window)
            index = torch.tensor([slot[(f.video_id, int(x))] for x in k.tolist()], device=encoded.device)
            fm = encoded[index, j - k * s]
            out[i] = model.context_from_encoded(fm).float().cpu().numpy().astype(np.float16)
    return out  # type: ignore[return-value]


@dataclass
class ContextReport:
    """What :func:`precompute_contexts` did: video ids written, already current (skipped),
    without frame features (missing), and the rows it encoded."""

    written: list[int] = field(default_factory=list)
    current: list[int] = field(default_factory=list)
    missing: list[int] = field(default_factory=list)
    rows: int = 0
    wall_s: float = 0.0


def precompute_contexts(
    model: SPRClipRefiner,
    store: FrameFeatureStore,
    video_ids: Iterable[int],
    *,
    force: bool = False,
    progress: Callable[[int, int, ContextReport], None] | None = None,
) -> ContextReport:
    """Compute and store each video's context rows with ``model`` (a windowed refiner), from
    its whole CLIP frame features. A video whose stored rows carry this model's version is
    skipped unless ``force``. Each file is written atomically, so a crash leaves old rows (which
    their version then refuses) or new ones."""
    if not model.windowed:
        raise ValueError(f"the refiner ({model.name}) runs online over each proposal: it has no context to precompute")
    version = model.context_version()
    ids = list(video_ids)
    report = ContextReport()
    t0 = time.perf_counter()
    for n, vid in enumerate(ids, 1):
        if not force and _is_current(store, vid, version):
            report.current.append(vid)
        else:
            try:
                visual = store.read(vid)
            except FeatureNotFound:
                report.missing.append(vid)
            else:
                with torch.inference_mode():
                    frames = torch.from_numpy(visual.features.astype(np.float32)).to(model.device)
                    rows = model.video_context(frames).float().cpu().numpy()
                store.write(vid, rows, visual.rate, version, modality=CONTEXT_MODALITY)
                report.written.append(vid)
                report.rows += len(rows)
        if progress is not None:
            progress(n, len(ids), report)
    report.wall_s = time.perf_counter() - t0
    log.info(
        "refiner context precomputed",
        extra={"written": len(report.written), "current": len(report.current), "missing": len(report.missing),
               "rows": report.rows, "wall_s": round(report.wall_s, 3), "version": version},
    )
    return report


def _is_current(store: FrameFeatureStore, video_id: int, version: str) -> bool:
    try:
        return store.info(video_id, CONTEXT_MODALITY)[3] == version
    except FeatureNotFound:
        return False
