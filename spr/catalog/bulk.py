"""Bulk-writing segment rows and segment texts: COPY on PostgreSQL/psycopg2, batched
executemany elsewhere.

An hour of video is 900 four-second segments and an archive ingest writes millions of
rows (and as many texts per text track), so these are the catalog's write hot paths.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from typing import Literal

import numpy as np
from sqlalchemy import exc as sa_exc
from sqlalchemy import insert
from sqlalchemy.engine import Connection, Dialect

from .models import segment_texts, segments

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
