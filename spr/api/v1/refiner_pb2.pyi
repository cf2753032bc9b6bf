from spr.api.v1 import moments_pb2 as _moments_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RefineProposal(_message.Message):
    __slots__ = ("video_id", "video_key", "start_s", "end_s", "coarse_rank", "video_duration_s", "uri", "coarse_start_s", "coarse_end_s")
    VIDEO_ID_FIELD_NUMBER: _ClassVar[int]
    VIDEO_KEY_FIELD_NUMBER: _ClassVar[int]
    START_S_FIELD_NUMBER: _ClassVar[int]
    END_S_FIELD_NUMBER: _ClassVar[int]
    COARSE_RANK_FIELD_NUMBER: _ClassVar[int]
    VIDEO_DURATION_S_FIELD_NUMBER: _ClassVar[int]
    URI_FIELD_NUMBER: _ClassVar[int]
    COARSE_START_S_FIELD_NUMBER: _ClassVar[int]
    COARSE_END_S_FIELD_NUMBER: _ClassVar[int]
    video_id: int
    video_key: str
    start_s: float
    end_s: float
    coarse_rank: int
    video_duration_s: float
    uri: str
    coarse_start_s: float
    coarse_end_s: float
    def __init__(self, video_id: _Optional[int] = ..., video_key: _Optional[str] = ..., start_s: _Optional[float] = ..., end_s: _Optional[float] = ..., coarse_rank: _Optional[int] = ..., video_duration_s: _Optional[float] = ..., uri: _Optional[str] = ..., coarse_start_s: _Optional[float] = ..., coarse_end_s: _Optional[float] = ...) -> None: ...

class RefineRequest(_message.Message):
    __slots__ = ("query", "proposals", "query_projected", "top_k")
    QUERY_FIELD_NUMBER: _ClassVar[int]
    PROPOSALS_FIELD_NUMBER: _ClassVar[int]
    QUERY_PROJECTED_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    query: _moments_pb2.Embedding
    proposals: _containers.RepeatedCompositeFieldContainer[RefineProposal]
    query_projected: bool
    top_k: int
    def __init__(self, query: _Optional[_Union[_moments_pb2.Embedding, _Mapping]] = ..., proposals: _Optional[_Iterable[_Union[RefineProposal, _Mapping]]] = ..., query_projected: _Optional[bool] = ..., top_k: _Optional[int] = ...) -> None: ...

class RefineResponse(_message.Message):
    __slots__ = ("moments", "random_weights", "model", "batch_proposals", "batch_queries", "timings_ms", "dropped")
    class TimingsMsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    MOMENTS_FIELD_NUMBER: _ClassVar[int]
    RANDOM_WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BATCH_PROPOSALS_FIELD_NUMBER: _ClassVar[int]
    BATCH_QUERIES_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_MS_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    moments: _containers.RepeatedCompositeFieldContainer[_moments_pb2.Moment]
    random_weights: bool
    model: str
    batch_proposals: int
    batch_queries: int
    timings_ms: _containers.ScalarMap[str, float]
    dropped: int
    def __init__(self, moments: _Optional[_Iterable[_Union[_moments_pb2.Moment, _Mapping]]] = ..., random_weights: _Optional[bool] = ..., model: _Optional[str] = ..., batch_proposals: _Optional[int] = ..., batch_queries: _Optional[int] = ..., timings_ms: _Optional[_Mapping[str, float]] = ..., dropped: _Optional[int] = ...) -> None: ...
