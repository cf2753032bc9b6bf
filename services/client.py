"""A small Python client for the search service.

::

    with SearchClient("127.0.0.1:50051") as client:
        response = client.search(text="a man opens a door", top_k=5)
        for moment in response.moments:
            print(moment.video_key, moment.start_s, moment.end_s, moment.score)

Errors arrive as :class:`grpc.RpcError` with the service's status code and message
(INVALID_ARGUMENT for a bad request, NOT_FOUND for an unknown collection, UNAVAILABLE when no
service listens at the target).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import grpc
import numpy as np

from spr.api.v1 import moments_pb2, search_pb2, search_pb2_grpc
from spr.config import SecurityConfig
from spr.grpc_security import client_metadata, open_channel

DEFAULT_TIMEOUT_S = 30.0


class SearchClient:
    """A channel to one search service. ``security`` (a :class:`spr.config.SecurityConfig`)
    turns on TLS and the bearer token exactly as the server's configuration does; None is
    plaintext without a token. ``timeout_s`` is the deadline of every call."""

    def __init__(self, target: str, security: SecurityConfig | None = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        security = security or SecurityConfig()
        self.target = target
        self.timeout_s = float(timeout_s)
        self._channel = open_channel(target, security)
        self._stub = search_pb2_grpc.SearchServiceStub(self._channel)
        self._metadata = client_metadata(security)

    @property
    def channel(self) -> grpc.Channel:
        """The underlying channel (for health checks, reflection or other stubs)."""
        return self._channel

    @property
    def metadata(self) -> list[tuple[str, str]]:
        """Call metadata the client sends (the bearer token when configured)."""
        return list(self._metadata)

    def search(
        self,
        text: str | None = None,
        embedding: Sequence[float] | np.ndarray | None = None,
        top_k: int = 0,
        segments_k: int = 0,
        collection: str = "",
        nprobe: int = 0,
        ef: int = 0,
        video_keys: Sequence[str] = (),
        metadata: Mapping[str, str] | None = None,
        refine: bool | None = None,
        weights: Mapping[str, float] | None = None,
        fusion: str = "",
    ) -> search_pb2.SearchResponse:
        """One search by ``text`` or a ready ``embedding`` ``(dim,)`` (exactly one of them).

        ``0``/empty arguments mean the service's defaults (10 moments, 200 segments, the
        configured collection); ``refine=None`` leaves refinement at the service's default (on).
        ``weights`` per modality (``{"speech": 1, "visual": 0}``; 0 = off, unnamed = the
        service's) and ``fusion`` ("rrf" or "sum"; empty = the service's)."""
        return self._stub.Search(
            build_search_request(
                text, embedding, top_k, segments_k, collection, nprobe, ef, video_keys, metadata, refine, weights, fusion
            ),
            timeout=self.timeout_s,
            metadata=self._metadata,
        )

    def collection_stats(self, collection: str = "") -> search_pb2.CollectionStatsResponse:
        """Statistics of one collection, or of all of them when ``collection`` is empty."""
        return self._stub.CollectionStats(
            search_pb2.CollectionStatsRequest(collection=collection), timeout=self.timeout_s, metadata=self._metadata
        )

    def get_video(self, key: str, presign: bool = False) -> search_pb2.Video:
        """One ready catalog video by ``key`` (NOT_FOUND when there is none); ``presign`` asks
        for a presigned media URL where the store offers one."""
        return self._stub.GetVideo(
            search_pb2.GetVideoRequest(key=key, presign=presign), timeout=self.timeout_s, metadata=self._metadata
        )

    def read_media(
        self, key: str, offset: int = 0, length: int = 0, timeout_s: float | None = None
    ) -> Iterator[search_pb2.MediaChunk]:
        """Bytes ``[offset, offset + length)`` of a video's media (``length`` 0: to the end) as a
        stream of chunks; closing the iterator early cancels the call. ``timeout_s`` bounds the
        whole stream (default: the client's deadline)."""
        request = search_pb2.ReadMediaRequest(video_key=key, offset=offset, length=length)
        return self._stub.ReadMedia(request, timeout=timeout_s or self.timeout_s, metadata=self._metadata)

    def get_thumbnail(self, segment_id: int) -> search_pb2.Thumbnail:
        """The JPEG thumbnail of segment ``segment_id`` (``placeholder`` when the video has none)."""
        return self._stub.GetThumbnail(
            search_pb2.GetThumbnailRequest(segment_id=segment_id), timeout=self.timeout_s, metadata=self._metadata
        )

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "SearchClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def build_search_request(
    text: str | None = None,
    embedding: Sequence[float] | np.ndarray | None = None,
    top_k: int = 0,
    segments_k: int = 0,
    collection: str = "",
    nprobe: int = 0,
    ef: int = 0,
    video_keys: Sequence[str] = (),
    metadata: Mapping[str, str] | None = None,
    refine: bool | None = None,
    weights: Mapping[str, float] | None = None,
    fusion: str = "",
) -> search_pb2.SearchRequest:
    """The :class:`SearchRequest` for these arguments (see :meth:`SearchClient.search`)."""
    if (text is None) == (embedding is None):
        raise ValueError("pass exactly one of text and embedding")
    request = search_pb2.SearchRequest(
        top_k=top_k,
        segments_k=segments_k,
        collection=collection,
        video_keys=list(video_keys),
        metadata=dict(metadata or {}),
        modality_weights={k: float(v) for k, v in (weights or {}).items()},
        fusion=fusion,
    )
    if text is not None:
        request.text = text
    else:
        values = np.asarray(embedding, dtype=np.float32).reshape(-1)
        request.embedding.CopyFrom(moments_pb2.Embedding(values=values.tolist()))
    if nprobe or ef:
        request.params.CopyFrom(search_pb2.SearchParams(nprobe=nprobe, ef=ef))
    if refine is not None:
        request.refine = refine
    return request
