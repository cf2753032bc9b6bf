"""The segment catalog: videos, their segments and segment texts, vector collections and
ingest runs.

The catalog is the source of truth for visibility (see ``DESIGN.md``, "Two stores, one
truth"): a video's segments are searchable only while its row is ``ready``, and
:meth:`SegmentCatalog.lookup_segments` — the one catalog round trip of every search —
filters on that.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
from sqlalchemy import (
    ARRAY,
    BigInteger,
    Float,
    Integer,
    Select,
    String,
    Text,
    any_,
    bindparam,
    cast,
    delete,
    func,
    insert,
    literal,
    select,
    text,
    union_all,
    update,
)
from sqlalchemy import null as sql_null
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from .. import ids as spr_ids
from .. import limits as spr_limits
from ..features import VISUAL, check_modality
from ..text_tracks import MAX_SEGMENT_TEXT_CHARS, TrackStatus
from .bulk import BulkMethod, bulk_insert_method, insert_segment_rows, insert_segment_text_rows
from .engine import check_connection, create_catalog_engine, masked_url
from .errors import CatalogError, RunNotFound, VideoNotFound
from .migrate import upgrade
from .models import (
    RunStatus,
    VideoStatus,
    collection_videos,
    collections,
    ingest_runs,
    segments,
    video_metadata,
    videos,
)
from .models import segment_texts as texts_table
from .records import (
    CollectionRecord,
    IngestRunRecord,
    SegmentLocation,
    VideoRecord,
    collection_record,
    ingest_run_record,
    video_record,
)

if TYPE_CHECKING:
    from ..config import Config

SUPPORTED_DIALECTS = ("postgresql", "sqlite")
RUN_COUNTERS = ("videos_total", "videos_done", "videos_skipped", "videos_failed", "segments_written")
# SQLite caps bound parameters per statement (32766); larger id lists go in chunks.
_SQLITE_IN_CHUNK = 10_000
# lookup_segments caches the spans of at most this many segments (16 bytes each, by video).
LOOKUP_CACHE_SEGMENTS = 4_000_000
_VIDEO_KEY_MAX = spr_limits.MAX_VIDEO_KEY_LENGTH
# A video's warnings are for people reading `spr status`: a broken file must not put
# megabytes into its row.
MAX_WARNINGS = 100
MAX_WARNING_CHARS = 1_000
_TRACK_STATUSES = frozenset(s.value for s in TrackStatus)
# A metadata filter starts from its rarest pair; counting a pair's videos stops here (past it,
# any such pair is as good a start as another).
_PAIR_COUNT_CAP = 10_000


class SegmentCatalog:
    """A connection pool onto one catalog database. Thread-safe; every method is its own
    transaction. Open with :meth:`open`, close with :meth:`close` or a ``with`` block."""

    def __init__(
        self, engine: Engine, insert_batch_rows: int = 10_000, lookup_cache_segments: int = LOOKUP_CACHE_SEGMENTS
    ) -> None:
        if engine.dialect.name not in SUPPORTED_DIALECTS:
            raise CatalogError(
                f"the catalog supports {' and '.join(SUPPORTED_DIALECTS)}, not {engine.dialect.name} "
                f"({masked_url(engine.url)})"
            )
        self._engine = engine
        self._insert_batch_rows = insert_batch_rows
        self.bulk_method: BulkMethod = bulk_insert_method(engine.dialect)
        # A lone SELECT needs no transaction. On PostgreSQL lookups get their own autocommit
        # pool: psycopg2 then sends no BEGIN before the query and the pool no ROLLBACK after
        # it, so a lookup is one network round trip. (Switching isolation per checkout on the
        # main pool would cost a SET on every return.)
        self._reader = engine
        if engine.dialect.name == "postgresql":
            self._reader = create_catalog_engine(engine.url, echo=engine.echo, isolation_level="AUTOCOMMIT")
        self._lookup = _lookup_statement(engine.dialect.name)
        # lookup_segments' cache of segment spans by video (0: off, one joined statement per
        # lookup as before); bounded by the segments it holds.
        self._spans = _SpanCache(lookup_cache_segments)
        self._video_rows = _video_rows_statement(engine.dialect.name)
        if engine.dialect.name == "postgresql":
            spans_filter = segments.c.id == any_(bindparam("ids", type_=ARRAY(BigInteger)))
        else:
            spans_filter = segments.c.id.in_(bindparam("ids", expanding=True))
        self._spans_of = select(segments.c.id, segments.c.ordinal, segments.c.start_s, segments.c.end_s).where(spans_filter)

    @classmethod
    def open(
        cls, url: str, migrate: bool = True, insert_batch_rows: int = 10_000, echo: bool = False
    ) -> "SegmentCatalog":
        """Connect to ``url`` (SQLAlchemy URL; SQLite's directory is created) and, with
        ``migrate``, bring the schema to the newest revision. Raises
        :class:`~spr.catalog.errors.CatalogUnavailable` when the database cannot be reached."""
        engine = create_catalog_engine(url, echo=echo)
        try:
            check_connection(engine)
            if migrate:
                with engine.begin() as conn:
                    upgrade(conn)
        except BaseException:
            engine.dispose()
            raise
        return cls(engine, insert_batch_rows=insert_batch_rows)

    @classmethod
    def from_config(cls, config: "Config", migrate: bool = True) -> "SegmentCatalog":
        """:meth:`open` with the catalog settings of a loaded :class:`spr.config.Config`."""
        return cls.open(
            config.catalog_url,
            migrate=migrate,
            insert_batch_rows=config.catalog.insert_batch_rows,
            echo=config.catalog.echo_sql,
        )

    @property
    def engine(self) -> Engine:
        return self._engine

    @property
    def dialect(self) -> str:
        """``"postgresql"``, ``"sqlite"``, ..."""
        return self._engine.dialect.name

    def close(self) -> None:
        if self._reader is not self._engine:
            self._reader.dispose()
        self._engine.dispose()

    def __enter__(self) -> "SegmentCatalog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- videos ------------------------------------------------------------------------------

    def register_video(
        self,
        key: str,
        uri: str,
        duration_s: float,
        fps: float | None = None,
        content_hash: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        ingest_info: Mapping[str, Any] | None = None,
    ) -> VideoRecord:
        """Insert video ``key`` as ``pending``; an existing key keeps its id and gets every
        field replaced, status back to ``pending`` and error cleared (a re-ingest). Its
        ``tracks`` and ``warnings`` stay until :meth:`set_tracks` replaces them.

        ``metadata`` is the user's (what filters match); ``ingest_info`` is ingest's own
        bookkeeping (the file it read, its size and mtime), kept apart so neither overwrites
        the other and filters never see it."""
        if not key or len(key) > _VIDEO_KEY_MAX:
            raise ValueError(f"video key must be 1..{_VIDEO_KEY_MAX} characters, got {len(key)}")
        values = {
            "key": key,
            "uri": uri,
            "duration_s": float(duration_s),
            "fps": None if fps is None else float(fps),
            "content_hash": content_hash,
            "status": VideoStatus.PENDING.value,
            "error": None,
            "metadata": dict(metadata or {}),
            "ingest_info": dict(ingest_info or {}),
        }
        changed = {k: v for k, v in values.items() if k != "key"}
        # One atomic statement (both dialects speak ON CONFLICT): two ingests of one key
        # cannot both insert, and the id survives a re-ingest.
        ins = (postgresql.insert if self.dialect == "postgresql" else sqlite.insert)(videos)
        stmt = ins.values(**values, tracks={}, warnings=[]).on_conflict_do_update(
            index_elements=[videos.c.key], set_={**changed, "updated_at": func.now()}
        )
        with self._engine.begin() as conn:
            row = conn.execute(stmt.returning(*videos.c)).mappings().one()
            # The filterable pairs follow the metadata in the same transaction.
            conn.execute(delete(video_metadata).where(video_metadata.c.video_id == row["id"]))
            conn.execute(_fill_video_metadata(self.dialect), {"video_id": row["id"]})
        self._spans.forget(int(row["id"]))
        return video_record(row)

    def get_video(self, key: str) -> VideoRecord | None:
        return self._one_video(videos.c.key == key)

    def get_video_by_id(self, video_id: int) -> VideoRecord | None:
        return self._one_video(videos.c.id == int(video_id))

    def find_by_content_hash(self, content_hash: str) -> list[VideoRecord]:
        """Every video whose file hashed to ``content_hash`` (duplicates under other keys)."""
        return self._videos(select(videos).where(videos.c.content_hash == content_hash).order_by(videos.c.id))

    def list_videos(self, status: str | None = None, limit: int | None = None) -> list[VideoRecord]:
        """Videos in id (registration) order, optionally of one status and at most ``limit``."""
        stmt = select(videos).order_by(videos.c.id)
        if status is not None:
            stmt = stmt.where(videos.c.status == VideoStatus(status).value)
        if limit is not None:
            stmt = stmt.limit(int(limit))
        return self._videos(stmt)

    def mark_ready(self, video_id: int) -> None:
        """Make the video visible to search: call only after its vectors and features are written."""
        self._set_status(video_id, VideoStatus.READY, None)

    def mark_failed(self, video_id: int, error: str) -> None:
        self._set_status(video_id, VideoStatus.FAILED, error)

    def mark_deleted(self, video_id: int) -> None:
        """Hide the video from search; remove its vectors and features, then :meth:`purge_video`."""
        self._set_status(video_id, VideoStatus.DELETED, None)

    def purge_video(self, video_id: int) -> bool:
        """Delete the video row, its segments and their texts; False if there was no such video."""
        try:
            with self._engine.begin() as conn:
                # ON DELETE CASCADE does this too; saying it keeps purge correct on a SQLite
                # file opened elsewhere without PRAGMA foreign_keys.
                conn.execute(_delete_texts(int(video_id)))
                conn.execute(delete(collection_videos).where(collection_videos.c.video_id == int(video_id)))
                conn.execute(delete(video_metadata).where(video_metadata.c.video_id == int(video_id)))
                conn.execute(delete(segments).where(segments.c.video_id == int(video_id)))
                return conn.execute(delete(videos).where(videos.c.id == int(video_id))).rowcount > 0
        finally:
            self._spans.forget(int(video_id))

    def segment_counts_by_status(self) -> dict[str, int]:
        """``{video status: segment rows of videos in it}``, every status present: only the
        ``ready`` ones are searchable (``spr status`` shows pending ones apart)."""
        counts = {s.value: 0 for s in VideoStatus}
        stmt = (
            select(videos.c.status, func.count())
            .select_from(segments.join(videos, segments.c.video_id == videos.c.id))
            .group_by(videos.c.status)
        )
        with self._engine.connect() as conn:
            counts.update({status: int(n) for status, n in conn.execute(stmt)})
        return counts

    def count_by_status(self) -> dict[str, int]:
        """``{status: number of videos}`` with every status present, zeros included."""
        counts = {s.value: 0 for s in VideoStatus}
        stmt = select(videos.c.status, func.count()).group_by(videos.c.status)
        with self._engine.connect() as conn:
            counts.update({status: n for status, n in conn.execute(stmt)})
        return counts

    def video_keys_matching(self, metadata: Mapping[str, str], ready_only: bool = True) -> list[str]:
        """Keys of the videos whose metadata holds every ``key: value`` pair, sorted; with
        ``ready_only`` only ``ready`` videos. An empty ``metadata`` matches every video.

        Values compare as text: a stored string must equal the value, a stored number or
        boolean matches its JSON spelling (``3``, ``2.5``, ``true``) on both dialects. A filter
        of any size within :func:`check_metadata_filter`'s limits (else
        :class:`InvalidMetadataFilter`) is one query with the same SQL text: its pairs are one
        parameter, looked up in ``video_metadata``'s (key, value) index."""
        pairs = check_metadata_filter(metadata)
        if not pairs:
            stmt = select(videos.c.key).order_by(videos.c.key)
            if ready_only:
                stmt = stmt.where(videos.c.status == VideoStatus.READY.value)
            with self._reader.connect() as conn:
                return [key for (key,) in conn.execute(stmt)]
        if self.dialect == "postgresql":
            params: dict[str, Any] = {"keys": list(pairs), "values": list(pairs.values())}
        else:
            params = {"pairs": json.dumps(pairs)}
        params["n"] = len(pairs)
        with self._reader.connect() as conn:
            return [key for (key,) in conn.execute(_metadata_match(self.dialect, ready_only), params)]

    def set_tracks(self, video_id: int, tracks: Mapping[str, Mapping[str, Any]], warnings: Sequence[str]) -> None:
        """Replace the video's text-track outcomes and its warnings. ``tracks`` maps a track
        name to its report (``{"status": "indexed" | "empty" | "failed" | "off", "source",
        "error", "cues", "segments", ...}``, :meth:`spr.text_tracks.TrackReport.to_dict`);
        at most :data:`MAX_WARNINGS` warnings are kept, each cut to :data:`MAX_WARNING_CHARS`."""
        reports = {str(track): _track_report(track, report) for track, report in tracks.items()}
        if isinstance(warnings, str):
            raise TypeError("warnings must be a sequence of strings, not one string")
        kept = [str(w)[:MAX_WARNING_CHARS] for w in list(warnings)[:MAX_WARNINGS]]
        stmt = update(videos).where(videos.c.id == int(video_id)).values(tracks=reports, warnings=kept)
        with self._engine.begin() as conn:
            if conn.execute(stmt).rowcount == 0:
                raise VideoNotFound(f"no video with id {video_id}")

    def track_counts(self) -> dict[str, dict[str, int]]:
        """``{track: {status: number of videos}}`` over every video's ``tracks``; a status no
        video has is absent (``spr status``)."""
        if self.dialect == "postgresql":
            sql = (
                "SELECT t.key, t.value ->> 'status', count(*) FROM videos, jsonb_each(videos.tracks) AS t "
                "GROUP BY 1, 2"
            )
        else:
            sql = (
                "SELECT t.key, json_extract(t.value, '$.status'), count(*) FROM videos, json_each(videos.tracks) AS t "
                "GROUP BY 1, 2"
            )
        counts: dict[str, dict[str, int]] = {}
        with self._engine.connect() as conn:
            for track, status, n in conn.execute(text(sql)):
                counts.setdefault(track, {})[str(status)] = int(n)
        return counts

    def _set_status(self, video_id: int, status: VideoStatus, error: str | None) -> None:
        stmt = update(videos).where(videos.c.id == int(video_id)).values(status=status.value, error=error)
        try:
            with self._engine.begin() as conn:
                if conn.execute(stmt).rowcount == 0:
                    raise VideoNotFound(f"no video with id {video_id}")
        finally:
            self._spans.forget(int(video_id))

    def _one_video(self, where: Any) -> VideoRecord | None:
        with self._engine.connect() as conn:
            row = conn.execute(select(videos).where(where)).mappings().one_or_none()
        return None if row is None else video_record(row)

    def _videos(self, stmt: Select[Any]) -> list[VideoRecord]:
        with self._engine.connect() as conn:
            return [video_record(row) for row in conn.execute(stmt).mappings()]

    # --- segments ----------------------------------------------------------------------------

    def replace_segments(
        self, video_id: int, ordinals: np.ndarray, start_s: np.ndarray, end_s: np.ndarray
    ) -> np.ndarray:
        """Make the given rows the video's only segments, in one transaction (on error the
        old segments stay). Inputs are 1-D of one length (ordinals; times in seconds);
        returns the segment ids, shape ``(n,)`` int64, in input order. The old segments'
        texts go with them: write the new ones with :meth:`replace_segment_texts`."""
        return self._write_segments(video_id, ordinals, start_s, end_s, replace=True)

    def add_segments(
        self, video_id: int, ordinals: np.ndarray, start_s: np.ndarray, end_s: np.ndarray
    ) -> np.ndarray:
        """Like :meth:`replace_segments` without deleting existing rows (an ordinal already
        present raises :class:`sqlalchemy.exc.IntegrityError`)."""
        return self._write_segments(video_id, ordinals, start_s, end_s, replace=False)

    def segment_count(self, video_id: int | None = None) -> int:
        """Segments of one video, or of all videos whatever their status."""
        stmt = select(func.count()).select_from(segments)
        if video_id is not None:
            stmt = stmt.where(segments.c.video_id == int(video_id))
        with self._engine.connect() as conn:
            return int(conn.execute(stmt).scalar_one())

    def _write_segments(
        self, video_id: int, ordinals: Any, start_s: Any, end_s: Any, replace: bool
    ) -> np.ndarray:
        video_id = int(video_id)
        ords, starts, ends = _segment_arrays(ordinals, start_s, end_s)
        first_id = spr_ids.segment_id(video_id, 0)  # validates the video id
        if len(ords):
            spr_ids.segment_id(video_id, int(ords.min()))  # ... and both ordinal extremes
            spr_ids.segment_id(video_id, int(ords.max()))
        # The ordinal fills the low bits: the same ids spr.ids.segment_ids(video_id, n) gives.
        ids = np.int64(first_id) | ords
        with self._engine.begin() as conn:
            if replace:
                # The cascade does this too; said here so a SQLite file opened without
                # PRAGMA foreign_keys cannot keep texts of segments that are gone.
                conn.execute(_delete_texts(video_id))
                conn.execute(delete(segments).where(segments.c.video_id == video_id))
            insert_segment_rows(conn, video_id, ids, ords, starts, ends, self._insert_batch_rows)
        self._spans.forget(video_id)
        return ids

    # --- segment texts -----------------------------------------------------------------------

    def replace_segment_texts(
        self, video_id: int, track: str, ordinals: np.ndarray | Sequence[int], texts: Sequence[str]
    ) -> np.ndarray:
        """Make ``texts`` the video's only texts of ``track``, in one transaction: ``ordinals``
        ``(m,)`` of segments already in the catalog, ``texts`` ``m`` strings (whitespace-only
        ones are skipped, each is cut to ``MAX_SEGMENT_TEXT_CHARS``). Returns the segment ids
        of the rows written, ``(k,)`` int64 in input order. A missing segment or a repeated
        ordinal raises :class:`sqlalchemy.exc.IntegrityError` and keeps the old texts."""
        video_id = int(video_id)
        track = _check_track(track)
        ords = np.asarray(ordinals)
        if ords.ndim != 1 or len(ords) != len(texts):
            raise ValueError(f"ordinals {ords.shape} and {len(texts)} texts must be one (m,) length")
        if len(ords) and not np.issubdtype(ords.dtype, np.integer):
            raise ValueError(f"ordinals must be integers, got dtype {ords.dtype}")
        keep = [i for i, t in enumerate(texts) if str(t).strip()]
        kept_ords = ords[keep].astype(np.int64) if keep else np.zeros(0, dtype=np.int64)
        first_id = spr_ids.segment_id(video_id, 0)  # validates the video id
        if len(kept_ords):
            spr_ids.segment_id(video_id, int(kept_ords.min()))  # ... and both ordinal extremes
            spr_ids.segment_id(video_id, int(kept_ords.max()))
        ids = np.int64(first_id) | kept_ords
        # PostgreSQL text cannot hold NUL; a subtitle file can.
        clean = [str(texts[i]).replace("\x00", "")[:MAX_SEGMENT_TEXT_CHARS] for i in keep]
        with self._engine.begin() as conn:
            conn.execute(_delete_texts(video_id, track))
            insert_segment_text_rows(conn, ids, track, clean, self._insert_batch_rows)
        return ids

    def delete_segment_texts(self, video_id: int, track: str | None = None) -> int:
        """Remove the video's texts of ``track`` (every track when None); returns how many."""
        stmt = _delete_texts(int(video_id), None if track is None else _check_track(track))
        with self._engine.begin() as conn:
            return int(conn.execute(stmt).rowcount)

    def segment_texts(
        self, segment_ids: Sequence[int] | np.ndarray, tracks: Sequence[str] | None = None
    ) -> dict[int, dict[str, str]]:
        """``{segment_id: {track: text}}`` of the given segments in one round trip (whatever
        their video's status), optionally of some tracks only; segments without text are absent."""
        wanted = np.unique(np.asarray(segment_ids, dtype=np.int64))
        wanted = wanted[wanted >= 0].tolist()
        if not wanted:
            return {}
        stmt = select(texts_table.c.segment_id, texts_table.c.track, texts_table.c.text)
        if self.dialect == "postgresql":
            stmt = stmt.where(texts_table.c.segment_id == any_(bindparam("ids", type_=ARRAY(BigInteger))))
            chunk = len(wanted)
        else:
            stmt = stmt.where(texts_table.c.segment_id.in_(bindparam("ids", expanding=True)))
            chunk = _SQLITE_IN_CHUNK
        if tracks is not None:
            stmt = stmt.where(texts_table.c.track.in_([_check_track(t) for t in tracks]))
        found: dict[int, dict[str, str]] = {}
        with self._reader.connect() as conn:
            for lo in range(0, len(wanted), chunk):
                for sid, track, body in conn.execute(stmt, {"ids": wanted[lo : lo + chunk]}):
                    found.setdefault(int(sid), {})[track] = body
        return found

    def span_texts(
        self, video_id: int, start_s: float, end_s: float, tracks: Sequence[str] | None = None
    ) -> dict[str, list[tuple[float, float, str]]]:
        """``{track: [(segment start_s, end_s, text), ...]}`` of the video's segments that
        overlap ``[start_s, end_s)`` seconds, in time order; tracks without text there are absent."""
        lo, hi = spr_ids.video_id_range(int(video_id))
        stmt = (
            select(texts_table.c.track, segments.c.start_s, segments.c.end_s, texts_table.c.text)
            .select_from(texts_table.join(segments, texts_table.c.segment_id == segments.c.id))
            .where(texts_table.c.segment_id >= lo, texts_table.c.segment_id < hi)
            .where(segments.c.start_s < float(end_s), segments.c.end_s > float(start_s))
            .order_by(segments.c.start_s, segments.c.ordinal)
        )
        if tracks is not None:
            stmt = stmt.where(texts_table.c.track.in_([_check_track(t) for t in tracks]))
        out: dict[str, list[tuple[float, float, str]]] = {}
        with self._reader.connect() as conn:
            for track, start, end, body in conn.execute(stmt):
                out.setdefault(track, []).append((float(start), float(end), body))
        return out

    def segment_text_count(self, track: str | None = None) -> int:
        """Segments with text in ``track`` (rows of every track when None), whatever their video's status."""
        stmt = select(func.count()).select_from(texts_table)
        if track is not None:
            stmt = stmt.where(texts_table.c.track == _check_track(track))
        with self._engine.connect() as conn:
            return int(conn.execute(stmt).scalar_one())

    # --- lookup (search hot path) ------------------------------------------------------------

    def lookup_segments(
        self, ids: Sequence[int] | np.ndarray, ready_only: bool = True
    ) -> dict[int, SegmentLocation]:
        """``{segment_id: SegmentLocation}`` for the given ids in one round trip. Unknown ids
        (and the -1 padding of search results) are absent; with ``ready_only``, so are
        segments of videos not ``ready``."""
        wanted = np.unique(np.asarray(ids, dtype=np.int64))
        wanted = wanted[wanted >= 0]
        if not len(wanted):
            return {}
        if self._spans.enabled and ready_only:
            return self._lookup_cached(wanted)
        return self._lookup_joined(wanted.tolist(), ready_only)

    def _lookup_joined(self, wanted: list[int], ready_only: bool) -> dict[int, SegmentLocation]:
        """The lookup as one joined statement: a row per segment."""
        chunk = len(wanted) if self.dialect == "postgresql" else _SQLITE_IN_CHUNK
        ready = VideoStatus.READY.value
        found: dict[int, SegmentLocation] = {}
        with self._reader.connect() as conn:
            for lo in range(0, len(wanted), chunk):
                for *location, status in conn.execute(self._lookup, {"ids": wanted[lo : lo + chunk]}):
                    if status == ready or not ready_only:
                        found[location[0]] = SegmentLocation(*location)
        return found

    def _lookup_cached(self, wanted: np.ndarray) -> dict[int, SegmentLocation]:
        """The lookup through the span cache, still one statement (:func:`_video_rows_statement`):
        a row per video of the hits (status, key, URI and duration always fresh, so a video
        deleted or hidden by another process disappears at once) plus a row per hit whose span
        the cache does not know yet. Warm, that is a few video rows instead of ~200 joined
        segment rows: under 16 threads each row's sqlite3 step let go of the GIL and queued to
        get it back (the "GIL convoy"), and building the rows in Python was most of the time.
        Spans are cached under a token of their video's row; when another process changed the
        video since, its spans are read again (a second statement, only then)."""
        bits, mask = spr_ids.ORDINAL_BITS, spr_ids.MAX_ORDINAL
        wanted_l = wanted.tolist()
        by_video: dict[int, list[int]] = {}
        for sid in wanted_l:
            by_video.setdefault(sid >> bits, []).append(sid)
        epoch = self._spans.epoch
        unknown = self._spans.unknown(by_video)
        videos_seen: dict[int, tuple[Any, ...]] = {}
        fetched: dict[int, list[tuple[int, float, float]]] = {}
        with self._reader.connect() as conn:
            for kind, row_id, key, uri, duration_s, status, *rest in conn.execute(
                self._video_rows, {"ids": list(by_video), "unknown": unknown}
            ):
                if kind == 0:
                    videos_seen[row_id] = (key, uri, duration_s, status, (duration_s, *rest[:3]))
                else:
                    fetched.setdefault(row_id >> bits, []).append(tuple(rest[3:]))
            stale = [
                video_id for video_id, (*_, status, token) in videos_seen.items()
                if status == VideoStatus.READY.value and not self._spans.current(video_id, token)
            ]
            if stale:
                # Changed elsewhere since cached: what the cache knew of them is void.
                asked = set(unknown)
                refetch = [sid for v in stale for sid in by_video[v] if sid not in asked]
                unknown += refetch
                if refetch:
                    for row_id, ordinal, start_s, end_s in conn.execute(self._spans_of, {"ids": refetch}):
                        fetched.setdefault(row_id >> bits, []).append((ordinal, start_s, end_s))
        unknown_set = set(unknown)
        found: dict[int, SegmentLocation] = {}
        for video_id, (key, uri, duration_s, status, token) in videos_seen.items():
            if status != VideoStatus.READY.value:
                self._spans.drop(video_id)
                continue
            sids = by_video[video_id]
            asked = [sid & mask for sid in sids if sid in unknown_set]
            starts, ends = self._spans.learn(video_id, token, asked, fetched.get(video_id, ()), epoch)
            size = len(starts)
            for sid in sids:
                ordinal = sid & mask
                start_s = starts[ordinal] if ordinal < size else None
                if start_s is None or start_s != start_s:  # never read, or no such segment (NaN)
                    continue
                found[sid] = SegmentLocation(sid, video_id, key, uri, ordinal, start_s, ends[ordinal], duration_s)
        return found

    # --- collections -------------------------------------------------------------------------

    def register_collection(
        self,
        name: str,
        backend: str,
        dim: int,
        metric: str,
        index_spec: Mapping[str, Any],
        feature_model: str | None = None,
    ) -> CollectionRecord:
        """Record vector collection ``name``. Registering it again with the same backend,
        dim and metric returns it (index_spec, and feature_model when given, are updated:
        an index rebuild is not a conflict); a different backend/dim/metric raises ValueError."""
        spec = dict(index_spec)
        for _attempt in range(2):
            existing = self.get_collection(name)
            if existing is not None:
                return self._reconcile_collection(existing, backend, int(dim), metric, spec, feature_model)
            values = dict(
                name=name, backend=backend, dim=int(dim), metric=metric, index_spec=spec, feature_model=feature_model
            )
            try:
                with self._engine.begin() as conn:
                    conn.execute(insert(collections).values(**values))
            except IntegrityError:
                continue  # another process registered it between our read and insert
            break
        record = self.get_collection(name)
        assert record is not None
        return record

    def _reconcile_collection(
        self,
        existing: CollectionRecord,
        backend: str,
        dim: int,
        metric: str,
        spec: dict[str, Any],
        feature_model: str | None,
    ) -> CollectionRecord:
        theirs = (existing.backend, existing.dim, existing.metric)
        if theirs != (backend, dim, metric):
            raise ValueError(
                f"collection {existing.name!r} is registered as backend={existing.backend} dim={existing.dim} "
                f"metric={existing.metric}, not backend={backend} dim={dim} metric={metric}; "
                f"use another collection name or drop the old one"
            )
        model = existing.feature_model if feature_model is None else feature_model
        if existing.index_spec == spec and existing.feature_model == model:
            return existing
        with self._engine.begin() as conn:
            conn.execute(
                update(collections)
                .where(collections.c.id == existing.id)
                .values(index_spec=spec, feature_model=model)
            )
        updated = self.get_collection(existing.name)
        assert updated is not None
        return updated

    def get_collection(self, name: str) -> CollectionRecord | None:
        with self._engine.connect() as conn:
            row = conn.execute(select(collections).where(collections.c.name == name)).mappings().one_or_none()
        return None if row is None else collection_record(row)

    def list_collections(self) -> list[CollectionRecord]:
        with self._engine.connect() as conn:
            rows = conn.execute(select(collections).order_by(collections.c.name)).mappings()
            return [collection_record(row) for row in rows]

    def drop_collection(self, name: str) -> bool:
        """Forget collection ``name`` (the vector store's copy is the caller's to drop)."""
        with self._engine.begin() as conn:
            # What it held goes with it (the cascade does this too, where foreign keys are on).
            held = select(collections.c.id).where(collections.c.name == name).scalar_subquery()
            conn.execute(delete(collection_videos).where(collection_videos.c.collection_id == held))
            return conn.execute(delete(collections).where(collections.c.name == name)).rowcount > 0

    # --- which version of each video a collection holds -------------------------------------

    def record_holdings(self, collection: str, held: Sequence[tuple[int, str | None, int]]) -> None:
        """Record that ``collection`` now holds these versions of these videos:
        ``(video_id, content_hash, segments)`` each, replacing what it held of them."""
        record = self.get_collection(collection)
        if record is None:  # a collection only the vector store knows: nothing to keep track of
            return
        rows = [
            {"collection_id": record.id, "video_id": int(v), "content_hash": h, "segments": int(n)} for v, h, n in held
        ]
        if not rows:
            return
        ins = (postgresql.insert if self.dialect == "postgresql" else sqlite.insert)(collection_videos)
        stmt = ins.on_conflict_do_update(
            index_elements=[collection_videos.c.collection_id, collection_videos.c.video_id],
            set_={"content_hash": ins.excluded.content_hash, "segments": ins.excluded.segments},
        )
        with self._engine.begin() as conn:
            conn.execute(stmt, rows)

    def holdings(self, video_ids: Sequence[int]) -> dict[int, dict[str, tuple[str | None, int]]]:
        """``{video_id: {collection name: (content_hash, segments)}}``: the version of each
        video every collection holds; a video no collection holds is absent."""
        wanted = sorted({int(v) for v in video_ids})
        if not wanted:
            return {}
        stmt = (
            select(collection_videos.c.video_id, collections.c.name, collection_videos.c.content_hash,
                   collection_videos.c.segments)
            .select_from(collection_videos.join(collections, collection_videos.c.collection_id == collections.c.id))
            .where(collection_videos.c.video_id.in_(bindparam("ids", expanding=True)))
        )
        found: dict[int, dict[str, tuple[str | None, int]]] = {}
        with self._engine.connect() as conn:
            for lo in range(0, len(wanted), _SQLITE_IN_CHUNK):
                for video_id, name, digest, n in conn.execute(stmt, {"ids": wanted[lo : lo + _SQLITE_IN_CHUNK]}):
                    found.setdefault(int(video_id), {})[name] = (digest, int(n))
        return found

    def holds(self, collection: str, video_id: int) -> tuple[str | None, int] | None:
        """The ``(content_hash, segments)`` of the video that ``collection`` holds, or None."""
        return self.holdings([video_id]).get(int(video_id), {}).get(collection)

    def drop_holdings(self, collection: str, video_ids: Sequence[int]) -> None:
        """Forget that ``collection`` holds these videos (their vectors there were removed)."""
        record = self.get_collection(collection)
        ids = [int(v) for v in video_ids]
        if record is None or not ids:
            return
        stmt = delete(collection_videos).where(
            collection_videos.c.collection_id == record.id, collection_videos.c.video_id.in_(ids)
        )
        with self._engine.begin() as conn:
            conn.execute(stmt)

    # --- ingest runs -------------------------------------------------------------------------

    def start_run(
        self, config: Mapping[str, Any], videos_total: int = 0, pid: int | None = None, host: str | None = None
    ) -> int:
        """Record a new ``running`` ingest run of process ``pid`` on ``host`` (default: this
        process); returns its id. First, runs of this host whose process is gone (killed
        before it could close its row) are marked ``abandoned``."""
        pid = os.getpid() if pid is None else int(pid)
        host = socket.gethostname() if host is None else host
        self.abandon_dead_runs(host)
        stmt = insert(ingest_runs).values(
            status=RunStatus.RUNNING.value, config=dict(config), videos_total=int(videos_total), pid=pid,
            host=host[:255],
        )
        with self._engine.begin() as conn:
            return int(conn.execute(stmt).inserted_primary_key[0])

    def abandon_dead_runs(self, host: str | None = None) -> list[int]:
        """Mark ``abandoned`` every ``running`` run of ``host`` (default: this one) whose
        process no longer exists; their ids. Runs of other hosts, and runs recorded without a
        process id (before the catalog kept one), cannot be checked from here and are left."""
        host = socket.gethostname() if host is None else host
        stmt = select(ingest_runs.c.id, ingest_runs.c.pid).where(
            ingest_runs.c.status == RunStatus.RUNNING.value, ingest_runs.c.host == host[:255],
            ingest_runs.c.pid.is_not(None),
        )
        with self._engine.connect() as conn:
            dead = [run_id for run_id, pid in conn.execute(stmt) if not _process_alive(int(pid))]
        if dead:
            done = (
                update(ingest_runs)
                .where(ingest_runs.c.id.in_(dead), ingest_runs.c.status == RunStatus.RUNNING.value)
                .values(status=RunStatus.ABANDONED.value, finished_at=func.now(),
                        error="its process ended without closing the run (killed?); a re-run resumes it")
            )
            with self._engine.begin() as conn:
                conn.execute(done)
        return dead

    def list_runs(self, status: str | None = None, limit: int | None = None) -> list[IngestRunRecord]:
        """Ingest runs, newest first, optionally of one status and at most ``limit``."""
        stmt = select(ingest_runs).order_by(ingest_runs.c.id.desc())
        if status is not None:
            stmt = stmt.where(ingest_runs.c.status == RunStatus(status).value)
        if limit is not None:
            stmt = stmt.limit(int(limit))
        with self._engine.connect() as conn:
            return [ingest_run_record(row) for row in conn.execute(stmt).mappings()]

    def count_runs_by_status(self) -> dict[str, int]:
        """``{run status: runs}``, every status present."""
        counts = {s.value: 0 for s in RunStatus}
        stmt = select(ingest_runs.c.status, func.count()).group_by(ingest_runs.c.status)
        with self._engine.connect() as conn:
            counts.update({status: int(n) for status, n in conn.execute(stmt)})
        return counts

    def update_run(self, run_id: int, **counters: int) -> None:
        """Set counters (``videos_total``, ``videos_done``, ``videos_skipped``, ``videos_failed``,
        ``segments_written``) to the given absolute values."""
        self._change_run(run_id, {name: int(v) for name, v in _counters(counters).items()})

    def increment_run(self, run_id: int, **deltas: int) -> None:
        """Add to counters atomically in the database, so parallel workers can report."""
        self._change_run(
            run_id, {name: ingest_runs.c[name] + int(d) for name, d in _counters(deltas).items()}
        )

    def finish_run(self, run_id: int, status: str = RunStatus.FINISHED.value, error: str | None = None) -> None:
        """Close the run as ``finished`` or ``failed`` (with ``error``), stamping finished_at."""
        final = RunStatus(status)
        if final not in (RunStatus.FINISHED, RunStatus.FAILED):
            raise ValueError("finish_run needs a final status: 'finished' or 'failed'")
        self._change_run(run_id, {"status": final.value, "error": error, "finished_at": func.now()})

    def get_run(self, run_id: int) -> IngestRunRecord | None:
        with self._engine.connect() as conn:
            row = conn.execute(select(ingest_runs).where(ingest_runs.c.id == int(run_id))).mappings().one_or_none()
        return None if row is None else ingest_run_record(row)

    def _change_run(self, run_id: int, values: dict[str, Any]) -> None:
        if not values:
            return
        stmt = update(ingest_runs).where(ingest_runs.c.id == int(run_id)).values(**values)
        with self._engine.begin() as conn:
            if conn.execute(stmt).rowcount == 0:
                raise RunNotFound(f"no ingest run with id {run_id}")


def _lookup_statement(dialect: str) -> Select[Any]:
    """The lookup SELECT, built once per catalog so SQLAlchemy's compiled cache always hits.
    Columns are in :class:`SegmentLocation` field order, then the video's status.

    The status is returned rather than filtered on: with ``status = 'ready'`` in the WHERE
    clause SQLite always (and PostgreSQL before ANALYZE) drives the join from the ready
    videos through ix_videos_status and walks all their segments, 20-50 ms per search;
    with the ids as the only filter every plan starts from the segments' primary key."""
    if dialect == "postgresql":
        # One array parameter: constant SQL text whatever the number of ids.
        id_filter = segments.c.id == any_(bindparam("ids", type_=ARRAY(BigInteger)))
    else:
        id_filter = segments.c.id.in_(bindparam("ids", expanding=True))
    stmt = (
        select(
            segments.c.id,
            segments.c.video_id,
            videos.c.key,
            videos.c.uri,
            segments.c.ordinal,
            segments.c.start_s,
            segments.c.end_s,
            videos.c.duration_s,
            videos.c.status,
        )
        .select_from(segments.join(videos, segments.c.video_id == videos.c.id))
        .where(id_filter)
    )
    return stmt


def _video_rows_statement(dialect: str) -> Any:
    """The cached lookup's one statement: ``kind`` 0 rows, one per video id in ``:ids``:
    ``0, id, key, uri, duration_s, status``, then the spans' token: ``updated_at`` (every write
    through the catalog stamps it: a re-registration, each status change), the largest segment
    id of the video and the end of its first segment (index seeks on the segments' primary key),
    so segments added or replaced with another length show as a new token; and ``kind`` 1 rows,
    one per segment id in ``:unknown``: ``1, id``, NULLs, then ``ordinal, start_s, end_s``."""
    if dialect == "postgresql":
        video_filter = videos.c.id == any_(bindparam("ids", type_=ARRAY(BigInteger)))
        segment_filter = segments.c.id == any_(bindparam("unknown", type_=ARRAY(BigInteger)))
    else:
        video_filter = videos.c.id.in_(bindparam("ids", expanding=True))
        segment_filter = segments.c.id.in_(bindparam("unknown", expanding=True))
    first = videos.c.id * (1 << spr_ids.ORDINAL_BITS)
    last_id = (
        select(func.max(segments.c.id))
        .where(segments.c.id >= first, segments.c.id < first + (1 << spr_ids.ORDINAL_BITS))
        .scalar_subquery()
    )
    first_end = select(segments.c.end_s).where(segments.c.id == first).scalar_subquery()
    null = sql_null
    video_rows = select(
        literal(0).label("kind"), videos.c.id, videos.c.key, videos.c.uri, videos.c.duration_s, videos.c.status,
        videos.c.updated_at, last_id.label("last_id"), first_end.label("first_end"),
        cast(null(), Integer).label("ordinal"), cast(null(), Float).label("start_s"), cast(null(), Float).label("end_s"),
    ).where(video_filter)
    segment_rows = select(
        literal(1), segments.c.id, cast(null(), String), cast(null(), Text), cast(null(), Float), cast(null(), String),
        cast(null(), videos.c.updated_at.type), cast(null(), BigInteger), cast(null(), Float),
        segments.c.ordinal, segments.c.start_s, segments.c.end_s,
    ).where(segment_filter)
    return union_all(video_rows, segment_rows)


class _Spans:
    """What the cache knows of one video's segment spans, by ordinal: ``start_s[o]`` is None
    while never read, NaN where the video has no segment ``o``; read under the ``token`` of
    the video row. Entries only ever go from None to a value: a lookup reading them while
    another fills others needs no lock, and another token makes a new object."""

    __slots__ = ("token", "start_s", "end_s")

    def __init__(self, token: tuple[Any, ...]) -> None:
        self.token = token
        self.start_s: list[float | None] = []
        self.end_s: list[float] = []

    @property
    def size(self) -> int:
        return max(1, len(self.start_s))

    def grow(self, top: int) -> None:
        if top >= len(self.start_s):
            more = max(top + 1, 2 * len(self.start_s)) - len(self.start_s)
            self.start_s.extend([None] * more)
            self.end_s.extend([_NAN] * more)


_NAN = float("nan")


class _SpanCache:
    """Spans by video id, least recently used out first beyond ``max_segments`` (ordinals
    covered). Writes of this process :meth:`forget` the video; what a lookup read before a
    forget (``epoch``) is not stored, so a lookup racing a write never keeps what it replaced."""

    def __init__(self, max_segments: int) -> None:
        self.max_segments = int(max_segments)
        self._videos: OrderedDict[int, _Spans] = OrderedDict()
        self._held = 0
        self._epoch = 0
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.max_segments > 0

    @property
    def epoch(self) -> int:
        return self._epoch

    def __len__(self) -> int:
        return len(self._videos)

    def unknown(self, by_video: Mapping[int, Sequence[int]]) -> list[int]:
        """The segment ids (grouped by video id) whose span the cache does not know, under any token."""
        mask = spr_ids.MAX_ORDINAL
        out: list[int] = []
        with self._lock:
            for video_id, sids in by_video.items():
                spans = self._videos.get(video_id)
                if spans is None:
                    out.extend(sids)
                    continue
                starts, size = spans.start_s, len(spans.start_s)
                out.extend(sid for sid in sids if (sid & mask) >= size or starts[sid & mask] is None)
        return out

    def current(self, video_id: int, token: tuple[Any, ...]) -> bool:
        """False when the cache holds spans of ``video_id`` under another token."""
        with self._lock:
            spans = self._videos.get(video_id)
            return spans is None or spans.token == token

    def learn(
        self, video_id: int, token: tuple[Any, ...], asked: Sequence[int], rows: Sequence[tuple[int, float, float]],
        epoch: int,
    ) -> tuple[list[float | None], list[float]]:
        """The video's ``(start_s, end_s)`` lists by ordinal, with ``rows`` (``(ordinal, start_s,
        end_s)``, read for the ``asked`` ordinals it did not know: the rest of those have no
        segment) added; kept in the cache unless a write of this process came in between."""
        with self._lock:
            spans = self._videos.get(video_id)
            if spans is not None and spans.token == token and not asked:
                self._videos.move_to_end(video_id)
                return spans.start_s, spans.end_s
            keep = epoch == self._epoch
            if spans is None or spans.token != token or not keep:
                fresh = _Spans(token)
            else:
                fresh = spans
            if asked:
                fresh.grow(max(asked))
                for ordinal in asked:
                    if fresh.start_s[ordinal] is None:
                        fresh.start_s[ordinal] = _NAN
            for ordinal, start_s, end_s in rows:
                fresh.grow(ordinal)
                fresh.start_s[ordinal], fresh.end_s[ordinal] = start_s, end_s
            if keep and fresh.size <= self.max_segments:
                old = self._videos.pop(video_id, None)
                self._held += fresh.size - (old.size if old is not None else 0)
                self._videos[video_id] = fresh
                while self._held > self.max_segments and self._videos:
                    _, gone = self._videos.popitem(last=False)
                    self._held -= gone.size
            return fresh.start_s, fresh.end_s

    def drop(self, video_id: int) -> None:
        """Evict ``video_id`` (seen not ready), without voiding lookups in flight."""
        with self._lock:
            old = self._videos.pop(video_id, None)
            if old is not None:
                self._held -= old.size

    def forget(self, video_id: int) -> None:
        with self._lock:
            self._epoch += 1
            old = self._videos.pop(video_id, None)
            if old is not None:
                self._held -= old.size


class InvalidMetadataFilter(ValueError):
    """A metadata filter over :mod:`spr.limits`' sizes; ``limit`` names the one it broke."""

    def __init__(self, message: str, limit: str) -> None:
        super().__init__(message)
        self.limit = limit


def check_metadata_filter(metadata: Mapping[str, Any]) -> dict[str, str]:
    """``metadata`` as ``{key: text value}`` when it is a filter the catalog answers: at most
    :data:`~spr.limits.MAX_METADATA_FILTER_ENTRIES` pairs, keys of 1 to
    :data:`~spr.limits.MAX_METADATA_KEY_CHARS` characters without a double quote, values of at
    most :data:`~spr.limits.MAX_METADATA_VALUE_CHARS`; else :class:`InvalidMetadataFilter`.
    Every adapter's filter reaches the catalog through this, so all refuse alike."""
    entries, key_chars, value_chars = (
        spr_limits.MAX_METADATA_FILTER_ENTRIES,
        spr_limits.MAX_METADATA_KEY_CHARS,
        spr_limits.MAX_METADATA_VALUE_CHARS,
    )
    if len(metadata) > entries:
        raise InvalidMetadataFilter(
            f"metadata filter has {len(metadata)} entries; at most {entries} are allowed", f"{entries} entries"
        )
    pairs = {}
    for key, value in metadata.items():
        key, value = str(key), str(value)
        if not key or '"' in key:
            raise InvalidMetadataFilter(
                f"metadata keys must be non-empty and contain no double quote, got {key[:40]!r}", "non-empty key, no '\"'"
            )
        if len(key) > key_chars:
            raise InvalidMetadataFilter(
                f"metadata key {key[:40]!r}... has {len(key)} characters; at most {key_chars} are allowed",
                f"{key_chars} characters per key",
            )
        if len(value) > value_chars:
            raise InvalidMetadataFilter(
                f"metadata value of {key[:40]!r} has {len(value)} characters; at most {value_chars} are allowed",
                f"{value_chars} characters per value",
            )
        pairs[key] = value
    return pairs


def _metadata_pair_text(dialect: str) -> tuple[str, str]:
    """``(FROM items, text of a pair's value)``: a video's top-level metadata pairs, each value
    as PostgreSQL's ``->>`` spells it. SQLite's json_each gives SQL values (booleans 1/0,
    numbers without their JSON spelling), so the text ``->>`` would give is rebuilt."""
    if dialect == "postgresql":
        return "videos v CROSS JOIN LATERAL jsonb_each_text(v.metadata) e", "e.value"
    return (
        "videos v, json_each(v.metadata) e",
        "CASE e.type WHEN 'true' THEN 'true' WHEN 'false' THEN 'false' WHEN 'null' THEN NULL "
        "ELSE CAST(e.value AS TEXT) END",
    )


def _fill_video_metadata(dialect: str) -> Any:
    """INSERT of video ``:video_id``'s filterable pairs into ``video_metadata`` (migration 0004
    backfills the same rows): not null, key and value within the filter's limits (a longer
    one could never be asked for)."""
    items, value = _metadata_pair_text(dialect)
    return text(
        f"INSERT INTO video_metadata (video_id, key, value) SELECT v.id, e.key, {value} FROM {items} "
        f"WHERE v.id = :video_id AND {value} IS NOT NULL "
        f"AND length(e.key) BETWEEN 1 AND {spr_limits.MAX_METADATA_KEY_CHARS} "
        f"AND length({value}) <= {spr_limits.MAX_METADATA_VALUE_CHARS}"
    )


def _metadata_match(dialect: str, ready_only: bool) -> Any:
    """Keys of the videos holding all ``:n`` filter pairs, sorted, in one statement whose text
    does not depend on the number of pairs (PostgreSQL: the arrays ``:keys`` / ``:values``;
    SQLite: the JSON object ``:pairs``), served by ``video_metadata``'s indexes: the rarest pair
    (by an index count capped at :data:`_PAIR_COUNT_CAP`) gives the candidates through the
    (key, value) index, and each candidate is checked for all pairs through the primary key
    (video_id, key). Joining every pair and grouping instead made a pair that every video holds
    (``lang=en``) cost a row per video and pair."""
    if dialect == "postgresql":
        wanted = "SELECT * FROM unnest(CAST(:keys AS text[]), CAST(:values AS text[])) AS w(key, value)"
    else:
        wanted = "SELECT key, value FROM json_each(:pairs)"
    ready = f"AND v.status = '{VideoStatus.READY.value}' " if ready_only else ""
    return text(
        f"WITH f AS ({wanted}), "
        "best AS (SELECT f.key, f.value FROM f ORDER BY (SELECT count(*) FROM (SELECT 1 FROM video_metadata c "
        f"WHERE c.key = f.key AND c.value = f.value LIMIT {_PAIR_COUNT_CAP}) s) LIMIT 1) "
        "SELECT v.key FROM best JOIN video_metadata m0 ON m0.key = best.key AND m0.value = best.value "
        "JOIN videos v ON v.id = m0.video_id "
        "WHERE (SELECT count(*) FROM f JOIN video_metadata m ON m.video_id = v.id AND m.key = f.key "
        f"AND m.value = f.value) = :n {ready}ORDER BY v.key"
    )


def _segment_arrays(ordinals: Any, start_s: Any, end_s: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ords = np.asarray(ordinals)
    starts = np.asarray(start_s, dtype=np.float64)
    ends = np.asarray(end_s, dtype=np.float64)
    if ords.ndim != 1 or starts.ndim != 1 or ends.ndim != 1:
        raise ValueError(f"segment arrays must be 1-D, got shapes {ords.shape}, {starts.shape}, {ends.shape}")
    if not len(ords) == len(starts) == len(ends):
        raise ValueError(f"segment arrays differ in length: {len(ords)}, {len(starts)}, {len(ends)}")
    if len(ords) and not np.issubdtype(ords.dtype, np.integer):
        raise ValueError(f"ordinals must be integers, got dtype {ords.dtype}")
    if np.any(ends < starts):
        raise ValueError("every segment needs end_s >= start_s")
    return ords.astype(np.int64, copy=False), starts, ends


def _counters(values: Mapping[str, int]) -> Mapping[str, int]:
    unknown = sorted(set(values) - set(RUN_COUNTERS))
    if unknown:
        raise ValueError(f"unknown ingest-run counter(s) {unknown}; known: {list(RUN_COUNTERS)}")
    return values


def _process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (one we may not signal exists too)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _delete_texts(video_id: int, track: str | None = None) -> Any:
    """DELETE of the video's segment texts (of one track): its segment ids are one range."""
    lo, hi = spr_ids.video_id_range(video_id)
    stmt = delete(texts_table).where(texts_table.c.segment_id >= lo, texts_table.c.segment_id < hi)
    return stmt if track is None else stmt.where(texts_table.c.track == track)


def _check_track(track: str) -> str:
    """``track`` if it names a text track (a modality name other than visual), else ValueError."""
    if check_modality(track) == VISUAL:
        raise ValueError("segment texts belong to a text track (speech, subtitles), not the visual modality")
    return track


def _track_report(track: str, report: Mapping[str, Any]) -> dict[str, Any]:
    """``report`` as stored: a plain dict whose ``status`` is a TrackStatus value."""
    _check_track(track)
    out = dict(report)
    status = out.get("status")
    if status not in _TRACK_STATUSES:
        raise ValueError(
            f"track {track!r}: status must be one of {sorted(_TRACK_STATUSES)}, got {status!r} "
            f"(build reports with spr.text_tracks.TrackReport.to_dict)"
        )
    out["status"] = str(status)
    return out
