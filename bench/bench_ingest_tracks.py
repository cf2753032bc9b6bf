"""Ingest throughput with the text tracks off, subtitles only, and speech + subtitles, on the same
files, with the inline and the Ray executor.

    python bench/bench_ingest_tracks.py                                  # 6 videos x 60 s, both executors
    python bench/bench_ingest_tracks.py --videos 2 --seconds 20 --executors inline --json

**Files** (written once per run into a temporary folder): ``--videos`` synthetic videos of
``--seconds`` at ``--fps`` and ``--size`` (libx264 ultrafast, moving shapes) with an AAC track of
espeak-ng sentences back to back (:func:`spr.ingest.synthetic_speech.write_spoken_video`;
needs espeak-ng), and beside each a SubRip sidecar (``v00.srt`` next to ``v00.mp4``) holding the
same sentences at the seconds they are audible.

**Runs**: for each executor, :func:`spr.ingest.pipeline.run_ingest` three times into fresh data
directories: ``off`` (speech=False, subtitles=False: what ingest did before the text tracks),
``subtitles`` (speech=False, subtitles=True) and ``speech + subtitles``. Each run is a fresh
child process, so no run finds a model another one loaded (the sentence encoder and Whisper
are cached per process). CLIP is the built-in ``spr-tiny`` with RANDOM weights; speech is the
bundled faster-whisper tiny.en (int8 on a CPU), text all-MiniLM-L6-v2 (packaged, offline).
Ray gets ``--ray-cpus`` logical CPUs (``SPR_RAY__NUM_CPUS``).

Figures: ``wall_s`` (``IngestSummary.wall_s``: first video submitted to last published),
``startup_s`` (Ray and model start-up before that), video-seconds per wall second, and per
track the videos per outcome (``IngestSummary.tracks``) and segments with text
(``text_segments``). Markdown tables; ``--json`` adds one JSON line of the figures.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

from _common import SPOKEN_SENTENCES as SENTENCES, OthersCpu, cpu_description  # bench/ is on the path of a script run from it

PAUSE_S = 1.0
MODES = {  # name -> (speech, subtitles)
    "off (old)": (False, False),
    "subtitles": (False, True),
    "speech + subtitles": (True, True),
    "speech": (True, False),  # not run by default (--modes): speech alone
}
DEFAULT_MODES = ["off (old)", "subtitles", "speech + subtitles"]


# --- the files -----------------------------------------------------------------------------------


def _srt_time(seconds: float) -> str:
    ms = int(round(seconds * 1000))
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d},{ms % 1000:03d}"


def write_srt(path: Path, spans: list[tuple[float, float, str]]) -> Path:
    """A SubRip file of ``(start_s, end_s, text)`` cues."""
    blocks = [f"{i}\n{_srt_time(s)} --> {_srt_time(e)}\n{text}\n" for i, (s, e, text) in enumerate(spans, 1)]
    path.write_text("\n".join(blocks), encoding="utf-8")
    return path


def sentence_layout(seconds: float, lengths: dict[str, float], first: int) -> list[tuple[float, str]]:
    """``(start_s, text)`` of :data:`SENTENCES` in turn from ``first``, :data:`PAUSE_S` apart,
    all ending before ``seconds``."""
    layout, t, i = [], 0.5, first
    while t + lengths[SENTENCES[i % len(SENTENCES)]] < seconds - 0.2:
        text = SENTENCES[i % len(SENTENCES)]
        layout.append((t, text))
        t += lengths[text] + PAUSE_S
        i += 1
    return layout


def write_files(folder: Path, videos: int, seconds: float, fps: float, size: tuple[int, int]) -> tuple[list[Path], int]:
    """``videos`` spoken videos with ``.srt`` sidecars under ``folder``; their paths and the
    number of sentences spoken in all."""
    from spr.ingest.synthetic_speech import read_wav, speak, write_spoken_video

    lengths = {}
    for i, text in enumerate(SENTENCES):
        samples, rate = read_wav(speak(text, folder / f"s{i}.wav"))
        lengths[text] = len(samples) / rate
    paths, sentences = [], 0
    for v in range(videos):
        path = folder / f"v{v:02d}.mp4"
        spans = write_spoken_video(path, seconds, sentence_layout(seconds, lengths, v), size, fps, seed=v)
        write_srt(path.with_suffix(".srt"), spans)
        paths.append(path)
        sentences += len(spans)
    return paths, sentences


# --- one run (child process) ---------------------------------------------------------------------


def _run_one(paths: list[str], data_dir: str, executor: str, speech: bool, subtitles: bool, ray_cpus: int, conn) -> None:
    """Child process: one ``run_ingest``; sends a dict of its figures (or ``{"error": ...}``)."""
    try:
        os.environ["HF_HUB_OFFLINE"] = "1"
        from spr.config import LoggingConfig, load_config
        from spr.logs import configure_logging

        configure_logging(LoggingConfig(level="ERROR", json=False))
        from spr.ingest.pipeline import run_ingest
        from spr.ingest.sources import sources_from_paths

        config = load_config(environ={
            "SPR_DATA_DIR": data_dir,
            "SPR_CLIP__MODEL": "spr-tiny",
            "SPR_CLIP__DEVICE": "cpu",
            "SPR_SPEECH__DEVICE": "cpu",
            "SPR_TEXT__DEVICE": "cpu",
            "SPR_RAY__NUM_CPUS": str(ray_cpus),
            "SPR_METRICS__INGEST_PORT": "0",  # a free port: never one another service holds
            "SPR_LOGGING__LEVEL": "ERROR",
        })
        load = OthersCpu()
        t0 = time.perf_counter()
        s = run_ingest(config, sources_from_paths(paths), executor=executor, speech=speech, subtitles=subtitles)
        conn.send({
            "outer_s": time.perf_counter() - t0,
            "wall_s": s.wall_s,
            "startup_s": s.startup_s,
            "video_seconds": s.video_seconds,
            "video_s_per_s": s.video_seconds_per_s,
            "videos_done": s.videos_done,
            "videos_failed": s.videos_failed,
            "segments": s.segments_written,
            "tracks": s.tracks,
            "text_segments": s.text_segments,
            "failures": s.failures,
            "warnings": s.warnings,
            "others_cores": load.cores(),
        })
    except BaseException as exc:  # reported in the table, never a hung parent
        import traceback

        conn.send({"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()})


def run_one(paths: list[Path], data_dir: Path, executor: str, speech: bool, subtitles: bool, ray_cpus: int,
            timeout_s: float) -> dict:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_run_one, args=([str(p) for p in paths], str(data_dir), executor, speech, subtitles,
                                               ray_cpus, child))
    proc.start()
    result = parent.recv() if parent.poll(timeout_s) else {"error": f"no answer within {timeout_s:.0f} s"}
    proc.join(30)
    if proc.is_alive():
        proc.kill()
    return result


# --- tables --------------------------------------------------------------------------------------


def _tracks(r: dict) -> str:
    if not r.get("tracks"):
        return "—"
    return "; ".join(
        f"{track}: " + ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items()))
        + f" ({r['text_segments'].get(track, 0)} text segments)"
        for track, counts in sorted(r["tracks"].items())
    )


def print_table(rows: list[dict]) -> None:
    print("\n| executor | tracks | videos | video-s | wall s | video-s per s | start-up s | "
          "start-up + wall s | other processes (cores) | tracks (videos per outcome) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['executor']} | {r['mode']} | — | — | — | — | — | — | — | failed: {r['error'][:160]} |")
            continue
        print(f"| {r['executor']} | {r['mode']} | {r['videos_done']}/{r['videos_done'] + r['videos_failed']} | "
              f"{r['video_seconds']:.0f} | {r['wall_s']:.1f} | {r['video_s_per_s']:.1f} | {r['startup_s']:.1f} | "
              f"{r['startup_s'] + r['wall_s']:.1f} | {r['others_cores']:.2f} | {_tracks(r)} |")


# --- main ----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--fps", type=float, default=5.0)
    parser.add_argument("--size", type=int, nargs=2, default=(160, 120), metavar=("W", "H"))
    parser.add_argument("--executors", nargs="+", default=["inline", "ray"], choices=["inline", "ray"])
    parser.add_argument("--modes", nargs="+", default=DEFAULT_MODES, choices=list(MODES))
    parser.add_argument("--ray-cpus", type=int, default=2, help="logical CPUs of the local Ray (ray.num_cpus)")
    parser.add_argument("--timeout-s", type=float, default=900.0, help="per run")
    parser.add_argument("--json", action="store_true", help="also print one JSON line of the figures")
    args = parser.parse_args(argv)

    from spr.ingest.synthetic_speech import espeak_available

    if not espeak_available():
        print("espeak-ng is not installed (apt-get install espeak-ng): it speaks the test videos", file=sys.stderr)
        return 2
    machine = cpu_description()
    print(f"machine: {machine}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="spr-bench-tracks-") as folder:
        t0 = time.perf_counter()
        paths, sentences = write_files(Path(folder), args.videos, args.seconds, args.fps, tuple(args.size))
        print(f"wrote {len(paths)} videos x {args.seconds:g} s ({args.size[0]}x{args.size[1]}, {args.fps:g} fps, "
              f"{sentences} spoken sentences, .srt sidecars) in {time.perf_counter() - t0:.1f} s", flush=True)
        for executor in args.executors:
            for mode in args.modes:
                speech, subtitles = MODES[mode]
                data = Path(folder) / f"data-{executor}-{len(rows)}"
                r = run_one(paths, data, executor, speech, subtitles, args.ray_cpus, args.timeout_s)
                rows.append({"executor": executor, "mode": mode, **r})
                if "error" in r:
                    print(f"  {executor} {mode}: FAILED {r['error']}\n{r.get('traceback', '')}", flush=True)
                else:
                    print(f"  {executor} {mode}: wall {r['wall_s']:.1f} s, start-up {r['startup_s']:.1f} s, "
                          f"{r['video_s_per_s']:.1f} video-s/s; {_tracks(r)}", flush=True)
    print(f"\nmachine: {machine}; {args.videos} videos x {args.seconds:g} s, {sentences} sentences spoken "
          f"and subtitled; Ray {args.ray_cpus} CPUs")
    print_table(rows)
    if args.json:
        print(json.dumps({
            "bench": "ingest_tracks", "machine": machine, "videos": args.videos, "seconds": args.seconds,
            "fps": args.fps, "size": list(args.size), "sentences": sentences, "ray_cpus": args.ray_cpus,
            "runs": [{k: v for k, v in r.items() if k != "traceback"} for r in rows],
        }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
