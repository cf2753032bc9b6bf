from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Moment(_message.Message):
    __slots__ = ("video_key", "uri", "start_s", "end_s", "score", "coarse_rank", "coarse_start_s", "coarse_end_s", "video_duration_s", "modalities", "snippet", "snippet_track", "video_id", "segment_id")
    VIDEO_KEY_FIELD_NUMBER: _ClassVar[int]
    URI_FIELD_NUMBER: _ClassVar[int]
    START_S_FIELD_NUMBER: _ClassVar[int]
    END_S_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    COARSE_RANK_FIELD_NUMBER: _ClassVar[int]
    COARSE_START_S_FIELD_NUMBER: _ClassVar[int]
    COARSE_END_S_FIELD_NUMBER: _ClassVar[int]
    VIDEO_DURATION_S_FIELD_NUMBER: _ClassVar[int]
    MODALITIES_FIELD_NUMBER: _ClassVar[int]
    SNIPPET_FIELD_NUMBER: _ClassVar[int]
    SNIPPET_TRACK_FIELD_NUMBER: _ClassVar[int]
    VIDEO_ID_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_ID_FIELD_NUMBER: _ClassVar[int]
    video_key: str
    uri: str
    start_s: float
    end_s: float
    score: float
    coarse_rank: int
    coarse_start_s: float
    coarse_end_s: float
    video_duration_s: float
    modalities: _containers.RepeatedCompositeFieldContainer[ModalityContribution]
    snippet: str
    snippet_track: str
    video_id: int
    segment_id: int
    def __init__(self, video_key: _Optional[str] = ..., uri: _Optional[str] = ..., start_s: _Optional[float] = ..., end_s: _Optional[float] = ..., score: _Optional[float] = ..., coarse_rank: _Optional[int] = ..., coarse_start_s: _Optional[float] = ..., coarse_end_s: _Optional[float] = ..., video_duration_s: _Optional[float] = ..., modalities: _Optional[_Iterable[_Union[ModalityContribution, _Mapping]]] = ..., snippet: _Optional[str] = ..., snippet_track: _Optional[str] = ..., video_id: _Optional[int] = ..., segment_id: _Optional[int] = ...) -> None: ...

class ModalityContribution(_message.Message):
    __slots__ = ("modality", "rank", "score")
    MODALITY_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    modality: str
    rank: int
    score: float
    def __init__(self, modality: _Optional[str] = ..., rank: _Optional[int] = ..., score: _Optional[float] = ...) -> None: ...

class Embedding(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Optional[_Iterable[float]] = ...) -> None: ...
