"""Initial catalog schema: videos, segments, collections, ingest_runs.

Revision ID: 0001
Revises:
Create Date: 2026-05-01

Written out in full rather than importing :mod:`spr.catalog.models`, so that later model
changes cannot alter what this revision creates.
"""

from __future__ import annotations

from typing import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INT64 = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
JSON_DOC = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
NOW = sa.text("CURRENT_TIMESTAMP")


def upgrade() -> None:
    op.create_table(
        "videos",
        sa.Column("id", INT64, primary_key=True, autoincrement=True),
        sa.Column("key", sa.String(512), nullable=False),
        sa.Column("uri", sa.Text(), nullable=False),
        sa.Column("duration_s", sa.Float(), nullable=False),
        sa.Column("fps", sa.Float(), nullable=True),
        sa.Column("content_hash", sa.String(128), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("metadata", JSON_DOC, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_videos"),
        sa.UniqueConstraint("key", name="uq_videos_key"),
        sa.CheckConstraint("status IN ('pending', 'ready', 'failed', 'deleted')", name="ck_videos_status"),
    )
    op.create_index("ix_videos_content_hash", "videos", ["content_hash"])
    op.create_index("ix_videos_status", "videos", ["status"])

    op.create_table(
        "segments",
        sa.Column("id", INT64, primary_key=True, autoincrement=False),
        sa.Column("video_id", INT64, nullable=False),
        sa.Column("ordinal", sa.Integer(), nullable=False),
        sa.Column("start_s", sa.Float(), nullable=False),
        sa.Column("end_s", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_segments"),
        sa.ForeignKeyConstraint(
            ["video_id"], ["videos.id"], name="fk_segments_video_id_videos", ondelete="CASCADE"
        ),
        sa.UniqueConstraint("video_id", "ordinal", name="uq_segments_video_id_ordinal"),
    )

    op.create_table(
        "collections",
        sa.Column("id", INT64, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("backend", sa.String(32), nullable=False),
        sa.Column("dim", sa.Integer(), nullable=False),
        sa.Column("metric", sa.String(16), nullable=False),
        sa.Column("index_spec", JSON_DOC, nullable=False),
        sa.Column("feature_model", sa.String(512), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_collections"),
        sa.UniqueConstraint("name", name="uq_collections_name"),
    )

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
        sa.PrimaryKeyConstraint("id", name="pk_ingest_runs"),
        sa.CheckConstraint("status IN ('running', 'finished', 'failed')", name="ck_ingest_runs_status"),
    )


def downgrade() -> None:
    op.drop_table("ingest_runs")
    op.drop_table("collections")
    op.drop_table("segments")
    op.drop_index("ix_videos_status", table_name="videos")
    op.drop_index("ix_videos_content_hash", table_name="videos")
    op.drop_table("videos")
