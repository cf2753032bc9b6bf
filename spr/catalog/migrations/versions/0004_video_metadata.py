"""Metadata filters as one indexed query: the ``video_metadata`` table.

Revision ID: 0004
Revises: 0003
Create Date: 2026-06-02

A search's metadata filter used to be one JSON comparison per pair, ANDed: SQLite refused 999
pairs ("Expression tree is too large"), PostgreSQL took 7 s for 5,000, and either scanned every
video. ``video_metadata`` holds each video's user metadata pairs as text (the spelling PostgreSQL's
``->>`` gives: a string itself, a number or boolean its JSON text), indexed on (key, value), and a
filter of any size is one join against it (:meth:`spr.catalog.SegmentCatalog.video_keys_matching`).
Backfilled from every row's ``metadata`` (after 0003 moved ingest's own fields out of it). Pairs no
filter could name are left out: null values, keys over 128 and values over 256 characters
(``spr.limits.MAX_METADATA_KEY_CHARS`` / ``MAX_METADATA_VALUE_CHARS`` when this was written; the
limits keep the index entries within PostgreSQL's B-tree size).

Written out in full rather than importing :mod:`spr.catalog.models`.
"""

from __future__ import annotations

from typing import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INT64 = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_KEY_CHARS = 128
_VALUE_CHARS = 256


def upgrade() -> None:
    op.create_table(
        "video_metadata",
        sa.Column("video_id", INT64, nullable=False, autoincrement=False),
        sa.Column("key", sa.String(_KEY_CHARS), nullable=False),
        sa.Column("value", sa.String(_VALUE_CHARS), nullable=False),
        sa.PrimaryKeyConstraint("video_id", "key", name="pk_video_metadata"),
        sa.ForeignKeyConstraint(["video_id"], ["videos.id"], name="fk_video_metadata_video_id_videos", ondelete="CASCADE"),
    )
    op.create_index("ix_video_metadata_key_value_video_id", "video_metadata", ["key", "value", "video_id"])
    op.execute(backfill_sql(op.get_bind().dialect.name))


def downgrade() -> None:
    op.drop_index("ix_video_metadata_key_value_video_id", table_name="video_metadata")
    op.drop_table("video_metadata")


def backfill_sql(dialect: str) -> str:
    """Every video's filterable pairs (the same rows the catalog writes per video)."""
    if dialect == "postgresql":
        return (
            "INSERT INTO video_metadata (video_id, key, value) "
            "SELECT v.id, e.key, e.value FROM videos v CROSS JOIN LATERAL jsonb_each_text("
            "CASE WHEN jsonb_typeof(v.metadata) = 'object' THEN v.metadata ELSE '{}'::jsonb END) e "
            f"WHERE e.value IS NOT NULL AND length(e.key) BETWEEN 1 AND {_KEY_CHARS} "
            f"AND length(e.value) <= {_VALUE_CHARS}"
        )
    text = "CASE j.type WHEN 'true' THEN 'true' WHEN 'false' THEN 'false' ELSE CAST(j.value AS TEXT) END"
    return (
        "INSERT INTO video_metadata (video_id, key, value) "
        f"SELECT v.id, j.key, {text} FROM videos v, json_each(v.metadata) j "
        f"WHERE json_type(v.metadata) = 'object' AND j.type != 'null' "
        f"AND length(j.key) BETWEEN 1 AND {_KEY_CHARS} AND length({text}) <= {_VALUE_CHARS}"
    )
