"""A small ingested corpus behind a real search service and a real web gateway (test fixtures).

Shared by the direct HTTP tests (``test_web_http.py``) and the browser tests
(``test_web_browser.py``)::

    corpus = build_web_corpus(tmp_path)            # ingest + search service + gateway
    httpx.get(corpus.web_url + "api/search", params={"q": corpus.planted.query})
    gateway = corpus.start_web(token="s3cret")     # another gateway (and search service) with a token
    corpus.close()

Three synthetic videos (:func:`spr.ingest.synthetic_video.write_video`, 160x120 at 10 fps) with
SubRip sidecars go through the real ingest (inline executor, SQLite + Faiss under ``root``):
speech is off (no whisper), subtitles are on and embedded by the real offline
all-MiniLM-L6-v2, CLIP is the built-in spr-tiny with random weights (so the engine leaves the
visual modality out and ranks by what is written). One sentence is planted in ``lecture``
at a known span (:data:`PLANTED`); the others are distractors. One more video is brought in by
``spr import`` into the ``archive`` collection: it has no thumbnails (the placeholder case).

``codec`` picks the media the player gets: ``"h264"`` (``.mp4``, what ingest usually sees) or
``"vp9"`` (``.webm``, which Debian's Chromium plays without proprietary codecs).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import av
import numpy as np

from spr.config import Config, SecurityConfig, load_config
from spr.ingest.importer import ImportOptions, import_features
from spr.ingest.pipeline import run_ingest
from spr.ingest.sources import sources_from_manifest
from spr.ingest.synthetic_video import write_video

from subtitled import Cue, write_srt

COLLECTION = "webtest"
ARCHIVE_COLLECTION = "archive"
CODECS = {"h264": ".mp4", "vp9": ".webm"}
SIZE = (160, 120)
FPS = 10


@dataclass(frozen=True)
class Planted:
    """The moment a search for ``query`` must find first: ``video_key`` ``[start_s, end_s)``
    (where the subtitle ``sentence`` is shown)."""

    video_key: str
    start_s: float
    end_s: float
    sentence: str
    query: str


# name -> (duration_s, metadata, subtitle cues). Cues sit on 4-s segment boundaries.
_VIDEOS: dict[str, tuple[float, dict[str, str], list[Cue]]] = {
    "lecture": (32.0, {"course": "maritime", "year": "2024"}, [
        (2.0, 5.0, "Welcome back to the course, today we look at old ships."),
        (16.0, 20.0, "The lighthouse keeper rescued three sailors during the winter storm."),
    ]),
    "cooking": (24.0, {"course": "kitchen", "year": "2023"}, [
        (4.0, 8.0, "Chop the onions finely and fry them in butter until golden."),
        (12.0, 15.0, "Season the soup with salt and black pepper."),
    ]),
    "travel": (28.0, {"course": "geography", "year": "2024"}, [
        (8.0, 12.0, "The train to the mountains leaves from platform nine every morning."),
        (20.0, 23.0, "We watched the sunrise over the desert dunes."),
    ]),
}
PLANTED_NAME = "lecture"
PLANTED_CUE = 1
QUERY = "the lighthouse keeper saved sailors in a storm"
IMPORTED_KEY = "archive-reel"
IMPORTED_DURATION_S = 12.0
IMPORTED_DIM = 8


@dataclass
class WebCorpus:
    """An ingested corpus and the services in front of it (:meth:`close` stops them all).

    ``videos``: key -> media file; ``planted``: the moment :data:`QUERY` must find;
    ``imported_key``: a video without thumbnails (in ``archive_collection``);
    ``search_target``: ``host:port`` of the search service; ``web_url``: the gateway's
    ``http://127.0.0.1:PORT/``."""

    root: Path
    config: Config
    codec: str
    videos: dict[str, Path]
    planted: Planted
    imported_key: str
    collection: str
    archive_collection: str
    search_target: str = ""
    web_url: str = ""
    _servers: list[Any] = field(default_factory=list)

    def start_search(self, token: str = "", refiner_target: str | None = None) -> str:
        """Another search service over the same data (``token``: its bearer token); returns its
        ``host:port``. Stopped by :meth:`close`."""
        from spr.search.service import serve_search

        config = self.config_with(token=token)
        server, port = serve_search(config, port=0, refiner_target=refiner_target)
        self._servers.append(_GrpcStopper(server))
        return f"127.0.0.1:{port}"

    def start_web(self, token: str = "", target: str | None = None, **web: Any):
        """Another gateway (a :class:`spr.search.web.WebServer`) in front of ``target`` (default:
        a new search service with the same ``token``, or the shared one without a token).
        ``web`` overrides :class:`spr.config.WebConfig` fields (``cors_origins``, ``timeout_s``...).
        Stopped by :meth:`close`."""
        from spr.search.web import serve_web

        if target is None:
            target = self.start_search(token) if token else self.search_target
        config = self.config_with(token=token, **web)
        server = serve_web(config, port=0, target=target)
        self._servers.append(server)
        return server

    def config_with(self, token: str = "", **web: Any) -> Config:
        """The corpus's configuration with ``security.token`` and ``web`` fields replaced."""
        return replace(self.config, security=SecurityConfig(token=token), web=replace(self.config.web, **web))

    def close(self) -> None:
        while self._servers:
            self._servers.pop().stop()


class _GrpcStopper:
    def __init__(self, server: Any) -> None:
        self.server = server

    def stop(self) -> None:
        self.server.stop(0)


def build_web_corpus(
    root: Path, token: str = "", codec: str = "h264", refiner: bool = False, start: bool = True
) -> WebCorpus:
    """Write and ingest the corpus under ``root`` and (``start``) serve it: a search service
    (refined by a random-weights refiner when ``refiner``) and a gateway, both with ``token``."""
    if codec not in CODECS:
        raise ValueError(f"codec must be one of {sorted(CODECS)}, got {codec!r}")
    root = Path(root)
    media = root / "media"
    media.mkdir(parents=True, exist_ok=True)
    config = corpus_config(root, token)
    videos, manifest = _write_videos(media, CODECS[codec])
    summary = run_ingest(config, sources_from_manifest(manifest), executor="inline")
    if summary.videos_failed or summary.videos_done != len(videos):
        raise RuntimeError(f"web corpus ingest failed: {summary}")
    imported = _import_archive(config, root / "archive", videos[f"{PLANTED_NAME}{CODECS[codec]}"])
    start_s, end_s, sentence = _VIDEOS[PLANTED_NAME][2][PLANTED_CUE]
    corpus = WebCorpus(
        root=root, config=config, codec=codec, videos={**videos, IMPORTED_KEY: imported},
        planted=Planted(f"{PLANTED_NAME}{CODECS[codec]}", start_s, end_s, sentence, QUERY),
        imported_key=IMPORTED_KEY, collection=COLLECTION, archive_collection=ARCHIVE_COLLECTION,
    )
    if start:
        try:
            refiner_target = _start_refiner(corpus) if refiner else None
            corpus.search_target = corpus.start_search(token, refiner_target)
            corpus.web_url = corpus.start_web(token, target=corpus.search_target).url
        except BaseException:
            corpus.close()
            raise
    return corpus


def corpus_config(root: Path, token: str = "") -> Config:
    """Embedded defaults under ``root``: SQLite, Faiss, spr-tiny CLIP on the CPU, no speech."""
    env = {
        "SPR_DATA_DIR": str(Path(root) / "data"),
        "SPR_CLIP__MODEL": "spr-tiny",
        "SPR_CLIP__DEVICE": "cpu",
        "SPR_CLIP__BATCH_SIZE": "16",
        "SPR_TEXT__DEVICE": "cpu",
        "SPR_SPEECH__ENABLED": "false",
        "SPR_SUBTITLES__ENABLED": "true",
        "SPR_REFINER__DEVICE": "cpu",
        "SPR_VECTORS__COLLECTION": COLLECTION,
        "SPR_LOGGING__LEVEL": "ERROR",
        "SPR_METRICS__ENABLED": "false",
    }
    if token:
        env["SPR_SECURITY__TOKEN"] = token
    return load_config(environ=env)


def write_corpus_video(path: Path, duration_s: float, seed: int) -> Path:
    """One synthetic video at ``path``: H.264 for ``.mp4``, VP9 for ``.webm`` (transcoded from
    ``write_video``'s H.264, so both show the same frames)."""
    if path.suffix == ".mp4":
        return write_video(path, duration_s, fps=FPS, size=SIZE, seed=seed, preset="ultrafast")
    with tempfile.TemporaryDirectory() as tmp:
        source = write_video(Path(tmp) / "frames.mp4", duration_s, fps=FPS, size=SIZE, seed=seed, preset="ultrafast")
        _transcode_vp9(source, path)
    return path


def _transcode_vp9(source: Path, target: Path) -> None:
    with av.open(str(source)) as src, av.open(str(target), "w") as out:
        stream_in = src.streams.video[0]
        stream = out.add_stream("libvpx-vp9", rate=FPS, options={"deadline": "realtime", "cpu-used": "8"})
        stream.width, stream.height, stream.pix_fmt = SIZE[0], SIZE[1], "yuv420p"
        for i, frame in enumerate(src.decode(stream_in)):
            frame = av.VideoFrame.from_ndarray(frame.to_ndarray(format="rgb24"), format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


def _write_videos(folder: Path, suffix: str) -> tuple[dict[str, Path], Path]:
    """The videos, their ``.srt`` sidecars and a JSONL manifest carrying their metadata."""
    videos: dict[str, Path] = {}
    rows = []
    for seed, (name, (duration, metadata, cues)) in enumerate(_VIDEOS.items()):
        path = write_corpus_video(folder / f"{name}{suffix}", duration, seed)
        write_srt(folder / f"{name}.srt", cues)
        videos[path.name] = path
        rows.append({"key": path.name, "path": path.name, "metadata": metadata})
    manifest = folder / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return videos, manifest


def _import_archive(config: Config, folder: Path, media_file: Path) -> Path:
    """``spr import`` one video of ready-made segment embeddings (no thumbnails) into the
    archive collection; its media is a copy of ``media_file``."""
    folder.mkdir(parents=True, exist_ok=True)
    copy = folder / f"{IMPORTED_KEY}{media_file.suffix}"
    copy.write_bytes(media_file.read_bytes())
    segments = int(np.ceil(IMPORTED_DURATION_S / config.segments.length_s))
    features = folder / "features"
    features.mkdir(exist_ok=True)
    np.save(features / f"{IMPORTED_KEY}.npy", np.random.default_rng(7).standard_normal((segments, IMPORTED_DIM)).astype(np.float32))
    manifest = folder / "manifest.jsonl"
    row = {"key": IMPORTED_KEY, "duration": IMPORTED_DURATION_S, "uri": copy.resolve().as_uri(),
           "metadata": {"course": "archive"}}
    manifest.write_text(json.dumps(row) + "\n")
    summary = import_features(config, features, manifest, ImportOptions(collection=ARCHIVE_COLLECTION, segments=True))
    if summary.failed or IMPORTED_KEY not in summary.imported:
        raise RuntimeError(f"web corpus import failed: {summary}")
    return copy


def _start_refiner(corpus: WebCorpus) -> str:
    from spr.refine.service import serve_refiner

    server, port = serve_refiner(corpus.config, port=0)
    corpus._servers.append(_GrpcStopper(server))
    return f"127.0.0.1:{port}"
