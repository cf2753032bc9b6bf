"""CLIP image-tower throughput (frames/s) of the ingest encoder, per model, precision and batch.

    python bench/bench_clip.py --models ViT-L-14 --precisions fp16 bf16 fp32 --batches 64 256

Frames are random 224-px RGB (already at the model's input size, as the ingest decoder hands
them over), so this is the encoder's ceiling: preprocessing (normalise, host->device copy) plus
``encode_image``. Weights are RANDOM (no downloads here): speed does not depend on them.
Runs on CUDA when present (``--device``), else CPU.

``--videos N`` adds the ingest mapper end to end in this process: synthetic videos (``--video-seconds``
each, 25 fps, 640x360) decoded at 1 fps by PyAV and encoded by :class:`spr.ingest.encoder.VideoEncoder`
(CLIP + projector fallback), without Ray or the stores; ``--workers`` decode threads overlap
decoding with the model, as the encoder actor's threads do.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def frames_per_s(model: str, precision: str, batch: int, device: str, seconds: float) -> float:
    import torch

    from spr.models.clip import load_clip

    encoder = load_clip(model, "", device, precision)
    size = encoder.image_size
    frames = list(np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8))
    encoder.encode_frames(frames, batch)  # warm-up: cuDNN autotune, allocator
    if encoder.device.startswith("cuda"):
        torch.cuda.synchronize()
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        encoder.encode_frames(frames, batch)
        done += batch
    if encoder.device.startswith("cuda"):
        torch.cuda.synchronize()
    return done / (time.perf_counter() - t0)


def videos_per_s(model: str, precision: str, device: str, videos: int, seconds: float, workers: int) -> tuple[float, float]:
    """``(video-seconds/s, frames/s)`` of decode + encode over ``videos`` generated files."""
    import tempfile
    from concurrent.futures import ThreadPoolExecutor
    from pathlib import Path

    from spr.ingest.encoder import EncodedVideo, EncoderSettings, VideoEncoder
    from spr.ingest.sources import sources_from_paths

    from _common import write_videos

    with tempfile.TemporaryDirectory(prefix="spr-bench-clip-") as folder:
        paths = write_videos(Path(folder), videos, seconds, 25, (640, 360), name="v{i}.mp4")
        settings = EncoderSettings(model, "", device, precision, 256, "", 4.0, 1.0)
        encoder = VideoEncoder(settings)
        sources = sources_from_paths(paths)
        encoder.process(sources[0])  # warm-up
        t0 = time.perf_counter()
        with ThreadPoolExecutor(workers) as pool:
            results = list(pool.map(encoder.process, sources))
        wall = time.perf_counter() - t0
        done = [r for r in results if isinstance(r, EncodedVideo)]
        if len(done) != len(results):
            raise RuntimeError(f"some videos failed: {[r for r in results if not isinstance(r, EncodedVideo)][:2]}")
        total_s = sum(r.duration_s for r in done)
        frames = sum(len(r.features) for r in done)
        return total_s / wall, frames / wall


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["ViT-L-14"])
    parser.add_argument("--precisions", nargs="+", default=["auto"])
    parser.add_argument("--batches", nargs="+", type=int, default=[64])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seconds", type=float, default=5.0, help="timing window per row")
    parser.add_argument("--video-seconds", type=float, default=120.0, help="length of each generated video")
    parser.add_argument("--videos", type=int, default=0, help="also run decode + encode over this many generated videos")
    parser.add_argument("--workers", type=int, default=4, help="decode threads for --videos")
    args = parser.parse_args(argv)
    import torch

    where = torch.cuda.get_device_name(0) if torch.cuda.is_available() and args.device != "cpu" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {where}; torch {torch.__version__}")
    print("| model | precision | batch | frames/s |\n|---|---|---:|---:|")
    for model in args.models:
        for precision in args.precisions:
            for batch in args.batches:
                fps = frames_per_s(model, precision, batch, args.device, args.seconds)
                print(f"| {model} | {precision} | {batch} | {fps:.1f} |", flush=True)
    if args.videos:
        print("\n| model | precision | videos | decode threads | video-s/s | frames/s |\n|---|---|---:|---:|---:|---:|")
        for model in args.models:
            for precision in args.precisions:
                vs, fps = videos_per_s(model, precision, args.device, args.videos, args.video_seconds, args.workers)
                print(f"| {model} | {precision} | {args.videos} | {args.workers} | {vs:.1f} | {fps:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
