"""The writer every ingest path ends in: readers' videos -> batches -> the publish protocol.

Three readers feed it: decoded and encoded video files (:mod:`.pipeline`), precomputed feature
files (:mod:`.importer`) and the feature store itself (:mod:`.reembed`). Each yields, per video,
a :class:`~spr.publish.VideoPayload` to publish, an :class:`Unchanged` to skip or a
:class:`RejectedVideo` to record as failed; ``None`` means "nothing new yet" (a chance to
publish a slow trickle on time). :class:`VideoWriter` queues payloads and publishes them with
:func:`spr.publish.publish_videos` (``pending`` -> segments, features, vectors, flush ->
``ready``), so every path is exactly-once: a crash leaves the batch invisible and a re-run
replaces the same ids; re-embedding passes its own ``publish`` step instead, which only upserts
into the new collection and leaves the catalog's rows alone. It also keeps the ingest-run row's
counters and the failed rows.

:class:`FlushRule` is the one rule for when a batch is published.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

from spr.catalog import SegmentCatalog
from spr.features import FrameFeatureStore, Modality
from spr.publish import VideoPayload, publish_videos
from spr.stores import VectorStore

log = logging.getLogger(__name__)

__all__ = ["FlushRule", "ReaderItem", "RejectedVideo", "Unchanged", "VideoWriter"]


@dataclass(frozen=True)
class RejectedVideo:
    """A video that cannot be ingested; ``error`` says why and what to do. The other fields
    fill the catalog row recorded for a key the catalog does not know yet."""

    key: str
    error: str
    uri: str = ""
    duration_s: float | None = None
    content_hash: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    ingest_info: Mapping[str, Any] = field(default_factory=dict)  # ingest's own fields, not the user's


@dataclass(frozen=True)
class Unchanged:
    """A video whose ready row already holds what this run would write."""

    key: str


ReaderItem = Union[VideoPayload, Unchanged, RejectedVideo, None]


@dataclass(frozen=True)
class FlushRule:
    """When the queued videos are published (whichever comes first):

    * ``min_videos`` are queued, or a tenth (``growth``) of the videos this run has published
      so far: each flush costs Milvus about a second and rewrites a whole Faiss index, so a
      20K-video run writes some tens of batches, not 20K. A crash loses at most one batch,
      which stays ``pending`` and is redone by the re-run;
    * the queue holds ``max_bytes`` of embeddings and feature rows (memory stays bounded);
    * ``max_wait_s`` passed since the last flush (a slow trickle still becomes visible)."""

    min_videos: int = 16
    growth: float = 0.1
    max_bytes: int = 256 << 20
    max_wait_s: float = 10.0

    @classmethod
    def from_config(cls, config: Any) -> "FlushRule":
        return cls(min_videos=max(1, int(config.ingest.write_batch_videos)))

    def batch_videos(self, published: int) -> int:
        """Videos per batch once ``published`` videos are out."""
        return max(self.min_videos, int(published * self.growth))

    def due(self, queued: int, queued_bytes: int, published: int, waited_s: float) -> bool:
        if not queued:
            return False
        return queued >= self.batch_videos(published) or queued_bytes >= self.max_bytes or waited_s >= self.max_wait_s


class VideoWriter:
    """Publishes one run's videos into ``collection`` in batches; records skips and failures.

    ``on_published(payloads)`` runs after each batch turned ready, ``on_failed(key, error)``
    after each failure is recorded, ``on_skipped(key)`` for each unchanged video: the stages
    keep their summaries, progress displays and metrics there.

    ``publish(payloads)`` replaces :func:`spr.publish.publish_videos` for a writer that must not
    touch the catalog's video rows: re-embedding fills a collection no one searches yet, and
    taking its videos through ``pending`` would hide them from the live collection too (the
    row is shared by all collections). Such a step raises something other than ``ValueError``
    for a failed batch: a ``ValueError`` makes the writer record videos ``failed``."""

    def __init__(
        self,
        catalog: SegmentCatalog,
        store: VectorStore,
        collection: str,
        segment_length_s: float,
        feature_store: FrameFeatureStore | None,
        feature_model: str,
        rule: FlushRule,
        on_published: Callable[[Sequence[VideoPayload]], None] | None = None,
        on_failed: Callable[[str, str], None] | None = None,
        on_skipped: Callable[[str], None] | None = None,
        publish: Callable[[Sequence[VideoPayload]], object] | None = None,
        text_collections: Mapping[Modality, str] | None = None,
        ensure_track: Callable[[Modality, int, str], str] | None = None,
    ) -> None:
        self.catalog = catalog
        self.store = store
        self.collection = collection
        self.segment_length_s = segment_length_s
        self.feature_store = feature_store
        self.feature_model = feature_model
        self.rule = rule
        self.on_published = on_published
        self.on_failed = on_failed
        self.on_skipped = on_skipped
        self.publish = publish
        # Text tracks (speech, subtitles) -> their collections. A track's collection is made on
        # the first video that has its text (``ensure_track(track, dim, model) -> name``), so a
        # corpus without speech never gets an empty speech collection.
        self.text_collections: dict[Modality, str] = dict(text_collections or {})
        self.ensure_track = ensure_track
        self.run_id: int | None = None
        self.published = 0  # videos made ready by this writer
        self.queue: list[VideoPayload] = []
        self._queued_bytes = 0
        self._last_flush = time.monotonic()
        # Run counters not yet written: one UPDATE per batch, not per video.
        self._counts: Counter[str] = Counter()

    # --- the run -------------------------------------------------------------------------------

    def run(self, items: Iterable[ReaderItem], run_config: Mapping[str, Any], videos_total: int) -> int:
        """Record an ingest run, take every item, publish what is left and close the run
        (``failed`` with the error when something raises). Returns the run id."""
        self.start_run(run_config, videos_total)
        try:
            for item in items:
                self.take(item)
            self.flush()
        except BaseException as exc:
            self.finish_run(exc)
            raise
        self.finish_run()
        return self.run_id

    def start_run(self, run_config: Mapping[str, Any], videos_total: int) -> int:
        self.run_id = self.catalog.start_run(dict(run_config), videos_total=videos_total)
        return self.run_id

    def finish_run(self, error: BaseException | None = None) -> None:
        self.report_counts()
        if self.run_id is None:
            return
        if error is None:
            self.catalog.finish_run(self.run_id)
        else:
            self.catalog.finish_run(self.run_id, "failed", f"{type(error).__name__}: {error}")

    # --- items ---------------------------------------------------------------------------------

    def take(self, item: ReaderItem) -> None:
        """Queue, skip or fail one reader item (None: nothing new; publish if it is time)."""
        if isinstance(item, VideoPayload):
            self.add(item)
            return
        if isinstance(item, Unchanged):
            self.skip(item.key)
        elif isinstance(item, RejectedVideo):
            self.fail(item)
        elif item is not None:
            raise TypeError(f"a reader yielded {item!r}; expected a VideoPayload, Unchanged, RejectedVideo or None")
        self.tick()

    def add(self, payload: VideoPayload) -> None:
        """Queue one video; publishes the queue when :class:`FlushRule` says so."""
        self.queue.append(payload)
        self._queued_bytes += payload.nbytes
        self.tick()

    def tick(self) -> None:
        waited = time.monotonic() - self._last_flush
        if self.rule.due(len(self.queue), self._queued_bytes, self.published, waited):
            self.flush()

    def skip(self, key: str) -> None:
        # Its own counter: ``videos_done`` counts published videos, as the run's summary does.
        self._counts["videos_skipped"] += 1
        if self.on_skipped is not None:
            self.on_skipped(key)

    def fail(self, rejected: RejectedVideo) -> None:
        """Record the video ``failed`` with the reason: on its catalog row (an existing row
        keeps what it last published; a new key gets a row for the purpose, so ``spr status``
        says why), in the run and through ``on_failed``."""
        log.warning("video %s not ingested: %s", rejected.key, rejected.error, extra={"video_key": rejected.key})
        self._counts["videos_failed"] += 1
        row = self.catalog.get_video(rejected.key)
        if row is None:
            duration = rejected.duration_s
            safe = duration if duration is not None and duration >= 0 and math.isfinite(duration) else 0.0
            try:
                row = self.catalog.register_video(
                    rejected.key, rejected.uri, safe, content_hash=rejected.content_hash, metadata=rejected.metadata,
                    ingest_info=rejected.ingest_info,
                )
            except ValueError:  # a key the catalog cannot hold (too long): only the summary says why
                row = None
        if row is not None:
            self.catalog.mark_failed(row.id, rejected.error)
        if self.on_failed is not None:
            self.on_failed(rejected.key, rejected.error)

    # --- publishing ----------------------------------------------------------------------------

    def flush(self) -> None:
        """Publish the queue (one vector upsert and flush), then write the run's counters."""
        self._last_flush = time.monotonic()
        if self.queue:
            batch, self.queue, self._queued_bytes = self.queue, [], 0
            self._publish_batch(batch)
        self.report_counts()

    def _publish_batch(self, batch: list[VideoPayload]) -> None:
        try:
            self._publish(batch)
            ok = batch
        except ValueError as exc:
            # One bad video must not sink its batch: redo them one by one to find it.
            log.warning("batch publish failed, publishing its videos one by one", extra={"error": str(exc)})
            ok = []
            for payload in batch:
                try:
                    self._publish([payload])
                    ok.append(payload)
                except ValueError as one:
                    self.fail(RejectedVideo(payload.key, f"publishing failed: {one}", payload.uri, payload.duration_s))
        if not ok:
            return
        segments = sum(len(p.embeddings) for p in ok)
        self.published += len(ok)
        self._counts.update(videos_done=len(ok), segments_written=segments)
        log.info("published videos", extra={"videos": len(ok), "segments": segments, "collection": self.collection})
        if self.on_published is not None:
            self.on_published(ok)

    def _publish(self, payloads: list[VideoPayload]) -> None:
        if self.publish is not None:
            self.publish(payloads)
            return
        for payload in payloads:
            for track, text in payload.texts.items():
                if track not in self.text_collections:
                    if self.ensure_track is None:
                        raise ValueError(f"video {payload.key!r} has {track} text but this run keeps no {track} track")
                    self.text_collections[track] = self.ensure_track(track, int(text.embeddings.shape[1]), text.model)
        publish_videos(
            self.catalog, self.store, self.collection, payloads, self.segment_length_s, self.feature_store,
            self.feature_model, self.text_collections,
        )

    def report_counts(self) -> None:
        """Write the run counters gathered since the last report."""
        if self.run_id is not None and any(self._counts.values()):
            self.catalog.increment_run(self.run_id, **self._counts)
        self._counts.clear()
