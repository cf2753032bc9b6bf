"""``spr demo``: the whole system on one machine, from nothing to ranked moments.

1. Writes a small corpus of synthetic videos (one of them 20 minutes long) with coloured
   blocks planted at known times, under ``<data_dir>/demo/videos`` (kept for re-runs).
2. Ingests them on the configured defaults (local Ray, SQLite, Faiss) into collection ``demo``;
   a re-run skips what is already in.
3. Starts the refiner and the search service on loopback (free ports).
4. Sends queries through the gRPC client: each planted event once as an embedding (what a
   client with its own encoder sends; here the mean of the event's stored frame features), and
   a few text queries through the CLIP text tower.
5. Prints the moments, whether each planted event came back first, and per-stage timings.

With the default configuration the CLIP weights, the projector and the refiner are RANDOM
(nothing can be downloaded here), and the demo says so: the embedding queries check the
pipeline's plumbing (ids, times, proposals, padding), the text results mean nothing until real
weights (``clip.pretrained``) and trained checkpoints are configured.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from spr.config import Config

COLLECTION = "demo"
RGB = tuple[int, int, int]


@dataclass(frozen=True)
class DemoVideo:
    name: str
    duration_s: float
    events: tuple[tuple[float, float, RGB], ...]


# Event colours double as the text queries' subjects, so real CLIP weights can find them.
CORPUS = (
    DemoVideo("kitchen.mp4", 180.0, ((40.0, 52.0, (220, 30, 30)),)),
    DemoVideo("hallway.mp4", 240.0, ((100.0, 108.0, (30, 200, 40)),)),
    DemoVideo("garden.mp4", 120.0, ()),
    DemoVideo("lecture.mp4", 1200.0, ((604.0, 620.0, (30, 60, 220)),)),
    DemoVideo("street.mp4", 300.0, ((12.0, 20.0, (240, 220, 30)),)),
    DemoVideo("office.mp4", 150.0, ()),
)
TEXT_QUERIES = ("a red square appears in the middle of the screen", "a blue shape during a long lecture")


@dataclass
class DemoQuery:
    label: str
    planted: tuple[str, float, float] | None  # (video key, start, end)
    coarse: Any  # SearchResponse without refinement
    refined: Any  # SearchResponse with refinement
    wall_ms: float

    def found(self) -> bool:
        """The planted event is the best coarse moment, overlapping it at IoU >= 0.5."""
        from spr.metrics import temporal_iou

        if self.planted is None or not self.coarse.moments:
            return False
        best = self.coarse.moments[0]
        key, start, end = self.planted
        return best.video_key == key and temporal_iou(best.start_s, best.end_s, start, end) >= 0.5


@dataclass
class DemoReport:
    videos: int
    video_seconds: float
    ingest: Any  # IngestSummary
    queries: list[DemoQuery] = field(default_factory=list)
    random_weights: bool = True

    @property
    def found(self) -> int:
        return sum(q.found() for q in self.queries if q.planted is not None)

    @property
    def planted(self) -> int:
        return sum(q.planted is not None for q in self.queries)


def write_corpus(folder: Path) -> list[Path]:
    """The demo videos (160x120, 5 fps), written once and reused."""
    from spr.ingest.synthetic_video import write_video

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, video in enumerate(CORPUS):
        path = folder / video.name
        if not path.exists():
            tmp = path.with_suffix(".part" + path.suffix)
            write_video(tmp, video.duration_s, fps=5, size=(160, 120), pattern="events", events=list(video.events), seed=i, preset="ultrafast")
            tmp.rename(path)
        paths.append(path)
    return paths


def run_demo(config: Config, executor: str = "ray", out: TextIO | None = None) -> DemoReport:
    """Generate, ingest, serve, query; returns what happened (and prints it to ``out``)."""
    from spr.ingest.pipeline import run_ingest
    from spr.ingest.sources import sources_from_paths
    from spr.refine.service import serve_refiner
    from spr.search.client import SearchClient
    from spr.search.service import serve_search
    from spr.catalog import SegmentCatalog
    from spr.features import FrameFeatureStore
    from spr.stores import l2_normalize

    say = (lambda line: print(line, file=out, flush=True)) if out is not None else (lambda line: None)
    if not config.clip.pretrained and config.clip.model != "spr-tiny":
        # Random ViT-L/14 weights mean no more than random tiny ones and encode ~100x slower
        # on a laptop CPU; with real weights configured the configured model is used.
        say(f"clip.pretrained is empty: using the built-in spr-tiny model instead of random {config.clip.model} weights")
        config = config.replace(clip=dataclasses.replace(config.clip, model="spr-tiny"))
    folder = config.data_path / "demo" / "videos"
    say(f"[1/4] writing {len(CORPUS)} synthetic videos to {folder}")
    paths = write_corpus(folder)
    say(f"[2/4] ingesting into collection {COLLECTION!r} ({executor}; catalog {config.catalog_url.split('://')[0]}, vectors {config.vectors.backend})")
    summary = run_ingest(config, sources_from_paths(paths), collection=COLLECTION, executor=executor)
    if summary.videos_failed:
        raise RuntimeError(f"demo videos failed to ingest: {summary.failures}")
    report = DemoReport(len(paths), sum(v.duration_s for v in CORPUS), summary)
    say("[3/4] starting the refiner and the search service on loopback")
    refiner, refiner_port = serve_refiner(config, port=0)
    try:
        search, search_port = serve_search(config, port=0, refiner_target=f"127.0.0.1:{refiner_port}")
        try:
            say(f"       refiner 127.0.0.1:{refiner_port}   search 127.0.0.1:{search_port}")
            say("[4/4] querying through the gRPC client")
            catalog = SegmentCatalog.from_config(config)
            features = FrameFeatureStore.from_config(config)
            try:
                planted = []
                for video in CORPUS:
                    for start, end, colour in video.events:
                        vid = catalog.get_video(video.name).id
                        event = features.read_span(vid, start, end).features.astype(np.float32).mean(0)
                        planted.append((f"event in {video.name} (colour {colour})", (video.name, start, end), l2_normalize(event)))
            finally:
                catalog.close()
            with SearchClient(f"127.0.0.1:{search_port}", config.security) as client:
                for label, where, embedding in planted:
                    report.queries.append(_ask(client, label, where, embedding=embedding))
                for text in TEXT_QUERIES:
                    report.queries.append(_ask(client, f'text "{text}"', None, text=text))
            report.random_weights = any(q.refined.random_weights for q in report.queries)
        finally:
            search.stop(1).wait()
    finally:
        refiner.stop(1).wait()
    return report


def _ask(client: Any, label: str, planted: tuple[str, float, float] | None, **query: Any) -> DemoQuery:
    t = time.perf_counter()
    coarse = client.search(collection=COLLECTION, top_k=5, refine=False, **query)
    refined = client.search(collection=COLLECTION, top_k=5, refine=True, **query)
    return DemoQuery(label, planted, coarse, refined, (time.perf_counter() - t) * 1e3)


def print_report(report: DemoReport, out: TextIO) -> None:
    from spr.cli import hms

    s = report.ingest
    print(
        f"\ncorpus: {report.videos} videos, {report.video_seconds / 60:.0f} min; ingest published {s.videos_done}, "
        f"skipped {s.videos_skipped} (already in), {s.segments_written} segments written",
        file=out,
    )
    if report.random_weights:
        print(
            "NOTE: CLIP, the projector and the refiner run with RANDOM weights (no checkpoints configured):\n"
            "      embedding queries below check the pipeline; text results and refined scores are meaningless.",
            file=out,
        )
    for q in report.queries:
        head = f"\n{q.label}"
        if q.planted is not None:
            key, start, end = q.planted
            head += f"\n  planted: {key} [{hms(start)} - {hms(end)}]  ->  {'FOUND first' if q.found() else 'not first'}"
        print(head, file=out)
        for title, response in (("coarse", q.coarse), ("refined", q.refined)):
            state = "refined" if response.refined else ("DEGRADED: " + response.degraded_reason if response.degraded else "coarse")
            print(f"  {title} ({state}):", file=out)
            for rank, m in enumerate(response.moments[:3]):
                print(
                    f"    {rank + 1}. {m.video_key:<12} {hms(m.start_s):>10} - {hms(m.end_s):<10} score {m.score:6.3f}  coarse #{m.coarse_rank + 1}",
                    file=out,
                )
        t = q.refined.timings_ms
        stages = "  ".join(f"{k} {t[k]:.1f}" for k in ("embed", "ann", "catalog", "proposals", "refine", "total") if k in t)
        print(f"  timings (ms, refined call): {stages}", file=out)
    print(f"\nplanted events found first: {report.found}/{report.planted}", file=out)
