"""The Milvus vector store, through pymilvus ``MilvusClient``, against a real Milvus server.

Each collection has three fields: ``id`` (INT64 primary key, the segment id), ``video_key``
(VARCHAR, for deleting or filtering by video) and ``vector`` (FLOAT_VECTOR). The index spec
is kept as JSON in the collection description, so a reopened store knows its defaults.

Milvus builds indexes per sealed segment, in the background: right after a flush, small
or growing segments are searched exactly. :meth:`MilvusStore.wait_until_indexed` waits
for the index to cover everything, which benchmarks and parity tests need.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Sequence

import numpy as np
from pymilvus import DataType, MilvusClient, MilvusException

from ..limits import MAX_VIDEO_KEY_LENGTH

from .base import (
    CollectionExists,
    CollectionInfo,
    CollectionNotFound,
    IndexState,
    SearchResult,
    BackendTagged,
    check_collection_name,
    check_queries,
    check_vectors,
)
from .index_spec import (
    Hnsw,
    IndexSpec,
    IvfFlat,
    IvfPq,
    SearchParams,
    check_dimension,
    check_metric,
    effective_search,
    index_spec_from_dict,
    index_spec_to_dict,
)

log = logging.getLogger(__name__)

__all__ = ["MilvusStore", "index_param", "search_param"]


# -- the Milvus vocabulary of an index spec -----------------------------------------------


def index_param(spec: IndexSpec) -> dict[str, Any]:
    """The vector field's ``index_type`` and build ``params`` for ``spec``."""
    if isinstance(spec, IvfFlat):
        return {"index_type": "IVF_FLAT", "params": {"nlist": spec.nlist}}
    if isinstance(spec, IvfPq):
        return {"index_type": "IVF_PQ", "params": {"nlist": spec.nlist, "m": spec.m, "nbits": spec.nbits}}
    if isinstance(spec, Hnsw):
        return {"index_type": "HNSW", "params": {"M": spec.M, "efConstruction": spec.ef_construction}}
    return {"index_type": "FLAT", "params": {}}


def search_param(spec: IndexSpec, override: SearchParams | None = None) -> dict[str, int]:
    """The ``params`` of a Milvus search of ``spec``'s index (see :func:`effective_search`):
    ``{"nprobe": n}`` for IVF, ``{"ef": e}`` for HNSW, ``{}`` for FLAT."""
    knobs = effective_search(spec, override)
    return {k: v for k, v in (("nprobe", knobs.nprobe), ("ef", knobs.ef)) if v is not None}


MAX_VIDEO_KEY = MAX_VIDEO_KEY_LENGTH  # spr.limits: UTF-8 bytes here
# Rows per insert request: keeps each gRPC message well under Milvus's 64 MB limit at 768-d.
_WRITE_BATCH = 5_000
_DELETE_BATCH = 1_000


class MilvusStore:
    """Vector store on a Milvus server (standalone or cluster)."""

    backend = "milvus"

    def holds(self, record: BackendTagged) -> bool:
        return record.backend == self.backend

    def __init__(
        self,
        uri: str,
        token: str = "",
        db_name: str = "",
        consistency_level: str = "Bounded",
        timeout_s: float = 30.0,
    ):
        self.uri = uri
        self.consistency_level = consistency_level
        self.timeout_s = timeout_s
        try:
            self._client = MilvusClient(uri=uri, token=token, db_name=db_name, timeout=timeout_s)
        except MilvusException as exc:
            raise ConnectionError(
                f"cannot reach Milvus at {uri}: {exc.message}. Start one with `spr milvus start` "
                "or set SPR_MILVUS__URI to a running server"
            ) from exc
        self._info: dict[str, CollectionInfo] = {}

    # -- collections -------------------------------------------------------------------

    def create_collection(self, name: str, dim: int, index: IndexSpec, metric: str = "IP") -> CollectionInfo:
        check_collection_name(name)
        metric = check_metric(metric)
        check_dimension(index, dim)
        if self.has_collection(name):
            existing = self.describe(name)
            if (existing.dim, existing.metric, existing.index) != (dim, metric, index):
                raise CollectionExists(
                    f"collection {name!r} exists with dim={existing.dim}, metric={existing.metric}, "
                    f"index={index_spec_to_dict(existing.index)}; drop it or choose another name"
                )
            return existing
        schema = MilvusClient.create_schema(
            auto_id=False,
            enable_dynamic_field=False,
            description=json.dumps({"spr_index": index_spec_to_dict(index), "metric": metric}),
        )
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("video_key", DataType.VARCHAR, max_length=MAX_VIDEO_KEY)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
        params = self._client.prepare_index_params()
        milvus_index = index_param(index)
        params.add_index(
            field_name="vector", index_type=milvus_index["index_type"], metric_type=metric, params=milvus_index["params"]
        )
        params.add_index(field_name="video_key", index_type="Trie")
        self._client.create_collection(
            name, schema=schema, index_params=params, consistency_level=self.consistency_level
        )
        self._client.load_collection(name)
        info = CollectionInfo(name, dim, metric, index, 0)
        self._info[name] = info
        return info

    def has_collection(self, name: str) -> bool:
        return bool(self._client.has_collection(name))

    def list_collections(self) -> list[str]:
        return sorted(self._client.list_collections())

    def describe(self, name: str) -> CollectionInfo:
        info = self._shape(name)
        return CollectionInfo(info.name, info.dim, info.metric, info.index, self.count(name))

    def count(self, name: str) -> int:
        self._shape(name)
        rows = self._client.query(name, filter="", output_fields=["count(*)"], consistency_level="Strong")
        return int(rows[0]["count(*)"])

    def drop_collection(self, name: str) -> None:
        self._info.pop(name, None)
        if self.has_collection(name):
            self._client.drop_collection(name)

    # -- writes ------------------------------------------------------------------------

    def upsert(self, name: str, ids: np.ndarray, vectors: np.ndarray, video_keys: Sequence[str]) -> int:
        info = self._shape(name)
        ids, vectors = check_vectors(ids, vectors, video_keys, info.dim)
        too_long = [k for k in video_keys if len(k.encode()) > MAX_VIDEO_KEY]
        if too_long:
            raise ValueError(f"video key longer than {MAX_VIDEO_KEY} bytes: {too_long[0][:80]!r}...")
        for lo in range(0, len(ids), _WRITE_BATCH):
            hi = lo + _WRITE_BATCH
            rows = [
                {"id": i, "video_key": k, "vector": v}
                for i, k, v in zip(ids[lo:hi].tolist(), video_keys[lo:hi], vectors[lo:hi])
            ]
            self._client.upsert(name, rows)
        return len(ids)

    def delete_videos(self, name: str, video_keys: Sequence[str]) -> None:
        self._shape(name)
        keys = list(dict.fromkeys(video_keys))
        for lo in range(0, len(keys), _DELETE_BATCH):
            self._client.delete(name, filter=_key_filter(keys[lo : lo + _DELETE_BATCH]))

    def delete_ids(self, name: str, ids: np.ndarray) -> None:
        self._shape(name)
        ids = np.asarray(ids, dtype=np.int64).tolist()
        for lo in range(0, len(ids), _DELETE_BATCH):
            self._client.delete(name, ids=ids[lo : lo + _DELETE_BATCH])

    def flush(self, name: str) -> None:
        self._shape(name)
        self._client.flush(name)

    def build_index(self, name: str) -> None:
        """Seal what is written (a flush): the server indexes sealed segments in the background."""
        self.flush(name)

    def wait_until_indexed(self, name: str, timeout_s: float = 300.0) -> None:
        """Flush, wait until the vector index covers every row, then reload the collection so
        that searches use it. For bulk loads (benchmarks, re-indexing) before serving: the
        collection is unloaded for the few seconds of the reload.

        The reload is what makes this deterministic: once an index is built, a loaded
        collection keeps answering from its interim (brute-force or temporary IVF) copy of
        the data until the query node swaps the index in, at some later point (seen on Milvus
        2.3.5: still on the interim copy 10+ s after the build finished)."""
        self.build_index(name)
        deadline = time.monotonic() + timeout_s
        while True:
            desc = self._client.describe_index(name, "vector")
            if desc.get("pending_index_rows", 0) == 0 and desc.get("indexed_rows", 0) >= desc.get("total_rows", 0):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"Milvus index of {name!r} not built after {timeout_s:.0f} s: {desc}")
            time.sleep(0.5)
        self._client.release_collection(name)
        self._client.load_collection(name, timeout=max(1.0, deadline - time.monotonic()))

    def index_state(self, name: str) -> IndexState:
        """Rows the server's vector index covers now (``describe_index``); flushed rows it has
        not indexed yet are searched from an interim copy."""
        self._shape(name)
        desc = self._client.describe_index(name, "vector")
        total = int(desc.get("total_rows", 0))
        indexed = int(desc.get("indexed_rows", 0))
        pending = int(desc.get("pending_index_rows", 0))
        if pending:
            indexed = min(indexed, max(0, total - pending))
        note = f"index building: {indexed} of {total} rows indexed" if indexed < total else ""
        return IndexState(indexed, total, note=note)

    def retrain(self, name: str) -> bool:
        """Milvus trains every sealed segment's index on that segment, so nothing was trained on
        a prefix: seal, wait for the index over every row and reload (:meth:`wait_until_indexed`)."""
        self.wait_until_indexed(name)
        return True

    def refresh(self) -> list[str]:
        """Nothing to do: the server is the one copy every process sees."""
        return []

    def close(self) -> None:
        self._client.close()

    # -- search ------------------------------------------------------------------------

    def search(
        self,
        name: str,
        queries: np.ndarray,
        k: int,
        params: SearchParams | None = None,
        video_keys: Sequence[str] | None = None,
    ) -> SearchResult:
        info = self._shape(name)
        queries = check_queries(queries, info.dim, k)
        ids = np.full((len(queries), k), -1, np.int64)
        scores = np.full((len(queries), k), -np.inf, np.float32)
        if video_keys is not None and len(video_keys) == 0:
            return SearchResult(ids, scores)
        hits = self._client.search(
            name,
            data=queries.tolist(),
            limit=k,
            anns_field="vector",
            filter=_key_filter(list(video_keys)) if video_keys is not None else "",
            search_params={"metric_type": info.metric, "params": search_param(info.index, params)},
            output_fields=[],
            consistency_level=self.consistency_level,
            round_decimal=-1,  # full precision: the server's default rounds distances
        )
        sign = -1.0 if info.metric == "L2" else 1.0
        for q, row in enumerate(hits):
            n = len(row)
            ids[q, :n] = [h["id"] for h in row]
            scores[q, :n] = [sign * h["distance"] for h in row]
        return SearchResult(ids, scores)

    # -- internals ---------------------------------------------------------------------

    def _shape(self, name: str) -> CollectionInfo:
        """Dim, metric and index of ``name`` (cached; count not included)."""
        info = self._info.get(name)
        if info is not None:
            return info
        if not self.has_collection(name):
            raise CollectionNotFound(f"collection {name!r} does not exist on the Milvus server at {self.uri}")
        desc = self._client.describe_collection(name)
        dim = next(int(f["params"]["dim"]) for f in desc["fields"] if f["name"] == "vector")
        try:
            meta = json.loads(desc.get("description") or "{}")
            index = index_spec_from_dict(meta["spr_index"])
            metric = meta["metric"]
        except (ValueError, KeyError) as exc:
            raise CollectionNotFound(
                f"collection {name!r} on {self.uri} was not created by SPR (no index spec in its description)"
            ) from exc
        info = self._info[name] = CollectionInfo(name, dim, metric, index, 0)
        return info


def _key_filter(keys: list[str]) -> str:
    # json.dumps gives double-quoted, backslash-escaped literals, which Milvus expressions accept.
    return f"video_key in {json.dumps(keys)}"
