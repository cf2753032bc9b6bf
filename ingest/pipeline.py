"""The runner: sources -> encoder pool -> batched writer, exactly once per video.

A video becomes searchable only when all its segments are in the catalog, the vector store
and the feature store (:func:`spr.publish.publish_videos` marks it ``ready`` last). A re-run
of the same command resumes: a video whose catalog row is ``ready`` with the same file size
and mtime, or with the same content hash, is skipped; anything else (new, changed, pending
after a crash, failed before) is processed again and its ids are upserted, never duplicated.
A video that fails is recorded ``failed`` with the reason and the run goes on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry

from spr.catalog import SegmentCatalog, VideoStatus
from spr.config import Config
from spr.features import FrameFeatureStore
from spr.publish import VideoPayload, publish_videos, unpublish_video
from spr.segments import segment_count
from spr.stores import VectorStore, index_spec_from_config, index_spec_to_dict, open_vector_store
from spr.telemetry import IngestMetrics, serve_metrics

from .encoder import EncodedVideo, EncoderInfo, EncoderSettings, FailedVideo, SkippedVideo
from .progress import IngestProgress
from .sources import VideoSource

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
) -> IngestSummary:
    """Ingest ``sources`` into ``collection`` (default ``config.vectors.collection``).

    ``executor`` is ``"ray"`` (actors and decode tasks on the configured cluster, or a local
    Ray) or ``"inline"`` (this process). ``force`` re-processes unchanged videos.

    Prometheus counters go to ``metrics_registry`` (default: the process's ingest registry) and,
    when ``metrics.enabled``, are served on ``metrics.host``:``metrics.ingest_port`` (0: a free
    port, logged) for the duration of the run."""
    collection = collection or config.vectors.collection
    settings = EncoderSettings.from_config(config)
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
            )
        elif executor == "inline":
            from .distributed import InlineEncoderPool

            pool = InlineEncoderPool(settings)
        else:
            raise ValueError(f"executor must be 'ray' or 'inline', got {executor!r}")
        info = pool.info()
        _prepare_collection(config, catalog, store, collection, info)
        run_id = catalog.start_run(
            {"collection": collection, "executor": executor, "feature_model": info.feature_model, "force": force},
            videos_total=len(sources),
        )
        summary = IngestSummary(run_id, collection, videos_total=len(sources), encoder=info)
        t_work = time.perf_counter()
        summary.startup_s = t_work - t0
        if info.random_weights:
            log.warning(
                "ingesting with untrained weights: search quality is meaningless until real CLIP weights "
                "(clip.pretrained) and a trained projector (projector.checkpoint) are configured",
                extra={"feature_model": info.feature_model},
            )
        progress = progress or IngestProgress(len(sources))
        writer = _BatchWriter(catalog, store, features, collection, config, info, summary, progress, on_published, metrics)
        try:
            _drive(pool, sources, catalog, force, writer, max(pool.capacity, config.ingest.max_videos_in_flight))
            writer.flush()
        except BaseException as exc:
            catalog.finish_run(run_id, "failed", f"{type(exc).__name__}: {exc}")
            raise
        summary.wall_s = time.perf_counter() - t_work
        metrics.set_rate(summary.video_seconds_per_s)
        catalog.update_run(
            run_id,
            videos_done=summary.videos_done + summary.videos_skipped,
            videos_failed=summary.videos_failed,
            segments_written=summary.segments_written,
        )
        catalog.finish_run(run_id)
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
        names = [c.name for c in catalog.list_collections() if c.backend == store.backend]
        return {key: unpublish_video(catalog, store, names, key, features) for key in keys}
    finally:
        store.close()
        catalog.close()


def _prepare_collection(config: Config, catalog: SegmentCatalog, store: VectorStore, name: str, info: EncoderInfo) -> None:
    existing = catalog.get_collection(name)
    if existing is not None and existing.feature_model and existing.feature_model != info.feature_model:
        raise IngestError(
            f"collection {name!r} holds vectors of {existing.feature_model}, this run makes {info.feature_model}; "
            f"vectors of different models cannot be searched together: ingest into a new collection "
            f"(--collection NAME) and swap it in"
        )
    if existing is not None and existing.dim != info.dim:
        raise IngestError(f"collection {name!r} has dim {existing.dim}, the encoder makes {info.dim}-d vectors")
    spec = index_spec_from_config(config.vectors.index)
    store.create_collection(name, info.dim, spec, config.vectors.metric)
    catalog.register_collection(
        name, store.backend, info.dim, config.vectors.metric, index_spec_to_dict(spec), feature_model=info.feature_model
    )


def _drive(pool: Any, sources: Sequence[VideoSource], catalog: SegmentCatalog, force: bool, writer: "_BatchWriter", in_flight: int) -> None:
    queue = list(reversed(sources))
    while queue or pool.in_flight():
        while queue and pool.in_flight() < in_flight:
            source = queue.pop()
            skip_hash = None if force else _skip_hash(catalog, source)
            if skip_hash == "unchanged":
                writer.skipped(source)
                continue
            pool.submit(source, skip_hash)
        writer.metrics.set_in_flight(pool.in_flight())
        for result in pool.wait(timeout_s=0.5):
            writer.add(result)
        writer.tick()


def _skip_hash(catalog: SegmentCatalog, source: VideoSource) -> str | None:
    """``"unchanged"`` when the ready row has this file's size and mtime; else the ready
    row's content hash (the encoder skips when the file hashes the same), or None."""
    video = catalog.get_video(source.key)
    if video is None or video.status != VideoStatus.READY.value:
        return None
    try:
        fingerprint = source.fingerprint()
    except OSError:
        return None
    if video.uri == source.uri and all(video.metadata.get(k) == v for k, v in fingerprint.items()):
        return "unchanged"
    return video.content_hash


class _BatchWriter:
    """Publishes finished videos in batches (one vector upsert + flush per batch) and keeps
    the summary, the ingest-run row and the progress display current."""

    def __init__(self, catalog, store, features, collection, config, info, summary, progress, on_published, metrics) -> None:
        self.catalog = catalog
        self.store = store
        self.features = features
        self.collection = collection
        self.config = config
        self.info = info
        self.summary = summary
        self.progress = progress
        self.on_published = on_published
        self.metrics: IngestMetrics = metrics
        self._started = time.perf_counter()
        self.batch: list[EncodedVideo] = []
        self.batch_frames = 0
        self._last_flush = time.monotonic()

    def add(self, result: Any) -> None:
        if isinstance(result, EncodedVideo):
            self.batch.append(result)
            self.batch_frames += len(result.frame_features)
            if len(self.batch) >= self.config.ingest.write_batch_videos or self.batch_frames >= 100_000:
                self.flush()
        elif isinstance(result, SkippedVideo):
            self.skipped(result.source)
        elif isinstance(result, FailedVideo):
            self.failed(result.source, result.error, result.content_hash)
        else:
            raise TypeError(f"unexpected encoder result {result!r}")

    def tick(self) -> None:
        # A slow trickle of videos must still become visible: flush at least every 10 s.
        if self.batch and time.monotonic() - self._last_flush > 10:
            self.flush()
        self.progress.refresh()

    def skipped(self, source: VideoSource) -> None:
        self.summary.videos_skipped += 1
        self.metrics.skipped()
        self.progress.update(skipped=1)

    def failed(self, source: VideoSource, error: str, digest: str | None = None) -> None:
        log.error("video failed", extra={"video_key": source.key, "path": source.path, "error": error})
        video = self.catalog.register_video(
            source.key, source.uri, 0.0, content_hash=digest, metadata={**source.metadata, "path": source.path}
        )
        self.catalog.mark_failed(video.id, error)
        self.summary.videos_failed += 1
        self.summary.failures.append((source.key, error))
        self.metrics.failed()
        self.catalog.increment_run(self.summary.run_id, videos_failed=1)
        self.progress.update(failed=1)

    def flush(self) -> None:
        self._last_flush = time.monotonic()
        if not self.batch:
            return
        batch, self.batch, self.batch_frames = self.batch, [], 0
        payloads = []
        for v in batch:
            meta = {**v.source.metadata, "path": v.source.path, **_fingerprint(v.source)}
            payloads.append(
                VideoPayload(
                    key=v.source.key,
                    uri=v.source.uri,
                    duration_s=v.duration_s,
                    embeddings=v.embeddings,
                    frame_features=v.frame_features,
                    feature_rate=v.frame_rate,
                    fps=v.source_fps,
                    content_hash=v.content_hash,
                    metadata=meta,
                )
            )
        publish_videos(
            self.catalog, self.store, self.collection, payloads, self.config.segments.length_s,
            self.features, self.info.feature_model,
        )
        segments = sum(segment_count(v.duration_s, self.config.segments.length_s) for v in batch)
        seconds = sum(v.duration_s for v in batch)
        frames = sum(len(v.frame_features) for v in batch)
        s = self.summary
        s.videos_done += len(batch)
        s.segments_written += segments
        s.video_seconds += seconds
        s.frames += frames
        self.metrics.published(len(batch), segments, frames, seconds)
        self.metrics.set_rate(s.video_seconds / max(time.perf_counter() - self._started, 1e-9))
        self.catalog.increment_run(s.run_id, videos_done=len(batch), segments_written=segments)
        self.progress.update(done=len(batch), video_s=seconds, segments=segments, frames=frames)
        log.info(
            "published videos",
            extra={"videos": len(batch), "segments": segments, "collection": self.collection},
        )
        if self.on_published is not None:
            self.on_published([v.source.key for v in batch])


def _fingerprint(source: VideoSource) -> dict[str, int]:
    try:
        return source.fingerprint()
    except OSError:
        return {}
