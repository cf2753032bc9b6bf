"""Ingest throughput: video-seconds per wall-second and frames/s, next to PyAV's raw decode rate
on the same files in the same run.

    python bench/bench_ingest.py --videos 8 --seconds 120 --models spr-tiny ViT-B-32 --executors inline ray

Generates ``--videos`` synthetic videos (``--size`` pixels, ``--fps`` frames/s, libx264) in a
temporary folder, then prints, per file set:

* ``decode all``: every frame decoded, no conversion (PyAV's raw rate, frames/s);
* ``sample 1 fps``: the ingest decoder (1 frame/s by presentation time, resized for CLIP);
* one row per (model, executor): the whole ``spr ingest`` pipeline into a fresh SQLite + Faiss
  data directory (decode tasks, CLIP encoder, projector fallback, batched writes).

CLIP weights are RANDOM (no downloads here); speed does not depend on the weights' values.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from spr.ingest.decode import probe_video, sample_frames
from spr.ingest.pipeline import run_ingest
from spr.ingest.progress import IngestProgress
from spr.ingest.sources import sources_from_paths
from spr.config import load_config

from _common import write_videos


def bench_decode(paths: list[Path], image_size: int) -> tuple[float, float, float]:
    """``(all-frames decode frames/s, 1-fps sampling video-s/s, sampled frames/s)``."""
    t = time.perf_counter()
    frames = sum(_frame_count(p) for p in paths)
    raw_fps = frames / (time.perf_counter() - t)
    t = time.perf_counter()
    sampled = sum(1 for p in paths for _ in sample_frames(p, fps=1.0, size=image_size))
    wall = time.perf_counter() - t
    seconds = sum(probe_video(p).duration_s for p in paths)
    return raw_fps, seconds / wall, sampled / wall


def _frame_count(path: Path) -> int:
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        return sum(1 for _ in container.decode(stream))


def bench_pipeline(paths: list[Path], model: str, executor: str, actors: int, pretrained: str = "") -> tuple[float, float, float]:
    """``(video-s/s, frames/s, wall s)`` of a full ingest into a fresh data directory."""
    with tempfile.TemporaryDirectory(prefix="spr-bench-") as data:
        config = load_config(
            environ={
                "SPR_DATA_DIR": data,
                "SPR_CLIP__MODEL": model,
                "SPR_CLIP__PRETRAINED": pretrained,
                "SPR_LOGGING__LEVEL": "ERROR",
            }
        )
        summary = run_ingest(
            config, sources_from_paths(paths), executor=executor, actors=actors,
            progress=IngestProgress(len(paths), stream=None),
        )
        if summary.videos_failed:
            raise RuntimeError(f"{summary.videos_failed} videos failed: {summary.failures[:3]}")
        return summary.video_seconds_per_s, summary.frames_per_s, summary.wall_s


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--fps", type=float, default=25.0)
    parser.add_argument("--size", type=int, nargs=2, default=(320, 240), metavar=("W", "H"))
    parser.add_argument("--models", nargs="+", default=["spr-tiny", "ViT-B-32"])
    parser.add_argument("--executors", nargs="+", default=["inline", "ray"], choices=["inline", "ray"])
    parser.add_argument("--actors", type=int, default=1)
    args = parser.parse_args(argv)
    from spr.models.clip import load_clip

    with tempfile.TemporaryDirectory(prefix="spr-bench-videos-") as folder:
        t = time.perf_counter()
        paths = write_videos(Path(folder), args.videos, args.seconds, args.fps, tuple(args.size), name="bench-{i:03d}.mp4")
        print(f"generated {len(paths)} videos x {args.seconds:.0f} s at {args.fps:g} fps {args.size[0]}x{args.size[1]} "
              f"in {time.perf_counter() - t:.1f} s; {os.cpu_count()} CPUs", flush=True)
        rows = []
        for model in args.models:
            size = load_clip(model).image_size
            raw, sample_vs, sample_fps = bench_decode(paths, size)
            rows.append((f"PyAV decode all frames ({args.fps:g} fps)", "-", f"{raw / args.fps:.1f}", f"{raw:.0f} decoded"))
            rows.append((f"decoder, 1-fps sampling, {size}px", "-", f"{sample_vs:.1f}", f"{sample_fps:.1f}"))
            for executor in args.executors:
                vs, fps, wall = bench_pipeline(paths, model, executor, args.actors)
                rows.append((f"ingest {model} (random weights)", executor, f"{vs:.1f}", f"{fps:.1f}"))
                print(f"{model:<10} {executor:<6} {vs:8.1f} video-s/s {fps:8.1f} frames/s  ({wall:.1f} s)", flush=True)
        print("\n| stage | executor | video-s per s | frames/s |\n|---|---|---:|---:|")
        for row in rows:
            print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
