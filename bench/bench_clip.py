"""CLIP image-tower throughput (frames/s) of the ingest encoder, per model, precision and batch.

    python bench/bench_clip.py --models ViT-L-14 --precisions fp16 bf16 fp32 --batches 64 256

Frames are random 224-px RGB (already at the model's input size, as the ingest decoder hands
them over), so this is the encoder's ceiling: preprocessing (normalise, host->device copy) plus
``encode_image``. Weights are RANDOM (no downloads here): speed does not depend on them.
Runs on CUDA when present (``--device``), else CPU.
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["ViT-L-14"])
    parser.add_argument("--precisions", nargs="+", default=["auto"])
    parser.add_argument("--batches", nargs="+", type=int, default=[64])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seconds", type=float, default=5.0)
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
