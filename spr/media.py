"""The media a person watches: a catalog video's file, its segment thumbnails, what a page
shows about it.

A player asks for a video by its catalog **key**, never by a path: :class:`MediaLibrary` looks
the key up among *ready* videos and opens the URI ingest recorded (``file://`` locally, any
fsspec URL such as ``s3://bucket/a.mp4`` in a cluster). So no string from a request ever
reaches a file system, and a deleted, failed or half-ingested video is simply not there.

Reads are byte ranges, ``[offset, offset + length)``, delivered in chunks of at most
:data:`CHUNK_BYTES`, so an hour-long file seeks without being read whole. Object stores that
can presign a URL (S3, GCS) let a client fetch the bytes from the store directly instead.

Transport-free: the search service turns this into ``GetVideo`` / ``ReadMedia`` /
``GetThumbnail`` and the web gateway into HTTP.
"""

from __future__ import annotations

import mimetypes
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlparse

from spr.catalog import SegmentCatalog
from spr.catalog.records import VideoRecord
from spr.features import FeatureNotFound, FrameFeatureStore
from spr.ids import MAX_VIDEO_ID, split_segment_id
from spr.limits import MAX_VIDEO_KEY_LENGTH

__all__ = [
    "CHUNK_BYTES",
    "INTERNAL_METADATA",
    "MediaLibrary",
    "MediaNotFound",
    "MediaRangeError",
    "MediaRequestError",
    "VideoView",
    "content_type_of",
]

# Bytes per chunk of a read: large enough that a gRPC message per chunk costs little, small
# enough that a player's first bytes arrive at once.
CHUNK_BYTES = 256 * 1024
# How long a presigned media URL stays valid: longer than anyone watches one moment.
PRESIGN_EXPIRES_S = 3600
# What ingest keeps for itself (where the file was read, its size and mtime for skipping
# unchanged files): in the row's ``ingest_info``, apart from the user's metadata, so it is never
# shown (a server path is nobody's business) and a user's own ``path`` key is theirs.
INTERNAL_METADATA = frozenset({"path", "file_size", "file_mtime_ns"})
# Container suffixes the standard library's table lacks or names differently.
_CONTENT_TYPES = {
    ".mp4": "video/mp4",
    ".m4v": "video/mp4",
    ".mov": "video/quicktime",
    ".mkv": "video/x-matroska",
    ".webm": "video/webm",
    ".avi": "video/x-msvideo",
    ".ts": "video/mp2t",
    ".mpg": "video/mpeg",
    ".mpeg": "video/mpeg",
    ".ogv": "video/ogg",
}


class MediaRequestError(ValueError):
    """A request no video could answer (a malformed key or id, a negative range)."""


class MediaNotFound(LookupError):
    """No ready video has this key (or segment id), or its file is gone."""


class MediaRangeError(ValueError):
    """The range starts past the end of the file."""


@dataclass(frozen=True)
class VideoView:
    """What a player or a page needs of one ready video."""

    key: str
    id: int
    duration_s: float
    metadata: dict[str, str]
    size_bytes: int
    content_type: str
    segments: int
    segment_length_s: float
    thumbnails: bool
    tracks: tuple[str, ...]
    warnings: tuple[str, ...]
    media_url: str = ""  # presigned, when asked for and the store offers one
    media_url_expires_s: int = 0


def content_type_of(name: str) -> str:
    """The MIME type of a media file called ``name`` (by its suffix; octet-stream if unknown)."""
    suffix = os.path.splitext(urlparse(name).path if "://" in name else name)[1].lower()
    return _CONTENT_TYPES.get(suffix) or mimetypes.guess_type(f"x{suffix}")[0] or "application/octet-stream"


class MediaLibrary:
    """Ready catalog videos as media: :meth:`video`, :meth:`read` and :meth:`thumbnail`.

    Reads the catalog (shared with the search engine; not closed here) and the feature store,
    where ingest put the thumbnails. Thread-safe: each call opens its own file."""

    def __init__(
        self,
        catalog: SegmentCatalog,
        features: FrameFeatureStore,
        segment_length_s: float,
        chunk_bytes: int = CHUNK_BYTES,
    ) -> None:
        self.catalog = catalog
        self.features = features
        self.segment_length_s = float(segment_length_s)
        self.chunk_bytes = int(chunk_bytes)

    # -- one video --------------------------------------------------------------------------

    def video(self, key: str, presign: bool = False) -> VideoView:
        """The ready video ``key`` (:class:`MediaNotFound` when none is), with a presigned URL
        of its file when ``presign`` and its store can make one."""
        record = self._ready(key)
        size = self._size(record)
        url = self._presigned(record.uri) if presign else ""
        return VideoView(
            key=record.key,
            id=record.id,
            duration_s=record.duration_s,
            metadata=_user_metadata(record.metadata),
            size_bytes=size,
            content_type=content_type_of(record.uri or record.key),
            segments=self.catalog.segment_count(record.id),
            segment_length_s=self.segment_length_s,
            thumbnails=self.features.has_thumbnails(record.id),
            tracks=tuple(sorted(t for t, r in record.tracks.items() if r.get("status") == "indexed")),
            warnings=tuple(record.warnings),
            media_url=url,
            media_url_expires_s=PRESIGN_EXPIRES_S if url else 0,
        )

    def read(self, key: str, offset: int = 0, length: int = 0) -> Iterator[tuple[int, bytes]]:
        """Bytes ``[offset, offset + length)`` of video ``key``'s file (``length`` 0: to the
        end, and a range past the end stops at the end) as ``(offset, chunk)`` pairs of at most
        ``chunk_bytes``. :class:`MediaRangeError` when ``offset`` is at or past the end of a
        non-empty file. The checks run before the first chunk is asked for."""
        if offset < 0 or length < 0:
            raise MediaRequestError(f"offset and length must be >= 0, got offset={offset} length={length}")
        record = self._ready(key)
        size = self._size(record)
        if offset >= size and not (offset == 0 and size == 0):
            raise MediaRangeError(f"offset {offset} is past the end of video {key!r} ({size} bytes)")
        end = size if length == 0 else min(size, offset + length)
        return self._chunks(record, offset, end)

    def _chunks(self, record: VideoRecord, offset: int, end: int) -> Iterator[tuple[int, bytes]]:
        with self._open(record) as fh:
            fh.seek(offset)
            position = offset
            while position < end:
                data = fh.read(min(self.chunk_bytes, end - position))
                if not data:  # the file shrank since it was measured
                    return
                yield position, data
                position += len(data)

    # -- thumbnails ---------------------------------------------------------------------------

    def thumbnail(self, segment_id: int) -> tuple[str, bytes | None]:
        """``(video key, JPEG)`` of segment ``segment_id``; the JPEG is None when the video has
        no thumbnails (brought in by ``spr import``), :class:`MediaNotFound` when no ready
        video has that segment."""
        if segment_id <= 0:
            raise MediaRequestError(f"segment id must be a positive integer, got {segment_id}")
        video_id, ordinal = split_segment_id(int(segment_id))
        if not 1 <= video_id <= MAX_VIDEO_ID:
            raise MediaRequestError(f"segment id {segment_id} names no video")
        record = self.catalog.get_video_by_id(video_id)
        if record is None or record.status != "ready":
            raise MediaNotFound(f"no ready video has segment {segment_id}")
        if not self.features.has_thumbnails(video_id):
            if ordinal >= max(1, self.catalog.segment_count(video_id)):
                raise MediaNotFound(f"video {record.key!r} has no segment {ordinal}")
            return record.key, None
        try:
            return record.key, self.features.read_thumbnail(video_id, ordinal)
        except FeatureNotFound:
            raise MediaNotFound(f"video {record.key!r} has no segment {ordinal}") from None

    # -- internals ----------------------------------------------------------------------------

    def _ready(self, key: str) -> VideoRecord:
        if not key:
            raise MediaRequestError("a video key is required")
        if len(key.encode("utf-8", "surrogatepass")) > MAX_VIDEO_KEY_LENGTH:
            raise MediaRequestError(f"a video key is at most {MAX_VIDEO_KEY_LENGTH} bytes")
        record = self.catalog.get_video(key)
        if record is None or record.status != "ready":
            raise MediaNotFound(f"no ready video has key {key!r}")
        return record

    def _size(self, record: VideoRecord) -> int:
        local = _local_path(record.uri)
        try:
            if local is not None:
                return os.stat(local).st_size
            fs, path = _fs(record.uri)
            return int(fs.size(path))
        except (FileNotFoundError, NotADirectoryError):
            raise MediaNotFound(
                f"the media file of video {record.key!r} is no longer where it was ingested from; "
                "restore it or re-ingest the video"
            ) from None

    def _open(self, record: VideoRecord) -> Any:
        local = _local_path(record.uri)
        if local is not None:
            return open(local, "rb")
        fs, path = _fs(record.uri)
        return fs.open(path, "rb", block_size=self.chunk_bytes)

    def _presigned(self, uri: str) -> str:
        if _local_path(uri) is not None:
            return ""
        fs, path = _fs(uri)
        try:
            return str(fs.sign(path, expiration=PRESIGN_EXPIRES_S))
        except NotImplementedError:  # the store cannot presign: the bytes go through us
            return ""


def _user_metadata(metadata: Mapping[str, Any]) -> dict[str, str]:
    """The user's metadata as strings (ingest's bookkeeping is in ``ingest_info``, not here)."""
    return {str(k): v if isinstance(v, str) else str(v) for k, v in metadata.items()}


def _local_path(uri: str) -> str | None:
    """The local path of a ``file://`` URI or a bare path; None for any other URL."""
    if uri.startswith("file://"):
        parsed = urlparse(uri)
        return unquote(parsed.path)
    if "://" in uri:
        return None
    return uri


def _fs(uri: str) -> tuple[Any, str]:
    import fsspec

    return fsspec.core.url_to_fs(uri)
