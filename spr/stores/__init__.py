"""Vector stores: one interface (:class:`VectorStore`), a Faiss and a Milvus backend."""

from __future__ import annotations

from ..config import Config
from .base import CollectionExists, CollectionInfo, CollectionNotFound, SearchResult, VectorStore, l2_normalize
from .index_spec import (
    Flat,
    Hnsw,
    IndexSpec,
    IvfFlat,
    IvfPq,
    SearchParams,
    index_spec_from_config,
    index_spec_from_dict,
    index_spec_to_dict,
)

__all__ = [
    "CollectionExists",
    "CollectionInfo",
    "CollectionNotFound",
    "Flat",
    "Hnsw",
    "IndexSpec",
    "IvfFlat",
    "IvfPq",
    "SearchParams",
    "SearchResult",
    "VectorStore",
    "index_spec_from_config",
    "index_spec_from_dict",
    "index_spec_to_dict",
    "l2_normalize",
    "open_vector_store",
]


def open_vector_store(config: Config) -> VectorStore:
    """The store named by ``config.vectors.backend`` ("faiss" or "milvus")."""
    backend = config.vectors.backend.lower()
    if backend == "faiss":
        from .faiss_store import FaissStore

        return FaissStore(
            config.faiss_path,
            threads=config.faiss.threads,
            use_gpu=config.faiss.use_gpu,
            train_points_per_list=config.faiss.train_points_per_list,
        )
    if backend == "milvus":
        from .milvus_store import MilvusStore

        m = config.milvus
        return MilvusStore(m.uri, token=m.token, db_name=m.db_name, consistency_level=m.consistency_level, timeout_s=m.timeout_s)
    raise ValueError(f"unknown vector backend {config.vectors.backend!r}; set vectors.backend to 'faiss' or 'milvus'")
