"""The feature store: per-video feature rows of every modality, keyed by (video id, modality).

Refinement scores a proposal against the features of each second it spans, so ingest keeps
them and the refiner never decodes video at query time. One HDF5 file per (video, modality)
holds a ``(T, D)`` float16 array (row ``i`` covers ``[i / rate, (i + 1) / rate)`` seconds) and
its ``rate`` (rows per second: 1.0 for 1-fps CLIP frames, 1/1.5 for TVR's 1.5-s clips). A
slice reads only the rows it needs, so an hour-long video costs a proposal a few rows.

A modality is a name (:data:`VISUAL` for CLIP frame features, the only one today; a speech or
subtitle encoder adds its own name and nothing here changes). The visual features live where
they always did, ``<shard>/<video id>.h5``; another modality ``m`` beside them in
``<shard>/<video id>.<m>.h5``. A text track's transcript (:class:`spr.text_tracks.Transcript`, its
cues and words with their timings) is JSON in ``<shard>/<video id>.<track>.transcript.json``.
A video's segment thumbnails (small JPEGs ingest makes from frames it decodes anyway, one per
segment, for the web page) are one uncompressed ZIP, ``<shard>/<video id>.thumbs.zip``, entry
``<ordinal>.jpg`` per segment: one file per video, not one per segment (a million videos make
tens of millions of segments), and a ZIP's central directory lets one JPEG be read by offset.

The root is a local directory (the embedded default, ``<data_dir>/features``) or any fsspec
URL (``s3://bucket/prefix``, ``memory://`` in tests). Writes are atomic on both: a local file
is written beside its final name and renamed into place; an object-store PUT is atomic by
itself. A crash mid-write therefore leaves either the old file or none, never a torn one.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import threading
import uuid
import zipfile
from collections import OrderedDict, defaultdict
from collections.abc import Iterable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .segments import span_rows

if TYPE_CHECKING:  # spr.text_tracks imports this module
    from .text_tracks import Transcript

__all__ = [
    "SPEECH",
    "SUBTITLES",
    "VISUAL",
    "FeatureNotFound",
    "FrameFeatureStore",
    "FrameFeatures",
    "MAX_THUMBNAIL_BYTES",
    "Modality",
    "TimedFeatures",
    "check_modality",
    "check_thumbnails",
    "span_rows",
]

# A modality is a plain name, not an enum: a new one (speech, subtitles) is a new name and
# needs no change to the core's types.
Modality = str
VISUAL: Modality = "visual"  # CLIP frame features, the projector's segment input
SPEECH: Modality = "speech"  # what is said: ASR of the audio (spr.text_tracks)
SUBTITLES: Modality = "subtitles"  # what is written: embedded or sidecar subtitles
_MODALITY_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")

_DATASET = "features"
_SUFFIX = ".h5"
_TRANSCRIPT_SUFFIX = ".transcript.json"
_THUMBNAILS_SUFFIX = ".thumbs.zip"
# A segment thumbnail is a small JPEG (ingest makes them at most 192 px at quality 75, ~2-15
# KiB); the cap keeps an hour-long video's file, and the page loading it, small.
MAX_THUMBNAIL_BYTES = 64 * 1024
# Fixed entry dates: the same thumbnails give the same bytes, whenever they are written.
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)
# Local feature files whose dataset layout is kept (a few hundred bytes each, no descriptor):
# every video a query's ~200 proposals touch stays known across queries.
_KNOWN_LAYOUTS = 65_536
# Videos are spread over 256 sub-directories: object stores list faster and local
# directories stay small at a million videos.
_SHARDS = 256


class FeatureNotFound(LookupError):
    """The store holds no features for this video id."""


@dataclass(frozen=True)
class FrameFeatures:
    """Features of (a span of) one video: ``features`` ``(T, D)`` float16, row ``i`` covering
    ``[first_s + i / rate, first_s + (i + 1) / rate)`` seconds; ``model``: what made them, as
    written (a CLIP model, or a refiner's context version)."""

    video_id: int
    features: np.ndarray
    rate: float
    first_s: float = 0.0
    model: str = ""

    @property
    def first_row(self) -> int:
        """Index of this span's first row in the whole video."""
        return int(round(self.first_s * self.rate))

    @property
    def times_s(self) -> np.ndarray:
        """Start time of each row, shape ``(T,)`` float64."""
        return self.first_s + np.arange(len(self.features), dtype=np.float64) / self.rate

    @property
    def duration_s(self) -> float:
        return len(self.features) / self.rate


@dataclass(frozen=True)
class TimedFeatures:
    """Feature rows of one video in one modality, as ingest writes them: ``values`` ``(T, D)``
    (any float dtype; the store keeps float16), row ``i`` covering ``[i / rate, (i + 1) / rate)``
    seconds."""

    values: np.ndarray
    rate: float

    @property
    def nbytes(self) -> int:
        return int(np.asarray(self.values).nbytes)


def check_modality(modality: str) -> Modality:
    """``modality`` if it is a usable name (lower-case letters, digits, ``_``; it becomes part
    of file names), else ValueError."""
    if not isinstance(modality, str) or not _MODALITY_NAME.fullmatch(modality):
        raise ValueError(
            f"a modality is a lower-case name of letters, digits and '_' (up to 32), like {VISUAL!r}; got {modality!r}"
        )
    return modality


def check_thumbnails(video_id: int | str, jpegs: Sequence[bytes]) -> list[bytes]:
    """``jpegs`` as a list if they can be one video's segment thumbnails (at least one, each a
    JPEG of at most :data:`MAX_THUMBNAIL_BYTES`), else ValueError saying which is not."""
    out = list(jpegs)
    if not out:
        raise ValueError(f"thumbnails of video {video_id}: need one JPEG per segment, got none")
    for ordinal, jpeg in enumerate(out):
        if not isinstance(jpeg, (bytes, bytearray, memoryview)):
            raise ValueError(f"thumbnail {ordinal} of video {video_id} is {type(jpeg).__name__}, not JPEG bytes")
        if len(jpeg) > MAX_THUMBNAIL_BYTES:
            raise ValueError(
                f"thumbnail {ordinal} of video {video_id} is {len(jpeg)} bytes; a thumbnail is at most "
                f"{MAX_THUMBNAIL_BYTES} (make it smaller or lower its JPEG quality)"
            )
        if bytes(jpeg[:2]) != b"\xff\xd8":
            raise ValueError(f"thumbnail {ordinal} of video {video_id} is not a JPEG (no start-of-image marker)")
    return [bytes(j) for j in out]


class FrameFeatureStore:
    """Per-video feature files under one root (a path or an fsspec URL). Thread-safe: every
    call opens its own file handle."""

    def __init__(self, url: str | os.PathLike[str]) -> None:
        url = os.fspath(url)
        self.url = url
        if "://" in url and not url.startswith("file://"):
            import fsspec

            self._fs, self._root = fsspec.core.url_to_fs(url)
            self._local = False
        else:
            self._root = url[len("file://"):] if url.startswith("file://") else url
            self._fs = None
            self._local = True
            Path(self._root).mkdir(parents=True, exist_ok=True)
        # Dataset layouts of local files, most recently read last (see _read_local).
        self._layouts: OrderedDict[str, tuple[tuple[int, int, int], tuple | None]] = OrderedDict()
        self._layouts_lock = threading.Lock()

    @classmethod
    def from_config(cls, config) -> "FrameFeatureStore":
        """The store at ``config.features_url`` (``<data_dir>/features`` by default)."""
        return cls(config.features_url)

    def path(self, video_id: int, modality: Modality = VISUAL) -> str:
        """Where one video's features of ``modality`` live (visual: ``<shard>/<id>.h5``, as
        always; another modality ``m``: ``<shard>/<id>.<m>.h5``)."""
        video_id = int(video_id)
        tag = "" if modality == VISUAL else f".{check_modality(modality)}"
        return f"{self._root.rstrip('/')}/{video_id % _SHARDS:02x}/{video_id}{tag}{_SUFFIX}"

    # --- writes ------------------------------------------------------------------------------

    def write(
        self, video_id: int, features: np.ndarray, rate: float, model: str = "", modality: Modality = VISUAL
    ) -> None:
        """Store ``features`` ``(T, D)`` (any float dtype; kept as float16) of one video in
        ``modality``, replacing what it had there. ``rate`` is rows per second."""
        feats = np.asarray(features)
        if feats.ndim != 2 or feats.shape[0] == 0 or feats.shape[1] == 0:
            raise ValueError(f"features of video {video_id} must have shape (T>0, D>0), got {feats.shape}")
        if not (rate > 0 and math.isfinite(rate)):
            raise ValueError(f"feature rate must be a positive number of features per second, got {rate}")
        feats16 = feats.astype(np.float16)
        if not np.isfinite(feats16).all():
            raise ValueError(f"features of video {video_id} contain NaN or infinity (or overflow float16)")
        self._put(self.path(video_id, modality), _encode(feats16, float(rate), model))

    def _put(self, final: str, data: bytes) -> None:
        """Write ``data`` to ``final`` atomically: the old file or the new one, never a torn one."""
        if self._local:
            Path(final).parent.mkdir(parents=True, exist_ok=True)
            tmp = f"{final}.tmp-{uuid.uuid4().hex[:8]}"
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, final)
            self._forget(final)
        else:
            self._fs.makedirs(final.rsplit("/", 1)[0], exist_ok=True)
            self._fs.pipe_file(final, data)

    def write_transcript(self, video_id: int, transcript: "Transcript") -> None:
        """Store one video's transcript of ``transcript.track`` (JSON of
        :meth:`~spr.text_tracks.Transcript.to_dict`), replacing the one it had."""
        data = json.dumps(transcript.to_dict(), ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        self._put(self.transcript_path(video_id, transcript.track), data)

    def write_thumbnails(self, video_id: int, jpegs: Sequence[bytes]) -> None:
        """Store one video's segment thumbnails, ``jpegs[i]`` the JPEG of segment ``i``,
        replacing all it had (ValueError, nothing written, when one is not a JPEG or is over
        :data:`MAX_THUMBNAIL_BYTES`)."""
        checked = check_thumbnails(video_id, jpegs)
        buf = io.BytesIO()
        # Stored, not deflated: JPEGs do not compress, and a stored entry is read in one range.
        with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as archive:
            for ordinal, jpeg in enumerate(checked):
                archive.writestr(zipfile.ZipInfo(f"{ordinal}.jpg", date_time=_ZIP_DATE), jpeg)
        self._put(self.thumbnails_path(video_id), buf.getvalue())

    def delete(self, video_id: int, modality: Modality | None = None) -> bool:
        """Remove one video's features and transcript of ``modality``, or of every modality
        and its thumbnails when None (what deleting a video needs); False if there were none."""
        if modality is None:
            paths = [self.path(video_id, m) for m in self.modalities(video_id)]
            paths += [self.transcript_path(video_id, t) for t in self.transcript_tracks(video_id)]
            paths.append(self.thumbnails_path(video_id))
        else:
            paths = [self.path(video_id, modality)]
            if modality != VISUAL:
                paths.append(self.transcript_path(video_id, modality))
        removed = False
        for final in paths:
            removed |= self._remove(final)
        return removed

    def _forget(self, final: str) -> None:
        """Drop what this process knows of ``final``'s layout (it was replaced or removed)."""
        with self._layouts_lock:
            self._layouts.pop(final, None)

    def _remove(self, final: str) -> bool:
        if self._local:
            self._forget(final)
            try:
                os.remove(final)
                return True
            except FileNotFoundError:
                return False
        if not self._fs.exists(final):
            return False
        self._fs.rm(final)
        return True

    # --- reads -------------------------------------------------------------------------------

    def exists(self, video_id: int, modality: Modality = VISUAL) -> bool:
        final = self.path(video_id, modality)
        return os.path.exists(final) if self._local else bool(self._fs.exists(final))

    def transcript_path(self, video_id: int, track: Modality) -> str:
        """Where one video's transcript of text track ``track`` lives: ``<shard>/<id>.<track>.transcript.json``."""
        if check_modality(track) == VISUAL:
            raise ValueError("a transcript belongs to a text track (speech, subtitles), not the visual modality")
        return f"{self._shard(video_id)}/{int(video_id)}.{track}{_TRANSCRIPT_SUFFIX}"

    def has_transcript(self, video_id: int, track: Modality) -> bool:
        final = self.transcript_path(video_id, track)
        return os.path.exists(final) if self._local else bool(self._fs.exists(final))

    def read_transcript(self, video_id: int, track: Modality) -> "Transcript":
        """One video's transcript of ``track``; :class:`FeatureNotFound` when it has none."""
        from .text_tracks import Transcript

        final = self.transcript_path(video_id, track)
        try:
            if self._local:
                data = Path(final).read_bytes()
            else:
                data = self._fs.cat_file(final)
        except FileNotFoundError:
            raise FeatureNotFound(
                f"no {track} transcript for video id {video_id} in {self.url}; re-ingest the video "
                f"with its {track} track on"
            ) from None
        return Transcript.from_dict(json.loads(data.decode("utf-8")))

    def thumbnails_path(self, video_id: int) -> str:
        """Where one video's segment thumbnails live: ``<shard>/<id>.thumbs.zip``."""
        return f"{self._shard(video_id)}/{int(video_id)}{_THUMBNAILS_SUFFIX}"

    def has_thumbnails(self, video_id: int) -> bool:
        """Whether ingest stored thumbnails for this video (``spr import`` stores none)."""
        final = self.thumbnails_path(video_id)
        return os.path.exists(final) if self._local else bool(self._fs.exists(final))

    def delete_thumbnails(self, video_id: int) -> bool:
        """Remove one video's thumbnails; False if it had none."""
        return self._remove(self.thumbnails_path(video_id))

    def read_thumbnail(self, video_id: int, ordinal: int) -> bytes:
        """The JPEG of segment ``ordinal`` of one video; :class:`FeatureNotFound` when the video
        has no thumbnails or no segment ``ordinal``. Reads the archive's directory and that one
        entry, not the whole file (ranged reads on an object store)."""
        final = self.thumbnails_path(video_id)
        if isinstance(ordinal, bool) or not isinstance(ordinal, (int, np.integer)) or ordinal < 0:
            raise FeatureNotFound(f"video id {video_id} has no segment {ordinal!r}")
        try:
            fh = open(final, "rb") if self._local else self._fs.open(final, "rb")
        except FileNotFoundError:
            raise FeatureNotFound(
                f"no thumbnails for video id {video_id} in {self.url}; re-ingest the video from its file "
                f"to make them (`spr import` brings features, no pictures)"
            ) from None
        with fh, zipfile.ZipFile(fh) as archive:
            try:
                return archive.read(f"{int(ordinal)}.jpg")
            except KeyError:
                raise FeatureNotFound(f"video id {video_id} has no thumbnail of segment {ordinal}") from None

    def transcript_tracks(self, video_id: int) -> list[Modality]:
        """The text tracks one video has a transcript of, sorted."""
        video_id = int(video_id)
        names = self._shard_names(video_id, f"{video_id}.*{_TRANSCRIPT_SUFFIX}")
        tags = [n[len(str(video_id)) + 1 : -len(_TRANSCRIPT_SUFFIX)] for n in names]
        return sorted(t for t in tags if _MODALITY_NAME.fullmatch(t) and t != VISUAL)

    def _shard(self, video_id: int) -> str:
        return f"{self._root.rstrip('/')}/{int(video_id) % _SHARDS:02x}"

    def _shard_names(self, video_id: int, pattern: str) -> list[str]:
        """File names in the video's shard directory matching glob ``pattern``."""
        shard = self._shard(video_id)
        if self._local:
            return [p.name for p in Path(shard).glob(pattern)]
        return [p.rsplit("/", 1)[-1] for p in self._fs.glob(f"{shard}/{pattern}")]

    def modalities(self, video_id: int) -> list[Modality]:
        """The modalities one video has features of, sorted."""
        video_id = int(video_id)
        shard = f"{self._root.rstrip('/')}/{video_id % _SHARDS:02x}"
        pattern = f"{video_id}.*{_SUFFIX}"
        if self._local:
            names = [p.name for p in Path(shard).glob(pattern)]
        else:
            names = [p.rsplit("/", 1)[-1] for p in self._fs.glob(f"{shard}/{pattern}")]
        tags = [n[len(str(video_id)) + 1 : -len(_SUFFIX)] for n in names]
        others = [m for m in tags if _MODALITY_NAME.fullmatch(m) and m != VISUAL]
        return sorted(([VISUAL] if self.exists(video_id) else []) + others)

    def read(self, video_id: int, modality: Modality = VISUAL) -> FrameFeatures:
        """All features of one video."""
        return self.read_span(video_id, 0.0, math.inf, modality)

    def read_span(self, video_id: int, start_s: float, end_s: float, modality: Modality = VISUAL) -> FrameFeatures:
        """Rows overlapping ``[start_s, end_s)`` seconds (at least one)."""
        return self.read_spans(video_id, [(start_s, end_s)], modality)[0]

    def read_spans(
        self, video_id: int, spans: Sequence[tuple[float, float]], modality: Modality = VISUAL
    ) -> list[FrameFeatures]:
        """Several spans of one video through one file open, in input order."""
        if self._local:
            direct = self._read_local(video_id, spans, modality)
            if direct is not None:
                return direct
        import h5py

        with self._open(video_id, modality) as fh, h5py.File(fh, "r") as h5:
            ds = h5[_DATASET]
            rate = float(ds.attrs["rate"])
            model = str(ds.attrs.get("model", ""))
            out = []
            for start_s, end_s in spans:
                lo, hi = self._rows(ds.shape[0], rate, start_s, end_s)
                out.append(FrameFeatures(int(video_id), ds[lo:hi], rate, lo / rate, model))
            return out

    @staticmethod
    def _rows(total: int, rate: float, start_s: float, end_s: float) -> tuple[int, int]:
        end = total / rate if math.isinf(end_s) else end_s
        return span_rows(start_s, end, rate, total)

    def _read_local(
        self, video_id: int, spans: Sequence[tuple[float, float]], modality: Modality
    ) -> list[FrameFeatures] | None:
        """Spans of a local file read straight from its bytes; None when its dataset is not one
        contiguous block (h5py reads it then).

        h5py costs ~0.5 ms per file open, under one global lock, and a query reads ~100-200
        spans of as many videos: the dataset's layout (offset, shape, type, rate, model) is
        parsed once per file and kept, keyed by the file's inode, mtime and size (checked on the
        descriptor that is read, so a file replaced by a write is parsed anew, never read with
        an old layout), and each span is one ``pread``."""
        final = self.path(video_id, modality)
        try:
            fd = os.open(final, os.O_RDONLY)
        except FileNotFoundError:
            raise self._not_found(video_id, modality) from None
        try:
            st = os.fstat(fd)
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
            with self._layouts_lock:
                hit = self._layouts.get(final)
                if hit is not None and hit[0] == stamp:
                    self._layouts.move_to_end(final)
            layout = hit[1] if hit is not None and hit[0] == stamp else self._parse_layout(fd, final, stamp)
            if layout is None:
                return None
            offset, shape, dtype, rate, model, row_bytes = layout
            out = []
            for start_s, end_s in spans:
                lo, hi = self._rows(shape[0], rate, start_s, end_s)
                rows = np.empty((hi - lo, *shape[1:]), dtype=dtype)  # filled by the read, not zeroed first
                if os.preadv(fd, [memoryview(rows).cast("B")], offset + lo * row_bytes) != rows.nbytes:
                    raise OSError(f"feature file {final} is shorter than its header says; re-ingest video {video_id}")
                out.append(FrameFeatures(int(video_id), rows, rate, lo / rate, model))
            return out
        finally:
            os.close(fd)

    def _parse_layout(self, fd: int, final: str, stamp: tuple[int, int, int]):
        """The contiguous dataset's ``(offset, shape, dtype, rate, model)`` of the open file
        ``fd``, kept for later reads; None for a chunked or compressed one."""
        import h5py

        with io.FileIO(fd, "rb", closefd=False) as fh, h5py.File(fh, "r") as h5:
            ds = h5[_DATASET]
            offset = ds.id.get_offset()
            layout = None
            if offset is not None and ds.chunks is None and ds.compression is None:
                shape, dtype = tuple(ds.shape), np.dtype(ds.dtype)
                row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
                layout = (int(offset), shape, dtype, float(ds.attrs["rate"]), str(ds.attrs.get("model", "")), row_bytes)
        with self._layouts_lock:
            self._layouts[final] = (stamp, layout)
            while len(self._layouts) > _KNOWN_LAYOUTS:
                self._layouts.popitem(last=False)
        return layout

    def read_many(
        self,
        requests: Iterable[tuple[int, float, float]],
        missing: str = "raise",
        pool: Executor | None = None,
        modality: Modality = VISUAL,
    ) -> list[FrameFeatures | None]:
        """``[(video_id, start_s, end_s), ...]`` in input order, one file open per distinct video
        (a query's ~100 proposals come from far fewer videos). ``missing="none"`` puts None
        where a video has no features instead of raising :class:`FeatureNotFound`; with
        ``pool`` videos of an object store are read in parallel (its per-request latency)."""
        if missing not in ("raise", "none"):
            raise ValueError(f"missing must be 'raise' or 'none', got {missing!r}")
        requests = list(requests)
        by_video: dict[int, list[int]] = defaultdict(list)
        for i, (vid, _, _) in enumerate(requests):
            by_video[int(vid)].append(i)

        def read_video(vid: int) -> list[FrameFeatures] | None:
            try:
                return self.read_spans(vid, [(requests[i][1], requests[i][2]) for i in by_video[vid]], modality)
            except FeatureNotFound:
                if missing == "raise":
                    raise
                return None

        videos = list(by_video)
        # The pool hides an object store's per-request latency; local reads are a few
        # microseconds each, and handing them to threads would cost more than it saves.
        parallel = pool is not None and len(videos) > 1 and not self._local
        results = list(pool.map(read_video, videos)) if parallel else map(read_video, videos)
        out: list[FrameFeatures | None] = [None] * len(requests)
        for vid, spans in zip(videos, results):
            for i, feats in zip(by_video[vid], spans or ()):
                out[i] = feats
        return out

    def info(self, video_id: int, modality: Modality = VISUAL) -> tuple[int, int, float, str]:
        """``(T, D, rate, model)`` without reading the features."""
        import h5py

        with self._open(video_id, modality) as fh, h5py.File(fh, "r") as h5:
            ds = h5[_DATASET]
            return int(ds.shape[0]), int(ds.shape[1]), float(ds.attrs["rate"]), str(ds.attrs.get("model", ""))

    def video_ids(self, modality: Modality = VISUAL) -> list[int]:
        """Every video id with features of ``modality``, sorted (for repair passes)."""
        suffix = _SUFFIX if modality == VISUAL else f".{check_modality(modality)}{_SUFFIX}"
        if self._local:
            names = [p.name for p in Path(self._root).glob(f"*/*{suffix}")]
        else:
            names = [p.rsplit("/", 1)[-1] for p in self._fs.glob(f"{self._root.rstrip('/')}/*/*{suffix}")]
        stems = [n[: -len(suffix)] for n in names]
        return sorted(int(stem) for stem in stems if stem.isdigit())

    def _open(self, video_id: int, modality: Modality = VISUAL):
        final = self.path(video_id, modality)
        try:
            if self._local:
                return open(final, "rb")
            return self._fs.open(final, "rb")
        except FileNotFoundError:
            raise self._not_found(video_id, modality) from None

    def _not_found(self, video_id: int, modality: Modality) -> FeatureNotFound:
        what = "frame features" if modality == VISUAL else f"{modality} features"
        return FeatureNotFound(
            f"no {what} for video id {video_id} in {self.url}; re-ingest the video (or `spr import` its features)"
        )


def _encode(features: np.ndarray, rate: float, model: str) -> bytes:
    import h5py

    buf = io.BytesIO()
    with h5py.File(buf, "w") as h5:
        # Contiguous, uncompressed: a slice is one read at a computed offset.
        ds = h5.create_dataset(_DATASET, data=features)
        ds.attrs["rate"] = rate
        ds.attrs["model"] = model
    return buf.getvalue()
