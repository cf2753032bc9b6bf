"""Re-embedding: a new collection from the feature store, without decoding a video.

A new projector (``spr train projector``) changes every segment vector. Re-ingesting would decode
the whole archive again; instead this reads each ready video's stored per-second features, pools
them into its segments (:func:`spr.segments.segment_rows`, as ingest and import do), embeds them
with the configured projector and upserts them, under the same segment ids, into a **new**
collection through the same writer as ingest (:mod:`.writer`: batches, run counters), with a
publish step of its own (:func:`upsert_into`): vectors in, flush, batch done. The catalog is not
touched (no video goes ``pending``; publishing through ``pending`` would hide each batch from
the live collection too, since a video's row is shared by all collections), so searches go on.
A re-embedding that crashes or fails is finished by re-running it: the same ids are upserted
again, so the new collection ends with each segment once. That collection is not searched
until the search side switches to it (``vectors.collection``, or a request's ``collection``),
so a half-filled one is seen by no user; both can be compared with ``spr eval`` first.

The text tracks come along: each video's segment texts (speech, subtitles) are read from the
catalog and embedded with the configured sentence encoder (``text.model``) into the new
collection's ``<collection>__speech`` / ``<collection>__subtitles``, so switching to it keeps
what is said and written searchable, and a new text model is adopted the same way.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from spr import ids as spr_ids
from spr.catalog import SegmentCatalog, VideoRecord, VideoStatus
from spr.config import Config
from spr.features import VISUAL, FeatureNotFound, FrameFeatureStore
from spr.publish import CollectionMismatch, VideoPayload, ensure_collection, ensure_track_collection
from spr.segments import segment_count, segment_rows
from spr.stores import VectorStore, index_spec_from_config, open_vector_store
from spr.text_tracks import TEXT_TRACKS, SegmentText, Transcript

from .writer import FlushRule, ReaderItem, VideoWriter

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
    run_id: int | None = None
    text_model: str = ""  # the sentence encoder that re-embedded the text tracks
    text_segments: dict[str, int] = field(default_factory=dict)  # per track, segments re-embedded


def reembed_collection(
    config: Config,
    collection: str,
    on_batch: Callable[[int, int], None] | None = None,
) -> ReembedSummary:
    """Embed every ready video's stored features with ``projector.checkpoint`` into
    ``collection`` (created if needed; it must not be the one searches use now).
    ``on_batch(videos done, videos to do)`` runs after each published batch."""
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
        videos = catalog.list_videos(status=VideoStatus.READY.value)
        summary = ReembedSummary(collection)
        reader = _StoredFeatures(config, catalog, store, features, collection, summary)

        def published(payloads: Sequence[VideoPayload]) -> None:
            summary.videos += len(payloads)
            summary.segments += sum(len(p.embeddings) for p in payloads)
            for p in payloads:
                for track, text in p.texts.items():
                    summary.text_segments[track] = summary.text_segments.get(track, 0) + len(text.embeddings)
            if on_batch is not None:
                on_batch(summary.videos, len(videos))

        # The stored features are the input, not an output: nothing is written to the
        # feature store (hence no feature store for the writer).
        writer = VideoWriter(
            catalog, store, collection, config.segments.length_s, None, "", FlushRule.from_config(config),
            on_published=published,
            publish=upsert_into(catalog, store, collection, config.segments.length_s, reader.ensure_track),
        )
        run_config = {"command": "reembed", "collection": collection, "projector": config.projector.checkpoint}
        summary.run_id = writer.run(reader.items(videos), run_config, len(videos))
        summary.wall_s = time.perf_counter() - t0
        log.info("re-embedded collection", extra={"collection": collection, "videos": summary.videos, "segments": summary.segments})
        return summary
    finally:
        store.close()
        catalog.close()


def upsert_into(
    catalog: SegmentCatalog,
    store: VectorStore,
    collection: str,
    segment_length_s: float,
    ensure_track: Callable[[str, int, str], str] | None = None,
) -> Callable[[Sequence[VideoPayload]], None]:
    """The writer's publish step for a re-embedding: one upsert of the batch's vectors into
    ``collection`` under the catalog's segment ids (``spr.ids``: video id, ordinal), and of its
    text tracks' vectors into ``<collection>__<track>`` (``ensure_track(track, dim, model)``
    names it), then a flush of each. Video rows, segments and other collections are left as
    they are; a re-run upserts the same ids, so nothing is duplicated. Errors are
    :class:`ReembedError`, not ``ValueError``: the writer would record a ``ValueError``'s videos
    ``failed`` in the catalog, hiding them from the live collection."""

    def publish(payloads: Sequence[VideoPayload]) -> None:
        batches: dict[str, _Batch] = {collection: _Batch()}
        text_batches: dict[str, tuple[_Batch, str]] = {}  # track -> (its batch, the encoder)
        versions = []  # what the new collections hold of each video (spr.publish keeps them consistent)
        for p in payloads:
            video = catalog.get_video(p.key)
            n = segment_count(p.duration_s, segment_length_s)
            if video is None or len(p.embeddings) != n:
                raise ReembedError(f"video {p.key!r}: {len(p.embeddings)} vectors for {n} catalog segments")
            versions.append((video.id, video.content_hash, n))
            segment_ids = spr_ids.segment_ids(video.id, n)
            batches[collection].add(segment_ids, p.embeddings, p.key)
            for track, text in p.texts.items():
                batch, _ = text_batches.setdefault(track, (_Batch(), text.model))
                batch.add(segment_ids[text.ordinals], text.embeddings, p.key)
        for track, (batch, model) in text_batches.items():
            if batch.tags:
                batches[ensure_track(track, batch.dim, model)] = batch
        for name, batch in batches.items():
            if batch.tags:
                try:
                    store.upsert(name, np.concatenate(batch.ids), np.concatenate(batch.vectors), batch.tags)
                except ValueError as exc:
                    raise ReembedError(f"writing to {name!r} failed: {exc}") from exc
            store.flush(name)
        for name in batches:
            catalog.record_holdings(name, versions)

    return publish


@dataclass
class _Batch:
    """One collection's share of a publish step: segment ids, their vectors and video keys."""

    ids: list[np.ndarray] = field(default_factory=list)
    vectors: list[np.ndarray] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)

    def add(self, ids: np.ndarray, vectors: np.ndarray, key: str) -> None:
        self.ids.append(ids)
        self.vectors.append(np.asarray(vectors, dtype=np.float32))
        self.tags += [key] * len(ids)

    @property
    def dim(self) -> int:
        return int(self.vectors[0].shape[1])


class _StoredFeatures:
    """The stored-features reader: each video's visual features, pooled into its segments and
    embedded, as the writer's item. The projector is loaded, and the collection prepared, when
    the first video's features give the input size."""

    def __init__(self, config: Config, catalog, store, features: FrameFeatureStore, collection: str, summary: ReembedSummary) -> None:
        self.config = config
        self.catalog = catalog
        self.store = store
        self.features = features
        self.collection = collection
        self.summary = summary
        self.projectors: Any = None
        self._text_encoder: Any = None
        self._track_collections: dict[str, str] = {}

    def items(self, videos: Sequence[VideoRecord]) -> Iterator[ReaderItem]:
        length_s = self.config.segments.length_s
        for video in videos:
            try:
                stored = self.features.read(video.id, VISUAL)
            except FeatureNotFound:
                self.summary.missing.append(video.key)
                continue
            if self.projectors is None:
                self._setup(video.id)
            rows = segment_rows(len(stored.features), stored.rate, video.duration_s, length_s)
            embeddings = self.projectors.embed_segments(stored.features.astype(np.float32), rows)
            yield VideoPayload(
                key=video.key,
                uri=video.uri,
                duration_s=video.duration_s,
                embeddings=embeddings,
                fps=video.fps,
                content_hash=video.content_hash,
                metadata=video.metadata,
                texts=self._texts(video, len(rows)),
            )

    def _texts(self, video: VideoRecord, segments: int) -> dict[str, SegmentText]:
        """The video's catalog segment texts per track, embedded by the configured sentence
        encoder (loaded on the first video that has any text)."""
        ids = spr_ids.segment_ids(video.id, segments).tolist()
        stored = self.catalog.segment_texts(ids)
        out = {}
        for track in TEXT_TRACKS:
            per_segment = [stored.get(sid, {}).get(track, "") for sid in ids]
            wanted = [t for t in per_segment if t]
            if not wanted:
                continue
            if self._text_encoder is None:
                from spr.models.text import SentenceEncoder

                self._text_encoder = SentenceEncoder.from_config(self.config)
                self.summary.text_model = self._text_encoder.identity
            out[track] = SegmentText(
                tuple(per_segment), self._text_encoder.encode(wanted), Transcript(track, ()),
                model=self._text_encoder.identity,
            )
        return out

    def ensure_track(self, track: str, dim: int, model: str) -> str:
        """The new collection's ``track`` collection (``<collection>__<track>``), created or checked."""
        if track not in self._track_collections:
            spec = index_spec_from_config(self.config.vectors.index)
            try:
                self._track_collections[track] = ensure_track_collection(
                    self.catalog, self.store, self.collection, track, dim, model, spec, self.config.vectors.metric
                )
            except CollectionMismatch as exc:
                raise ReembedError(f"{exc}: choose a new name") from None
        return self._track_collections[track]

    def _setup(self, video_id: int) -> None:
        """Load the projector for the stored features' size; create (or check) the collection."""
        from spr.models.projector import load_projectors

        _, dim, _, clip_model = self.features.info(video_id, VISUAL)
        self.projectors = load_projectors(self.config.projector.checkpoint, dim)
        model = f"{clip_model.split(' + ')[0] or 'unknown'} + {self.projectors.identity}"
        self.summary.feature_model = model
        spec = index_spec_from_config(self.config.vectors.index)
        try:
            ensure_collection(self.catalog, self.store, self.collection, self.projectors.dim, model, spec, self.config.vectors.metric)
        except CollectionMismatch as exc:
            raise ReembedError(f"{exc}: choose a new name") from None
