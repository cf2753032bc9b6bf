"""Bulk-writing segment rows: COPY on PostgreSQL/psycopg2, batched executemany elsewhere.

An hour of video is 900 four-second segments and an archive ingest writes millions of
rows, so this is the catalog's one write hot path.
"""

from __future__ import annotations

import io
from typing import Literal

import numpy as np
from sqlalchemy import exc as sa_exc
from sqlalchemy import insert
from sqlalchemy.engine import Connection, Dialect

from .models import segments

BulkMethod = Literal["copy", "executemany"]

COPY_SEGMENTS_SQL = "COPY segments (id, video_id, ordinal, start_s, end_s) FROM STDIN WITH (FORMAT csv)"


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
    # The same DBAPI connection SQLAlchemy began its transaction on, so the COPY commits
    # or rolls back with everything else in the block.
    dbapi_conn = conn.connection.dbapi_connection
    assert dbapi_conn is not None
    try:
        with dbapi_conn.cursor() as cursor:
            cursor.copy_expert(COPY_SEGMENTS_SQL, io.StringIO(payload))
    except conn.dialect.loaded_dbapi.Error as exc:
        # Raw driver errors escape SQLAlchemy's wrapping; wrap them the same way so callers
        # catch one exception type whatever the backend.
        raise sa_exc.DBAPIError.instance(
            COPY_SEGMENTS_SQL, None, exc, conn.dialect.loaded_dbapi.Error, dialect=conn.dialect
        ) from exc


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
