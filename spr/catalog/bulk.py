"""Bulk-writing segment rows and segment texts: COPY on PostgreSQL/psycopg2, batched
executemany elsewhere; and the video rows of many videos at once (``spr import``'s batches:
one transaction per batch, not several per video).

An hour of video is 900 four-second segments and an archive ingest writes millions of
rows (and as many texts per text track), so these are the catalog's write hot paths.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal

import numpy as np
from sqlalchemy import bindparam, delete, func, insert, select, update
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Dialect

from .models import VideoStatus, segment_texts, segments, video_metadata, videos

BulkMethod = Literal["copy", "executemany"]

COPY_SEGMENTS_SQL = "COPY segments (id, video_id, ordinal, start_s, end_s) FROM STDIN WITH (FORMAT csv)"
COPY_SEGMENT_TEXTS_SQL = "COPY segment_texts (segment_id, track, text) FROM STDIN WITH (FORMAT csv)"


def bulk_insert_method(dialect: Dialect) -> BulkMethod:
    """Which bulk path :func:`insert_segment_rows` takes on ``dialect``."""
    if dialect.name == "postgresql" and dialect.driver == "psycopg2":
        return "copy"
    return "executemany"


def insert_segment_rows(
    conn: Connection,
    video_id: int,
    ids: np.ndarray,
    ordinals: np.ndarray,
    start_s: np.ndarray,
    end_s: np.ndarray,
    batch_rows: int,
) -> None:
    """Insert ``len(ids)`` rows of one video inside ``conn``'s current transaction.

    All arrays are 1-D of one length: ids int64, ordinals int64, times float64 seconds.
    A constraint violation raises :class:`sqlalchemy.exc.IntegrityError` on every path.
    """
    if len(ids) == 0:
        return
    if bulk_insert_method(conn.dialect) == "copy":
        copy_segment_rows(conn, video_id, ids, ordinals, start_s, end_s)
    else:
        executemany_segment_rows(conn, video_id, ids, ordinals, start_s, end_s, batch_rows)


def copy_segment_rows(
    conn: Connection,
    video_id: int,
    ids: np.ndarray,
    ordinals: np.ndarray,
    start_s: np.ndarray,
    end_s: np.ndarray,
) -> None:
    """COPY the rows as CSV through the raw psycopg2 connection behind ``conn``."""
    # Python's float repr is the shortest string that round-trips, so no precision is lost;
    # formatting Python scalars runs ~3x faster than numpy's astype(str).
    vid = int(video_id)
    rows = zip(ids.tolist(), ordinals.tolist(), start_s.tolist(), end_s.tolist())
    payload = "".join([f"{i},{vid},{o},{s!r},{e!r}\n" for i, o, s, e in rows])
    _copy(conn, COPY_SEGMENTS_SQL, payload)


def _copy(conn: Connection, sql: str, payload: str) -> None:
    """Run ``COPY ... FROM STDIN`` with ``payload`` on the raw psycopg2 connection behind ``conn``."""
    # The same DBAPI connection SQLAlchemy began its transaction on, so the COPY commits
    # or rolls back with everything else in the block.
    dbapi_conn = conn.connection.dbapi_connection
    assert dbapi_conn is not None
    try:
        with dbapi_conn.cursor() as cursor:
            cursor.copy_expert(sql, io.StringIO(payload))
    except conn.dialect.loaded_dbapi.Error as exc:
        # Raw driver errors escape SQLAlchemy's wrapping; wrap them the same way so callers
        # catch one exception type whatever the backend.
        raise sa_exc.DBAPIError.instance(sql, None, exc, conn.dialect.loaded_dbapi.Error, dialect=conn.dialect) from exc


def executemany_segment_rows(
    conn: Connection,
    video_id: int,
    ids: np.ndarray,
    ordinals: np.ndarray,
    start_s: np.ndarray,
    end_s: np.ndarray,
    batch_rows: int,
) -> None:
    """``INSERT`` executemany in batches of ``batch_rows`` (bounds client memory per batch)."""
    stmt = insert(segments)
    vid = int(video_id)
    step = max(1, int(batch_rows))
    for lo in range(0, len(ids), step):
        hi = lo + step
        # .tolist() gives Python ints/floats: sqlite3 rejects numpy scalars.
        rows = [
            {"id": i, "video_id": vid, "ordinal": o, "start_s": s, "end_s": e}
            for i, o, s, e in zip(
                ids[lo:hi].tolist(), ordinals[lo:hi].tolist(), start_s[lo:hi].tolist(), end_s[lo:hi].tolist()
            )
        ]
        conn.execute(stmt, rows)


def insert_segment_text_rows(
    conn: Connection, segment_ids: np.ndarray, track: str, texts: Sequence[str], batch_rows: int
) -> None:
    """Insert one ``(segment_id, track, text)`` row per id inside ``conn``'s transaction:
    ``segment_ids`` ``(m,)`` int64, ``texts`` ``m`` strings (free of NUL, which PostgreSQL
    text cannot hold). A missing segment or a duplicate raises
    :class:`sqlalchemy.exc.IntegrityError` on every path."""
    if len(segment_ids) == 0:
        return
    ids = segment_ids.tolist()
    if bulk_insert_method(conn.dialect) == "copy":
        buf = io.StringIO()
        # Strings quoted, numbers not: a quoted "" is an empty string (unquoted would be NULL)
        # and a quoted line can never be COPY's end-of-data marker.
        csv.writer(buf, quoting=csv.QUOTE_NONNUMERIC, lineterminator="\n").writerows(
            (sid, track, text) for sid, text in zip(ids, texts)
        )
        _copy(conn, COPY_SEGMENT_TEXTS_SQL, buf.getvalue())
        return
    stmt = insert(segment_texts)
    step = max(1, int(batch_rows))
    for lo in range(0, len(ids), step):
        rows = [
            {"segment_id": sid, "track": track, "text": text}
            for sid, text in zip(ids[lo : lo + step], texts[lo : lo + step])
        ]
        conn.execute(stmt, rows)


# --- many videos in one transaction (spr import) -------------------------------------------------

# Keys or ids per IN list: SQLite binds each as one variable.
_IN_CHUNK = 900


def _chunks(values: Sequence[Any], size: int = _IN_CHUNK) -> Iterator[Sequence[Any]]:
    for lo in range(0, len(values), size):
        yield values[lo : lo + size]


def video_rows_by_key(conn: Connection, keys: Sequence[str]) -> dict[str, Mapping[str, Any]]:
    """``{key: the video's row}`` (every column of ``videos``) of those of ``keys`` that the
    catalog holds, in one statement per :data:`_IN_CHUNK` keys."""
    out: dict[str, Mapping[str, Any]] = {}
    for chunk in _chunks(list(keys)):
        for row in conn.execute(select(videos).where(videos.c.key.in_(chunk))).mappings():
            out[row["key"]] = row
    return out


def register_videos_pending(conn: Connection, dialect: str, rows: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """:meth:`SegmentCatalog.register_video` of many videos in ``conn``'s transaction: each of
    ``rows`` (``key``, ``uri``, ``duration_s``, ``fps``, ``content_hash``, ``metadata``,
    ``ingest_info``) inserted ``pending``, or, for a key the catalog holds, every field replaced,
    status back to ``pending``, error cleared, id kept, tracks and warnings left; its filterable
    metadata pairs rewritten. One executemany of the same upsert, then the ids; returns
    ``{key: video id}``."""
    from .segment_catalog import _fill_video_metadata

    if not rows:
        return {}
    values = [
        {
            "key": r["key"], "uri": r["uri"], "duration_s": float(r["duration_s"]),
            "fps": None if r.get("fps") is None else float(r["fps"]), "content_hash": r.get("content_hash"),
            "status": VideoStatus.PENDING.value, "error": None, "metadata": dict(r.get("metadata") or {}),
            "ingest_info": dict(r.get("ingest_info") or {}), "tracks": {}, "warnings": [],
        }
        for r in rows
    ]
    ins = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(videos)
    replaced = ("uri", "duration_s", "fps", "content_hash", "status", "error", "metadata", "ingest_info")
    stmt = ins.on_conflict_do_update(
        index_elements=[videos.c.key],
        set_={**{c: ins.excluded[c] for c in replaced}, "updated_at": func.now()},
    )
    conn.execute(stmt, values)
    ids = {key: int(row["id"]) for key, row in video_rows_by_key(conn, [r["key"] for r in rows]).items()}
    video_ids = list(ids.values())
    for chunk in _chunks(video_ids):
        conn.execute(delete(video_metadata).where(video_metadata.c.video_id.in_(chunk)))
    conn.execute(_fill_video_metadata(dialect), [{"video_id": v} for v in video_ids])
    return ids


def replace_segments_many(
    conn: Connection,
    video_ids: np.ndarray,
    ids: np.ndarray,
    ordinals: np.ndarray,
    start_s: np.ndarray,
    end_s: np.ndarray,
    batch_rows: int,
) -> None:
    """Make the given rows the only segments of the videos ``np.unique(video_ids)``, inside
    ``conn``'s transaction: their old segments and the texts of those go first. All arrays are
    1-D of one length, a row per segment (``video_ids`` int64: each row's video)."""
    owners = np.unique(np.asarray(video_ids, dtype=np.int64)).tolist()
    if not owners:
        return
    for chunk in _chunks(owners):
        # Texts first, as replace_segments does: a SQLite file opened without PRAGMA
        # foreign_keys would keep texts of segments that are gone.
        of_videos = select(segments.c.id).where(segments.c.video_id.in_(chunk))
        conn.execute(delete(segment_texts).where(segment_texts.c.segment_id.in_(of_videos)))
        conn.execute(delete(segments).where(segments.c.video_id.in_(chunk)))
    insert_segment_rows_many(conn, video_ids, ids, ordinals, start_s, end_s, batch_rows)


def insert_segment_rows_many(
    conn: Connection,
    video_ids: np.ndarray,
    ids: np.ndarray,
    ordinals: np.ndarray,
    start_s: np.ndarray,
    end_s: np.ndarray,
    batch_rows: int,
) -> None:
    """:func:`insert_segment_rows` of segments of many videos (``video_ids`` one per row):
    one COPY on PostgreSQL/psycopg2, else executemany through the driver in batches of
    ``batch_rows`` (SQLAlchemy's per-row parameter processing would cost more than SQLite)."""
    if len(ids) == 0:
        return
    columns = (
        np.asarray(ids, dtype=np.int64).tolist(), np.asarray(video_ids, dtype=np.int64).tolist(),
        np.asarray(ordinals, dtype=np.int64).tolist(), np.asarray(start_s, dtype=np.float64).tolist(),
        np.asarray(end_s, dtype=np.float64).tolist(),
    )
    if bulk_insert_method(conn.dialect) == "copy":
        payload = "".join([f"{i},{v},{o},{s!r},{e!r}\n" for i, v, o, s, e in zip(*columns)])
        _copy(conn, COPY_SEGMENTS_SQL, payload)
        return
    rows = list(zip(*columns))
    sql = "INSERT INTO segments (id, video_id, ordinal, start_s, end_s) VALUES (?, ?, ?, ?, ?)"
    step = max(1, int(batch_rows))
    for lo in range(0, len(rows), step):
        conn.exec_driver_sql(sql, rows[lo : lo + step])


def set_tracks_many(conn: Connection, tracks: Mapping[int, tuple[Mapping[str, Mapping[str, Any]], Sequence[str]]]) -> None:
    """:meth:`SegmentCatalog.set_tracks` of many videos: ``{video_id: (tracks, warnings)}``."""
    from .segment_catalog import MAX_WARNING_CHARS, MAX_WARNINGS, _track_report

    if not tracks:
        return
    rows = []
    for video_id, (reports, warnings) in tracks.items():
        if isinstance(warnings, str):
            raise TypeError("warnings must be a sequence of strings, not one string")
        rows.append(
            {
                "vid": int(video_id),
                "t": {str(t): _track_report(t, r) for t, r in reports.items()},
                "w": [str(w)[:MAX_WARNING_CHARS] for w in list(warnings)[:MAX_WARNINGS]],
            }
        )
    stmt = update(videos).where(videos.c.id == bindparam("vid")).values(tracks=bindparam("t"), warnings=bindparam("w"))
    conn.execute(stmt, rows)


def mark_ready_many(conn: Connection, video_ids: Sequence[int]) -> None:
    """Every video of ``video_ids`` ``ready`` (error cleared), in ``conn``'s transaction; the
    rows' ``updated_at`` moves, as each status change through the catalog does."""
    ids = [int(v) for v in video_ids]
    for chunk in _chunks(ids):
        conn.execute(
            update(videos).where(videos.c.id.in_(chunk)).values(status=VideoStatus.READY.value, error=None)
        )
