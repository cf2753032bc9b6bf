"""CLIP image-tower throughput (frames/s) of the ingest encoder, per model, precision and batch.

    python bench/bench_clip.py --models ViT-L-14 --precisions fp16 bf16 fp32 --batches 64 256
    python bench/bench_clip.py --skip-frames --text-models spr-tiny ViT-L-14   # the text tower

``--text-models`` times the query path's text tower at batch 1, old and new side by side in
one run: open_clip's full-context pass (77 positions for ViT-L-14) against the query's real
tokens only (``ClipEncoder.encode_texts``), per precision (``--text-precisions``; default fp32,
plus bf16 where the CPU has native bf16 dot products), with each one's cosine to the fp32 full
pass, and a query-cache hit (:class:`spr.models.query.QueryEncoder`). It prints the CPU flags
and what ``auto`` resolves to on this machine.

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

from spr.cpu import native_bf16


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


def text_rows(model: str, precision: str, device: str, queries: list[str], reps: int, reference: dict) -> list[dict]:
    """Batch-1 latencies (ms) of ``model`` at ``precision`` over ``queries`` x ``reps``: the
    full-context pass, the real-token pass and a cache hit; ``reference`` holds (and is filled
    with) each model's fp32 full-context features, which every row's cosine is taken against."""
    from spr.models.clip import load_clip
    from spr.models.projector import load_projectors
    from spr.models.query import QueryEncoder

    from _common import pct

    clip = load_clip(model, "", device, precision)
    context = int(clip.tokenizer(["x"]).shape[1])
    tokens = [int(t.argmax()) + 1 for t in clip.tokenizer(queries)]  # SOT .. EOT
    rows = []
    for label, full in (("old: full context", True), ("new: real tokens", False)):
        clip.encode_texts(queries[:2], full_context=full)  # warm-up
        times = []
        for _ in range(reps):
            for q in queries:
                t0 = time.perf_counter()
                clip.encode_texts([q], full_context=full)
                times.append((time.perf_counter() - t0) * 1e3)
        feats = np.concatenate([clip.encode_texts([q], full_context=full) for q in queries])
        if precision == "fp32" and full:
            reference.setdefault(model, feats)
        ref = reference.get(model)
        cos = float((feats * ref).sum(1).min()) if ref is not None else float("nan")
        positions = context if full else float(np.mean(tokens))
        rows.append({"model": model, "precision": clip.precision, "path": label, "positions": positions,
                     "p50": pct(times, 50), "p99": pct(times, 99), "cos": cos})
    encoder = QueryEncoder(clip, load_projectors("", clip.dim, device=clip.device), cache_size=1024)
    for q in queries:
        encoder.encode(q)  # fills the cache
    times = []
    for _ in range(reps):
        for q in queries:
            t0 = time.perf_counter()
            encoder.encode(q)
            times.append((time.perf_counter() - t0) * 1e3)
    rows.append({"model": model, "precision": clip.precision, "path": "cache hit", "positions": 0,
                 "p50": pct(times, 50), "p99": pct(times, 99), "cos": rows[-1]["cos"]})
    return rows


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
    parser.add_argument("--skip-frames", action="store_true", help="no image-tower rows")
    parser.add_argument("--text-models", nargs="*", default=[], help="time the text tower of these models at batch 1")
    parser.add_argument("--text-precisions", nargs="+", help="default: fp32, and bf16 where the CPU has native bf16")
    parser.add_argument("--text-queries", type=int, default=32, help="distinct queries (4-9 words each)")
    parser.add_argument("--text-reps", type=int, default=5, help="passes over the queries per row")
    args = parser.parse_args(argv)
    import torch

    from spr.models.clip import cpu_flags, cpu_has_native_bf16, resolve_device, resolve_precision

    from _common import cpu_description, text_queries

    where = torch.cuda.get_device_name(0) if torch.cuda.is_available() and args.device != "cpu" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {where}; torch {torch.__version__}")
    print(f"cpu: {cpu_description()}")
    device = resolve_device(args.device)
    print(f"precision auto on {device}: {resolve_precision('auto', device)} "
          f"(native bf16 dot products: {'yes' if native_bf16() else 'no'})")
    if args.text_models:
        precisions = args.text_precisions or (
            ["fp32", "bf16"] if device.startswith("cuda") or native_bf16() else ["fp32"]
        )
        queries, reference = text_queries(args.text_queries), {}
        print(f"\ntext tower, batch 1, {len(queries)} queries x {args.text_reps}; cos: the lowest cosine to the fp32 full-context feature")
        print("| model | precision | path | positions | p50 ms | p99 ms | cos |\n|---|---|---|---:|---:|---:|---:|")
        for model in args.text_models:
            for precision in sorted(precisions, key=lambda p: p != "fp32"):  # fp32 first: the reference
                for r in text_rows(model, precision, args.device, queries, args.text_reps, reference):
                    print(f"| {r['model']} | {r['precision']} | {r['path']} | {r['positions']:.1f} | {r['p50']:.3f} | "
                          f"{r['p99']:.3f} | {r['cos']:.7f} |", flush=True)
    if args.skip_frames:
        return 0
    print("\n| model | precision | batch | frames/s |\n|---|---|---:|---:|")
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
