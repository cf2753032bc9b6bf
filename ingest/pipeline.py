"""Video ingest: sources -> encoder pool -> the batched writer (:mod:`.writer`), exactly once
per video.

A video becomes searchable only when all its segments are in the catalog, the vector store
and the feature store (:func:`spr.publish.publish_videos` marks it ``ready`` last). A re-run
of the same command resumes: a video whose catalog row is ``ready`` with the same file size
and mtime, or with the same content hash, is skipped if the target collection holds that
version ("done" is per collection); anything else (new, changed, pending after a crash, failed
before, ready but not in this collection) is processed again and its ids are upserted, never
duplicated.
A video that fails is recorded ``failed`` with the reason and the run goes on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry

from spr.catalog import SegmentCatalog, VideoStatus
from spr.config import Config
from spr.features import FrameFeatureStore, Modality, TimedFeatures
from spr.publish import (
    CollectionMismatch,
    VideoPayload,
    ensure_collection,
    ensure_track_collection,
    existing_track_collections,
    unpublish_video,
)
from spr.stores import index_spec_from_config, open_vector_store
from spr.stores.base import check_collection_name
from spr.telemetry import IngestMetrics, serve_metrics

from .encoder import EncodedVideo, EncoderInfo, EncoderSettings, FailedVideo, SkippedVideo
from .progress import IngestProgress
from .sources import VideoSource
from .tracks import TrackSettings
from .writer import FlushRule, ReaderItem, RejectedVideo, Unchanged, VideoWriter

log = logging.getLogger(__name__)


class IngestError(RuntimeError):
    """The run cannot start (incompatible collection, unreachable store...)."""


@dataclass
class IngestSummary:
    run_id: int
    collection: str
    videos_total: int = 0
    videos_done: int = 0
    videos_skipped: int = 0
    videos_failed: int = 0
    segments_written: int = 0
    video_seconds: float = 0.0
    frames: int = 0
    wall_s: float = 0.0  # from the first video submitted to the last published
    startup_s: float = 0.0  # Ray and model start-up, before that
    failures: list[tuple[str, str]] = field(default_factory=list)  # (key, error)
    encoder: EncoderInfo | None = None
    # Text tracks: per track, videos per outcome ("indexed", "empty", "failed", "off") and
    # segments with text; the warnings recorded on catalog rows, as (key, warning).
    tracks: dict[str, dict[str, int]] = field(default_factory=dict)
    text_segments: dict[str, int] = field(default_factory=dict)
    warnings: list[tuple[str, str]] = field(default_factory=list)

    @property
    def video_seconds_per_s(self) -> float:
        return self.video_seconds / self.wall_s if self.wall_s else 0.0

    @property
    def frames_per_s(self) -> float:
        return self.frames / self.wall_s if self.wall_s else 0.0


def run_ingest(
    config: Config,
    sources: Sequence[VideoSource],
    collection: str | None = None,
    executor: str = "ray",
    actors: int | None = None,
    force: bool = False,
    progress: IngestProgress | None = None,
    on_published: Callable[[list[str]], None] | None = None,
    metrics_registry: CollectorRegistry | None = None,
    speech: bool | None = None,
    subtitles: bool | None = None,
) -> IngestSummary:
    """Ingest ``sources`` into ``collection`` (default ``config.vectors.collection``).

    ``executor`` is ``"ray"`` (actors and decode tasks on the configured cluster, or a local
    Ray) or ``"inline"`` (this process). ``force`` re-processes unchanged videos.

    Text tracks: subtitles and speech (``subtitles.enabled``, ``speech.enabled``; ``speech`` /
    ``subtitles`` override them) go into ``<collection>__subtitles`` / ``<collection>__speech``,
    made when the first video has such text; a track that fails fails alone.

    Prometheus counters go to ``metrics_registry`` (default: the process's ingest registry) and,
    when ``metrics.enabled``, are served on ``metrics.host``:``metrics.ingest_port`` (0: a free
    port, logged) for the duration of the run."""
    collection = collection or config.vectors.collection
    try:  # before Ray's start-up: a bad name is a usage error, not a traceback 15 s later
        check_collection_name(collection)
    except ValueError as exc:
        raise IngestError(str(exc)) from None
    settings = EncoderSettings.from_config(config)
    tracks = TrackSettings.from_config(config, speech, subtitles)
    tracks = tracks if tracks.enabled else None
    speech_settings = None
    if tracks is not None and tracks.speech:
        from .speech import SpeechSettings

        speech_settings = SpeechSettings.from_config(config)
    max_audio_s = config.speech.max_audio_hours * 3600.0
    t0 = time.perf_counter()
    catalog = SegmentCatalog.from_config(config)
    store = open_vector_store(config)
    features = FrameFeatureStore.from_config(config)
    pool = None
    started_ray = False
    metrics = IngestMetrics.for_registry(metrics_registry)
    endpoint = serve_metrics(config.metrics, config.metrics.ingest_port, metrics.registry, "ingest")
    try:
        if executor == "ray":
            from .distributed import RayEncoderPool, start_ray

            started_ray = start_ray(config.ray.address, config.data_path, config.ray.num_cpus)
            pool = RayEncoderPool(
                settings,
                actors=actors or config.ingest.encoder_actors,
                videos_per_actor=config.ingest.decode_workers,
                gpus_per_actor=config.ingest.gpus_per_actor,
                cpus_per_actor=config.ingest.cpus_per_actor,
                tracks=tracks,
                speech=speech_settings,
                speech_actors=config.speech.actors,
                speech_gpus_per_actor=config.speech.gpus_per_actor,
                max_audio_s=max_audio_s,
            )
        elif executor == "inline":
            from .distributed import InlineEncoderPool

            pool = InlineEncoderPool(settings, tracks, speech_settings, max_audio_s)
        else:
            raise ValueError(f"executor must be 'ray' or 'inline', got {executor!r}")
        info = pool.info()
        try:
            spec = index_spec_from_config(config.vectors.index)
            ensure_collection(catalog, store, collection, info.dim, info.feature_model, spec, config.vectors.metric)
        except CollectionMismatch as exc:
            raise IngestError(f"{exc}: ingest into a new collection (--collection NAME) and swap it in") from None

        def ensure_track(track: Modality, dim: int, model: str) -> str:
            return ensure_track_collection(catalog, store, collection, track, dim, model, spec, config.vectors.metric)
        summary = IngestSummary(0, collection, videos_total=len(sources), encoder=info)
        t_work = time.perf_counter()
        summary.startup_s = t_work - t0
        if info.random_weights:
            log.warning(
                "ingesting with untrained weights: search quality is meaningless until real CLIP weights "
                "(clip.pretrained) and a trained projector (projector.checkpoint) are configured",
                extra={"feature_model": info.feature_model},
            )
        progress = progress or IngestProgress(len(sources))
        report = _Report(summary, progress, metrics, on_published)
        writer = VideoWriter(
            catalog, store, collection, config.segments.length_s, features, info.feature_model,
            FlushRule.from_config(config), on_published=report.published, on_failed=report.failed,
            on_skipped=report.skipped, text_collections=existing_track_collections(catalog, store, collection),
            ensure_track=ensure_track,
        )
        in_flight = max(pool.capacity, config.ingest.max_videos_in_flight)
        run_config = {
            "collection": collection, "executor": executor, "feature_model": info.feature_model, "force": force,
            "tracks": list(tracks.enabled) if tracks is not None else [],
        }
        results = _encoded_videos(pool, sources, catalog, collection, force, in_flight, metrics, progress)
        summary.run_id = writer.run(results, run_config, len(sources))
        summary.wall_s = time.perf_counter() - t_work
        metrics.set_rate(summary.video_seconds_per_s)
        progress.finish()
        return summary
    finally:
        metrics.set_in_flight(0)
        if pool is not None:
            pool.close()
        if started_ray:
            import ray

            ray.shutdown()
        store.close()
        catalog.close()
        if endpoint is not None:
            endpoint.stop()


def delete_videos(config: Config, keys: Sequence[str]) -> dict[str, bool]:
    """Remove videos from the catalog, every collection of the configured backend and the
    feature store. ``{key: True if it existed}``; safe to repeat after a crash."""
    catalog = SegmentCatalog.from_config(config)
    store = open_vector_store(config)
    features = FrameFeatureStore.from_config(config)
    try:
        names = [c.name for c in catalog.list_collections() if store.holds(c)]
        return {key: unpublish_video(catalog, store, names, key, features) for key in keys}
    finally:
        store.close()
        catalog.close()


def _encoded_videos(
    pool: Any,
    sources: Sequence[VideoSource],
    catalog: SegmentCatalog,
    collection: str,
    force: bool,
    in_flight: int,
    metrics: IngestMetrics,
    progress: IngestProgress,
) -> Iterator[ReaderItem]:
    """The video reader: submits ``sources`` to the encoder ``pool`` (at most ``in_flight`` at
    a time; unchanged files are not even submitted) and yields each result as the writer's
    item, then None after every wait (time to publish a trickle, redraw the progress)."""
    queue = list(reversed(sources))
    while queue or pool.in_flight():
        while queue and pool.in_flight() < in_flight:
            source = queue.pop()
            skip_hash = None if force else _skip_hash(catalog, source, collection)
            if skip_hash == "unchanged":
                yield Unchanged(source.key)
                continue
            pool.submit(source, skip_hash)
        metrics.set_in_flight(pool.in_flight())
        for result in pool.wait(timeout_s=0.5):
            yield _as_item(result)
        progress.refresh()
        yield None


def _as_item(result: Any) -> ReaderItem:
    """An encoder's result as the writer's item."""
    if isinstance(result, EncodedVideo):
        source = result.source
        outcome = result.tracks
        return VideoPayload(
            key=source.key,
            uri=source.uri,
            duration_s=result.duration_s,
            embeddings=result.embeddings,
            features={result.modality: TimedFeatures(result.features, result.feature_rate)},
            fps=result.source_fps,
            content_hash=result.content_hash,
            metadata=dict(source.metadata),
            ingest_info={"path": source.path, **_fingerprint(source)},
            texts=dict(outcome.texts) if outcome is not None else {},
            tracks=dict(outcome.reports) if outcome is not None else {},
            warnings=tuple(outcome.warnings) if outcome is not None else (),
            thumbnails=result.thumbnails,
        )
    if isinstance(result, SkippedVideo):
        return Unchanged(result.source.key)
    if isinstance(result, FailedVideo):
        source = result.source
        return RejectedVideo(
            source.key, result.error, source.uri, 0.0, result.content_hash, dict(source.metadata),
            ingest_info={"path": source.path},
        )
    raise TypeError(f"unexpected encoder result {result!r}")


def _skip_hash(catalog: SegmentCatalog, source: VideoSource, collection: str) -> str | None:
    """``"unchanged"`` when the ready row has this file's size and mtime; else the ready
    row's content hash (the encoder skips when the file hashes the same), or None.

    Judged per collection: a video ready in another collection but not held by ``collection``
    in its current version is not done here (None: process it)."""
    video = catalog.get_video(source.key)
    if video is None or video.status != VideoStatus.READY.value:
        return None
    held = catalog.holds(collection, video.id)
    if held is None or held[0] != video.content_hash:
        return None
    try:
        fingerprint = source.fingerprint()
    except OSError:
        return None
    if video.uri == source.uri and all(video.ingest_info.get(k) == v for k, v in fingerprint.items()):
        return "unchanged"
    return video.content_hash


class _Report:
    """Keeps the summary, the progress display and the Prometheus counters current as the
    writer publishes, skips and fails videos."""

    def __init__(self, summary: IngestSummary, progress: IngestProgress, metrics: IngestMetrics, on_published) -> None:
        self.summary = summary
        self.progress = progress
        self.metrics = metrics
        self.on_published = on_published
        self._started = time.perf_counter()

    def published(self, payloads: Sequence[VideoPayload]) -> None:
        segments = sum(len(p.embeddings) for p in payloads)
        seconds = sum(p.duration_s for p in payloads)
        frames = sum(len(rows.values) for p in payloads for rows in p.features.values())
        s = self.summary
        for p in payloads:
            for track, report in p.tracks.items():
                by_status = s.tracks.setdefault(track, {})
                by_status[report.status.value] = by_status.get(report.status.value, 0) + 1
            for track, text in p.texts.items():
                s.text_segments[track] = s.text_segments.get(track, 0) + len(text.embeddings)
            s.warnings += [(p.key, w) for w in p.warnings]
        s.videos_done += len(payloads)
        s.segments_written += segments
        s.video_seconds += seconds
        s.frames += frames
        self.metrics.published(len(payloads), segments, frames, seconds)
        self.metrics.set_rate(s.video_seconds / max(time.perf_counter() - self._started, 1e-9))
        self.progress.update(done=len(payloads), video_s=seconds, segments=segments, frames=frames)
        if self.on_published is not None:
            self.on_published([p.key for p in payloads])

    def skipped(self, key: str) -> None:
        self.summary.videos_skipped += 1
        self.metrics.skipped()
        self.progress.update(skipped=1)

    def failed(self, key: str, error: str) -> None:
        self.summary.videos_failed += 1
        self.summary.failures.append((key, error))
        self.metrics.failed()
        self.progress.update(failed=1)


def _fingerprint(source: VideoSource) -> dict[str, int]:
    try:
        return source.fingerprint()
    except OSError:
        return {}
