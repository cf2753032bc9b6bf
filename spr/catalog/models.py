"""The catalog schema as SQLAlchemy 2.x declarative models.

Seven tables: ``videos`` (one row per external video key, with its visibility status and
the outcome of each text track), ``video_metadata`` (its user metadata pairs, indexed for
filters), ``segments`` (one row per fixed-length segment, keyed by
the shared id of :mod:`spr.ids`), ``segment_texts`` (what is said or written during a
segment, one row per segment and text track), ``collections`` (what each vector-store
collection holds), ``collection_videos`` (which version of each video a collection holds)
and ``ingest_runs`` (progress of batch ingests). Times are seconds (float); timestamps are
timezone-aware.

The Alembic migrations under ``migrations/versions`` create exactly this schema; a test
compares the two, so a change here needs a new migration.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# On SQLite only "INTEGER PRIMARY KEY" aliases the rowid: that gives ``videos`` its
# autoincrement and lets ``segments`` store its computed ids without a second index.
# SQLite's INTEGER is 64-bit, so nothing is lost.
Int64 = BigInteger().with_variant(Integer(), "sqlite")
# JSONB on PostgreSQL (indexable, compact); plain JSON text elsewhere.
JSONDocument = JSON().with_variant(JSONB(), "postgresql")
# Server-side defaults of JSON columns added to existing tables (their old rows need a value);
# the literal casts to jsonb on PostgreSQL and is stored as JSON text on SQLite.
EMPTY_JSON_OBJECT = text("'{}'")
EMPTY_JSON_ARRAY = text("'[]'")

# Explicit constraint names, so migrations can refer to (and drop) them on every backend.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class VideoStatus(enum.StrEnum):
    """Visibility of a video. Only ``READY`` videos are returned by searches."""

    PENDING = "pending"  # registered; vectors and features may be partly written
    READY = "ready"  # every store holds its segments: visible to search
    FAILED = "failed"  # ingest gave up; ``error`` says why
    DELETED = "deleted"  # being removed from the stores; the row goes last


class RunStatus(enum.StrEnum):
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"
    ABANDONED = "abandoned"  # its process is gone (killed); a later run found it so


def _in(values: type[enum.StrEnum]) -> str:
    return ", ".join(f"'{v.value}'" for v in values)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Video(Base):
    """One source video, identified outside the engine by ``key``."""

    __tablename__ = "videos"
    __table_args__ = (CheckConstraint(f"status IN ({_in(VideoStatus)})", name="status"),)

    id: Mapped[int] = mapped_column(Int64, primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(String(512), unique=True)
    uri: Mapped[str] = mapped_column(Text)
    duration_s: Mapped[float] = mapped_column(Float)
    fps: Mapped[float | None] = mapped_column(Float, nullable=True)
    content_hash: Mapped[str | None] = mapped_column(String(128), nullable=True, index=True)
    status: Mapped[str] = mapped_column(String(16), index=True, default=VideoStatus.PENDING.value)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    # ``metadata`` is taken by the declarative base, hence the attribute name.
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSONDocument, default=dict)
    # Ingest's own fields (``path``, ``file_size``, ``file_mtime_ns``: where it read the file,
    # to skip it unchanged), apart from the user's metadata: never overwriting it, never filtered on.
    ingest_info: Mapped[dict[str, Any]] = mapped_column(JSONDocument, default=dict, server_default=EMPTY_JSON_OBJECT)
    # Per text track (speech, subtitles): {"status": a spr.text_tracks.TrackStatus value,
    # "source", "error", "cues", "segments", ...}, as spr.text_tracks.TrackReport.to_dict gives.
    tracks: Mapped[dict[str, Any]] = mapped_column(JSONDocument, default=dict, server_default=EMPTY_JSON_OBJECT)
    # What ingest wants people to see (a broken subtitle file, ASR that failed), as strings.
    warnings: Mapped[list[str]] = mapped_column(JSONDocument, default=list, server_default=EMPTY_JSON_ARRAY)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=text("CURRENT_TIMESTAMP"))
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=text("CURRENT_TIMESTAMP"), onupdate=func.now()
    )


class VideoMetadataEntry(Base):
    """One ``key: value`` pair of a video's user metadata as text (what a metadata filter
    compares: a string itself, a number or boolean its JSON spelling), kept beside
    ``videos.metadata`` by :meth:`spr.catalog.SegmentCatalog.register_video` so that a filter
    of any number of pairs is one indexed query. Only pairs that a filter could name are here:
    null values and keys or values longer than :data:`spr.limits.MAX_METADATA_KEY_CHARS` /
    :data:`~spr.limits.MAX_METADATA_VALUE_CHARS` are left out."""

    __tablename__ = "video_metadata"
    # (key, value) first: a filter looks pairs up; video_id last makes the index cover it.
    __table_args__ = (Index("ix_video_metadata_key_value_video_id", "key", "value", "video_id"),)

    video_id: Mapped[int] = mapped_column(
        Int64, ForeignKey("videos.id", ondelete="CASCADE"), primary_key=True, autoincrement=False
    )
    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    value: Mapped[str] = mapped_column(String(256))


class Segment(Base):
    """One segment of a video: ``[start_s, end_s)`` seconds, id from :func:`spr.ids.segment_id`."""

    __tablename__ = "segments"
    # The unique (video_id, ordinal) index also serves every "segments of video X" query
    # (video_id is its leading column), so video_id gets no index of its own: a second
    # index would only slow bulk inserts.
    __table_args__ = (UniqueConstraint("video_id", "ordinal"),)

    # Not autoincrement: the id is video_id << 20 | ordinal, shared with the vector store.
    id: Mapped[int] = mapped_column(Int64, primary_key=True, autoincrement=False)
    video_id: Mapped[int] = mapped_column(Int64, ForeignKey("videos.id", ondelete="CASCADE"))
    ordinal: Mapped[int] = mapped_column(Integer)
    start_s: Mapped[float] = mapped_column(Float)
    end_s: Mapped[float] = mapped_column(Float)


class SegmentTrackText(Base):
    """The text of one text track (``speech``, ``subtitles``) during one segment."""

    __tablename__ = "segment_texts"

    # The primary key's leading column serves "texts of these segments" and, as segment ids
    # of one video are one contiguous range (spr.ids.video_id_range), "texts of video X".
    segment_id: Mapped[int] = mapped_column(
        Int64, ForeignKey("segments.id", ondelete="CASCADE"), primary_key=True, autoincrement=False
    )
    track: Mapped[str] = mapped_column(String(32), primary_key=True)
    text: Mapped[str] = mapped_column(Text)


class Collection(Base):
    """A vector-store collection: its backend, shape, index spec and the model that fills it."""

    __tablename__ = "collections"

    id: Mapped[int] = mapped_column(Int64, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    backend: Mapped[str] = mapped_column(String(32))
    dim: Mapped[int] = mapped_column(Integer)
    metric: Mapped[str] = mapped_column(String(16))
    index_spec: Mapped[dict[str, Any]] = mapped_column(JSONDocument)
    # e.g. "ViT-L-14/openai + projector <checkpoint sha>": vectors from different models
    # do not mix, so a reader can check it before searching.
    feature_model: Mapped[str | None] = mapped_column(String(512), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=text("CURRENT_TIMESTAMP"))


class CollectionVideo(Base):
    """Which version of a video a collection holds: its content hash and segment count when
    the collection's vectors of it were written. "Already done" is judged per collection, and
    a video that changes loses its vectors in every collection holding another version."""

    __tablename__ = "collection_videos"

    collection_id: Mapped[int] = mapped_column(
        Int64, ForeignKey("collections.id", ondelete="CASCADE"), primary_key=True, autoincrement=False
    )
    video_id: Mapped[int] = mapped_column(
        Int64, ForeignKey("videos.id", ondelete="CASCADE"), primary_key=True, autoincrement=False, index=True
    )
    content_hash: Mapped[str | None] = mapped_column(String(128), nullable=True)
    segments: Mapped[int] = mapped_column(Integer)


class IngestRun(Base):
    """One batch ingest: its configuration and progress counters."""

    __tablename__ = "ingest_runs"
    __table_args__ = (CheckConstraint(f"status IN ({_in(RunStatus)})", name="status"),)

    id: Mapped[int] = mapped_column(Int64, primary_key=True, autoincrement=True)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=text("CURRENT_TIMESTAMP"))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    status: Mapped[str] = mapped_column(String(16), default=RunStatus.RUNNING.value)
    config: Mapped[dict[str, Any]] = mapped_column(JSONDocument)
    videos_total: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    videos_done: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    videos_failed: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    segments_written: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    # The process running it: a later run on the same host marks it abandoned once it is gone.
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    host: Mapped[str | None] = mapped_column(String(255), nullable=True)
    videos_skipped: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))


videos = Video.__table__
segments = Segment.__table__
segment_texts = SegmentTrackText.__table__
collections = Collection.__table__
collection_videos = CollectionVideo.__table__
video_metadata = VideoMetadataEntry.__table__
ingest_runs = IngestRun.__table__
