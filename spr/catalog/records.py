"""Immutable values the catalog hands out. Times in seconds, timestamps timezone-aware (UTC
on SQLite, the server's zone on PostgreSQL)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Mapping


@dataclass(frozen=True)
class VideoRecord:
    id: int
    key: str
    uri: str
    duration_s: float
    fps: float | None
    content_hash: str | None
    status: str  # a VideoStatus value
    error: str | None
    metadata: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    # Per text track: {"status": "indexed" | "empty" | "failed" | "off", "source", "error",
    # "cues", "segments", ...} (spr.text_tracks.TrackReport.to_dict); {} before any track ran.
    tracks: dict[str, dict[str, Any]] = field(default_factory=dict)
    # What ingest wants people to see about this video (broken subtitles, failed ASR).
    warnings: list[str] = field(default_factory=list)
    # Ingest's own fields (path, file_size, file_mtime_ns), apart from the user's ``metadata``.
    ingest_info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SegmentLocation:
    """Where segment ``segment_id`` lies: ``[start_s, end_s)`` of video ``video_key``."""

    segment_id: int
    video_id: int
    video_key: str
    uri: str
    ordinal: int
    start_s: float
    end_s: float
    video_duration_s: float


@dataclass(frozen=True)
class CollectionRecord:
    id: int
    name: str
    backend: str  # "faiss" or "milvus"
    dim: int
    metric: str
    index_spec: dict[str, Any]
    feature_model: str | None
    created_at: datetime


@dataclass(frozen=True)
class IngestRunRecord:
    id: int
    started_at: datetime
    finished_at: datetime | None
    status: str  # a RunStatus value
    config: dict[str, Any]
    videos_total: int
    videos_done: int
    videos_failed: int
    segments_written: int
    error: str | None
    videos_skipped: int = 0  # unchanged videos; ``videos_done`` counts published ones only
    pid: int | None = None  # the process that runs (ran) it, on ``host``
    host: str | None = None


def aware(ts: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; its CURRENT_TIMESTAMP is UTC, so say so."""
    if ts is not None and ts.tzinfo is None:
        return ts.replace(tzinfo=timezone.utc)
    return ts


def video_record(row: Mapping[str, Any]) -> VideoRecord:
    return VideoRecord(
        id=row["id"],
        key=row["key"],
        uri=row["uri"],
        # SQLite's RETURNING hands back 100.0 stored in a REAL column as the int 100.
        duration_s=float(row["duration_s"]),
        fps=None if row["fps"] is None else float(row["fps"]),
        content_hash=row["content_hash"],
        status=row["status"],
        error=row["error"],
        metadata=dict(row["metadata"] or {}),
        created_at=aware(row["created_at"]),
        updated_at=aware(row["updated_at"]),
        tracks={track: dict(report) for track, report in (row["tracks"] or {}).items()},
        warnings=[str(w) for w in row["warnings"] or ()],
        ingest_info=dict(row["ingest_info"] or {}),
    )


def collection_record(row: Mapping[str, Any]) -> CollectionRecord:
    return CollectionRecord(
        id=row["id"],
        name=row["name"],
        backend=row["backend"],
        dim=row["dim"],
        metric=row["metric"],
        index_spec=dict(row["index_spec"] or {}),
        feature_model=row["feature_model"],
        created_at=aware(row["created_at"]),
    )


def ingest_run_record(row: Mapping[str, Any]) -> IngestRunRecord:
    return IngestRunRecord(
        id=row["id"],
        started_at=aware(row["started_at"]),
        finished_at=aware(row["finished_at"]),
        status=row["status"],
        config=dict(row["config"] or {}),
        videos_total=row["videos_total"],
        videos_done=row["videos_done"],
        videos_failed=row["videos_failed"],
        segments_written=row["segments_written"],
        error=row["error"],
        videos_skipped=row["videos_skipped"],
        pid=row["pid"],
        host=row["host"],
    )
