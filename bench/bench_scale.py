"""Scale simulation on one host, loopback only: ingest with 1 then 2 Ray encoder actors, then
1, 2, 4 search-service replicas (separate ``spr serve`` processes) behind one client load
generator that round-robins over them.

    python bench/bench_scale.py                                   # 200 videos x 900 segments
    python bench/bench_scale.py --videos 40 --replicas 1 2 --max-queries 100   # a quick look

**Corpus** (synthetic, built once and cached under ``--data-dir``): ``--videos`` videos of
``--segments`` 4-s segments (default 200 x 900 = 180K segments, 200 hours). Each video is a run
of scenes (1 + geometric(1/6) segments); a second's frame feature is its scene's direction plus
noise (64-d, the size of ``spr-tiny``'s CLIP), a segment's embedding the normalised mean of its
four seconds (what the untrained projector, CLIP mean pooling, gives). Everything is published
with :func:`spr.publish.publish_videos` into Faiss (FLAT) + SQLite + the frame-feature store, so
the refiner reads real per-second features for every proposal.

**Ingest**: ``--ingest-videos`` generated videos (``--ingest-seconds`` long, 25 fps, 320x240,
libx264, as in ``bench/bench_ingest.py``) through ``run_ingest(executor="ray")`` with 1 then 2 encoder actors into fresh data directories,
spr-tiny random CLIP. Ray gets ``--ray-cpus`` logical CPUs: an actor holds one CPU for its life
and each decode task needs one, so 2 actors on a 2-CPU Ray would leave no CPU for decoding.

**Search**: for each replica count, that many ``spr serve --search-port 0 --refiner-port 0``
processes (``--topology per-replica``: each its own refiner; ``shared``: the first one's refiner
serves every replica, so its dynamic batcher merges their queries). One process here runs
``--clients`` threads; request ``i`` goes to replica ``i mod R`` (one channel per thread and
replica), stopping after ``--max-queries`` queries or ``--max-seconds``. Text queries (random
English words) through spr-tiny's text tower, top-200 segments, refinement on (deadline
``refiner.timeout_ms``, 2 s). After each step the replicas' own ``/metrics`` endpoints
(port 0, read from their logs) are scraped for the server-side stage means, and their
request counters must add up to what the client sent.

Prints Markdown tables. Weights are random: speed does not depend on them.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from _common import scene_lengths, text_queries, write_videos

DIM = 64  # spr-tiny's CLIP feature size
SEGMENT_S = 4.0
COLLECTION = "scale"
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback, never a proxy


# --- the corpus ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CorpusSpec:
    videos: int
    segments: int  # per video
    dim: int = DIM
    seed: int = 0
    mean_scene: float = 6.0  # segments

    def features(self, v: int) -> np.ndarray:
        """``(segments * 4, dim)`` float32 unit per-second features of video ``v``."""
        rng = np.random.default_rng((self.seed, v))
        lengths = scene_lengths(rng, self.segments, self.mean_scene)
        scenes = rng.standard_normal((len(lengths), self.dim), dtype=np.float32)
        seconds = np.repeat(scenes, np.array(lengths) * int(SEGMENT_S), axis=0)
        x = seconds + 0.7 * rng.standard_normal(seconds.shape, dtype=np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)


def segment_embeddings(features: np.ndarray) -> np.ndarray:
    pooled = features.reshape(-1, int(SEGMENT_S), features.shape[1]).mean(axis=1)
    return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)


def build_corpus(root: Path, spec: CorpusSpec, batch_videos: int = 16) -> float:
    """Publish the corpus under ``root`` unless ``corpus.json`` says it is there; build seconds."""
    marker = root / "corpus.json"
    if marker.is_file() and json.loads(marker.read_text()).get("spec") == asdict(spec):
        return float(json.loads(marker.read_text())["build_s"])
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    from spr.catalog import SegmentCatalog
    from spr.features import VISUAL, FrameFeatureStore, TimedFeatures
    from spr.publish import VideoPayload, publish_videos
    from spr.stores import Flat, index_spec_to_dict, open_vector_store

    t0 = time.perf_counter()
    config = corpus_config(root)
    store = open_vector_store(config)
    catalog = SegmentCatalog.from_config(config)
    features = FrameFeatureStore.from_config(config)
    try:
        store.create_collection(COLLECTION, spec.dim, Flat())
        catalog.register_collection(
            COLLECTION, store.backend, spec.dim, "IP", index_spec_to_dict(Flat()), "spr-tiny/random + mean-pool"
        )
        for lo in range(0, spec.videos, batch_videos):
            payloads = []
            for v in range(lo, min(spec.videos, lo + batch_videos)):
                feats = spec.features(v)
                payloads.append(
                    VideoPayload(
                        key=f"scale/{v:05d}",
                        uri=f"file:///archive/{v:05d}.mp4",
                        duration_s=spec.segments * SEGMENT_S,
                        embeddings=segment_embeddings(feats),
                        features={VISUAL: TimedFeatures(feats, 1.0)},
                    )
                )
            publish_videos(catalog, store, COLLECTION, payloads, SEGMENT_S, features, "spr-tiny/random + mean-pool")
            print(f"  corpus: {min(spec.videos, lo + batch_videos)}/{spec.videos} videos", end="\r", flush=True)
    finally:
        store.close()
        catalog.close()
    build_s = time.perf_counter() - t0
    marker.write_text(json.dumps({"spec": asdict(spec), "build_s": build_s}))
    return build_s


def corpus_env(root: Path) -> dict[str, str]:
    return {
        "SPR_DATA_DIR": str(root),
        "SPR_CLIP__MODEL": "spr-tiny",
        "SPR_CLIP__DEVICE": "cpu",
        "SPR_REFINER__DEVICE": "cpu",
        "SPR_VECTORS__COLLECTION": COLLECTION,
        "SPR_VECTORS__DIM": str(DIM),
        "SPR_FAISS__USE_GPU": "false",
        "SPR_SERVICES__HOST": "127.0.0.1",
        "SPR_METRICS__HOST": "127.0.0.1",
        "SPR_METRICS__SEARCH_PORT": "0",  # a free port per replica, read from its log
        "SPR_METRICS__REFINER_PORT": "0",
        "SPR_METRICS__INGEST_PORT": "0",
    }


def corpus_config(root: Path):
    from spr.config import load_config

    return load_config(environ=corpus_env(root))


# --- ingest with 1 and 2 encoder actors ----------------------------------------------------------


@dataclass
class IngestRow:
    actors: int
    videos: int
    video_seconds: float
    wall_s: float
    startup_s: float
    video_s_per_s: float


def bench_ingest(
    videos: int, seconds: float, fps: float, size: tuple[int, int], actor_counts: list[int], ray_cpus: int
) -> list[IngestRow]:
    from spr.ingest.pipeline import run_ingest
    from spr.ingest.progress import IngestProgress
    from spr.ingest.sources import sources_from_paths
    from spr.config import load_config

    rows = []
    with tempfile.TemporaryDirectory(prefix="spr-scale-videos-") as folder:
        paths = write_videos(Path(folder), videos, seconds, fps, size, name="v{i:02d}.mp4")
        for actors in actor_counts:
            with tempfile.TemporaryDirectory(prefix="spr-scale-ingest-") as data:
                config = load_config(
                    environ={
                        **corpus_env(Path(data)),
                        "SPR_VECTORS__COLLECTION": "segments",
                        "SPR_RAY__NUM_CPUS": str(ray_cpus),
                        "SPR_INGEST__WRITE_BATCH_VIDEOS": "4",
                    }
                )
                summary = run_ingest(
                    config, sources_from_paths(paths), executor="ray", actors=actors,
                    progress=IngestProgress(len(paths), stream=None),
                )
                if summary.videos_failed:
                    raise RuntimeError(f"ingest failed: {summary.failures[:3]}")
                row = IngestRow(
                    actors, summary.videos_done, summary.video_seconds, summary.wall_s, summary.startup_s,
                    summary.video_seconds_per_s,
                )
                print(f"ingest {actors} actor(s): {row.video_s_per_s:.1f} video-s/s ({row.wall_s:.1f} s)", flush=True)
                rows.append(row)
    return rows


# --- search replicas -----------------------------------------------------------------------------


class Replica:
    """One ``spr serve`` child process; ``search_target``, ``refiner_target`` and its metrics
    ports come from its stdout and its JSON log."""

    def __init__(self, env: dict[str, str], refiner_target: str = "") -> None:
        env = {**os.environ, **env, "SPR_LOGGING__JSON": "true", "SPR_LOGGING__LEVEL": "INFO"}
        if refiner_target:
            env["SPR_SERVICES__REFINER_TARGET"] = refiner_target
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "spr.cli", "serve", "--search-port", "0", "--refiner-port", "0"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.search_target = ""
        self.refiner_target = refiner_target
        self.metrics_ports: dict[str, int] = {}
        self.errors: list[str] = []
        self._ready = threading.Event()
        threading.Thread(target=self._read_stdout, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()

    def _read_stdout(self) -> None:
        for line in self.proc.stdout:
            found = re.search(r"^(search|refiner)\s+listening on (\S+):(\d+)", line)
            if found:
                target = f"127.0.0.1:{found.group(3)}"
                if found.group(1) == "refiner":
                    self.refiner_target = target
                else:
                    self.search_target = target
                    self._ready.set()
        self._ready.set()  # exited

    def _read_stderr(self) -> None:
        for line in self.proc.stderr:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("logger") == "spr.telemetry" and entry.get("level") == "info":
                self.metrics_ports[entry["component"]] = int(entry["metrics_port"])
            elif entry.get("level") in ("error", "critical"):
                self.errors.append(entry.get("msg", ""))

    def wait_ready(self, timeout_s: float = 300) -> None:
        if not self._ready.wait(timeout_s) or not self.search_target:
            self.stop()
            raise RuntimeError(f"a replica did not start (exit {self.proc.poll()}): {self.errors[-3:]}")
        deadline = time.monotonic() + 30  # the metrics log line follows the listening line
        while "search" not in self.metrics_ports and time.monotonic() < deadline:
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_replicas(env: dict[str, str], count: int, topology: str) -> list[Replica]:
    first = Replica(env)
    first.wait_ready()
    shared = first.refiner_target if topology == "shared" else ""
    rest = [Replica(env, shared) for _ in range(count - 1)]
    for r in rest:
        r.wait_ready()
    return [first, *rest]


@dataclass
class LoadResult:
    latencies_ms: list[float] = field(default_factory=list)
    per_replica: list[int] = field(default_factory=list)
    degraded: int = 0
    refined: int = 0
    errors: int = 0
    wall_s: float = 0.0


def run_load(targets: list[str], queries: list[str], clients: int, max_queries: int, max_seconds: float) -> LoadResult:
    """``clients`` threads; query ``i`` goes to ``targets[i % len(targets)]``."""
    from spr.search.client import SearchClient

    result = LoadResult(per_replica=[0] * len(targets))
    counter = itertools.count()
    lock = threading.Lock()
    start = time.perf_counter()
    deadline = start + max_seconds
    last_done = [start]

    def worker() -> None:
        conns = [SearchClient(t, timeout_s=60) for t in targets]
        try:
            while time.perf_counter() < deadline:
                i = next(counter)
                if i >= max_queries:
                    return
                r = i % len(targets)
                t0 = time.perf_counter()
                try:
                    response = conns[r].search(text=queries[i % len(queries)], top_k=10)
                except Exception:
                    with lock:
                        result.errors += 1
                    continue
                t1 = time.perf_counter()
                with lock:
                    result.latencies_ms.append((t1 - t0) * 1e3)
                    result.per_replica[r] += 1
                    result.degraded += response.degraded
                    result.refined += response.refined
                    last_done[0] = max(last_done[0], t1)
        finally:
            for c in conns:
                c.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result.wall_s = last_done[0] - start
    return result


def scrape(port: int) -> dict[tuple[str, frozenset], float]:
    from prometheus_client.parser import text_string_to_metric_families

    with _OPENER.open(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def server_totals(replicas: list[Replica]) -> dict[str, float]:
    """Summed over the replicas' endpoints: OK requests, stage sums/counts, refiner batches."""
    out: dict[str, float] = {}

    def add(key: str, v: float) -> None:
        out[key] = out.get(key, 0.0) + v

    for r in replicas:
        if "search" in r.metrics_ports:
            s = scrape(r.metrics_ports["search"])
            # The process collector: one per replica process (its refiner included, if any).
            add("cpu_s", s.get(("process_cpu_seconds_total", frozenset()), 0.0))
            add("ok", s.get(("spr_search_requests_total", frozenset({("code", "OK")})), 0.0))
            for stage in ("total", "refine", "ann", "embed"):
                add(f"{stage}_sum", s.get(("spr_search_stage_seconds_sum", frozenset({("stage", stage)})), 0.0))
                add(f"{stage}_count", s.get(("spr_search_stage_seconds_count", frozenset({("stage", stage)})), 0.0))
        if "refiner" in r.metrics_ports:
            s = scrape(r.metrics_ports["refiner"])
            add("batches", s.get(("spr_refiner_batch_queries_count", frozenset()), 0.0))
            add("batched_queries", s.get(("spr_refiner_batch_queries_sum", frozenset()), 0.0))
    return out


def minus(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items()}


@dataclass
class SearchRow:
    replicas: int
    topology: str
    clients: int
    queries: int
    qps: float
    p50_ms: float
    p99_ms: float
    server_total_ms: float
    server_refine_ms: float
    queries_per_batch: float
    degraded: int
    errors: int
    balance: str
    server_cores: float  # CPU seconds of the replica processes per wall second
    client_cores: float  # the same for this load-generating process


def bench_search(env: dict[str, str], counts: list[int], topology: str, args: argparse.Namespace) -> list[SearchRow]:
    queries = text_queries(max(args.max_queries, 64), seed=1)
    rows = []
    for count in counts:
        t0 = time.perf_counter()
        replicas = start_replicas(env, count, topology)
        try:
            targets = [r.search_target for r in replicas]
            print(f"{count} replica(s) ({topology}) up in {time.perf_counter() - t0:.1f} s: {targets}", flush=True)
            run_load(targets, text_queries(4 * count, seed=99), 1, 4 * count, 120)  # warm-up: torch, caches
            steps = [1, args.clients] if count == 1 and args.baseline and args.clients != 1 else [args.clients]
            for clients in steps:
                rows.append(measure(replicas, targets, queries, clients, count, topology, args))
        finally:
            for r in replicas:
                r.stop()
    return rows


def measure(
    replicas: list[Replica], targets: list[str], queries: list[str], clients: int, count: int, topology: str,
    args: argparse.Namespace,
) -> SearchRow:
    before = server_totals(replicas)
    cpu0 = time.process_time()
    load = run_load(targets, queries, clients, args.max_queries, args.max_seconds)
    client_cpu = time.process_time() - cpu0
    server = minus(server_totals(replicas), before)
    done = len(load.latencies_ms)
    if server.get("ok", 0) != done:
        print(f"  note: replicas counted {server.get('ok', 0):.0f} OK searches, the client {done}", flush=True)
    lat = np.array(load.latencies_ms) if done else np.array([math.nan])
    row = SearchRow(
        replicas=count,
        topology=topology,
        clients=clients,
        queries=done,
        qps=done / load.wall_s if load.wall_s else 0.0,
        p50_ms=float(np.percentile(lat, 50)),
        p99_ms=float(np.percentile(lat, 99)),
        server_total_ms=1e3 * server.get("total_sum", 0) / max(server.get("total_count", 0), 1),
        server_refine_ms=1e3 * server.get("refine_sum", 0) / max(server.get("refine_count", 0), 1),
        queries_per_batch=server.get("batched_queries", 0) / max(server.get("batches", 0), 1),
        degraded=load.degraded,
        errors=load.errors,
        balance="/".join(str(n) for n in load.per_replica),
        server_cores=server.get("cpu_s", 0.0) / load.wall_s if load.wall_s else 0.0,
        client_cores=client_cpu / load.wall_s if load.wall_s else 0.0,
    )
    print(
        f"  {count} replica(s), {clients} client(s): {row.qps:.1f} q/s, p50 {row.p50_ms:.0f} ms, "
        f"p99 {row.p99_ms:.0f} ms, {row.degraded} degraded, {row.errors} errors",
        flush=True,
    )
    return row


# --- main ----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "spr-bench-scale")
    parser.add_argument("--videos", type=int, default=200)
    parser.add_argument("--segments", type=int, default=900, help="4-s segments per video")
    parser.add_argument("--ingest-videos", type=int, default=8)
    parser.add_argument("--ingest-seconds", type=float, default=120.0)
    parser.add_argument("--ingest-fps", type=float, default=25.0)
    parser.add_argument("--ingest-size", type=int, nargs=2, default=(320, 240), metavar=("W", "H"))
    parser.add_argument("--actors", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--ray-cpus", type=int, default=4, help="logical CPUs of the local Ray")
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--topology", nargs="+", default=["per-replica"], choices=["per-replica", "shared"])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument(
        "--no-baseline", dest="baseline", action="store_false", help="skip the 1-replica, 1-client row"
    )
    parser.add_argument("--max-queries", type=int, default=300)
    parser.add_argument("--max-seconds", type=float, default=30.0)
    parser.add_argument("--skip-ingest", action="store_true")
    parser.add_argument("--skip-search", action="store_true")
    args = parser.parse_args(argv)

    from spr.config import LoggingConfig
    from spr.logs import configure_logging

    configure_logging(LoggingConfig(level="ERROR", json=False))
    print(f"# {os.cpu_count()} CPUs; corpus {args.videos} videos x {args.segments} segments", flush=True)
    spec = CorpusSpec(args.videos, args.segments)
    build_s = build_corpus(args.data_dir, spec)
    print(f"corpus: {spec.videos * spec.segments:,} segments ({build_s:.1f} s to build)", flush=True)

    ingest_rows = [] if args.skip_ingest else bench_ingest(
        args.ingest_videos, args.ingest_seconds, args.ingest_fps, tuple(args.ingest_size), args.actors, args.ray_cpus
    )
    search_rows = []
    for topology in [] if args.skip_search else args.topology:
        search_rows += bench_search(corpus_env(args.data_dir), args.replicas, topology, args)

    if ingest_rows:
        print("\n| encoder actors | videos | video-s | wall s | video-s per s | start-up s |\n|---:|---:|---:|---:|---:|---:|")
        for r in ingest_rows:
            print(f"| {r.actors} | {r.videos} | {r.video_seconds:.0f} | {r.wall_s:.1f} | {r.video_s_per_s:.1f} | {r.startup_s:.1f} |")
    print(
        "\n| replicas | refiner | clients | queries | queries/s | p50 ms | p99 ms | server total ms | "
        "server refine ms | queries per refiner batch | server cores busy | client cores busy | degraded | "
        "per replica |\n|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
    )
    for r in search_rows:
        refiner = "one per replica" if r.topology == "per-replica" else "shared"
        print(
            f"| {r.replicas} | {refiner} | {r.clients} | {r.queries} | {r.qps:.1f} | {r.p50_ms:.0f} | {r.p99_ms:.0f} | "
            f"{r.server_total_ms:.0f} | {r.server_refine_ms:.0f} | {r.queries_per_batch:.2f} | {r.server_cores:.2f} | "
            f"{r.client_cores:.2f} | {r.degraded} | {r.balance} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
