"""Text tracks: the segment_texts table, and each video's track outcomes and warnings.

Revision ID: 0002
Revises: 0001
Create Date: 2026-05-20

Written out in full rather than importing :mod:`spr.catalog.models`, so that later model
changes cannot alter what this revision creates. Existing videos get ``tracks = {}`` and
``warnings = []`` (the server defaults), so a 0001 catalog upgrades in place.
"""

from __future__ import annotations

from typing import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INT64 = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
JSON_DOC = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "segment_texts",
        sa.Column("segment_id", INT64, nullable=False, autoincrement=False),
        sa.Column("track", sa.String(32), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("segment_id", "track", name="pk_segment_texts"),
        sa.ForeignKeyConstraint(
            ["segment_id"], ["segments.id"], name="fk_segment_texts_segment_id_segments", ondelete="CASCADE"
        ),
    )
    # SQLite can add a NOT NULL column only with a constant default; both dialects take these.
    op.add_column("videos", sa.Column("tracks", JSON_DOC, server_default=sa.text("'{}'"), nullable=False))
    op.add_column("videos", sa.Column("warnings", JSON_DOC, server_default=sa.text("'[]'"), nullable=False))


def downgrade() -> None:
    # Plain ALTER TABLE ... DROP COLUMN (SQLite >= 3.35), never batch mode: its table rebuild
    # DROPs ``videos``, and with foreign keys on that cascades to every segment.
    op.drop_column("videos", "warnings")
    op.drop_column("videos", "tracks")
    op.drop_table("segment_texts")
