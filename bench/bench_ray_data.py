"""Ingest executors side by side: the project's Ray actor pool against a Ray Data pipeline, on the
same files, the same number of encoder actors and the same Ray cluster (started once).

    python bench/bench_ray_data.py --videos 8 --seconds 60 --actors 1 --repeats 2

Both arms do the same work per video: content hash, decode at 1 fps fitted to the CLIP input
size, CLIP image features (float16), segment embeddings (the projector). Neither publishes (that
is the same batched writer whichever executor feeds it):

* ``actor pool``: :class:`spr.ingest.distributed.RayEncoderPool`, driven as ``run_ingest`` drives
  it (``max(capacity, ingest.max_videos_in_flight)`` videos submitted, results as they finish);
* ``ray data``: ``from_items(videos) -> flat_map(decode, tasks) -> map_batches(CLIP, actor pool)``,
  one row per sampled frame, then the driver joins each video's frames back in time order and runs
  the projector (a video is complete only once the whole dataset is).

Wall time counts from "start building the executor" to "every video's features in the driver",
actor start-up and model load included for both. Arms alternate order across ``--repeats``; the
better of each is reported, with the max abs difference of every video's features between them.
CLIP weights are the built-in ``spr-tiny`` with RANDOM (fixed-seed) weights, as in the tests.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from spr.config import load_config
from spr.ingest.distributed import RayEncoderPool, start_ray
from spr.ingest.encoder import EncodedVideo, EncoderSettings, FailedVideo, VideoEncoder, decode_chunks, hash_or_skip
from spr.ingest.sources import VideoSource, sources_from_paths

from _common import cpu_description, write_videos  # bench/ is on the path of a script run from it


@dataclasses.dataclass
class ArmResult:
    """One arm's run: ``features[key]`` ``(T, D)`` float16, ``embeddings[key]`` ``(n, dim)``."""

    name: str
    wall_s: float
    video_seconds: float
    frames: int
    features: dict[str, np.ndarray]
    embeddings: dict[str, np.ndarray]
    failures: dict[str, str]
    torch_threads: set[int]
    startup_s: float  # from the arm's start until its (first) encoder actor had its model loaded

    @property
    def video_seconds_per_s(self) -> float:
        return self.video_seconds / self.wall_s

    @property
    def frames_per_s(self) -> float:
        return self.frames / self.wall_s

    @property
    def steady_video_seconds_per_s(self) -> float:
        """Throughput once a model was loaded (what ``IngestSummary.wall_s`` measures for the pool)."""
        return self.video_seconds / max(self.wall_s - self.startup_s, 1e-9)


# --- machine ----------------------------------------------------------------------------------


def remote_torch_threads(num_cpus: float) -> int:
    """``torch.get_num_threads()`` in a Ray worker holding ``num_cpus`` (what an encoder actor
    with that reservation gets: Ray sets OMP_NUM_THREADS from it)."""
    import ray

    @ray.remote(num_cpus=num_cpus)
    class Probe:
        def threads(self) -> int:
            import torch

            return torch.get_num_threads()

    probe = Probe.remote()
    try:
        return ray.get(probe.threads.remote())
    finally:
        ray.kill(probe)


# --- inputs -----------------------------------------------------------------------------------


def write_noise(path: Path, seed: int, n_bytes: int = 8192) -> Path:
    """A file named like a video that holds random bytes: the decoder must refuse it."""
    path.write_bytes(np.random.default_rng(seed).bytes(n_bytes))
    return path


def clip_image_size(model: str) -> int:
    """The model's input side, from its open_clip config (the driver builds no model)."""
    from spr.models.clip import _open_clip

    size = _open_clip().get_model_config(model)["vision_cfg"]["image_size"]
    return int(size[0] if isinstance(size, (list, tuple)) else size)


# --- arm (a): the project's actor pool -------------------------------------------------------


def run_actor_pool(sources: list[VideoSource], settings: EncoderSettings, actors: int, config: Any) -> ArmResult:
    """``RayEncoderPool`` driven like ``spr.ingest.pipeline._drive`` (no skip hashes: a fresh run)."""
    t = time.perf_counter()
    pool = RayEncoderPool(
        settings,
        actors=actors,
        videos_per_actor=config.ingest.decode_workers,
        gpus_per_actor=config.ingest.gpus_per_actor,
        cpus_per_actor=config.ingest.cpus_per_actor,
    )
    results: list[Any] = []
    try:
        pool.info()  # the first actor has loaded its model: run_ingest's start-up ends here
        startup = time.perf_counter() - t
        in_flight = max(pool.capacity, config.ingest.max_videos_in_flight)
        queue = list(reversed(sources))
        while queue or pool.in_flight():
            while queue and pool.in_flight() < in_flight:
                pool.submit(queue.pop(), None)
            results.extend(pool.wait(timeout_s=0.5))
        wall = time.perf_counter() - t
    finally:
        pool.close()
    done = [r for r in results if isinstance(r, EncodedVideo)]
    return ArmResult(
        name="actor pool",
        wall_s=wall,
        video_seconds=sum(v.duration_s for v in done),
        frames=sum(len(v.features) for v in done),
        features={v.source.key: v.features for v in done},
        embeddings={v.source.key: v.embeddings for v in done},
        failures={r.source.key: r.error for r in results if isinstance(r, FailedVideo)},
        torch_threads=set(),
        startup_s=startup,
    )


# --- arm (b): Ray Data -----------------------------------------------------------------------


def decode_rows(row: dict[str, Any], frame_rate: float, image_size: int, chunk_frames: int):
    """flat_map UDF: one video ``{"key", "path"}`` -> one row per sampled frame
    ``{"key", "index", "duration_s", "avg_fps", "content_hash", "error", "frame" (S, S, 3) uint8}``.

    A bad file becomes one row with ``index = -1`` and the ``error``: an exception here would
    fail the whole dataset, not the video."""
    source = VideoSource(row["key"], row["path"], row["path"])
    blank = np.zeros((image_size, image_size, 3), dtype=np.uint8)
    digest = hash_or_skip(source, None)
    if not isinstance(digest, str):
        yield {"key": source.key, "index": -1, "duration_s": 0.0, "avg_fps": 0.0, "content_hash": "",
               "error": digest.error, "frame": blank}
        return
    index = 0
    try:
        stream = decode_chunks(source.path, frame_rate, image_size, chunk_frames)
        probe = next(stream)
        for chunk in stream:
            for frame in chunk:
                yield {"key": source.key, "index": index, "duration_s": float(probe.duration_s),
                       "avg_fps": float(probe.avg_fps or 0.0), "content_hash": digest, "error": "", "frame": frame}
                index += 1
    except Exception as exc:  # rows already yielded stay; the error row marks the video failed
        yield {"key": source.key, "index": -1, "duration_s": 0.0, "avg_fps": 0.0, "content_hash": digest,
               "error": f"{type(exc).__name__}: {exc}", "frame": blank}


class EncodeFrames:
    """map_batches UDF on an actor pool: one model copy per actor (the project's VideoEncoder)."""

    def __init__(self, settings: EncoderSettings) -> None:
        import torch

        self.encoder = VideoEncoder(settings)
        self.threads = torch.get_num_threads()
        self.ready_at = time.time()  # wall clock: the driver is on the same host

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        frames = batch.pop("frame")
        ok = batch["index"] >= 0
        features = np.zeros((len(frames), self.encoder.clip.dim), dtype=np.float16)
        if ok.any():
            features[ok] = self.encoder.encode_frames(frames[ok])
        return {**batch, "features": features, "torch_threads": np.full(len(frames), self.threads),
                "ready_at": np.full(len(frames), self.ready_at)}


class FeatureJoiner(VideoEncoder):
    """The projector half of :class:`VideoEncoder`, in the driver: ``encode_video`` over chunks
    that are already CLIP features, so padding and segment pooling are the project's own code."""

    def __init__(self, settings: EncoderSettings) -> None:
        from spr.models.clip import clip_feature_dim
        from spr.models.projector import load_projectors

        self.settings = settings
        self.projectors = load_projectors(settings.projector_checkpoint, clip_feature_dim(settings.clip_model), "cpu",
                                          clip_model=settings.clip_model)
        self._lock = threading.Lock()

    def encode_frames(self, frames: np.ndarray) -> np.ndarray:
        return frames  # already (n, D) float16 features from the Ray Data actors


def run_ray_data(sources: list[VideoSource], settings: EncoderSettings, actors: int, cpus_per_actor: float,
                 gpus_per_actor: float, decode_cpus: float = 1.0) -> ArmResult:
    import ray

    t, t_wall = time.perf_counter(), time.time()
    image_size = clip_image_size(settings.clip_model)
    ds = (
        ray.data.from_items([{"key": s.key, "path": s.path} for s in sources], override_num_blocks=len(sources))
        .flat_map(decode_rows, fn_kwargs={"frame_rate": settings.frame_rate, "image_size": image_size,
                                          "chunk_frames": settings.chunk_frames}, num_cpus=decode_cpus)
        .map_batches(EncodeFrames, fn_constructor_args=(settings,), batch_size=settings.chunk_frames,
                     batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=actors),
                     num_cpus=cpus_per_actor, num_gpus=gpus_per_actor)
    )
    parts: dict[str, list[tuple[np.ndarray, np.ndarray]]] = defaultdict(list)
    meta: dict[str, tuple[float, float, str]] = {}  # key -> (duration_s, avg_fps, content_hash)
    failures: dict[str, str] = {}
    threads: set[int] = set()
    ready_at = math.inf
    for batch in ds.iter_batches(batch_format="numpy", batch_size=None):
        threads.update(int(x) for x in np.unique(batch["torch_threads"]))
        ready_at = min(ready_at, float(batch["ready_at"].min()))
        for key in map(str, np.unique(batch["key"])):
            rows = batch["key"] == key
            index = batch["index"][rows]
            if (index < 0).any():
                failures[key] = str(batch["error"][rows][index < 0][0])
            good = index >= 0
            if good.any():
                first = np.flatnonzero(rows)[np.flatnonzero(good)[0]]
                meta[key] = (float(batch["duration_s"][first]), float(batch["avg_fps"][first]), str(batch["content_hash"][first]))
                parts[key].append((index[good], batch["features"][rows][good]))
    # The join Ray Data leaves to the caller: order each video's frames, pad, project.
    joiner = FeatureJoiner(settings)
    by_key = {s.key: s for s in sources}
    done: dict[str, Any] = {}
    for key, chunks in parts.items():
        if key in failures:
            continue
        index = np.concatenate([i for i, _ in chunks])
        feats = np.concatenate([f for _, f in chunks])[np.argsort(index, kind="stable")]
        duration, fps, digest = meta[key]
        probe = SimpleNamespace(duration_s=duration, avg_fps=fps or None)
        done[key] = joiner.encode_video(by_key[key], probe, [feats], digest)
    wall = time.perf_counter() - t
    return ArmResult(
        name="ray data",
        wall_s=wall,
        video_seconds=sum(v.duration_s for v in done.values()),
        frames=sum(len(v.features) for v in done.values()),
        features={k: v.features for k, v in done.items()},
        embeddings={k: v.embeddings for k, v in done.items()},
        failures=failures,
        torch_threads=threads,
        startup_s=ready_at - t_wall if math.isfinite(ready_at) else 0.0,
    )


# --- report -----------------------------------------------------------------------------------


def max_abs_diff(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, float]:
    """Per video ``max |a - b|`` (inf when a video is missing from one side or shapes differ)."""
    out = {}
    for key in sorted(set(a) | set(b)):
        if key not in a or key not in b or a[key].shape != b[key].shape:
            out[key] = math.inf
        else:
            out[key] = float(np.abs(a[key].astype(np.float32) - b[key].astype(np.float32)).max())
    return out


def main(argv: list[str] | None = None) -> int:
    try:  # Ray Data needs pyarrow, which ray==2.60.0 does not pull in (nor the project)
        import pyarrow  # noqa: F401
    except ImportError:
        print("bench_ray_data: Ray Data needs pyarrow: pip install pyarrow", file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--fps", type=float, default=25.0)
    parser.add_argument("--size", type=int, nargs=2, default=(320, 240), metavar=("W", "H"))
    parser.add_argument("--model", default="spr-tiny")
    parser.add_argument("--batch-size", type=int, default=16, help="CLIP batch (clip.batch_size), as the tests")
    parser.add_argument("--actors", type=int, default=1, help="encoder actors, the same in both arms")
    parser.add_argument("--cpus", type=int, default=os.cpu_count(), help="CPUs of the local Ray (ray.num_cpus)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--corrupt", type=int, default=0, help="also this many corrupt files (per-video failures)")
    args = parser.parse_args(argv)
    import ray
    import torch

    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger("spr").setLevel(logging.ERROR)  # the random-weights warnings, once per arm
    with tempfile.TemporaryDirectory(prefix="spr-bench-rd-") as folder:
        config = load_config(environ={
            "SPR_DATA_DIR": str(Path(folder) / "data"),
            "SPR_CLIP__MODEL": args.model,
            "SPR_CLIP__BATCH_SIZE": str(args.batch_size),
            "SPR_RAY__NUM_CPUS": str(args.cpus),
            "SPR_LOGGING__LEVEL": "ERROR",
        })
        t = time.perf_counter()
        paths = write_videos(Path(folder), args.videos, args.seconds, args.fps, tuple(args.size), name="bench-{i:03d}.mp4")
        paths += [write_noise(Path(folder) / f"corrupt-{i:03d}.mp4", seed=i) for i in range(args.corrupt)]
        sources = sources_from_paths(paths)
        print(f"generated {len(paths)} videos x {args.seconds:g} s at {args.fps:g} fps {args.size[0]}x{args.size[1]} "
              f"in {time.perf_counter() - t:.1f} s", flush=True)
        print(f"CPU: {cpu_description()}")
        start_ray(config.ray.address, config.data_path, config.ray.num_cpus)
        try:
            resources = ray.cluster_resources()
            use_gpus = resources.get("GPU", 0) > 0 and config.clip.device != "cpu"
            settings = EncoderSettings.from_config(config)
            if not use_gpus and settings.device == "auto":
                settings = dataclasses.replace(settings, device="cpu")
            # The pool's own rule: actors share what decode tasks leave (RayEncoderPool.__init__).
            cpus_per_actor = min(config.ingest.cpus_per_actor, max(0.0, resources.get("CPU", 0) - 1.0) / args.actors)
            gpus_per_actor = config.ingest.gpus_per_actor if use_gpus else 0
            print(f"torch threads: driver {torch.get_num_threads()}, encoder actor ({cpus_per_actor:g} CPU) "
                  f"{remote_torch_threads(cpus_per_actor)}; Ray {resources.get('CPU', 0):g} CPUs, "
                  f"{args.actors} encoder actor(s), {config.ingest.decode_workers} videos/actor in the pool; "
                  f"model {args.model} ({settings.device}, batch {settings.batch_size})", flush=True)
            runs: dict[str, list[ArmResult]] = defaultdict(list)
            for r in range(args.repeats):
                arms = ["actor pool", "ray data"] if r % 2 == 0 else ["ray data", "actor pool"]
                for arm in arms:
                    if arm == "actor pool":
                        res = run_actor_pool(sources, settings, args.actors, config)
                    else:
                        res = run_ray_data(sources, settings, args.actors, cpus_per_actor, gpus_per_actor)
                    runs[arm].append(res)
                    print(f"  repeat {r + 1} {arm:<10} {res.wall_s:7.2f} s (model loaded at {res.startup_s:5.2f} s)  "
                          f"{res.video_seconds_per_s:7.1f} video-s/s  {res.frames_per_s:7.1f} frames/s  "
                          f"failed {len(res.failures)}  load {os.getloadavg()[0]:.1f}", flush=True)
        finally:
            ray.shutdown()
    best = {arm: min(rs, key=lambda x: x.wall_s) for arm, rs in runs.items()}
    pool, data = best["actor pool"], best["ray data"]
    print(f"\nbest of {args.repeats} | actor pool | ray data\n---|---:|---:")
    print(f"wall s | {pool.wall_s:.2f} | {data.wall_s:.2f}")
    print(f"video-s/s | {pool.video_seconds_per_s:.1f} | {data.video_seconds_per_s:.1f}")
    print(f"frames/s | {pool.frames_per_s:.1f} | {data.frames_per_s:.1f}")
    print(f"first model loaded at s | {pool.startup_s:.2f} | {data.startup_s:.2f}")
    # Only the pool waits for its model before decoding; Ray Data decodes meanwhile, so a rate
    # "after start-up" would credit it with work done during start-up.
    print(f"video-s/s after start-up | {pool.steady_video_seconds_per_s:.1f} | n/a (decode overlaps start-up)")
    print(f"videos done / failed | {len(pool.features)} / {len(pool.failures)} | {len(data.features)} / {len(data.failures)}")
    print(f"all walls s | {' '.join(f'{x.wall_s:.2f}' for x in runs['actor pool'])} | "
          f"{' '.join(f'{x.wall_s:.2f}' for x in runs['ray data'])}")
    print(f"Ray Data actor torch threads: {sorted(data.torch_threads)}")
    feat = max_abs_diff(pool.features, data.features)
    emb = max_abs_diff(pool.embeddings, data.embeddings)
    print("\nper video: max |features pool - data| / max |embeddings pool - data|")
    for key in feat:
        print(f"  {key}: {feat[key]:.3g} / {emb[key]:.3g}")
    same = max(feat.values()) <= 1e-3 and max(emb.values()) <= 1e-3
    if pool.failures or data.failures:
        print("failed videos (pool | ray data):")
        for key in sorted(set(pool.failures) | set(data.failures)):
            print(f"  {key}: {pool.failures.get(key, '-')[:70]} | {data.failures.get(key, '-')[:70]}")
    same = same and set(pool.failures) == set(data.failures)
    print(f"features agree (<= 1e-3) and the same videos failed: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
