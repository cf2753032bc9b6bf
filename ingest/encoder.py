"""The mapper stage: decoded frames -> per-second CLIP features -> segment embeddings.

:func:`decode_chunks` runs in CPU workers: it samples frames at ``frame_rate`` by
presentation time, fits them to the CLIP input size (shorter side resized, centre crop, as
open_clip's transform) and yields them in fixed-size chunks, so memory stays bounded
whatever the video's length. :class:`VideoEncoder` runs where the model is (one per GPU, or
a CPU actor): it loads CLIP and the projector once and turns a stream of chunks into the
video's frame features ``(T, D)`` and segment embeddings ``(n, dim)``.

The same pass makes the web page's segment thumbnails: each segment's JPEG is the decoded
frame nearest its midpoint (:func:`thumbnail_frames`), taken from the chunks on their way to
CLIP, so a video is decoded once whatever it feeds.
"""

from __future__ import annotations

import io
import logging
import math
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from spr.features import MAX_THUMBNAIL_BYTES, VISUAL, Modality
from spr.segments import segment_bounds, segment_rows

from .decode import DecodeError, VideoProbe, count_expected_frames, probe_video, sample_frames
from .sources import VideoSource, file_digest

log = logging.getLogger(__name__)

# Thumbnails: a result card's picture, not a poster. 192 px and quality 75 make a few KiB each.
THUMBNAIL_MAX_SIDE = 192
THUMBNAIL_QUALITY = 75


@dataclass(frozen=True)
class EncoderSettings:
    """What an encoder needs to build its models; plain values so Ray can ship it."""

    clip_model: str
    clip_pretrained: str
    device: str
    precision: str
    batch_size: int
    projector_checkpoint: str
    segment_length_s: float
    frame_rate: float
    chunk_frames: int = 64

    @classmethod
    def from_config(cls, config: Any) -> "EncoderSettings":
        return cls(
            clip_model=config.clip.model,
            clip_pretrained=config.clip.pretrained,
            device=config.clip.device,
            precision=config.clip.precision,
            batch_size=config.clip.batch_size,
            projector_checkpoint=config.projector.checkpoint,
            segment_length_s=config.segments.length_s,
            frame_rate=config.segments.frame_rate,
        )


@dataclass(frozen=True)
class EncoderInfo:
    """What an encoder produces: segment ``dim``, frame feature size, model identities."""

    dim: int
    feature_dim: int
    clip: str
    projector: str
    random_weights: bool
    device: str

    @property
    def feature_model(self) -> str:
        """Recorded with the collection: vectors of different models never mix."""
        return f"{self.clip} + {self.projector}"


@dataclass(frozen=True)
class EncodedVideo:
    """A finished video: its ``modality``'s feature rows ``features`` ``(T, D)`` float16 at
    ``feature_rate`` rows per second (:data:`~spr.features.VISUAL`: per-second CLIP frame
    features) and its segment ``embeddings`` ``(ceil(duration / segment_length), dim)`` float32."""

    source: VideoSource
    duration_s: float
    source_fps: float | None
    content_hash: str
    modality: Modality
    features: np.ndarray
    feature_rate: float
    embeddings: np.ndarray
    decode_s: float
    encode_s: float
    # The text tracks (speech, subtitles) when the run has them (spr.ingest.tracks.TrackOutcome).
    tracks: Any = None
    # One JPEG per segment (ordinal order), from the frame nearest the segment's midpoint.
    thumbnails: tuple[bytes, ...] = ()


@dataclass(frozen=True)
class FailedVideo:
    """A video that could not be ingested; ``error`` says why and what to do."""

    source: VideoSource
    error: str
    content_hash: str | None = None


@dataclass(frozen=True)
class SkippedVideo:
    """Unchanged since it was ingested (same content hash)."""

    source: VideoSource
    content_hash: str


def hash_or_skip(source: VideoSource, skip_if_hash: str | None) -> str | FailedVideo | SkippedVideo:
    """The file's content hash, or the result that ends its processing right there: unreadable
    (failed) or hashing to ``skip_if_hash`` (unchanged since it was ingested)."""
    try:
        digest = file_digest(source.path)
    except OSError as exc:
        return FailedVideo(source, f"cannot read {source.path}: {exc.strerror or exc}")
    if skip_if_hash is not None and digest == skip_if_hash:
        return SkippedVideo(source, digest)
    return digest


def fit_frame(image: np.ndarray) -> np.ndarray:
    """The centre square of ``(H, W, 3)``, side ``min(H, W)``: ``size`` after the decoder
    resized the shorter side to it, as CLIP's own transform crops."""
    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return np.ascontiguousarray(image[top : top + side, left : left + side])


def decode_chunks(path: str, frame_rate: float, image_size: int, chunk_frames: int) -> Iterator[Any]:
    """Yield the video's :class:`VideoProbe` first, then ``(n, S, S, 3)`` uint8 chunks of its
    frames sampled at ``frame_rate``, in time order. Raises :class:`DecodeError`."""
    probe = probe_video(path)
    yield probe
    chunk: list[np.ndarray] = []
    for frame in sample_frames(path, fps=frame_rate, size=image_size):
        chunk.append(fit_frame(frame.image))
        if len(chunk) == chunk_frames:
            yield np.stack(chunk)
            chunk = []
    if chunk:
        yield np.stack(chunk)


def thumbnail_frames(duration_s: float, frame_rate: float, segment_length_s: float) -> list[int]:
    """For each segment of a ``duration_s`` video, the index of the sampled frame (sample ``i``
    shows time ``i / frame_rate``) nearest its midpoint, within the video's samples."""
    bounds = segment_bounds(duration_s, segment_length_s)
    last = max(0, count_expected_frames(duration_s, frame_rate) - 1)
    mids = (bounds.start_s + bounds.end_s) / 2.0
    return [min(last, max(0, math.floor(m * frame_rate + 0.5))) for m in mids.tolist()]


def thumbnail_jpeg(image: np.ndarray, max_side: int = THUMBNAIL_MAX_SIDE, quality: int = THUMBNAIL_QUALITY) -> bytes:
    """A JPEG of ``image`` ``(H, W, 3)`` RGB (uint8, or floats in [0, 1]; grey ``(H, W)`` and
    RGBA are taken too), its longest side at most ``max_side``, under the feature store's cap."""
    from PIL import Image

    array = np.asarray(image)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4) or not array.shape[0] or not array.shape[1]:
        raise ValueError(f"a thumbnail is made from an (H, W, 3) RGB image, got shape {array.shape}")
    array = array[:, :, :3]
    if array.dtype != np.uint8:
        # Decoding gives uint8; a float image is in [0, 1] (anything else is clipped to 0-255).
        scale = 255.0 if np.issubdtype(array.dtype, np.floating) and float(np.nanmax(array)) <= 1.0 else 1.0
        array = np.clip(np.nan_to_num(array.astype(np.float64) * scale), 0, 255).round().astype(np.uint8)
    picture = Image.fromarray(np.ascontiguousarray(array), "RGB")
    picture.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    for q in (quality, 50, 30, 15):  # noise-like frames compress badly: lower the quality, not the size
        out = io.BytesIO()
        picture.save(out, "JPEG", quality=q, optimize=True)
        if out.tell() <= MAX_THUMBNAIL_BYTES:
            return out.getvalue()
    raise ValueError(f"a {picture.size} thumbnail stays over {MAX_THUMBNAIL_BYTES} bytes even at quality 15")


class _Thumbnails:
    """Picks each segment's frame out of the chunk stream as it passes and keeps only its JPEG
    (and the last frame, standing in for samples a short container never delivers)."""

    def __init__(self, duration_s: float, frame_rate: float, segment_length_s: float) -> None:
        self.by_frame: dict[int, list[int]] = {}
        for ordinal, frame in enumerate(thumbnail_frames(duration_s, frame_rate, segment_length_s)):
            self.by_frame.setdefault(frame, []).append(ordinal)
        self.jpegs: list[bytes | None] = [None] * sum(len(v) for v in self.by_frame.values())
        self.seen = 0
        self.last: np.ndarray | None = None

    def take(self, chunk: np.ndarray) -> None:
        for i in range(len(chunk)):
            ordinals = self.by_frame.get(self.seen + i)
            if ordinals:
                jpeg = thumbnail_jpeg(chunk[i])
                for ordinal in ordinals:
                    self.jpegs[ordinal] = jpeg
        self.seen += len(chunk)
        if len(chunk):
            self.last = np.array(chunk[-1])  # a copy: a view would keep the whole chunk alive

    def finish(self) -> tuple[bytes, ...]:
        if self.last is None:
            return ()
        missing = [o for o, j in enumerate(self.jpegs) if j is None]
        if missing:
            stand_in = thumbnail_jpeg(self.last)
            for ordinal in missing:
                self.jpegs[ordinal] = stand_in
        return tuple(self.jpegs)  # type: ignore[arg-type]


class VideoEncoder:
    """CLIP image tower + visual projector, loaded once. Thread-safe: model calls are
    serialised, so a threaded actor can overlap one video's decoding with another's encoding."""

    def __init__(self, settings: EncoderSettings) -> None:
        from spr.models.clip import load_clip
        from spr.models.projector import load_projectors

        self.settings = settings
        self.clip = load_clip(settings.clip_model, settings.clip_pretrained, settings.device, settings.precision)
        self.projectors = load_projectors(
            settings.projector_checkpoint, self.clip.dim, self.clip.device, clip_model=settings.clip_model
        )
        self._lock = threading.Lock()

    @property
    def info(self) -> EncoderInfo:
        return EncoderInfo(
            dim=self.projectors.dim,
            feature_dim=self.clip.dim,
            clip=self.clip.identity,
            projector=self.projectors.identity,
            random_weights=self.clip.random_weights or not self.projectors.trained,
            device=self.clip.device,
        )

    @property
    def image_size(self) -> int:
        return self.clip.image_size

    def encode_frames(self, frames: np.ndarray) -> np.ndarray:
        """``(n, S, S, 3)`` uint8 -> ``(n, D)`` float16 L2-normalised features."""
        with self._lock:
            return self.clip.encode_frames(list(frames), self.settings.batch_size).astype(np.float16)

    def encode_video(self, source: VideoSource, probe: VideoProbe, chunks: Iterable[np.ndarray], digest: str) -> EncodedVideo:
        """Consume a video's frame chunks (from :func:`decode_chunks`) into an :class:`EncodedVideo`."""
        s = self.settings
        decode_s = encode_s = 0.0
        parts = []
        thumbnails = _Thumbnails(float(probe.duration_s), s.frame_rate, s.segment_length_s)
        t = time.perf_counter()
        for chunk in chunks:
            t1 = time.perf_counter()
            decode_s += t1 - t
            parts.append(self.encode_frames(chunk))
            thumbnails.take(chunk)
            t = time.perf_counter()
            encode_s += t - t1
        expected = max(1, count_expected_frames(probe.duration_s, s.frame_rate))
        if not parts:
            raise DecodeError(source.path, "no frames could be decoded: the file is empty, corrupt or truncated")
        features = np.concatenate(parts)
        if len(features) < expected:
            # Containers often end a frame early; repeating the last second is honest enough
            # for a few frames. The decoder itself raises on real truncation.
            features = np.concatenate([features, np.repeat(features[-1:], expected - len(features), axis=0)])
        features = features[:expected]
        t1 = time.perf_counter()
        rows = segment_rows(len(features), s.frame_rate, float(probe.duration_s), s.segment_length_s)
        with self._lock:
            embeddings = self.projectors.embed_segments(features, rows)
        encode_s += time.perf_counter() - t1
        return EncodedVideo(
            source=source,
            duration_s=float(probe.duration_s),
            source_fps=probe.avg_fps,
            content_hash=digest,
            modality=VISUAL,
            features=features,
            feature_rate=s.frame_rate,
            embeddings=embeddings,
            decode_s=decode_s,
            encode_s=encode_s,
            thumbnails=thumbnails.finish(),
        )

    def process(self, source: VideoSource, skip_if_hash: str | None = None) -> EncodedVideo | FailedVideo | SkippedVideo:
        """Hash, decode and encode one video in this process (the inline executor's path)."""
        digest = hash_or_skip(source, skip_if_hash)
        if not isinstance(digest, str):
            return digest
        try:
            stream = decode_chunks(source.path, self.settings.frame_rate, self.image_size, self.settings.chunk_frames)
            probe = next(stream)
            return self.encode_video(source, probe, stream, digest)
        except DecodeError as exc:
            return FailedVideo(source, str(exc), digest)
        except Exception as exc:  # one bad file must not stop the run
            log.exception("encoding failed", extra={"video_key": source.key})
            return FailedVideo(source, f"{type(exc).__name__}: {exc}", digest)
