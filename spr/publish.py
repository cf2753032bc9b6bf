"""Publishing a video's segments to both stores so that search sees all of it or none of it.

The protocol of ``DESIGN.md`` ("Two stores, one truth"): the catalog row goes ``pending``
first, then the segment rows and the vectors are written (same ids in both), the vector
store is flushed, and only then does the row become ``ready``. Searches keep only ``ready``
rows, so a crash anywhere in between leaves nothing half-visible, and publishing the same
video again upserts the same ids: a re-run finishes the job without duplicates.

Deleting runs the other way: ``deleted`` first (invisible at once), then the vectors, then
the rows.

:func:`ensure_collection` is the other half of the contract: a collection is what the catalog
says it is (backend, dimension, metric, index, the model that made its vectors) and the vector
store holds it with that shape, or the writer is refused before anything is written.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .catalog import CollectionRecord, SegmentCatalog, VideoRecord
from .features import VISUAL, FrameFeatureStore, Modality, TimedFeatures, check_modality, check_thumbnails
from .segments import segment_bounds
from .stores import IndexSpec, VectorStore, index_spec_to_dict
from .text_tracks import TEXT_TRACKS, SegmentText, TrackReport, track_collection

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PublishedVideo:
    video: VideoRecord
    segment_ids: np.ndarray  # (n,) int64, ordinal order

    @property
    def video_id(self) -> int:
        return self.video.id


def publish_video(
    catalog: SegmentCatalog,
    store: VectorStore,
    collection: str,
    key: str,
    uri: str,
    duration_s: float,
    embeddings: np.ndarray,
    segment_length_s: float = 4.0,
    fps: float | None = None,
    content_hash: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    feature_store: FrameFeatureStore | None = None,
    frame_features: np.ndarray | None = None,
    feature_rate: float = 1.0,
    feature_model: str = "",
    features: Mapping[Modality, TimedFeatures] | None = None,
    ingest_info: Mapping[str, Any] | None = None,
) -> PublishedVideo:
    """Write one video's segment embeddings ``(n, dim)`` (one per ``segment_length_s``
    segment, ordinal order) to the catalog and ``collection``, then make it visible.

    With ``feature_store``, its ``features`` by modality (each ``(T, D)`` rows at a rate) are
    written first, under the same video id, for the refiner; ``frame_features`` ``(T, D)`` at
    ``feature_rate`` is short for ``features={VISUAL: TimedFeatures(frame_features, feature_rate)}``.
    ``metadata`` is the user's; ``ingest_info`` ingest's own (file path, size, mtime), kept apart.

    Replaces whatever the video had before. On any error the video stays invisible
    (``pending``) and the error propagates; the caller records it with ``mark_failed``.
    """
    by_modality = dict(features or {})
    if frame_features is not None:
        if VISUAL in by_modality:
            raise ValueError("pass the visual features once: as frame_features or in features, not both")
        by_modality[VISUAL] = TimedFeatures(frame_features, feature_rate)
    if (feature_store is None) != (not by_modality):
        raise ValueError("pass feature_store and the features (frame_features or features) together")
    payload = VideoPayload(key, uri, duration_s, embeddings, by_modality, fps, content_hash, metadata,
                           ingest_info=ingest_info)
    return publish_videos(catalog, store, collection, [payload], segment_length_s, feature_store, feature_model)[0]


def unpublish_video(
    catalog: SegmentCatalog,
    store: VectorStore,
    collection: str | Sequence[str],
    key: str,
    feature_store: FrameFeatureStore | None = None,
) -> bool:
    """Remove video ``key`` from search, the vector store (one or several collections), the
    feature store and the catalog; False if unknown.

    Safe to repeat after a crash: each step is idempotent."""
    video = catalog.get_video(key)
    if video is None:
        return False
    catalog.mark_deleted(video.id)
    for name in [collection] if isinstance(collection, str) else collection:
        if store.has_collection(name):
            store.delete_videos(name, [key])
            store.flush(name)
    if feature_store is not None:
        feature_store.delete(video.id)
    catalog.purge_video(video.id)
    return True


@dataclass(frozen=True)
class VideoPayload:
    """Everything one video contributes: its segment ``embeddings`` ``(n, dim)`` (ordinal
    order) for the collection, and the feature rows it keeps in the feature store, by modality
    (``{VISUAL: TimedFeatures((T, D), rate)}`` for video ingest; empty when the stored features
    stay as they are).

    ``thumbnails``: one JPEG per segment (ordinal order), which video ingest makes from the
    frames it decodes; empty when there are none to give (``spr import``, re-embedding). Empty
    thumbnails keep the stored ones, unless the payload replaces the visual features: the old
    pictures then belong to frames that are gone, and are removed (the page shows a placeholder)."""

    key: str
    uri: str
    duration_s: float
    embeddings: np.ndarray
    features: Mapping[Modality, TimedFeatures] = field(default_factory=dict)
    fps: float | None = None
    content_hash: str | None = None
    metadata: Mapping[str, Any] | None = None
    # Text tracks (speech, subtitles): each one's segment texts, their embeddings and the
    # transcript; ``tracks`` what happened to every track (also the empty, failed and off
    # ones), ``warnings`` what the catalog row should tell an operator (a broken subtitle file).
    texts: Mapping[Modality, SegmentText] = field(default_factory=dict)
    tracks: Mapping[Modality, TrackReport] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    thumbnails: Sequence[bytes] = ()
    # Ingest's own bookkeeping (the file read, its size and mtime), kept apart from ``metadata``.
    ingest_info: Mapping[str, Any] | None = None

    @property
    def nbytes(self) -> int:
        """Memory the payload holds: its embeddings, feature rows, text tracks and thumbnails."""
        return (
            int(np.asarray(self.embeddings).nbytes)
            + sum(f.nbytes for f in self.features.values())
            + sum(t.nbytes for t in self.texts.values())
            + sum(len(j) for j in self.thumbnails)
        )


def check_payload_features(p: VideoPayload, feature_store: FrameFeatureStore | None) -> None:
    """``p``'s feature modalities are valid names and have a store to go to; ValueError otherwise."""
    for modality in p.features:
        check_modality(modality)
    if p.features and feature_store is None:
        raise ValueError(f"video {p.key!r} carries {sorted(p.features)} features but no feature store was given")


def check_segment_payload(
    p: VideoPayload, bounds: np.ndarray, segment_length_s: float, text_collections: Mapping[str, str]
) -> np.ndarray:
    """``p``'s embeddings ``(segments, dim)`` float32, checked against its ``bounds`` (one per
    segment), and its text tracks against the collections given; ValueError naming the video."""
    emb = np.asarray(p.embeddings, dtype=np.float32)
    if emb.ndim != 2 or len(emb) != len(bounds):
        raise ValueError(
            f"video {p.key!r} of {p.duration_s} s has {len(bounds)} segments of {segment_length_s} s, "
            f"but {emb.shape[0] if emb.ndim else 0} embeddings were given (shape {emb.shape})"
        )
    for track, text in p.texts.items():
        if track not in text_collections:
            raise ValueError(f"video {p.key!r} carries {track} texts but no {track} collection was given")
        if len(text.texts) != len(bounds) or len(text.embeddings) != len(text.ordinals):
            raise ValueError(
                f"video {p.key!r}: its {track} track has {len(text.texts)} segment texts and "
                f"{len(text.embeddings)} embeddings for {len(bounds)} segments"
            )
    return emb


def publish_videos(
    catalog: SegmentCatalog,
    store: VectorStore,
    collection: str,
    payloads: Sequence[VideoPayload],
    segment_length_s: float = 4.0,
    feature_store: FrameFeatureStore | None = None,
    feature_model: str = "",
    text_collections: Mapping[Modality, str] | None = None,
) -> list[PublishedVideo]:
    """:func:`publish_video` for a batch, with one vector upsert and one flush for all of it
    (a Milvus flush costs about a second; per video it would dominate a big ingest).

    ``text_collections`` maps each text track to its collection (``segments__speech``...): a
    video's segment texts of that track replace its old ones in the catalog, their embeddings
    its old vectors there (a video without text in a track keeps none), its transcript goes to
    the feature store. Same segment ids in every collection. A video's ``thumbnails`` (one JPEG
    per segment) replace its stored ones in the feature store.

    Every video is registered ``pending`` first and turns ``ready`` only after every collection
    is flushed, so a crash anywhere leaves the whole batch invisible and a re-run repeats it
    idempotently.

    Collections stay consistent with each other: the catalog records which version (content
    hash, segment count) of each video every collection holds. A video published in another
    version than some other collection holds loses its vectors there (the same segment ids
    would otherwise point at the new video's spans), before it turns ready again; a re-run of
    that collection's ingest then finds it not done and re-processes it."""
    text_collections = dict(text_collections or {})
    checked = []
    for p in payloads:
        check_payload_features(p, feature_store)
        bounds = segment_bounds(p.duration_s, segment_length_s)
        if p.thumbnails:
            if feature_store is None:
                raise ValueError(f"video {p.key!r} carries thumbnails but no feature store was given")
            if len(p.thumbnails) != len(bounds):
                raise ValueError(
                    f"video {p.key!r} has {len(bounds)} segments but {len(p.thumbnails)} thumbnails (one per segment)"
                )
            # Refused here, before any video of the batch is registered, like a bad embedding.
            check_thumbnails(p.key, p.thumbnails)
        emb = check_segment_payload(p, bounds, segment_length_s, text_collections)
        checked.append((p, bounds, emb))
    if not checked:
        return []
    written: list[tuple[VideoRecord, np.ndarray]] = []
    for p, bounds, _ in checked:
        video = catalog.register_video(
            p.key, p.uri, p.duration_s, fps=p.fps, content_hash=p.content_hash, metadata=p.metadata,
            ingest_info=p.ingest_info,
        )
        for modality, rows in p.features.items():
            feature_store.write(video.id, rows.values, rows.rate, feature_model, modality=modality)
        # Before ready, like the features: a crash leaves them behind an invisible row, and the
        # re-run overwrites them.
        if p.thumbnails:
            feature_store.write_thumbnails(video.id, p.thumbnails)
        elif VISUAL in p.features:
            feature_store.delete_thumbnails(video.id)
        ids = catalog.replace_segments(video.id, bounds.ordinals, bounds.start_s, bounds.end_s)
        for track in text_collections:
            text = p.texts.get(track)
            if text is None:
                catalog.delete_segment_texts(video.id, track)
                continue
            catalog.replace_segment_texts(video.id, track, text.text_ordinals, [t for t in text.texts if t])
            if feature_store is not None and text.transcript.cues:
                feature_store.write_transcript(video.id, text.transcript)
        if p.tracks or p.warnings:
            catalog.set_tracks(video.id, {t: r.to_dict() for t, r in p.tracks.items()}, list(p.warnings))
        written.append((video, ids))
    keys = [p.key for p, _, _ in checked]
    store.delete_videos(collection, keys)
    all_ids = np.concatenate([ids for _, ids in written])
    if len(all_ids):
        vectors = np.concatenate([emb for _, _, emb in checked])
        tags = [key for key, (_, ids) in zip(keys, written) for _ in range(len(ids))]
        store.upsert(collection, all_ids, vectors, tags)
    for track, name in text_collections.items():
        _publish_track(store, name, track, [p for p, _, _ in checked], [ids for _, ids in written])
    store.flush(collection)
    for name in text_collections.values():
        store.flush(name)
    versions = [(video.id, p.content_hash, len(ids)) for (p, _, _), (video, ids) in zip(checked, written)]
    _invalidate_other_versions(catalog, store, {collection, *text_collections.values()}, versions, keys)
    for name in (collection, *text_collections.values()):
        catalog.record_holdings(name, versions)
    published = []
    for video, ids in written:
        catalog.mark_ready(video.id)
        published.append(PublishedVideo(catalog.get_video_by_id(video.id) or video, ids))
    return published


def _invalidate_other_versions(
    catalog: SegmentCatalog,
    store: VectorStore,
    written: set[str],
    versions: Sequence[tuple[int, str | None, int]],
    keys: Sequence[str],
) -> None:
    """Remove the batch's videos from every collection besides ``written`` that holds another
    version of them (content hash or segment count differs), and forget that it held them.
    ``versions``: ``(video_id, content_hash, segments)`` per video, in ``keys`` order. Runs
    while the videos are still ``pending``: a crash before the end leaves the record in place,
    so the re-run removes them again."""
    key_of = {video_id: key for (video_id, _, _), key in zip(versions, keys)}
    new = {video_id: (digest, n) for video_id, digest, n in versions}
    stale: dict[str, list[int]] = {}
    for video_id, held in catalog.holdings(list(new)).items():
        for name, version in held.items():
            if name not in written and version != new[video_id]:
                stale.setdefault(name, []).append(video_id)
    for name, video_ids in sorted(stale.items()):
        record = catalog.get_collection(name)
        if record is not None and store.holds(record):
            if store.has_collection(name):
                store.delete_videos(name, [key_of[v] for v in video_ids])
                store.flush(name)
        else:
            log.warning(
                "collection %s (%s store) holds an older version of %d changed video(s) that this %s store "
                "cannot remove; re-ingest them there", name, record.backend if record else "?", len(video_ids),
                store.backend, extra={"collection": name, "videos": [key_of[v] for v in video_ids][:20]},
            )
        catalog.drop_holdings(name, video_ids)


def _publish_track(
    store: VectorStore, name: str, track: Modality, payloads: Sequence[VideoPayload], ids: Sequence[np.ndarray]
) -> None:
    """Replace the batch's vectors in text collection ``name``: the embeddings of the segments
    that have ``track`` text, under those segments' ids."""
    store.delete_videos(name, [p.key for p in payloads])
    seg_ids, vectors, tags = [], [], []
    for p, video_ids in zip(payloads, ids):
        text = p.texts.get(track)
        if text is None or not len(text.embeddings):
            continue
        seg_ids.append(video_ids[text.ordinals])
        vectors.append(np.asarray(text.embeddings, dtype=np.float32))
        tags += [p.key] * len(text.embeddings)
    if seg_ids:
        store.upsert(name, np.concatenate(seg_ids), np.concatenate(vectors), tags)


# --- the collection contract ------------------------------------------------------------------


class CollectionMismatch(ValueError):
    """A collection exists with another shape or model than a writer needs. ``kind`` says what
    differs: ``"backend"``, ``"dim"``, ``"metric"``, ``"index"`` or ``"model"``."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def ensure_collection(
    catalog: SegmentCatalog,
    store: VectorStore,
    name: str,
    dim: int,
    feature_model: str,
    index: IndexSpec,
    metric: str = "IP",
) -> CollectionRecord:
    """Create collection ``name`` for ``dim``-d vectors of ``feature_model`` in ``store`` and
    the catalog, or check that the existing one is that; the catalog's record is returned.

    Refused with :class:`CollectionMismatch` (nothing written): a catalog record of another
    backend, dimension or metric, or of another model (a record without a model takes this
    one); a store collection of another dimension, metric or index than the catalog and
    ``index`` ask for. Vectors of different models or shapes are never searched together."""
    record = catalog.get_collection(name)
    if record is not None:
        if not store.holds(record):
            raise CollectionMismatch(
                "backend",
                f"collection {name!r} is registered for the {record.backend} store, not {store.backend}",
            )
        if record.dim != dim:
            raise CollectionMismatch(
                "dim", f"collection {name!r} holds {record.dim}-d vectors and this run makes {dim}-d vectors"
            )
        if record.metric.upper() != metric.upper():
            raise CollectionMismatch(
                "metric", f"collection {name!r} compares vectors by {record.metric}, this run by {metric}"
            )
        if record.feature_model and feature_model and record.feature_model != feature_model:
            raise CollectionMismatch(
                "model",
                f"collection {name!r} holds vectors of {record.feature_model} and this run makes {feature_model}; "
                f"vectors of different models cannot be searched together",
            )
    if store.has_collection(name):
        info = store.describe(name)
        if info.dim != dim:
            raise CollectionMismatch(
                "dim",
                f"collection {name!r} in the {store.backend} store holds {info.dim}-d vectors and this run makes "
                f"{dim}-d vectors",
            )
        if info.metric.upper() != metric.upper():
            raise CollectionMismatch(
                "metric", f"collection {name!r} in the {store.backend} store compares by {info.metric}, not {metric}"
            )
        if info.index != index:
            raise CollectionMismatch(
                "index",
                f"collection {name!r} in the {store.backend} store has the index {index_spec_to_dict(info.index)}, "
                f"the configuration asks for {index_spec_to_dict(index)} (vectors.index)",
            )
    else:
        store.create_collection(name, dim, index, metric)
    try:
        return catalog.register_collection(
            name, store.backend, dim, metric, index_spec_to_dict(index), feature_model=feature_model or None
        )
    except ValueError as exc:  # another process registered it differently in between
        raise CollectionMismatch("backend", str(exc)) from None


def ensure_track_collection(
    catalog: SegmentCatalog,
    store: VectorStore,
    collection: str,
    track: Modality,
    dim: int,
    feature_model: str,
    index: IndexSpec,
    metric: str = "IP",
) -> str:
    """:func:`ensure_collection` for ``track``'s collection beside ``collection``
    (``<collection>__<track>``), with the visual collection's index and metric; its name."""
    name = track_collection(collection, track)
    ensure_collection(catalog, store, name, dim, feature_model, index, metric)
    return name


def existing_track_collections(catalog: SegmentCatalog, store: VectorStore, collection: str) -> dict[Modality, str]:
    """The text collections that exist beside ``collection`` in this store, by track: a
    re-published video's old text vectors there are replaced, or removed when it has none now."""
    found = {}
    for track in TEXT_TRACKS:
        name = track_collection(collection, track)
        record = catalog.get_collection(name)
        if record is not None and store.holds(record) and store.has_collection(name):
            found[track] = name
    return found
