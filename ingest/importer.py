"""``spr import``: precomputed features into the catalog, the vector store and the feature store.

Public releases ship features, not videos: TVR / ReLoCLNet put one ``(T, D)`` dataset per
video in an HDF5 file (I3D and RoBERTa features of 1.5-s clips), moment_detr / lighthouse a
directory of ``<video>.npy`` or ``<video>.npz`` files. A manifest (JSONL or CSV) gives each
video's duration. Import runs them through the same path as video ingest: fixed-length
segments (:mod:`spr.segments`), the projector (:mod:`spr.models.projector`; mean pooling
without a checkpoint) and the writer of :mod:`.writer` (the two-store protocol of
:func:`spr.publish.publish_videos`), with the features kept in the feature store for the
refiner. ``segments`` mode takes
ready-made segment embeddings instead and publishes them as they are.

A feature row ``i`` covers ``[i / rate, (i + 1) / rate)`` seconds. Each segment pools the
rows that overlap it in time (:func:`spr.segments.segment_rows`, as every path does), so 1.5-s
clips land in the right 4-s segments even though the two grids do not line up (a clip
straddling a boundary counts in both segments).

Re-running is idempotent: keys keep their ids, segments and vectors are replaced, and a video
that is ``ready`` with the same content hash (the feature bytes and rate), duration, uri,
collection and embedder is skipped unless ``force``. One bad video (wrong shape, NaN, no
duration) is recorded ``failed`` with the reason and the import goes on.

Text tracks come the same way (``text_features={"speech": path}``, ``--text-features
speech=PATH``): a feature source of the same layout and keys holding one ``(n_segments, d)`` row
per segment of the video (an all-zero row: that segment has no text). The non-zero rows,
L2-normalised, go into the track's collection ``<collection>__<track>`` under the segments' ids;
a video the file lacks has no text in that track, and a wrong row count, width or a NaN fails
the video. The rows' digests are part of what "unchanged" compares, so a changed text file
re-publishes its videos. A re-import replaces every track of a video: a track not given this
time loses the video's vectors in its collection (as re-ingesting a video does).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from spr.catalog import SegmentCatalog, VideoRecord, VideoStatus
from spr.config import Config
from spr.features import VISUAL, FrameFeatureStore, TimedFeatures
from spr.limits import MAX_VIDEO_KEY_LENGTH
from spr.publish import (
    CollectionMismatch,
    VideoPayload,
    ensure_collection,
    ensure_track_collection,
    existing_track_collections,
)
from spr.rowfiles import RowFileError, read_rows
from spr.segments import segment_count, segment_rows
from spr.stores import VectorStore, index_spec_from_config, l2_normalize, open_vector_store
from spr.text_tracks import TEXT_TRACKS, SegmentText, TrackReport, TrackStatus, Transcript, track_collection

from .writer import FlushRule, ReaderItem, RejectedVideo, Unchanged, VideoWriter

log = logging.getLogger(__name__)

__all__ = [
    "ArrayDirectorySource",
    "Hdf5Source",
    "ImportInputError",
    "ImportOptions",
    "ImportProgress",
    "ImportSummary",
    "ImportedVideo",
    "Manifest",
    "ManifestEntry",
    "RejectedVideo",
    "TrackImportSummary",
    "feature_digest",
    "import_features",
    "import_flush_rule",
    "open_source",
    "read_manifest",
    "read_videos",
]

KEY_COLUMNS = ("key", "video_id", "vid_name", "vid")
DEFAULT_ARRAY_KEY = "features"
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf")
ARRAY_SUFFIXES = (".npy", ".npz")
# How far (beyond one segment) the features' span may differ from the manifest duration: a
# decoder that dropped a few frames of an hour is fine, a wrong --clip-length is not.
COVERAGE_TOLERANCE = 0.01
MAX_KEY_BYTES = MAX_VIDEO_KEY_LENGTH  # the catalog's and Milvus's limit (spr.limits)
FLOAT16_MAX = 65504.0  # the feature store keeps float16
# Videos whose features are read before the collection's dimension is fixed: the most common
# dimension among them wins, so one odd file first in the listing cannot fail all the others.
_DIM_VOTERS = 8


# Videos read per catalog round trip of the unchanged check.
ROWS_PER_READ = 512
# Videos the reader thread may have read ahead of the writer (bulk mode).
READ_AHEAD = 256


def _read_ahead(items: Iterator[Any], depth: int) -> Iterator[Any]:
    """``items`` as they come, produced on a thread of their own at most ``depth`` ahead of
    the consumer; the producer's exception is re-raised here, and a consumer that stops early
    (an exception in the writer) stops the producer."""
    import queue
    import threading

    done = object()
    buffer: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        buffer.put((True, item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            buffer.put((True, done))
        except BaseException as exc:  # handed to the consumer, which raises it
            buffer.put((False, exc))

    thread = threading.Thread(target=produce, name="import-reader", daemon=True)
    thread.start()
    try:
        while True:
            ok, item = buffer.get()
            if not ok:
                raise item
            if item is done:
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full buffer
            try:
                buffer.get_nowait()
            except queue.Empty:
                pass
            thread.join(timeout=0.05)


def import_flush_rule(config: Config) -> FlushRule:
    """When an import publishes its queue: each batch three times what is out so far (16, 48,
    192, 768, ... videos, from ``ingest.write_batch_videos``) up to 512 MiB of queued features
    and embeddings, so a 147K-segment import (7,342 TVR videos) is 6-8 batches, each one catalog
    transaction, one upsert and one flush: a Faiss flush rewrites the whole index, a Milvus
    flush took 2.5 s whatever its size (measured: 7 of 33 s of a 20K-segment import at growth
    1). A crash still loses at most one batch, which stays ``pending`` and the re-run redoes."""
    return FlushRule(
        min_videos=max(1, int(config.ingest.write_batch_videos)), growth=3.0, max_bytes=512 << 20, max_wait_s=60.0
    )


class ImportInputError(ValueError):
    """The import cannot start (missing file, unreadable manifest, incompatible collection);
    the message says what to fix."""


# --- what readers yield ---------------------------------------------------------------------


@dataclass(frozen=True)
class ImportedVideo:
    """One video's features: ``features`` ``(T, D)`` float32 at ``rate`` rows per second (in
    segments mode ``(n_seg, dim)`` segment embeddings, ``rate = 1 / segment length``)."""

    key: str
    features: np.ndarray
    rate: float
    duration_s: float
    uri: str
    metadata: dict[str, Any] = field(default_factory=dict)


# --- manifests ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ManifestEntry:
    key: str
    duration_s: float | None  # None: the row's duration is missing or unusable (see problem)
    uri: str | None
    metadata: dict[str, Any]
    problem: str | None = None


@dataclass(frozen=True)
class Manifest:
    path: str
    entries: dict[str, ManifestEntry]

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def get(self, key: str) -> ManifestEntry | None:
        return self.entries.get(key)


def read_manifest(path: str | os.PathLike[str]) -> Manifest:
    """Durations (and optional ``uri``, ``metadata``) per video from JSONL or CSV.

    The key column is the first of ``key``, ``video_id``, ``vid_name``, ``vid`` a row has;
    ``duration`` is in seconds. Annotation files with one row per query work too: rows of one
    video must agree on duration and uri, else that video is rejected (the others are fine)."""
    manifest = Path(path).expanduser()
    if not manifest.is_file():
        raise ImportInputError(f"manifest {manifest} does not exist")
    entries: dict[str, ManifestEntry] = {}
    for line, row in _manifest_rows(manifest):
        key = next((str(row[c]).strip() for c in KEY_COLUMNS if row.get(c) not in (None, "")), "")
        if not key:
            raise ImportInputError(
                f"{manifest}:{line}: a row needs a video key in one of the columns {', '.join(KEY_COLUMNS)}; "
                f"got {sorted(row)}"
            )
        entry = _manifest_entry(key, row)
        previous = entries.get(key)
        if previous is not None:
            entry = _merge_rows(previous, entry, f"{manifest}:{line}")
        entries[key] = entry
    return Manifest(str(manifest), entries)


def _manifest_rows(manifest: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        yield from read_rows(manifest, "manifest", record_keys=(*KEY_COLUMNS, "duration"))
    except RowFileError as exc:
        raise ImportInputError(str(exc)) from None


def _manifest_entry(key: str, row: dict[str, Any]) -> ManifestEntry:
    uri = str(row["uri"]).strip() if row.get("uri") not in (None, "") else None
    metadata = row.get("metadata") or {}
    if isinstance(metadata, str):
        try:
            metadata = json.loads(metadata) if metadata.strip() else {}
        except json.JSONDecodeError:
            metadata = {"metadata": metadata}
    if not isinstance(metadata, dict):
        metadata = {"metadata": metadata}
    raw = row.get("duration")
    if raw in (None, ""):
        return ManifestEntry(key, None, uri, metadata, "its manifest row has no 'duration'")
    try:
        duration = float(raw)
    except (TypeError, ValueError):
        return ManifestEntry(key, None, uri, metadata, f"its manifest duration {raw!r} is not a number of seconds")
    if not (duration > 0 and math.isfinite(duration)):
        problem = f"its manifest duration {raw!r} is not a positive number of seconds"
        return ManifestEntry(key, None, uri, metadata, problem)
    return ManifestEntry(key, duration, uri, metadata)


def _merge_rows(first: ManifestEntry, other: ManifestEntry, where: str) -> ManifestEntry:
    if first.problem:
        return first
    if other.problem:
        return other
    if abs(first.duration_s - other.duration_s) > 1e-3:
        return ManifestEntry(
            first.key, None, first.uri, first.metadata,
            f"the manifest gives it two durations, {first.duration_s} s and {other.duration_s} s ({where})",
        )
    if other.uri is not None and first.uri is not None and other.uri != first.uri:
        return ManifestEntry(
            first.key, None, first.uri, first.metadata,
            f"the manifest gives it two uris, {first.uri} and {other.uri} ({where})",
        )
    return ManifestEntry(first.key, first.duration_s, first.uri or other.uri, first.metadata)


# --- feature sources ------------------------------------------------------------------------


class FeatureSource(Protocol):
    """Arrays by video key. ``load`` may raise ``ValueError``/``KeyError``/``OSError`` for one
    bad entry; the import rejects that video and goes on."""

    path: Path

    def keys(self) -> list[str]: ...

    def load(self, key: str) -> np.ndarray: ...

    def uri(self, key: str) -> str: ...

    def close(self) -> None: ...


class Hdf5Source:
    """TVR / ReLoCLNet layout: one ``(T, D)`` dataset per video at the file's top level (or a
    group per video holding one dataset, ``features`` or ``dataset_key``)."""

    def __init__(self, path: Path, dataset_key: str | None = None) -> None:
        import h5py

        self.path = path
        self.dataset_key = dataset_key
        try:
            self._h5 = h5py.File(path, "r")
        except OSError as exc:
            raise ImportInputError(f"cannot read {path} as HDF5: {exc}") from None

    def keys(self) -> list[str]:
        return sorted(self._h5.keys())

    def load(self, key: str) -> np.ndarray:
        import h5py

        entry = self._h5[key]
        if isinstance(entry, h5py.Group):
            names = [n for n in entry.keys() if isinstance(entry[n], h5py.Dataset)]
            entry = entry[_pick_array(names, self.dataset_key, f"group {key!r} of {self.path.name}")]
        return np.asarray(entry[()])

    def uri(self, key: str) -> str:
        return f"{self.path.resolve().as_uri()}#{key}"

    def close(self) -> None:
        self._h5.close()


class ArrayDirectorySource:
    """moment_detr / lighthouse layout: ``<video>.npy``, or ``<video>.npz`` holding the array
    under ``dataset_key`` (default: its only array, else ``features``). Key = file stem."""

    def __init__(self, directory: Path, dataset_key: str | None = None) -> None:
        self.path = directory
        self.dataset_key = dataset_key
        self._files: dict[str, list[Path]] = {}
        for file in sorted(directory.iterdir()):
            if file.is_file() and file.suffix.lower() in ARRAY_SUFFIXES:
                self._files.setdefault(file.stem, []).append(file)
        if not self._files:
            raise ImportInputError(f"{directory} holds no .npy or .npz files")

    def keys(self) -> list[str]:
        return sorted(self._files)

    def load(self, key: str) -> np.ndarray:
        files = self._files[key]
        if len(files) > 1:
            raise ValueError(f"both {' and '.join(f.name for f in files)} exist; keep one per video")
        file = files[0]
        if file.suffix.lower() == ".npy":
            if self.dataset_key:
                raise ValueError(f"{file.name} is a plain .npy array; --dataset-key applies to .npz files only")
            return np.load(file, allow_pickle=False)
        with np.load(file, allow_pickle=False) as npz:
            return np.asarray(npz[_pick_array(list(npz.files), self.dataset_key, file.name)])

    def uri(self, key: str) -> str:
        return self._files[key][0].resolve().as_uri()

    def close(self) -> None:
        pass


def _pick_array(names: Sequence[str], wanted: str | None, where: str) -> str:
    if wanted:
        if wanted not in names:
            raise KeyError(f"{where} has no array {wanted!r} (it holds {', '.join(sorted(names)) or 'none'})")
        return wanted
    if len(names) == 1:
        return names[0]
    if DEFAULT_ARRAY_KEY in names:
        return DEFAULT_ARRAY_KEY
    raise KeyError(f"{where} holds several arrays ({', '.join(sorted(names))}); choose one with --dataset-key")


def open_source(path: str | os.PathLike[str], dataset_key: str | None = None) -> FeatureSource:
    """An HDF5 file (by suffix or signature) or a directory of .npy/.npz files."""
    source = Path(path).expanduser()
    if source.is_dir():
        return ArrayDirectorySource(source, dataset_key)
    if not source.exists():
        raise ImportInputError(f"features {source} do not exist; give an HDF5 file or a directory of .npy/.npz files")
    if source.suffix.lower() in HDF5_SUFFIXES or _looks_like_hdf5(source):
        return Hdf5Source(source, dataset_key)
    raise ImportInputError(
        f"features {source} are neither an HDF5 file nor a directory; give an HDF5 file (one dataset per video) "
        f"or a directory of <video>.npy / <video>.npz files"
    )


def _looks_like_hdf5(path: Path) -> bool:
    import h5py

    try:
        return bool(h5py.is_hdf5(path))
    except OSError:
        return False


# --- readers --------------------------------------------------------------------------------


def read_videos(
    source: FeatureSource,
    manifest: Manifest | None,
    rate: float,
    duration_from_features: bool = False,
    keys: Sequence[str] | None = None,
) -> Iterator[ImportedVideo | RejectedVideo]:
    """Each video of ``source`` (or only ``keys``) with its manifest duration, in key order.

    ``rate`` is rows per second (``1 / clip length``). A video missing from the manifest is
    rejected, unless ``duration_from_features`` (then duration = ``T / rate``)."""
    for key in source.keys() if keys is None else keys:
        entry = manifest.get(key) if manifest is not None else None
        uri = (entry.uri if entry is not None else None) or source.uri(key)
        try:
            array = source.load(key)
        except (ValueError, KeyError, OSError) as exc:
            duration = entry.duration_s if entry is not None else None
            yield RejectedVideo(key, f"cannot read its features: {_reason(exc)}", uri, duration)
            continue
        if entry is not None and entry.problem:
            yield RejectedVideo(key, entry.problem, uri)
            continue
        if entry is not None:
            duration = entry.duration_s
        elif duration_from_features:
            duration = (array.shape[0] if array.ndim >= 1 else 0) / rate
        else:
            where = f"the manifest {manifest.path}" if manifest is not None else "no manifest (none was given)"
            yield RejectedVideo(
                key, f"no duration: the video is not in {where}; add it there or pass --duration-from-features", uri
            )
            continue
        yield ImportedVideo(key, array, rate, float(duration), uri, dict(entry.metadata) if entry else {})


def _reason(exc: BaseException) -> str:
    # KeyError's str() is the repr of its argument: quotes around a whole sentence.
    text = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
    return str(text) if text else type(exc).__name__


# --- digests -------------------------------------------------------------------------------


def feature_digest(array: np.ndarray, rate: float, mode: str) -> str:
    """``sha256:<hex>`` of imported features: the array's float32 values, shape and ``rate``
    (a video's catalog ``content_hash``). Equal for an unchanged file whatever its container
    (HDF5, .npy, float16 or float32)."""
    values = np.ascontiguousarray(array, dtype="<f4")
    h = hashlib.sha256(f"spr-import/1 {mode} shape={values.shape} rate={float(rate)!r}\n".encode())
    h.update(memoryview(values).cast("B"))
    return f"sha256:{h.hexdigest()}"


# --- the import -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ImportOptions:
    """What ``spr import`` was asked for (see :func:`import_features`)."""

    collection: str | None = None  # default: config.vectors.collection
    clip_length_s: float = 1.0  # seconds per feature row (TVR: 1.5)
    segments: bool = False  # the arrays are ready-made (n_seg, dim) segment embeddings
    dataset_key: str | None = None
    duration_from_features: bool = False
    force: bool = False
    feature_model: str = ""  # what produced the features; default "imported:<source name>"
    progress_every: int = 100  # videos between progress callbacks
    # Per-segment text embeddings by track ("speech", "subtitles") -> their feature source.
    text_features: Mapping[str, str | os.PathLike[str]] = field(default_factory=dict)
    text_model: str = ""  # what produced them; default "imported:<text source name>"
    # Return only once the vector index covers every imported row (Milvus builds it in the
    # background; Faiss trains or retrains IVF here), so an eval right after searches it.
    wait_for_index: bool = True
    index_timeout_s: float = 1800.0
    # Publish in bulk (:mod:`.bulk_publish`, doubling batches); False: video by video through
    # spr.publish.publish_videos in the writer's batches, as before (kept for the benchmark's
    # side-by-side run, bench/bench_bulk.py).
    bulk: bool = True


@dataclass(frozen=True)
class ImportProgress:
    processed: int
    total: int
    imported: int
    skipped: int
    failed: int
    elapsed_s: float


@dataclass
class ImportSummary:
    """The outcome. ``failed`` maps key -> reason; ``not_in_manifest`` lists feature keys the
    manifest lacks (failed unless durations came from the features), ``not_in_features``
    manifest keys without features (not imported)."""

    source: str
    collection: str
    mode: str  # "features" or "segments"
    run_id: int | None = None
    dim: int | None = None
    embedder: str = ""
    imported: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    not_in_manifest: list[str] = field(default_factory=list)
    not_in_features: list[str] = field(default_factory=list)
    segments_written: int = 0
    seconds: float = 0.0
    # Seconds spent waiting for the index; why it is not built yet when the wait gave up.
    index_wait_s: float = 0.0
    index_note: str = ""
    # Text tracks, by track: their source, collection and model, the published videos per
    # outcome ("indexed", "empty") and the segments written into the collection.
    tracks: dict[str, "TrackImportSummary"] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return len(self.imported) + len(self.skipped) + len(self.failed)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "collection": self.collection,
            "mode": self.mode,
            "run_id": self.run_id,
            "dim": self.dim,
            "embedder": self.embedder,
            "videos": {"imported": len(self.imported), "skipped": len(self.skipped), "failed": len(self.failed)},
            "failed": self.failed,
            "not_in_manifest": self.not_in_manifest,
            "not_in_features": self.not_in_features,
            "segments_written": self.segments_written,
            "tracks": {track: t.to_dict() for track, t in self.tracks.items()},
            "seconds": self.seconds,
            "index_wait_s": self.index_wait_s,
            "index_note": self.index_note,
        }


@dataclass
class TrackImportSummary:
    """One text track of an import: ``videos`` counts published videos by track status;
    ``not_in_features`` keys of the text source without visual features (not imported)."""

    source: str
    collection: str
    feature_model: str
    dim: int | None = None
    videos: dict[str, int] = field(default_factory=dict)
    segments_written: int = 0
    not_in_features: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "collection": self.collection,
            "feature_model": self.feature_model,
            "dim": self.dim,
            "videos": dict(self.videos),
            "segments_written": self.segments_written,
            "not_in_features": self.not_in_features,
        }


def import_features(
    config: Config,
    features: str | os.PathLike[str],
    manifest: str | os.PathLike[str] | None = None,
    options: ImportOptions = ImportOptions(),
    progress: Callable[[ImportProgress], None] | None = None,
) -> ImportSummary:
    """Import every video of ``features`` (HDF5 file or .npy/.npz directory) into
    ``options.collection`` through the configured catalog, vector store and feature store.

    Raises :class:`ImportInputError` when the import cannot start; per-video problems are
    recorded in the summary, the catalog (row ``failed`` with the reason) and the ingest run."""
    t0 = time.perf_counter()
    if not (options.clip_length_s > 0 and math.isfinite(options.clip_length_s)):
        raise ImportInputError(f"--clip-length must be a positive number of seconds, got {options.clip_length_s}")
    if manifest is None and not options.duration_from_features:
        raise ImportInputError("videos need durations: pass --manifest FILE, or --duration-from-features")
    length_s = config.segments.length_s
    # A segment embedding stands for one segment, so ready-made ones come at one per segment.
    rate = 1.0 / length_s if options.segments else 1.0 / options.clip_length_s
    mode = "segments" if options.segments else "features"
    _check_text_tracks(options.text_features)
    table = read_manifest(manifest) if manifest is not None else None
    collection = options.collection or config.vectors.collection
    texts: list[_TextTrack] = []
    try:
        for track, path in options.text_features.items():
            texts.append(_TextTrack.open(track, path, collection, options))
        source = open_source(features, options.dataset_key)
        summary = ImportSummary(str(source.path), collection, mode)
        try:
            keys = source.keys()
            if table is not None:
                summary.not_in_manifest = [k for k in keys if k not in table]
                present = set(keys)
                summary.not_in_features = sorted(k for k in table.entries if k not in present)
            for text in texts:
                summary.tracks[text.track] = text.summary
                text.summary.not_in_features = sorted(text.keys.difference(keys))
            catalog = SegmentCatalog.from_config(config)
            try:
                store = open_vector_store(config)
                try:
                    run = _ImportRun(config, options, catalog, store, source, summary, rate, progress, t0, texts)
                    run.execute(read_videos(source, table, rate, options.duration_from_features, keys), len(keys))
                    if options.wait_for_index and summary.segments_written:
                        _wait_for_index(store, summary, options.index_timeout_s)
                finally:
                    store.close()
            finally:
                catalog.close()
        finally:
            source.close()
    finally:
        for text in texts:
            text.source.close()
    summary.seconds = time.perf_counter() - t0
    return summary


def _wait_for_index(store: Any, summary: ImportSummary, timeout_s: float) -> None:
    """Wait until the index of every collection this import wrote covers all its rows; a wait
    that times out is noted in the summary (``spr index wait`` resumes it), not a failure."""
    names = [summary.collection, *(t.collection for t in summary.tracks.values())]
    t0 = time.perf_counter()
    for name in names:
        if not store.has_collection(name):
            continue
        try:
            store.wait_until_indexed(name, timeout_s=max(1.0, timeout_s - (time.perf_counter() - t0)))
        except TimeoutError as exc:
            summary.index_note = f"{exc}; searches use it once built (`spr index wait --collection {name}`)"
            break
    summary.index_wait_s = time.perf_counter() - t0


def _check_text_tracks(text_features: Mapping[str, Any]) -> None:
    for track in text_features:
        if track not in TEXT_TRACKS:
            raise ImportInputError(
                f"--text-features {track}=...: {track!r} is not a text track; the text tracks are "
                f"{', '.join(TEXT_TRACKS)}"
            )


class _TextTrack:
    """One text track's feature source and what this import fixed about it: its collection,
    model and (once known) dimension."""

    def __init__(self, track: str, source: FeatureSource, collection: str, model: str) -> None:
        self.track = track
        self.source = source
        self.keys = frozenset(source.keys())
        self.collection = collection
        self.model = model
        self.dim: int | None = None  # the existing collection's, else the first video's
        self.summary = TrackImportSummary(str(source.path), collection, model)

    @classmethod
    def open(cls, track: str, path: str | os.PathLike[str], collection: str, options: ImportOptions) -> "_TextTrack":
        # --dataset-key names the visual array; a text .npz holds one array (or "features").
        source = open_source(path)
        model = options.text_model or f"imported:{source.path.name}"
        return cls(track, source, track_collection(collection, track), model)

    @property
    def label(self) -> str:
        return f"imported {self.source.path.name}"


@dataclass(frozen=True)
class _Embedder:
    """Turns one video's array into its segment embeddings; ``identity`` is recorded."""

    dim: int
    identity: str
    projectors: Any  # spr.models.projector.Projectors, or None in segments mode


class _ImportRun:
    """One import: collection set-up, per-video checks, and the writer's bookkeeping."""

    def __init__(self, config, options, catalog, store, source, summary, rate, progress, t0, texts=()) -> None:
        self.config: Config = config
        self.options: ImportOptions = options
        self.catalog: SegmentCatalog = catalog
        self.store: VectorStore = store
        self.source: FeatureSource = source
        self.summary: ImportSummary = summary
        self.rate = rate
        self.progress = progress
        self.t0 = t0
        self.length_s = config.segments.length_s
        self.feature_model = options.feature_model or f"imported:{source.path.name}"
        self.embedder: _Embedder | None = None
        self.in_dim: int | None = None
        self.texts: list[_TextTrack] = list(texts)
        self.index_spec = index_spec_from_config(config.vectors.index)
        # The catalog rows of the videos being read (by key), for the unchanged check.
        self._rows: dict[str, VideoRecord] = {}
        for text in self.texts:
            self._check_track_collection(text)
        self.writer = VideoWriter(
            catalog, store, summary.collection, self.length_s,
            None if options.segments else FrameFeatureStore.from_config(config), self.feature_model,
            import_flush_rule(config) if options.bulk else FlushRule.from_config(config),
            on_published=self._published, on_failed=self._failed, on_skipped=summary.skipped.append,
            publish=self._publish_batch if options.bulk else None,
            text_collections=existing_track_collections(self.catalog, self.store, self.summary.collection),
            ensure_track=self._ensure_track,
        )

    # -- driver ---------------------------------------------------------------------------

    def execute(self, videos: Iterator[ImportedVideo | RejectedVideo], total: int) -> None:
        s = self.summary
        head = list(itertools.islice(videos, _DIM_VOTERS))
        dim = _common_dim(head)
        if dim is not None:
            self._setup(dim)
        run_config = {
            "command": "import",
            "source": s.source,
            "collection": s.collection,
            "mode": s.mode,
            "rate": self.rate,
            "feature_model": self.feature_model,
            "embedder": s.embedder,
            "force": self.options.force,
            "texts": {t.track: {"source": t.summary.source, "feature_model": t.model} for t in self.texts},
        }
        s.run_id = self.writer.run(self._items(itertools.chain(head, videos), total), run_config, total)

    def _items(self, videos: Iterator[ImportedVideo | RejectedVideo], total: int) -> Iterator[ReaderItem]:
        """The feature-file reader: each video checked and embedded into the writer's item;
        a progress report every ``progress_every`` videos. The catalog rows that tell an
        unchanged video are read :data:`ROWS_PER_READ` videos at a time, not one by one.

        In bulk mode the reading runs ahead on a thread of its own (at most
        :data:`READ_AHEAD` items), so that the next videos are read, hashed and embedded while
        the writer publishes a batch (its catalog, feature and vector writes mostly wait on
        disk or run outside the GIL)."""
        every = self.options.progress_every
        made = self._made(videos)
        if self.options.bulk:
            made = _read_ahead(made, READ_AHEAD)
        for processed, item in enumerate(made, start=1):
            yield item
            self._progress(processed, total, every)

    def _made(self, videos: Iterator[ImportedVideo | RejectedVideo]) -> Iterator[ReaderItem]:
        while chunk := list(itertools.islice(videos, ROWS_PER_READ)):
            self._rows = self._catalog_rows([v.key for v in chunk if isinstance(v, ImportedVideo)])
            for video in chunk:
                yield self._item(video)
        self._rows = {}

    def _catalog_rows(self, keys: Sequence[str]) -> dict[str, VideoRecord]:
        from spr.catalog.bulk import video_rows_by_key
        from spr.catalog.records import video_record

        if self.options.force or not keys:
            return {}  # nothing is skipped
        with self.catalog.engine.connect() as conn:
            return {key: video_record(row) for key, row in video_rows_by_key(conn, keys).items()}

    def _publish_batch(self, payloads: Sequence[VideoPayload]) -> None:
        """The writer's publish step (:func:`.bulk_publish.publish_batch`), after making the
        text collections its videos need (as the writer's own step does)."""
        from .bulk_publish import publish_batch

        collections = self.writer.text_collections
        for payload in payloads:
            for track, text in payload.texts.items():
                if track not in collections:
                    collections[track] = self._ensure_track(track, int(text.embeddings.shape[1]), text.model)
        publish_batch(
            self.catalog, self.store, self.summary.collection, payloads, self.length_s, self.writer.feature_store,
            self.feature_model, collections,
        )

    def _progress(self, processed: int, total: int, every: int) -> None:
        if every <= 0 or processed % every:
            return
        s = self.summary
        self.writer.report_counts()
        if self.progress is not None:
            # Queued videos count as imported: they are published with their batch.
            imported = len(s.imported) + len(self.writer.queue)
            elapsed = time.perf_counter() - self.t0
            self.progress(ImportProgress(processed, total, imported, len(s.skipped), len(s.failed), elapsed))

    def _item(self, item: ImportedVideo | RejectedVideo) -> ReaderItem:
        if isinstance(item, RejectedVideo):
            return self._rejected(item.key, item.error, item.uri, item.duration_s)
        if self.embedder is None:
            # None of the first few videos had usable features: the first that has sets the dim.
            if item.features.ndim != 2 or min(item.features.shape) == 0:
                return self._rejected(item.key, _shape_error(item.features), item.uri, item.duration_s)
            self._setup(item.features.shape[1])
        try:
            array = self._check(item)
        except ValueError as exc:
            return self._rejected(item.key, str(exc), item.uri, item.duration_s)
        try:
            text_rows = {t.track: self._text_rows(t, item) for t in self.texts}
        except ValueError as exc:
            return self._rejected(item.key, str(exc), item.uri, item.duration_s)
        digest = feature_digest(array, item.rate, self.summary.mode)
        provenance = self._provenance(item, text_rows)
        if not self.options.force and self._unchanged(item, digest, provenance):
            return Unchanged(item.key)
        try:
            embeddings = self._embed(array, item)
        except ValueError as exc:
            return self._rejected(item.key, str(exc), item.uri, item.duration_s)
        texts, reports = self._segment_texts(text_rows)
        return VideoPayload(
            key=item.key,
            uri=item.uri,
            duration_s=item.duration_s,
            embeddings=embeddings,
            features={} if self.options.segments else {VISUAL: TimedFeatures(array, item.rate)},
            content_hash=digest,
            metadata={**item.metadata, "import": provenance},
            texts=texts,
            tracks=reports,
        )

    # -- checks ---------------------------------------------------------------------------

    def _check(self, video: ImportedVideo) -> np.ndarray:
        """The video's array as float32, or ValueError saying what is wrong with it."""
        key_bytes = len(video.key.encode())
        if key_bytes > MAX_KEY_BYTES:
            raise ValueError(f"its key is {key_bytes} bytes long; the stores hold keys of up to {MAX_KEY_BYTES}")
        array = video.features
        if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
            raise ValueError(_shape_error(array))
        if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
            raise ValueError(f"its features have dtype {array.dtype}; expected floating-point numbers")
        array = np.asarray(array, dtype=np.float32)
        if array.shape[1] != self.in_dim:
            raise ValueError(
                f"its {'embeddings' if self.options.segments else 'features'} are {array.shape[1]}-d, the others "
                f"{self.in_dim}-d (collection {self.summary.collection!r}); one import holds one kind of feature"
            )
        bad = int(np.count_nonzero(~np.isfinite(array)))
        if bad:
            raise ValueError(f"its features contain {bad} NaN or infinite value(s) of {array.size}")
        duration = video.duration_s
        if not (duration > 0 and math.isfinite(duration)):
            raise ValueError(f"its duration {duration} s is not a positive number of seconds")
        if duration > self.config.ingest.max_video_hours * 3600:
            raise ValueError(
                f"it lasts {duration / 3600:.1f} h, over ingest.max_video_hours={self.config.ingest.max_video_hours}"
            )
        if self.options.segments:
            expected = segment_count(duration, self.length_s)
            if len(array) != expected:
                raise ValueError(
                    f"it has {len(array)} segment embeddings, but a {duration:g}-s video has {expected} segments "
                    f"of {self.length_s:g} s; give one embedding per segment (the last, partial one included)"
                )
            return array
        if float(np.abs(array).max()) > FLOAT16_MAX:
            raise ValueError(f"its features exceed the float16 range the feature store keeps (|x| > {FLOAT16_MAX:g})")
        covered = len(array) / video.rate
        if abs(covered - duration) > max(self.length_s, COVERAGE_TOLERANCE * duration):
            raise ValueError(
                f"its {len(array)} feature rows of {1 / video.rate:g} s cover {covered:g} s, but the video lasts "
                f"{duration:g} s; check --clip-length and the manifest's duration"
            )
        return array

    def _unchanged(self, video: ImportedVideo, digest: str, provenance: dict[str, Any]) -> bool:
        """True when the ready row already holds exactly what this import would write."""
        row = self._rows.get(video.key)
        if row is None or row.status != VideoStatus.READY.value or row.content_hash != digest:
            return False
        before = row.metadata.get("import") or {}
        setup = ("collection", "embedder", "segment_length_s", "feature_model")
        same_setup = all(before.get(k) == provenance[k] for k in setup)
        # An import from before text tracks recorded none: the same as none given now.
        same_setup = same_setup and before.get("texts", {}) == provenance["texts"]
        return same_setup and row.uri == video.uri and abs(row.duration_s - video.duration_s) < 1e-6

    def _provenance(self, video: ImportedVideo, text_rows: Mapping[str, np.ndarray | None]) -> dict[str, Any]:
        """What the catalog row's ``metadata["import"]`` records; ``texts`` holds, per track
        that has rows for the video, their digest and model, so that a changed text file
        counts as a changed video. A track without rows for it is left out: the video has no
        vectors there whether its source lacks it or the track was not given, so adding a
        text file re-publishes only the videos it holds."""
        assert self.embedder is not None
        texts = {}
        for text in self.texts:
            rows = text_rows[text.track]
            if rows is not None:
                digest = feature_digest(rows, 1.0 / self.length_s, f"text:{text.track}")
                texts[text.track] = {"digest": digest, "model": text.model}
        return {
            "source": str(self.source.path),
            "mode": self.summary.mode,
            "rate": video.rate,
            "collection": self.summary.collection,
            "embedder": self.embedder.identity,
            "feature_model": self.feature_model,
            "segment_length_s": self.length_s,
            "texts": texts,
        }

    # -- text tracks ----------------------------------------------------------------------

    def _text_rows(self, text: _TextTrack, video: ImportedVideo) -> np.ndarray | None:
        """The video's ``(n_segments, d)`` float32 rows of ``text``'s track, None when its
        source lacks the video; ValueError saying what is wrong with them."""
        if video.key not in text.keys:
            return None
        track = text.track
        try:
            rows = text.source.load(video.key)
        except (ValueError, KeyError, OSError) as exc:
            raise ValueError(f"cannot read its {track} features: {_reason(exc)}") from None
        if rows.ndim != 2 or rows.shape[1] == 0:
            raise ValueError(
                f"its {track} features have shape {tuple(rows.shape)}; expected (n_segments, d), one row per segment"
            )
        if not (np.issubdtype(rows.dtype, np.floating) or np.issubdtype(rows.dtype, np.integer)):
            raise ValueError(f"its {track} features have dtype {rows.dtype}; expected floating-point numbers")
        rows = np.asarray(rows, dtype=np.float32)
        expected = segment_count(video.duration_s, self.length_s)
        if len(rows) != expected:
            raise ValueError(
                f"its {track} features have {len(rows)} rows, but a {video.duration_s:g}-s video has {expected} "
                f"segments of {self.length_s:g} s; give one row per segment (all zeros where it has no {track})"
            )
        if text.dim is None:
            text.dim = text.summary.dim = rows.shape[1]
        elif rows.shape[1] != text.dim:
            raise ValueError(
                f"its {track} features are {rows.shape[1]}-d, the others {text.dim}-d (collection "
                f"{text.collection!r}); one track holds one kind of text embedding"
            )
        bad = int(np.count_nonzero(~np.isfinite(rows)))
        if bad:
            raise ValueError(f"its {track} features contain {bad} NaN or infinite value(s) of {rows.size}")
        return rows

    def _segment_texts(
        self, text_rows: Mapping[str, np.ndarray | None]
    ) -> tuple[dict[str, SegmentText], dict[str, TrackReport]]:
        """Each track's rows as the payload's :class:`SegmentText` (the non-zero rows, unit
        length, with their ordinals; imported vectors come without their text) and its
        report; a video without rows, or with zeros only, is ``empty`` in that track."""
        texts, reports = {}, {}
        for text in self.texts:
            rows = text_rows[text.track]
            ordinals = np.flatnonzero(np.any(rows != 0, axis=1)) if rows is not None else np.zeros(0, np.int64)
            if not len(ordinals):
                reports[text.track] = TrackReport(TrackStatus.EMPTY, source=text.label)
                continue
            report = TrackReport(TrackStatus.INDEXED, source=text.label, segments=len(ordinals))
            texts[text.track] = SegmentText(
                texts=("",) * len(rows),
                embeddings=l2_normalize(rows[ordinals]),
                transcript=Transcript(text.track, ()),
                report=report,
                model=text.model,
                vector_ordinals=ordinals.astype(np.int64),
            )
            reports[text.track] = report
        return texts, reports

    def _check_track_collection(self, text: _TextTrack) -> None:
        """Refuse, before anything is written, a track collection that exists with another
        backend, metric, index or model; an existing one fixes the track's dimension."""
        record = self.catalog.get_collection(text.collection)
        if record is None:
            return
        try:
            self._ensure_track(text.track, record.dim, text.model)
        except CollectionMismatch as exc:
            hint = "import into another collection (--collection NAME)"
            if exc.kind == "model":
                hint += " or name the text features' model with --text-model"
            raise ImportInputError(f"{exc}: {hint}") from None
        text.dim = text.summary.dim = record.dim

    def _ensure_track(self, track: str, dim: int, model: str) -> str:
        """The writer's hook: create (or check) ``<collection>__<track>`` for ``dim``-d
        vectors of ``model``, with the visual collection's index and metric."""
        return ensure_track_collection(
            self.catalog, self.store, self.summary.collection, track, dim, model, self.index_spec,
            self.config.vectors.metric,
        )

    # -- embedding and the collection -----------------------------------------------------

    def _setup(self, in_dim: int) -> None:
        """Fix this import's feature dimension: load the projector, prepare the collection."""
        self.in_dim = in_dim
        self.embedder = self._make_embedder(in_dim)
        self._prepare_collection(self.embedder)
        self.summary.dim, self.summary.embedder = self.embedder.dim, self.embedder.identity

    def _make_embedder(self, in_dim: int) -> _Embedder:
        if self.options.segments:
            return _Embedder(in_dim, "ready-made", None)
        from spr.models.clip import resolve_device
        from spr.models.projector import load_projectors

        try:
            device = resolve_device(self.config.clip.device)
            projectors = load_projectors(self.config.projector.checkpoint, in_dim, device, uses=("segments",))
        except (ValueError, FileNotFoundError, RuntimeError) as exc:
            raise ImportInputError(str(exc)) from None
        return _Embedder(projectors.dim, projectors.identity, projectors)

    def _embed(self, array: np.ndarray, video: ImportedVideo) -> np.ndarray:
        assert self.embedder is not None
        if self.embedder.projectors is None:
            return l2_normalize(array)
        rows = segment_rows(len(array), video.rate, video.duration_s, self.length_s)
        embeddings = self.embedder.projectors.embed_segments(array, rows)
        if not np.isfinite(embeddings).all():
            raise ValueError("the projector produced NaN or infinite embeddings from its features")
        return embeddings

    def _prepare_collection(self, embedder: _Embedder) -> None:
        """Create (or check) the collection for ``embedder.dim``-d vectors; refuse a collection
        of another shape or holding another model's vectors."""
        name, dim = self.summary.collection, embedder.dim
        model = f"{self.feature_model} + {embedder.identity}"
        spec = index_spec_from_config(self.config.vectors.index)
        try:
            ensure_collection(self.catalog, self.store, name, dim, model, spec, self.config.vectors.metric)
        except CollectionMismatch as exc:
            hint = "import into another collection (--collection NAME)"
            if exc.kind == "model":
                hint += " or name the features' model with --feature-model"
            raise ImportInputError(f"{exc}: {hint}") from None

    # -- outcomes -------------------------------------------------------------------------

    def _rejected(self, key: str, error: str, uri: str = "", duration_s: float | None = None) -> RejectedVideo:
        """``key`` as a failure for the writer, which records it in the run and on its catalog
        row (registered for the purpose when the video is new, so ``spr status`` says why)."""
        metadata = {"import": {"source": str(self.source.path)}}
        return RejectedVideo(key, error, uri or self.source.uri(key), duration_s, metadata=metadata)

    def _published(self, payloads: Sequence[VideoPayload]) -> None:
        self.summary.imported.extend(p.key for p in payloads)
        self.summary.segments_written += sum(len(p.embeddings) for p in payloads)
        for p in payloads:
            for track, report in p.tracks.items():
                counts = self.summary.tracks[track].videos
                counts[report.status.value] = counts.get(report.status.value, 0) + 1
            for track, text in p.texts.items():
                self.summary.tracks[track].segments_written += len(text.embeddings)

    def _failed(self, key: str, error: str) -> None:
        self.summary.failed[key] = error


def _common_dim(items: Sequence[ImportedVideo | RejectedVideo]) -> int | None:
    """The most common width of the 2-D arrays among ``items`` (first seen on a tie)."""
    dims = [
        v.features.shape[1]
        for v in items
        if isinstance(v, ImportedVideo) and v.features.ndim == 2 and min(v.features.shape) > 0
    ]
    if not dims:
        return None
    counts = Counter(dims)
    best = max(counts.values())
    return next(d for d in dims if counts[d] == best)


def _shape_error(array: np.ndarray) -> str:
    return f"its array has shape {tuple(array.shape)}; expected (T, D) with T, D > 0"
