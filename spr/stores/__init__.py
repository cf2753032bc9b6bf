"""Vector stores: one interface (:class:`VectorStore`), a Faiss and a Milvus backend.

Index specs (:mod:`.index_spec`) are plain data; each backend module translates them into its
own vocabulary (``index_param`` / ``search_param``). Stores are opened by name through
:mod:`.registry`. Importing this package imports neither Faiss nor pymilvus.
"""

from __future__ import annotations

from .base import CollectionExists, CollectionInfo, CollectionNotFound, SearchResult, VectorStore, l2_normalize
from .index_spec import (
    Flat,
    Hnsw,
    IndexKind,
    IndexSpec,
    IvfFlat,
    IvfPq,
    Metric,
    SearchParams,
    effective_search,
    index_spec_from_config,
    index_spec_from_dict,
    index_spec_to_dict,
    parse_index_spec,
)
from .registry import backend_names, open_vector_store, register_backend

__all__ = [
    "CollectionExists",
    "CollectionInfo",
    "CollectionNotFound",
    "Flat",
    "Hnsw",
    "IndexKind",
    "IndexSpec",
    "IvfFlat",
    "IvfPq",
    "Metric",
    "SearchParams",
    "SearchResult",
    "VectorStore",
    "backend_names",
    "effective_search",
    "index_spec_from_config",
    "index_spec_from_dict",
    "index_spec_to_dict",
    "l2_normalize",
    "open_vector_store",
    "parse_index_spec",
    "register_backend",
]
