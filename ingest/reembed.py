"""Re-embedding: a new collection from the frame-feature store, without decoding a video.

A new projector (``spr train projector``) changes every segment vector. Re-ingesting would decode
the whole archive again and, video by video, take rows through ``pending``; instead this reads
each ready video's stored per-second features, embeds its segments with the configured projector
and upserts them, under the same segment ids, into a **new** collection. The catalog is not
touched: the old collection keeps serving, unchanged, until the search side switches to the new
one (``vectors.collection``, or a request's ``collection``), and both can be compared with
``spr eval`` first.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from spr import ids as spr_ids
from spr.catalog import SegmentCatalog
from spr.config import Config
from spr.features import FeatureNotFound, FrameFeatureStore
from spr.segments import segment_count
from spr.stores import index_spec_from_config, index_spec_to_dict, open_vector_store

log = logging.getLogger(__name__)


class ReembedError(RuntimeError):
    """The re-embedding cannot start (same collection, collection of another model...)."""


@dataclass
class ReembedSummary:
    collection: str
    feature_model: str = ""
    videos: int = 0
    segments: int = 0
    missing: list[str] = field(default_factory=list)  # ready videos without stored features
    wall_s: float = 0.0


def reembed_collection(
    config: Config,
    collection: str,
    batch_videos: int = 64,
    on_batch: Callable[[int, int], None] | None = None,
) -> ReembedSummary:
    """Embed every ready video's stored features with ``projector.checkpoint`` into
    ``collection`` (created if needed; it must not be the one searches use now)."""
    from spr.models.projector import load_projectors

    if collection == config.vectors.collection:
        raise ReembedError(
            f"{collection!r} is the collection searches use now (vectors.collection); re-embed into a new one "
            f"and switch to it when it is complete"
        )
    t0 = time.perf_counter()
    catalog = SegmentCatalog.from_config(config)
    store = open_vector_store(config)
    features = FrameFeatureStore.from_config(config)
    try:
        videos = catalog.list_videos(status="ready")
        summary = ReembedSummary(collection)
        projectors = None
        pending: list[tuple[np.ndarray, np.ndarray, list[str]]] = []

        def flush() -> None:
            if pending:
                store.upsert(collection, np.concatenate([p[0] for p in pending]), np.concatenate([p[1] for p in pending]), [k for p in pending for k in p[2]])
                pending.clear()

        for video in videos:
            try:
                stored = features.read(video.id)
            except FeatureNotFound:
                summary.missing.append(video.key)
                continue
            if projectors is None:
                # The projector is checked against the stored features' size once, up front.
                _, dim, _, clip_model = features.info(video.id)
                projectors = load_projectors(config.projector.checkpoint, dim)
                summary.feature_model = f"{clip_model.split(' + ')[0] or 'unknown'} + {projectors.identity}"
                _prepare(config, catalog, store, collection, projectors.dim, summary.feature_model)
            n = segment_count(video.duration_s, config.segments.length_s)
            emb = projectors.embed_segments(stored.features.astype(np.float32), stored.rate, config.segments.length_s)
            emb = _fit(emb, n)
            pending.append((spr_ids.segment_ids(video.id, n), emb, [video.key] * n))
            summary.videos += 1
            summary.segments += n
            if len(pending) >= batch_videos:
                flush()
                if on_batch is not None:
                    on_batch(summary.videos, len(videos))
        flush()
        if projectors is not None:
            store.flush(collection)
        summary.wall_s = time.perf_counter() - t0
        log.info("re-embedded collection", extra={"collection": collection, "videos": summary.videos, "segments": summary.segments})
        return summary
    finally:
        store.close()
        catalog.close()


def _fit(embeddings: np.ndarray, n: int) -> np.ndarray:
    """Exactly ``n`` rows: feature rounding can leave one segment more or less than the
    catalog's count for the video's duration; the catalog's segments are the truth."""
    if len(embeddings) >= n:
        return embeddings[:n]
    return np.concatenate([embeddings, np.repeat(embeddings[-1:], n - len(embeddings), axis=0)])


def _prepare(config: Config, catalog: SegmentCatalog, store, name: str, dim: int, feature_model: str) -> None:
    existing = catalog.get_collection(name)
    if existing is not None and existing.feature_model and existing.feature_model != feature_model:
        raise ReembedError(
            f"collection {name!r} holds vectors of {existing.feature_model}, not {feature_model}; choose a new name"
        )
    spec = index_spec_from_config(config.vectors.index)
    store.create_collection(name, dim, spec, config.vectors.metric)
    catalog.register_collection(name, store.backend, dim, config.vectors.metric, index_spec_to_dict(spec), feature_model=feature_model)
