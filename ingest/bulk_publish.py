"""``spr import``'s publish step: :func:`spr.publish.publish_videos` for a batch of thousands of
videos, with the catalog written in bulk.

The protocol is the same ("Two stores, one truth", :mod:`spr.publish`): every video of the
batch goes ``pending`` first, its segments, features and vectors are written, every collection
is flushed, and only then does the batch turn ``ready``; a crash anywhere leaves the batch
invisible and a re-run upserts the same ids. What differs is the cost per video, which made an
import of 147K segments take minutes (docs/benchmarks.md, "Bulk paths"):

* the catalog: one transaction registers the whole batch ``pending`` (one executemany upsert
  of the video rows, their metadata pairs, their old segments and texts deleted, every segment
  row in one COPY on PostgreSQL or one executemany on SQLite) and one marks it ``ready``,
  instead of three to five transactions per video;
* the feature store: one file per video still (:class:`spr.features.FrameFeatureStore`), but
  written on a few threads, so that their fsyncs overlap, while the vector store takes the
  batch's vectors;
* the vector store: one upsert and one flush per collection for the batch (as before), and
  the delete of old vectors only for videos the catalog already held (a new key has none).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from spr.catalog import SegmentCatalog
from spr.catalog.bulk import mark_ready_many, register_videos_pending, replace_segments_many, set_tracks_many
from spr.features import VISUAL, FrameFeatureStore, Modality
from spr.publish import VideoPayload, _invalidate_other_versions, _publish_track, check_payload_features, check_segment_payload
from spr.segments import segment_bounds
from spr.stores import VectorStore

log = logging.getLogger(__name__)

__all__ = ["FEATURE_WRITE_THREADS", "publish_batch"]

# Feature files written at once: each write ends in an fsync, which waits on the disk with the
# GIL released.
FEATURE_WRITE_THREADS = 4


def publish_batch(
    catalog: SegmentCatalog,
    store: VectorStore,
    collection: str,
    payloads: Sequence[VideoPayload],
    segment_length_s: float,
    feature_store: FrameFeatureStore | None,
    feature_model: str,
    text_collections: Mapping[Modality, str],
    insert_batch_rows: int = 50_000,
) -> dict[str, int]:
    """Publish ``payloads`` (imported videos: no thumbnails) into ``collection`` and the text
    collections, all of them or none visible; returns ``{key: video id}``. Raises
    ``ValueError`` for a payload that does not fit (before anything is written), as
    :func:`spr.publish.publish_videos` does."""
    checked = _check(payloads, segment_length_s, feature_store, text_collections)
    if not checked:
        return {}
    keys = [p.key for p, _ in checked]
    engine = catalog.engine
    with engine.begin() as conn:
        before = _known_keys(conn, keys)
        ids_of = register_videos_pending(
            conn, catalog.dialect,
            [
                {
                    "key": p.key, "uri": p.uri, "duration_s": p.duration_s, "fps": p.fps,
                    "content_hash": p.content_hash, "metadata": p.metadata, "ingest_info": p.ingest_info,
                }
                for p, _ in checked
            ],
        )
        video_ids = np.array([ids_of[k] for k in keys], dtype=np.int64)
        counts = np.array([len(b.ordinals) for _, b in checked], dtype=np.int64)
        ordinals = np.concatenate([np.asarray(b.ordinals, dtype=np.int64) for _, b in checked])
        owners = np.repeat(video_ids, counts)
        # The ordinal fills the low bits: spr.ids.segment_id(video_id, ordinal), vectorised.
        seg_ids = _segment_ids(owners, ordinals)
        replace_segments_many(
            conn, owners, seg_ids, ordinals,
            np.concatenate([b.start_s for _, b in checked]), np.concatenate([b.end_s for _, b in checked]),
            insert_batch_rows,
        )
        set_tracks_many(
            conn,
            {int(v): ({t: r.to_dict() for t, r in p.tracks.items()}, list(p.warnings))
             for (p, _), v in zip(checked, video_ids) if p.tracks or p.warnings},
        )
    per_video_ids = np.split(seg_ids, np.cumsum(counts)[:-1])
    _write_texts(catalog, feature_store, [p for p, _ in checked], video_ids, text_collections)
    # The frame features go to disk while the vector store takes the vectors: the two are
    # independent, and both are durable before the batch turns ready.
    with ThreadPoolExecutor(max_workers=FEATURE_WRITE_THREADS, thread_name_prefix="import-features") as pool:
        writes = _write_features(pool, feature_store, [p for p, _ in checked], video_ids, feature_model)
        old = [k for k in keys if k in before]
        if old:
            store.delete_videos(collection, old)
        if len(seg_ids):
            vectors = np.concatenate([np.asarray(p.embeddings, dtype=np.float32) for p, _ in checked])
            store.upsert(collection, seg_ids, vectors, list(np.repeat(np.array(keys, dtype=object), counts)))
        for track, name in text_collections.items():
            _publish_track(store, name, track, [p for p, _ in checked], per_video_ids)
        store.flush(collection)
        for name in text_collections.values():
            store.flush(name)
        for write in writes:
            write.result()  # re-raises a failed write: the batch stays pending
    versions = [(int(v), p.content_hash, int(n)) for (p, _), v, n in zip(checked, video_ids, counts)]
    _invalidate_other_versions(catalog, store, {collection, *text_collections.values()}, versions, keys)
    for name in (collection, *text_collections.values()):
        catalog.record_holdings(name, versions)
    with engine.begin() as conn:
        mark_ready_many(conn, video_ids.tolist())
    return dict(zip(keys, video_ids.tolist()))


def _check(
    payloads: Sequence[VideoPayload],
    segment_length_s: float,
    feature_store: FrameFeatureStore | None,
    text_collections: Mapping[Modality, str],
) -> list[tuple[VideoPayload, object]]:
    """Each payload with its segment bounds; ValueError naming the first that does not fit."""
    checked = []
    for p in payloads:
        check_payload_features(p, feature_store)
        if p.thumbnails:
            raise ValueError(f"video {p.key!r} carries thumbnails; the bulk publish is for imported features")
        bounds = segment_bounds(p.duration_s, segment_length_s)
        check_segment_payload(p, bounds, segment_length_s, text_collections)
        checked.append((p, bounds))
    if len({p.key for p, _ in checked}) != len(checked):
        raise ValueError("a video key appears twice in one batch")
    return checked


def _known_keys(conn, keys: Sequence[str]) -> set[str]:
    from spr.catalog.bulk import video_rows_by_key

    return set(video_rows_by_key(conn, keys))


def _segment_ids(video_ids: np.ndarray, ordinals: np.ndarray) -> np.ndarray:
    from spr import ids as spr_ids

    if len(video_ids):
        # Validates both extremes as spr.ids.segment_id does one id (range of video ids, ordinals).
        spr_ids.segment_id(int(video_ids.max()), int(ordinals.max()))
        spr_ids.segment_id(int(video_ids.min()), int(ordinals.min()))
    return (video_ids << np.int64(spr_ids.ORDINAL_BITS)) | ordinals


def _write_texts(
    catalog: SegmentCatalog,
    feature_store: FrameFeatureStore | None,
    payloads: Sequence[VideoPayload],
    video_ids: np.ndarray,
    text_collections: Mapping[Modality, str],
) -> None:
    """Segment texts that carry words (an import's carry none: its text tracks are vectors
    only) and transcripts; the segments' old texts went with the old segments."""
    for p, video_id in zip(payloads, video_ids.tolist()):
        for track in text_collections:
            text = p.texts.get(track)
            if text is None:
                continue
            words = [t for t in text.texts if t]
            if words:
                catalog.replace_segment_texts(video_id, track, text.text_ordinals, words)
            if feature_store is not None and text.transcript.cues:
                feature_store.write_transcript(video_id, text.transcript)


def _write_features(
    pool: ThreadPoolExecutor,
    feature_store: FrameFeatureStore | None,
    payloads: Sequence[VideoPayload],
    video_ids: np.ndarray,
    model: str,
) -> list[Future]:
    """Every payload's frame features (one file per video and modality) written on ``pool``,
    a few at once (each write ends in an fsync, which waits with the GIL released); a video's
    old thumbnails go with its old frames. Returns the writes' futures."""
    jobs = [(int(v), m, rows) for p, v in zip(payloads, video_ids.tolist()) for m, rows in p.features.items()]
    if not jobs:
        return []
    assert feature_store is not None  # _check refused features without a store

    def write(job: tuple[int, Modality, object]) -> None:
        video_id, modality, rows = job
        feature_store.write(video_id, rows.values, rows.rate, model, modality=modality)
        if modality == VISUAL:
            feature_store.delete_thumbnails(video_id)

    return [pool.submit(write, job) for job in jobs]
