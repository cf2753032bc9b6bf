from spr.api.v1 import moments_pb2 as _moments_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SearchParams(_message.Message):
    __slots__ = ("nprobe", "ef")
    NPROBE_FIELD_NUMBER: _ClassVar[int]
    EF_FIELD_NUMBER: _ClassVar[int]
    nprobe: int
    ef: int
    def __init__(self, nprobe: _Optional[int] = ..., ef: _Optional[int] = ...) -> None: ...

class SearchRequest(_message.Message):
    __slots__ = ("text", "embedding", "top_k", "segments_k", "collection", "params", "video_keys", "metadata", "refine", "modality_weights", "fusion")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class ModalityWeightsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    TEXT_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_K_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    VIDEO_KEYS_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    REFINE_FIELD_NUMBER: _ClassVar[int]
    MODALITY_WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    FUSION_FIELD_NUMBER: _ClassVar[int]
    text: str
    embedding: _moments_pb2.Embedding
    top_k: int
    segments_k: int
    collection: str
    params: SearchParams
    video_keys: _containers.RepeatedScalarFieldContainer[str]
    metadata: _containers.ScalarMap[str, str]
    refine: bool
    modality_weights: _containers.ScalarMap[str, float]
    fusion: str
    def __init__(self, text: _Optional[str] = ..., embedding: _Optional[_Union[_moments_pb2.Embedding, _Mapping]] = ..., top_k: _Optional[int] = ..., segments_k: _Optional[int] = ..., collection: _Optional[str] = ..., params: _Optional[_Union[SearchParams, _Mapping]] = ..., video_keys: _Optional[_Iterable[str]] = ..., metadata: _Optional[_Mapping[str, str]] = ..., refine: _Optional[bool] = ..., modality_weights: _Optional[_Mapping[str, float]] = ..., fusion: _Optional[str] = ...) -> None: ...

class ModalitySearch(_message.Message):
    __slots__ = ("modality", "collection", "weight", "searched", "hits", "note", "random_weights")
    MODALITY_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    SEARCHED_FIELD_NUMBER: _ClassVar[int]
    HITS_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    RANDOM_WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    modality: str
    collection: str
    weight: float
    searched: bool
    hits: int
    note: str
    random_weights: bool
    def __init__(self, modality: _Optional[str] = ..., collection: _Optional[str] = ..., weight: _Optional[float] = ..., searched: _Optional[bool] = ..., hits: _Optional[int] = ..., note: _Optional[str] = ..., random_weights: _Optional[bool] = ...) -> None: ...

class SearchResponse(_message.Message):
    __slots__ = ("moments", "refined", "degraded", "degraded_reason", "timings_ms", "random_weights", "collection", "segments_retrieved", "proposals", "modalities", "fusion", "refine_note")
    class TimingsMsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    MOMENTS_FIELD_NUMBER: _ClassVar[int]
    REFINED_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_REASON_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_MS_FIELD_NUMBER: _ClassVar[int]
    RANDOM_WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_RETRIEVED_FIELD_NUMBER: _ClassVar[int]
    PROPOSALS_FIELD_NUMBER: _ClassVar[int]
    MODALITIES_FIELD_NUMBER: _ClassVar[int]
    FUSION_FIELD_NUMBER: _ClassVar[int]
    REFINE_NOTE_FIELD_NUMBER: _ClassVar[int]
    moments: _containers.RepeatedCompositeFieldContainer[_moments_pb2.Moment]
    refined: bool
    degraded: bool
    degraded_reason: str
    timings_ms: _containers.ScalarMap[str, float]
    random_weights: bool
    collection: str
    segments_retrieved: int
    proposals: int
    modalities: _containers.RepeatedCompositeFieldContainer[ModalitySearch]
    fusion: str
    refine_note: str
    def __init__(self, moments: _Optional[_Iterable[_Union[_moments_pb2.Moment, _Mapping]]] = ..., refined: _Optional[bool] = ..., degraded: _Optional[bool] = ..., degraded_reason: _Optional[str] = ..., timings_ms: _Optional[_Mapping[str, float]] = ..., random_weights: _Optional[bool] = ..., collection: _Optional[str] = ..., segments_retrieved: _Optional[int] = ..., proposals: _Optional[int] = ..., modalities: _Optional[_Iterable[_Union[ModalitySearch, _Mapping]]] = ..., fusion: _Optional[str] = ..., refine_note: _Optional[str] = ...) -> None: ...

class CollectionStatsRequest(_message.Message):
    __slots__ = ("collection",)
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    collection: str
    def __init__(self, collection: _Optional[str] = ...) -> None: ...

class CollectionStats(_message.Message):
    __slots__ = ("name", "backend", "dim", "metric", "index_kind", "index_params", "vectors", "feature_model")
    class IndexParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    INDEX_KIND_FIELD_NUMBER: _ClassVar[int]
    INDEX_PARAMS_FIELD_NUMBER: _ClassVar[int]
    VECTORS_FIELD_NUMBER: _ClassVar[int]
    FEATURE_MODEL_FIELD_NUMBER: _ClassVar[int]
    name: str
    backend: str
    dim: int
    metric: str
    index_kind: str
    index_params: _containers.ScalarMap[str, str]
    vectors: int
    feature_model: str
    def __init__(self, name: _Optional[str] = ..., backend: _Optional[str] = ..., dim: _Optional[int] = ..., metric: _Optional[str] = ..., index_kind: _Optional[str] = ..., index_params: _Optional[_Mapping[str, str]] = ..., vectors: _Optional[int] = ..., feature_model: _Optional[str] = ...) -> None: ...

class CollectionStatsResponse(_message.Message):
    __slots__ = ("collections", "videos", "segments", "default_collection", "modalities")
    class VideosEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    COLLECTIONS_FIELD_NUMBER: _ClassVar[int]
    VIDEOS_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_COLLECTION_FIELD_NUMBER: _ClassVar[int]
    MODALITIES_FIELD_NUMBER: _ClassVar[int]
    collections: _containers.RepeatedCompositeFieldContainer[CollectionStats]
    videos: _containers.ScalarMap[str, int]
    segments: int
    default_collection: str
    modalities: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, collections: _Optional[_Iterable[_Union[CollectionStats, _Mapping]]] = ..., videos: _Optional[_Mapping[str, int]] = ..., segments: _Optional[int] = ..., default_collection: _Optional[str] = ..., modalities: _Optional[_Iterable[str]] = ...) -> None: ...

class GetVideoRequest(_message.Message):
    __slots__ = ("key", "presign")
    KEY_FIELD_NUMBER: _ClassVar[int]
    PRESIGN_FIELD_NUMBER: _ClassVar[int]
    key: str
    presign: bool
    def __init__(self, key: _Optional[str] = ..., presign: _Optional[bool] = ...) -> None: ...

class Video(_message.Message):
    __slots__ = ("key", "id", "duration_s", "metadata", "size_bytes", "content_type", "segments", "segment_length_s", "thumbnails", "tracks", "warnings", "media_url", "media_url_expires_s")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    KEY_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    DURATION_S_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_LENGTH_S_FIELD_NUMBER: _ClassVar[int]
    THUMBNAILS_FIELD_NUMBER: _ClassVar[int]
    TRACKS_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    MEDIA_URL_FIELD_NUMBER: _ClassVar[int]
    MEDIA_URL_EXPIRES_S_FIELD_NUMBER: _ClassVar[int]
    key: str
    id: int
    duration_s: float
    metadata: _containers.ScalarMap[str, str]
    size_bytes: int
    content_type: str
    segments: int
    segment_length_s: float
    thumbnails: bool
    tracks: _containers.RepeatedScalarFieldContainer[str]
    warnings: _containers.RepeatedScalarFieldContainer[str]
    media_url: str
    media_url_expires_s: int
    def __init__(self, key: _Optional[str] = ..., id: _Optional[int] = ..., duration_s: _Optional[float] = ..., metadata: _Optional[_Mapping[str, str]] = ..., size_bytes: _Optional[int] = ..., content_type: _Optional[str] = ..., segments: _Optional[int] = ..., segment_length_s: _Optional[float] = ..., thumbnails: _Optional[bool] = ..., tracks: _Optional[_Iterable[str]] = ..., warnings: _Optional[_Iterable[str]] = ..., media_url: _Optional[str] = ..., media_url_expires_s: _Optional[int] = ...) -> None: ...

class ReadMediaRequest(_message.Message):
    __slots__ = ("video_key", "offset", "length")
    VIDEO_KEY_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    video_key: str
    offset: int
    length: int
    def __init__(self, video_key: _Optional[str] = ..., offset: _Optional[int] = ..., length: _Optional[int] = ...) -> None: ...

class MediaChunk(_message.Message):
    __slots__ = ("data", "offset")
    DATA_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    offset: int
    def __init__(self, data: _Optional[bytes] = ..., offset: _Optional[int] = ...) -> None: ...

class GetThumbnailRequest(_message.Message):
    __slots__ = ("segment_id",)
    SEGMENT_ID_FIELD_NUMBER: _ClassVar[int]
    segment_id: int
    def __init__(self, segment_id: _Optional[int] = ...) -> None: ...

class Thumbnail(_message.Message):
    __slots__ = ("jpeg", "placeholder", "video_key")
    JPEG_FIELD_NUMBER: _ClassVar[int]
    PLACEHOLDER_FIELD_NUMBER: _ClassVar[int]
    VIDEO_KEY_FIELD_NUMBER: _ClassVar[int]
    jpeg: bytes
    placeholder: bool
    video_key: str
    def __init__(self, jpeg: _Optional[bytes] = ..., placeholder: _Optional[bool] = ..., video_key: _Optional[str] = ...) -> None: ...
