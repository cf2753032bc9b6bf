"""The vector-store interface shared by the Faiss and Milvus backends.

A store holds named collections of L2-normalised float32 vectors, each under an int64
segment id (see :mod:`spr.ids`) and tagged with its video key, so that a whole video can
be deleted or a search restricted to some videos.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence, runtime_checkable

import numpy as np

from ..limits import MAX_SEGMENTS_K
from .index_spec import IndexSpec, SearchParams


class BackendTagged(Protocol):
    """Anything that names the backend its vectors live in (a catalog collection record)."""

    backend: str


class CollectionNotFound(LookupError):
    """The named collection does not exist in this store."""


class CollectionExists(ValueError):
    """``create_collection`` was asked for a name that is taken with a different shape."""


@dataclass(frozen=True)
class CollectionInfo:
    name: str
    dim: int
    metric: str
    index: IndexSpec
    count: int


@dataclass(frozen=True)
class IndexState:
    """How much of a collection its vector index covers: ``indexed`` of ``total`` rows (the
    rest is searched exactly, or by Milvus from an interim copy, until the index covers it);
    ``trained_on``: rows an IVF index was trained on (0: not known or nothing to train);
    ``note``: why it is not built, for ``spr status``."""

    indexed: int
    total: int
    trained_on: int = 0
    note: str = ""

    @property
    def building(self) -> bool:
        return self.indexed < self.total


@dataclass(frozen=True)
class SearchResult:
    """Top-k per query, best first. ``ids`` is ``(nq, k)`` int64 padded with -1, ``scores``
    is ``(nq, k)`` float32 (inner product, larger is better) padded with ``-inf``."""

    ids: np.ndarray
    scores: np.ndarray

    def hits(self, query: int) -> list[tuple[int, float]]:
        """``[(segment_id, score), ...]`` of one query, padding dropped."""
        keep = self.ids[query] >= 0
        return list(zip(self.ids[query][keep].tolist(), self.scores[query][keep].tolist()))


@runtime_checkable
class VectorStore(Protocol):
    """What every backend provides. Vectors are ``(n, dim)`` float32; ids ``(n,)`` int64."""

    backend: str  # the registry name of the backend ("faiss", "milvus")

    def holds(self, record: BackendTagged) -> bool:
        """Whether ``record`` (a catalog collection) lives in this kind of store; a record of
        another backend is a configuration mismatch, not a missing collection."""

    def create_collection(self, name: str, dim: int, index: IndexSpec, metric: str = "IP") -> CollectionInfo:
        """Create ``name``; an existing collection of the same dim/metric/index is returned as is."""

    def has_collection(self, name: str) -> bool: ...

    def describe(self, name: str) -> CollectionInfo: ...

    def list_collections(self) -> list[str]: ...

    def upsert(self, name: str, ids: np.ndarray, vectors: np.ndarray, video_keys: Sequence[str]) -> int:
        """Insert or replace vectors by id; returns the number written."""

    def delete_videos(self, name: str, video_keys: Sequence[str]) -> None:
        """Remove every vector tagged with one of ``video_keys``."""

    def delete_ids(self, name: str, ids: np.ndarray) -> None: ...

    def search(
        self,
        name: str,
        queries: np.ndarray,
        k: int,
        params: SearchParams | None = None,
        video_keys: Sequence[str] | None = None,
    ) -> SearchResult:
        """Batch top-``k`` search of ``(nq, dim)`` queries, optionally within some videos."""

    def count(self, name: str) -> int: ...

    def flush(self, name: str) -> None:
        """Make everything written so far durable (ingest calls this before marking videos ready)."""

    def build_index(self, name: str) -> None:
        """Start indexing what ``name`` holds now, instead of when the backend would on its own
        (Faiss: train an IVF index that is still searched exactly; Milvus: seal the growing
        segments so that the server indexes them). May return before searches use the index."""

    def wait_until_indexed(self, name: str, timeout_s: float = 300.0) -> None:
        """Build the index over everything written, make it durable, and return once searches
        use it (bulk loads, benchmarks, parity tests). ``TimeoutError`` after ``timeout_s``."""

    def index_state(self, name: str) -> IndexState:
        """How much of ``name`` the index covers now (``spr status``); cheap, never waits."""

    def retrain(self, name: str) -> bool:
        """Rebuild the index over everything ``name`` holds (``spr reindex``): Faiss retrains
        IVF on a uniform sample of the whole collection; Milvus, which trains per sealed
        segment, seals and waits. False when there is nothing to rebuild."""

    def drop_collection(self, name: str) -> None: ...

    def refresh(self) -> list[str]:
        """Pick up what other processes flushed (a local store's readers); the names reloaded."""

    def close(self) -> None: ...


_NAME_OK = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


def check_collection_name(name: str) -> str:
    """Collection names are used as directory and Milvus names: letters, digits, ``_``, ``-``."""
    if not name or len(name) > 200 or not set(name) <= _NAME_OK or name[0].isdigit():
        raise ValueError(
            f"invalid collection name {name!r}: use 1-200 letters, digits, '_' or '-', not starting with a digit"
        )
    return name


def check_vectors(ids: np.ndarray, vectors: np.ndarray, video_keys: Sequence[str], dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert an upsert batch to contiguous int64 ids and float32 vectors."""
    ids = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[1] != dim:
        raise ValueError(f"vectors must have shape (n, {dim}), got {vectors.shape}")
    if len(ids) != len(vectors) or len(video_keys) != len(ids):
        raise ValueError(f"ids ({len(ids)}), vectors ({len(vectors)}) and video keys ({len(video_keys)}) differ in length")
    if len(np.unique(ids)) != len(ids):
        raise ValueError("duplicate ids in one upsert batch")
    if (ids < 0).any():
        raise ValueError("ids must be non-negative")
    if not np.isfinite(vectors).all():
        raise ValueError("vectors contain NaN or infinity")
    return ids, vectors


def check_queries(queries: np.ndarray, dim: int, k: int) -> np.ndarray:
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if queries.ndim == 1:
        queries = queries[None, :]
    if queries.ndim != 2 or queries.shape[1] != dim:
        raise ValueError(f"queries must have shape (nq, {dim}), got {queries.shape}")
    if not 1 <= k <= MAX_SEGMENTS_K:
        raise ValueError(f"k={k} out of range [1, {MAX_SEGMENTS_K}]")
    if not np.isfinite(queries).all():
        raise ValueError("queries contain NaN or infinity")
    return queries


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero); float32."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, np.float32(1e-12))
