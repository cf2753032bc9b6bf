"""Per-collection video versions, ingest's own fields apart from user metadata, run bookkeeping.

Revision ID: 0003
Revises: 0002
Create Date: 2026-06-01

* ``collection_videos``: which version (content hash, segment count) of each video every
  collection holds, so "already done" is judged per collection and a changed video's vectors
  in other collections can be found and removed. Backfilled with every ready video in every
  collection registered: what the catalog assumed before (a ``ready`` row counted as done
  everywhere), so an upgrade does not make the next run re-ingest everything.
* ``videos.ingest_info``: where ingest read the file and its size and mtime (``path``,
  ``file_size``, ``file_mtime_ns``), which used to overwrite the same keys in the user's
  ``metadata``. Rows ingest wrote (a fingerprint in ``metadata``, or ``path`` equal to the
  row's own file) get those keys moved.
* ``ingest_runs``: ``pid`` and ``host`` of the process that runs it (a later run marks a run
  whose process is gone ``abandoned``, a new status), and ``videos_skipped`` (unchanged videos;
  ``videos_done`` counts published ones only, as the run's summary does).

Written out in full rather than importing :mod:`spr.catalog.models`.
"""

from __future__ import annotations

import json
from typing import Any, Sequence
from urllib.parse import unquote, urlparse

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INT64 = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
JSON_DOC = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
NOW = sa.text("CURRENT_TIMESTAMP")
_INTERNAL = ("path", "file_size", "file_mtime_ns")
_RUN_STATUSES = "status IN ('running', 'finished', 'failed', 'abandoned')"
_OLD_RUN_STATUSES = "status IN ('running', 'finished', 'failed')"
_CHECK_NAME = "ck_ingest_runs_ck_ingest_runs_status"


def upgrade() -> None:
    bind = op.get_bind()
    op.create_table(
        "collection_videos",
        sa.Column("collection_id", INT64, nullable=False, autoincrement=False),
        sa.Column("video_id", INT64, nullable=False, autoincrement=False),
        sa.Column("content_hash", sa.String(128), nullable=True),
        sa.Column("segments", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("collection_id", "video_id", name="pk_collection_videos"),
        sa.ForeignKeyConstraint(
            ["collection_id"], ["collections.id"], name="fk_collection_videos_collection_id_collections",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["video_id"], ["videos.id"], name="fk_collection_videos_video_id_videos", ondelete="CASCADE"
        ),
    )
    # "Which collections hold video X" (invalidating a changed video) starts from the video.
    op.create_index("ix_collection_videos_video_id", "collection_videos", ["video_id"])
    op.execute(
        "INSERT INTO collection_videos (collection_id, video_id, content_hash, segments) "
        "SELECT c.id, v.id, v.content_hash, (SELECT count(*) FROM segments s WHERE s.video_id = v.id) "
        "FROM collections c CROSS JOIN videos v WHERE v.status = 'ready'"
    )

    op.add_column("videos", sa.Column("ingest_info", JSON_DOC, server_default=sa.text("'{}'"), nullable=False))
    _move_internal_metadata(bind)

    op.add_column("ingest_runs", sa.Column("pid", sa.Integer(), nullable=True))
    op.add_column("ingest_runs", sa.Column("host", sa.String(255), nullable=True))
    op.add_column("ingest_runs", sa.Column("videos_skipped", sa.Integer(), server_default=sa.text("0"), nullable=False))
    _replace_run_status_check(bind, _RUN_STATUSES)


def downgrade() -> None:
    op.execute("UPDATE ingest_runs SET status = 'failed' WHERE status = 'abandoned'")
    _replace_run_status_check(op.get_bind(), _OLD_RUN_STATUSES)
    # Plain DROP COLUMN (SQLite >= 3.35), never batch mode on videos (its rebuild would cascade).
    op.drop_column("ingest_runs", "videos_skipped")
    op.drop_column("ingest_runs", "host")
    op.drop_column("ingest_runs", "pid")
    op.drop_column("videos", "ingest_info")
    op.drop_index("ix_collection_videos_video_id", table_name="collection_videos")
    op.drop_table("collection_videos")


def _move_internal_metadata(bind: Any) -> None:
    rows = bind.execute(sa.text("SELECT id, uri, metadata FROM videos")).all()
    updates = []
    for video_id, uri, metadata in rows:
        meta = json.loads(metadata) if isinstance(metadata, str) else dict(metadata or {})
        if not _written_by_ingest(meta, uri):
            continue
        info = {k: meta.pop(k) for k in _INTERNAL if k in meta}
        updates.append({"id": video_id, "metadata": json.dumps(meta), "info": json.dumps(info)})
    if not updates:
        return
    if bind.dialect.name == "postgresql":
        stmt = (
            "UPDATE videos SET metadata = CAST(:metadata AS jsonb), ingest_info = CAST(:info AS jsonb) WHERE id = :id"
        )
    else:
        stmt = "UPDATE videos SET metadata = :metadata, ingest_info = :info WHERE id = :id"
    bind.execute(sa.text(stmt), updates)


def _written_by_ingest(meta: dict[str, Any], uri: str) -> bool:
    """Ingest wrote the fingerprint of every file it published, and ``path`` (the file it read)
    on every row it recorded; a user's own ``path`` in an imported row is left alone."""
    if "file_size" in meta or "file_mtime_ns" in meta:
        return True
    path = meta.get("path")
    if not isinstance(path, str):
        return False
    local = unquote(urlparse(uri).path) if uri.startswith("file://") else uri
    return path == local


def _replace_run_status_check(bind: Any, check: str) -> None:
    if bind.dialect.name == "postgresql":
        # 0001's name went through the naming convention once more ("ck_<table>_" + its name).
        op.execute(f"ALTER TABLE ingest_runs DROP CONSTRAINT IF EXISTS {_CHECK_NAME}")
        op.execute(f"ALTER TABLE ingest_runs ADD CONSTRAINT {_CHECK_NAME} CHECK ({check})")
        return
    # SQLite cannot alter a CHECK: rebuild the table (no foreign key points at ingest_runs).
    op.execute("ALTER TABLE ingest_runs RENAME TO _ingest_runs_old")
    op.create_table(
        "ingest_runs",
        sa.Column("id", INT64, primary_key=True, autoincrement=True),
        sa.Column("started_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("config", JSON_DOC, nullable=False),
        sa.Column("videos_total", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("videos_done", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("videos_failed", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("segments_written", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.Column("host", sa.String(255), nullable=True),
        sa.Column("videos_skipped", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_ingest_runs"),
        sa.CheckConstraint(check, name="ck_ingest_runs_status"),
    )
    columns = (
        "id, started_at, finished_at, status, config, videos_total, videos_done, videos_failed, "
        "segments_written, error, pid, host, videos_skipped"
    )
    op.execute(f"INSERT INTO ingest_runs ({columns}) SELECT {columns} FROM _ingest_runs_old")
    op.execute("DROP TABLE _ingest_runs_old")
