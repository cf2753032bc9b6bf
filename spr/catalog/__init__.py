"""The segment catalog: the relational source of truth for videos, segments, vector
collections and ingest runs (PostgreSQL in a cluster, SQLite embedded).

Open it with ``SegmentCatalog.open(config.catalog_url,
insert_batch_rows=config.catalog.insert_batch_rows)``; the schema is migrated on open.
"""

from .bulk import bulk_insert_method
from .engine import masked_url
from .errors import CatalogError, CatalogUnavailable, RunNotFound, VideoNotFound
from .migrate import current_revision, head_revision
from .models import RunStatus, VideoStatus
from .records import CollectionRecord, IngestRunRecord, SegmentLocation, VideoRecord
from .segment_catalog import SegmentCatalog

__all__ = [
    "CatalogError",
    "CatalogUnavailable",
    "CollectionRecord",
    "IngestRunRecord",
    "RunNotFound",
    "RunStatus",
    "SegmentCatalog",
    "SegmentLocation",
    "VideoNotFound",
    "VideoRecord",
    "VideoStatus",
    "bulk_insert_method",
    "current_revision",
    "head_revision",
    "masked_url",
]
