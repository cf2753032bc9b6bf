"""Search-service benchmark: per-stage latency of the whole query path through the real gRPC
services on loopback (embed, ann, catalog, proposals, refine, total as the service reports them
in ``timings_ms``, plus the client's wall time), at 1 and 16 concurrent clients, with and
without refinement.

    python bench/bench_search.py --sizes 100000 --backends faiss milvus --indexes FLAT IVF_FLAT IVF_PQ
    python bench/bench_search.py --sizes 1000000 --backends faiss --indexes IVF_FLAT IVF_PQ FLAT

**Server.** One child process runs the refiner and the search service the way ``spr serve``
does (both in one process, :func:`spr.refine.service.serve_refiner` then
:func:`spr.search.service.serve_search`, default worker counts, Faiss on 1 OpenMP thread, refiner
deadline ``refiner.timeout_ms``); the clients (:class:`spr.search.client.SearchClient`, one channel
per client thread) run in this process. Everything has random weights: CLIP is ``spr-tiny``
(64-d, so ``embed`` is a small text tower, far cheaper than ViT-L-14's; ``--clip-model
ViT-L-14`` measures that one), the text projector a random CLIP -> 768 linear layer, the refiner
a random SPR_CLIP (768-d frames, 2 layers) with a CLIP-sized text input; both checkpoints are
written under the data directory.

**Corpus** (synthetic, cached under ``--data-dir``; a rerun only rebuilds what is missing). ``n``
segments of 4 s as one-hour videos of 900 segments (the last one shorter), 768-d unit
embeddings. A video is a sequence of scenes (1 + geometric(1/6) segments); a scene takes a
topic centre, a scene offset (0.5 x a centre's norm) and per-segment noise, so segments cluster
by topic and by scene, and ~400 segments share a topic. The catalog (SQLite) and the frame
features are written through :func:`spr.publish.publish_videos`; the vectors go to each index's
collection from the same arrays, with the catalog's segment ids.

Frame features (per second, 768-d float16, random) exist only for the first ``--hot-videos``
videos (120: all of a 100K corpus, 11 % of a 1M one); per-second features of 1M segments
would be 4M x 768 x 2 bytes = 6 GB. Hot and cold videos draw topics from separate pools, and
every query is a hot scene's centre + its offset + noise, so a query's top-200 segments (and
its ~100 proposals) fall in hot videos; the ANN still searches all ``n`` vectors. Proposals of
cold videos would be dropped by the refiner; the coverage table says how many there were.

Text queries (``--text-queries``, random English phrases) measure ``embed``; the rest send
``embedding=`` (what the ANN part depends on). Milvus: ``--milvus-uri``, or else this script
starts one with ``spr milvus start --dir --milvus-dir --port 0`` and stops it at the end.
Prints one line per run, a coverage/build table and the latency table (Markdown).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from _common import OthersCpu, index_spec, load_collection, open_store, pct, scene_lengths, text_queries

DIM = 768
SEGMENT_S = 4.0
VIDEO_SEGMENTS = 900  # one hour of 4-s segments
PAD_S = 8.0  # proposals.pad_s (tau_C)
STAGES = ("embed", "ann", "catalog", "proposals", "refine", "total")


# --- the synthetic corpus ------------------------------------------------------------------------


@dataclass(frozen=True)
class CorpusSpec:
    """What the cached corpus was built from (a mismatch rebuilds it)."""

    n: int
    dim: int = DIM
    seed: int = 0
    hot_videos: int = 120
    topic_segments: int = 400  # segments per topic centre
    mean_scene: float = 6.0  # mean scene length in segments
    scene_scale: float = 0.5  # scene offset std relative to a centre's

    def video_sizes(self) -> list[int]:
        """Segments per video: 900 each, the last one shorter."""
        full, rest = divmod(self.n, VIDEO_SEGMENTS)
        return [VIDEO_SEGMENTS] * full + ([rest] if rest else [])

    def is_hot(self, v: int) -> bool:
        return v < self.hot_videos

    def topic_pools(self) -> tuple[range, range]:
        """Topic indices of hot and of cold videos (disjoint)."""
        sizes = self.video_sizes()
        hot = sum(s for v, s in enumerate(sizes) if self.is_hot(v))
        n_hot = max(1, hot // self.topic_segments)
        n_cold = max(1, (self.n - hot) // self.topic_segments) if self.n > hot else 0
        return range(0, n_hot), range(n_hot, n_hot + n_cold)

    def centres(self) -> np.ndarray:
        """``(topics, dim)`` float32 topic centres, N(0, 1)."""
        hot, cold = self.topic_pools()
        rng = np.random.default_rng((self.seed, 0))
        return rng.standard_normal((len(hot) + len(cold), self.dim), dtype=np.float32)

    def scenes(self, v: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Scenes of video ``v``: lengths ``(S,)``, topics ``(S,)``, offsets ``(S, dim)``."""
        count = self.video_sizes()[v]
        rng = np.random.default_rng((self.seed, 1, v))
        lengths = scene_lengths(rng, count, self.mean_scene)
        hot, cold = self.topic_pools()
        pool = hot if self.is_hot(v) else cold
        topics = rng.integers(pool.start, pool.stop, len(lengths))
        offsets = rng.standard_normal((len(lengths), self.dim), dtype=np.float32) * self.scene_scale
        return np.array(lengths), topics, offsets

    def embeddings(self, v: int, centres: np.ndarray) -> np.ndarray:
        """``(segments, dim)`` float32 unit rows of video ``v``: centre + scene offset + noise."""
        lengths, topics, offsets = self.scenes(v)
        base = np.repeat(centres[topics] + offsets, lengths, axis=0)
        rng = np.random.default_rng((self.seed, 2, v))
        x = base + rng.standard_normal(base.shape, dtype=np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    def features(self, v: int) -> np.ndarray:
        """``(seconds, dim)`` float16 per-second frame features of video ``v`` (random)."""
        seconds = int(round(self.video_sizes()[v] * SEGMENT_S))
        rng = np.random.default_rng((self.seed, 3, v))
        return rng.standard_normal((seconds, self.dim), dtype=np.float32).astype(np.float16)

    def queries(self, count: int, centres: np.ndarray, seed: int = 1) -> np.ndarray:
        """``(count, dim)`` float32 unit queries, each near one scene of a random hot video."""
        rng = np.random.default_rng((self.seed, 4, seed))
        hot = [v for v in range(len(self.video_sizes())) if self.is_hot(v)]
        out = np.empty((count, self.dim), np.float32)
        for i in range(count):
            lengths, topics, offsets = self.scenes(int(rng.choice(hot)))
            s = int(rng.integers(len(lengths)))
            q = centres[topics[s]] + offsets[s] + rng.standard_normal(self.dim, dtype=np.float32)
            out[i] = q / np.linalg.norm(q)
        return out


class _NoVectors:
    """A vector store that discards writes: :func:`spr.publish.publish_videos` writes the catalog
    and the features through it, and each index's collection is loaded afterwards."""

    backend = "none"

    def delete_videos(self, name, keys) -> None:
        pass

    def upsert(self, name, ids, vectors, keys) -> int:
        return len(ids)

    def flush(self, name) -> None:
        pass


def bench_env(root: Path, backend: str, collection: str, milvus_uri: str, args: argparse.Namespace) -> dict[str, str]:
    """The ``SPR_*`` settings of the services."""
    projector, refiner = write_checkpoints(root, args.clip_model)
    env = {
        "SPR_DATA_DIR": str(root),
        "SPR_VECTORS__BACKEND": backend,
        "SPR_VECTORS__COLLECTION": collection,
        "SPR_VECTORS__DIM": str(DIM),
        "SPR_CLIP__MODEL": args.clip_model,
        "SPR_CLIP__DEVICE": "cpu",
        "SPR_PROJECTOR__CHECKPOINT": str(projector),
        "SPR_REFINER__CHECKPOINT": str(refiner),
        "SPR_REFINER__DEVICE": args.refiner_device,
        "SPR_LOGGING__LEVEL": "WARNING",
    }
    if args.refiner_timeout_ms:
        env["SPR_REFINER__TIMEOUT_MS"] = str(args.refiner_timeout_ms)
    if milvus_uri:
        env["SPR_MILVUS__URI"] = milvus_uri
    return env


def write_checkpoints(root: Path, clip_model: str) -> tuple[Path, Path]:
    """Random projector (CLIP text -> 768) and refiner (768-d frames, CLIP-sized text input)
    checkpoints for ``clip_model``, written once; their paths."""
    projector, refiner = root / f"projector-random-{clip_model}.pt", root / f"refiner-random-{clip_model}.pt"
    if projector.is_file() and refiner.is_file():
        return projector, refiner
    import torch

    from spr.models.refiner import RefinerShape, build_refiner, save_refiner
    from spr.models.clip import clip_feature_dim
    from spr.models.projector import ProjectorShape, build_projectors, save_projectors

    clip_dim = clip_feature_dim(clip_model)
    torch.manual_seed(0)
    note = "random initialisation, for bench/bench_search.py"
    shape = ProjectorShape(in_dim=clip_dim, text_in_dim=clip_dim, dim=DIM)
    save_projectors(projector, build_projectors(shape), clip_model=clip_model, note=note)
    save_refiner(refiner, build_refiner(RefinerShape(in_dim=DIM, text_in_dim=clip_dim, dim=DIM)), clip_model=clip_model, note=note)
    return projector, refiner


def build_corpus(root: Path, spec: CorpusSpec, batch_videos: int = 16, features: bool = True) -> None:
    """Catalog rows, frame features (hot videos), ``vectors.npy`` ``(n, dim)`` float32 and
    ``ids.npy`` ``(n,)`` int64 (catalog segment ids, same order) under ``root``; skipped when
    ``corpus.json`` says it is there already."""
    marker = root / "corpus.json"
    if marker.is_file() and json.loads(marker.read_text()).get("spec") == asdict(spec):
        return
    if root.exists():
        shutil.rmtree(root)  # a stale or half-written corpus of this benchmark
    root.mkdir(parents=True)
    from spr.catalog import SegmentCatalog
    from spr.config import load_config
    from spr.features import VISUAL, FrameFeatureStore, TimedFeatures
    from spr.publish import VideoPayload, publish_videos

    t0 = time.perf_counter()
    config = load_config(environ={"SPR_DATA_DIR": str(root)})
    centres = spec.centres()
    sizes = spec.video_sizes()
    vectors = np.lib.format.open_memmap(root / "vectors.npy", mode="w+", dtype=np.float32, shape=(spec.n, spec.dim))
    ids = np.empty(spec.n, np.int64)
    features = FrameFeatureStore(config.features_url)
    catalog = SegmentCatalog.from_config(config)
    row = 0
    try:
        for lo in range(0, len(sizes), batch_videos):
            payloads = []
            for v in range(lo, min(len(sizes), lo + batch_videos)):
                emb = spec.embeddings(v, centres)
                vectors[row : row + len(emb)] = emb
                row += len(emb)
                payloads.append(
                    VideoPayload(
                        key=f"bench/{v:06d}",
                        uri=f"file:///archive/{v:06d}.mp4",
                        duration_s=sizes[v] * SEGMENT_S,
                        embeddings=emb,
                        features={VISUAL: TimedFeatures(spec.features(v), 1.0)} if features and spec.is_hot(v) else {},
                    )
                )
            published = publish_videos(
                catalog, _NoVectors(), "unused", payloads, SEGMENT_S, features, feature_model="bench-random-768"
            )
            first = row - sum(len(p.embeddings) for p in payloads)
            ids[first:row] = np.concatenate([p.segment_ids for p in published])
            print(f"  corpus: {row:,}/{spec.n:,} segments", end="\r", flush=True)
    finally:
        catalog.close()
    vectors.flush()
    del vectors
    np.save(root / "ids.npy", ids)
    marker.write_text(json.dumps({"spec": asdict(spec), "build_s": time.perf_counter() - t0}))
    print(f"# corpus n={spec.n:,}: catalog + features + vectors in {time.perf_counter() - t0:.1f} s", flush=True)


# --- collections ---------------------------------------------------------------------------------


def collection_name(backend: str, n: int, kind: str) -> str:
    # Milvus collections live on one server for every size; Faiss ones under each size's root.
    return f"bench_{kind.lower()}" if backend == "faiss" else f"bench_{n}_{kind.lower()}"


def build_collection(root: Path, backend: str, name: str, spec, milvus_uri: str, build_threads: int) -> tuple[float, bool]:
    """Load ``vectors.npy`` into collection ``name`` of ``spec`` (unless a marker says it is
    complete); returns (build seconds, cached)."""
    from spr.stores import index_spec_to_dict

    marker = root / f"built-{backend}-{name}.json"
    want = {"spec": index_spec_to_dict(spec), "uri": milvus_uri if backend == "milvus" else ""}
    store = open_store(backend, root / "faiss", milvus_uri, build_threads)
    try:
        if marker.is_file() and store.has_collection(name):
            done = json.loads(marker.read_text())
            if {k: done.get(k) for k in want} == want:
                return float(done["build_s"]), True
        marker.unlink(missing_ok=True)
        store.drop_collection(name)
        vectors = np.load(root / "vectors.npy", mmap_mode="r")
        ids = np.load(root / "ids.npy")
        sizes = CorpusSpec(n=len(ids)).video_sizes()  # rows are in video order, 900 per video
        keys = [f"bench/{v:06d}" for v, size in enumerate(sizes) for _ in range(size)]
        t0 = time.perf_counter()
        store.create_collection(name, DIM, spec)

        def progress(done: int, total: int) -> None:
            print(f"  {backend} {name}: {done:,}/{total:,} vectors", end="\r", flush=True)

        load_collection(store, name, ids, vectors, keys, timeout_s=7200, progress=progress)
        build_s = time.perf_counter() - t0
        marker.write_text(json.dumps({**want, "build_s": build_s}))
        return build_s, False
    finally:
        store.close()


# --- the coarse path in this process, old and new side by side (--coarse) ----------------------


def timed_load(fn, items: list, threads: int) -> tuple[list[float], float]:
    """``fn(item)`` for every item from ``threads`` threads (the next item as soon as the last
    returned); per-call milliseconds and the wall time in seconds."""
    lock = threading.Lock()
    pending = list(reversed(items))
    times: list[float] = []
    start = threading.Barrier(threads + 1)

    def worker() -> None:
        start.wait()
        while True:
            with lock:
                if not pending:
                    return
                item = pending.pop()
            t = time.perf_counter()
            fn(item)
            ms = (time.perf_counter() - t) * 1e3
            with lock:
                times.append(ms)

    pool = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    for th in pool:
        th.start()
    start.wait()
    t0 = time.perf_counter()
    for th in pool:
        th.join()
    return times, time.perf_counter() - t0


def bench_coarse(args: argparse.Namespace) -> None:
    """The coarse path's parts in this process, each as before and as now, in one run on the
    same corpus and queries: the Faiss search (one exclusive lock / the reader-writer lock, at
    each ``--omp-threads``), the catalog lookup (one joined statement / video rows + span
    cache) and the proposal merge (the pure-Python reference / numpy), at each ``--clients``."""
    from _common import cpu_description

    from spr.catalog import SegmentCatalog
    from spr.config import load_config
    from spr.proposals import _propose_moments_reference, gap_rule_from_config, pad_proposals
    from spr.retrieval import merge_hits
    from spr.proposals import RetrievedSegment
    from spr.stores.faiss_store import FaissStore

    print(f"# {cpu_description()}", flush=True)
    rows = []
    for n in args.sizes:
        spec = CorpusSpec(n=n, hot_videos=args.hot_videos)
        root = Path(args.data_dir) / f"n{n}-coarse"
        build_corpus(root, spec, features=False)
        nlist = args.nlist or (1024 if n <= 200_000 else 4096)
        nprobe = args.nprobe or (16 if n <= 200_000 else 32)
        queries = spec.queries(args.queries, spec.centres(), seed=3)
        config = load_config(environ={"SPR_DATA_DIR": str(root)})
        new_catalog = SegmentCatalog.from_config(config)
        old_catalog = SegmentCatalog(new_catalog.engine, lookup_cache_segments=0)
        gap_rule = gap_rule_from_config("adjacent", max_length_s=30.0)  # the [proposals] defaults
        hits_of_query: list[list[tuple[int, float]]] = []
        for kind in args.indexes:
            name = collection_name("faiss", n, kind)
            ispec = index_spec(kind, nlist, nprobe, args.m)
            build_s, cached = build_collection(root, "faiss", name, ispec, "", args.build_threads)
            print(f"# faiss n={n:,} {kind}: built in {build_s:.1f} s{' (cached)' if cached else ''}", flush=True)
            for omp in args.omp_threads:
                store = FaissStore(root / "faiss", threads=omp, use_gpu=False)
                store.search(name, queries[:1], 200)  # load
                if not hits_of_query:
                    found = store.search(name, queries, 200)
                    hits_of_query = [found.hits(i) for i in range(len(queries))]
                for clients in args.clients:
                    for code, exclusive in (("old", True), ("new", False)):
                        store._exclusive_search = exclusive  # the constructor's option, switched in place
                        times, wall = timed_load(lambda q: store.search(name, q[None, :], 200), list(queries), clients)
                        rows.append({"part": f"faiss {kind} (omp {omp})", "n": n, "clients": clients, "code": code,
                                     "p50": pct(times, 50), "p99": pct(times, 99), "qps": len(times) / wall})
                        print(f"  {rows[-1]}", flush=True)
                store.close()
        id_lists = [[sid for sid, _ in hits] for hits in hits_of_query]
        for catalog in (old_catalog, new_catalog):
            for ids in id_lists:  # warm both alike (the new one fills its span cache)
                catalog.lookup_segments(ids)
        for clients in args.clients:
            for code, catalog in (("old", old_catalog), ("new", new_catalog)):
                times, wall = timed_load(catalog.lookup_segments, id_lists, clients)
                rows.append({"part": "catalog lookup (sqlite)", "n": n, "clients": clients, "code": code,
                             "p50": pct(times, 50), "p99": pct(times, 99), "qps": len(times) / wall})
                print(f"  {rows[-1]}", flush=True)
        located = [(hits, new_catalog.lookup_segments([sid for sid, _ in hits])) for hits in hits_of_query]

        def old_merge(item) -> None:
            # The proposals stage as it was: segment objects, the pure-Python merge, padding.
            hits, locations = item
            segments = [
                RetrievedSegment(sid, loc.video_key, loc.ordinal, loc.start_s, loc.end_s, loc.video_duration_s, score, rank)
                for rank, (sid, score) in enumerate(hits) if (loc := locations.get(sid)) is not None
            ]
            pad_proposals(_propose_moments_reference(segments, gap_rule), PAD_S)

        def new_merge(item) -> None:
            merge_hits(item[0], item[1], gap_rule, PAD_S)

        for clients in args.clients:
            for code, fn in (("old", old_merge), ("new", new_merge)):
                times, wall = timed_load(fn, located, clients)
                rows.append({"part": "proposals stage", "n": n, "clients": clients, "code": code,
                             "p50": pct(times, 50), "p99": pct(times, 99), "qps": len(times) / wall})
                print(f"  {rows[-1]}", flush=True)
        new_catalog.close()
    print(f"\n{cpu_description()}; milliseconds, p50 / p99; q/s = calls per second over all client threads")
    print("| part | segments | clients | old p50 / p99 | new p50 / p99 | old q/s | new q/s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for old in (r for r in rows if r["code"] == "old"):
        new = next(r for r in rows if r["code"] == "new" and (r["part"], r["n"], r["clients"]) == (old["part"], old["n"], old["clients"]))
        print(f"| {old['part']} | {old['n']:,} | {old['clients']} | {old['p50']:.2f} / {old['p99']:.2f} | "
              f"{new['p50']:.2f} / {new['p99']:.2f} | {old['qps']:.0f} | {new['qps']:.0f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"cpu": cpu_description(), "coarse": rows}, indent=1))


# --- the services (child process) ----------------------------------------------------------------


def _serve(env: dict[str, str], conn) -> None:
    """Child process: refiner + search service as ``spr serve`` runs them; sends the search
    port, serves until told to stop."""
    import logging

    from spr.config import load_config
    from spr.logs import configure_logging

    config = load_config(environ=env)
    configure_logging(config.logging)
    # One warning per degraded search would flood the output; the benchmark counts them.
    logging.getLogger("spr.refine_client").setLevel(logging.ERROR)
    from spr.refine.service import serve_refiner
    from spr.search.service import serve_search

    # Metrics are recorded as in production; their endpoints go on free ports (0), never on the
    # configured ones another service on this host may hold.
    refiner, refiner_port = serve_refiner(config, port=0, in_dim=DIM, metrics_port=0)
    search, search_port = serve_search(config, port=0, refiner_target=f"127.0.0.1:{refiner_port}", metrics_port=0)
    conn.send(search_port)
    conn.recv()
    search.stop(1.0).wait()
    refiner.stop(1.0).wait()


class Services:
    """The child process serving one collection; ``target`` is the search service address,
    ``pid`` the process id."""

    def __init__(self, env: dict[str, str]) -> None:
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(env, child), daemon=True)
        self._proc.start()
        if not self._conn.poll(300):
            self._proc.kill()
            raise RuntimeError("the search service did not start within 300 s")
        self.target = f"127.0.0.1:{self._conn.recv()}"
        self.pid = self._proc.pid

    def close(self) -> None:
        try:
            self._conn.send("stop")
        except (BrokenPipeError, OSError):
            pass
        self._proc.join(30)
        if self._proc.is_alive():
            self._proc.kill()


# --- load ----------------------------------------------------------------------------------------


@dataclass
class Sample:
    client_ms: float
    timings: dict[str, float]
    refined: bool
    degraded: bool
    proposals: int


def run_load(target: str, requests: list[dict], clients: int) -> tuple[list[Sample], float]:
    """Send ``requests`` (``SearchClient.search`` keyword arguments) from ``clients`` threads,
    each with its own channel, taking the next request as soon as its previous one returned.
    Returns the samples and the wall time in seconds."""
    from spr.search.client import SearchClient

    lock = threading.Lock()
    pending = list(reversed(requests))
    samples: list[Sample] = []
    errors: list[BaseException] = []
    start = threading.Barrier(clients + 1)

    def client() -> None:
        with SearchClient(target, timeout_s=120) as sc:
            sc.collection_stats()  # connect before the clock starts
            start.wait()
            while True:
                with lock:
                    if not pending:
                        return
                    kwargs = pending.pop()
                t = time.perf_counter()
                try:
                    r = sc.search(**kwargs)
                except Exception as exc:  # counted, reported, never silently dropped
                    with lock:
                        errors.append(exc)
                    continue
                ms = (time.perf_counter() - t) * 1e3
                sample = Sample(ms, dict(r.timings_ms), r.refined, r.degraded, r.proposals)
                with lock:
                    samples.append(sample)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for th in threads:
        th.start()
    start.wait()
    t0 = time.perf_counter()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t0
    if errors:
        print(f"  !! {len(errors)} failed calls, first: {errors[0]!r}", flush=True)
    return samples, wall


def summarise(samples: list[Sample], wall: float) -> dict:
    out: dict = {"queries": len(samples), "qps": len(samples) / wall if wall else float("nan")}
    coarse = [s.timings.get("ann", 0) + s.timings.get("catalog", 0) + s.timings.get("proposals", 0) for s in samples]
    for stage in STAGES:
        vals = [s.timings.get(stage, 0.0) for s in samples]
        if stage == "refine":
            # The service reports refine = 0 when the refiner failed or timed out (degraded);
            # what the query spent waiting for it is then total - embed - coarse.
            vals = [
                s.timings.get("total", 0.0) - s.timings.get("embed", 0.0) - c if s.degraded else v
                for s, c, v in zip(samples, coarse, vals)
            ]
        out[f"{stage}_p50"], out[f"{stage}_p99"] = pct(vals, 50), pct(vals, 99)
    out["coarse_p50"], out["coarse_p99"] = pct(coarse, 50), pct(coarse, 99)
    out["client_p50"], out["client_p99"] = pct([s.client_ms for s in samples], 50), pct([s.client_ms for s in samples], 99)
    out["refined"] = sum(s.refined for s in samples)
    out["degraded"] = sum(s.degraded for s in samples)
    out["proposals_mean"] = float(np.mean([s.proposals for s in samples])) if samples else float("nan")
    return out


def coverage(target: str, spec: CorpusSpec, requests: list[dict]) -> dict:
    """Untimed: the coarse proposals of ``requests`` (refine off, top_k 1000): how many per
    query, padded frames per proposal (1 per second), and the share whose video has features
    (the rest the refiner drops)."""
    from spr.search.client import SearchClient

    sizes = spec.video_sizes()
    per_query, frames, hot = [], [], 0
    with SearchClient(target, timeout_s=120) as sc:
        for kwargs in requests:
            r = sc.search(**{**kwargs, "refine": False, "top_k": 1000})
            per_query.append(len(r.moments))
            for m in r.moments:
                v = int(m.video_key.rsplit("/", 1)[1])
                duration = sizes[v] * SEGMENT_S
                frames.append(int(np.ceil(min(m.end_s + PAD_S, duration) - max(m.start_s - PAD_S, 0.0))))
                hot += spec.is_hot(v)
    return {
        "proposals_per_query": float(np.mean(per_query)),
        "frames_per_proposal": float(np.mean(frames)),
        "with_features": hot / max(1, len(frames)),
    }


def bench_collection(
    target: str, spec: CorpusSpec, name: str, args: argparse.Namespace, nprobe: int, pids: list[int]
) -> list[dict]:
    """Every (query kind, clients, refine) run against one served collection; ``pids``: the
    processes serving it (their CPU is not counted as other processes' load)."""
    centres = spec.centres()
    emb = spec.queries(max(args.queries, args.refine_queries, 10), centres)
    common = {"collection": name, "nprobe": nprobe, "top_k": 10}
    by_embedding = [{**common, "embedding": q} for q in emb]
    by_text = [{**common, "text": t} for t in text_queries(args.text_queries)]
    warm = [{**r, "refine": False} for r in by_embedding[:10]] + [{**by_embedding[0], "refine": True}]
    run_load(target, warm + [{**r, "refine": False} for r in by_text[:2]], 1)
    rows = []
    plan = [("embedding", c, refine) for c in args.clients for refine in (False, True)]
    plan += [("text", 1, refine) for refine in (False, True)] if args.text_queries else []
    for kind, clients, refine in plan:
        if refine and args.refine_queries == 0:
            continue
        pool = by_text if kind == "text" else by_embedding[: args.refine_queries if refine else args.queries]
        if not pool:
            continue
        load_before = os.getloadavg()[0]
        others = OthersCpu(pids)
        samples, wall = run_load(target, [{**r, "refine": refine} for r in pool], clients)
        others_cores = others.cores()
        label = kind if kind == "embedding" or args.clip_model == "spr-tiny" else f"text ({args.clip_model})"
        row = {"query": label, "clients": clients, "refine": refine, **summarise(samples, wall)}
        row["load"] = max(load_before, os.getloadavg()[0])
        row["others_cores"] = others_cores
        rows.append(row)
        print(
            f"  {kind:<9} clients={clients:<2} refine={'on ' if refine else 'off'} n={row['queries']:<4} "
            f"embed {row['embed_p50']:6.2f}  ann {row['ann_p50']:7.2f}/{row['ann_p99']:7.2f}  "
            f"catalog {row['catalog_p50']:6.2f}/{row['catalog_p99']:6.2f}  proposals {row['proposals_p50']:5.2f}  "
            f"coarse {row['coarse_p50']:7.2f}/{row['coarse_p99']:7.2f}  refine {row['refine_p50']:7.1f}/{row['refine_p99']:7.1f}  "
            f"total {row['total_p50']:7.1f}/{row['total_p99']:7.1f}  client {row['client_p50']:7.1f}/{row['client_p99']:7.1f} ms  "
            f"{row['qps']:6.1f} q/s  refined {row['refined']}/{row['queries']}  load {row['load']:.2f}  "
            f"others {row['others_cores']:.2f} cores",
            flush=True,
        )
    return rows


# --- Milvus --------------------------------------------------------------------------------------


def spr_command() -> str:
    return str(Path(sys.executable).with_name("spr"))


def milvus_up(directory: str) -> tuple[str, int]:
    """Start a Milvus standalone in ``directory`` (``spr milvus start --port 0``); its URI and pid."""
    subprocess.run([spr_command(), "milvus", "start", "--dir", directory, "--port", "0"], check=True)
    status = subprocess.run([spr_command(), "milvus", "status", "--dir", directory], capture_output=True, text=True)
    found = re.search(r"uri=(\S+)\s+pid=(\d+)", status.stdout)
    if not found:
        raise RuntimeError(f"cannot read the Milvus URI from `spr milvus status`: {status.stdout!r} {status.stderr!r}")
    return found.group(1), int(found.group(2))


def milvus_down(directory: str) -> None:
    subprocess.run([spr_command(), "milvus", "stop", "--dir", directory], check=False)


# --- main ----------------------------------------------------------------------------------------


def cell(row: dict, stage: str, digits: int = 1) -> str:
    return f"{row[stage + '_p50']:.{digits}f} / {row[stage + '_p99']:.{digits}f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000])
    ap.add_argument("--backends", nargs="+", default=["faiss"], choices=["faiss", "milvus"])
    ap.add_argument("--indexes", nargs="+", default=["FLAT", "IVF_FLAT", "IVF_PQ"], choices=["FLAT", "IVF_FLAT", "IVF_PQ"])
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 16], help="concurrent client threads")
    ap.add_argument("--queries", type=int, default=200, help="embedding queries per run without refinement")
    ap.add_argument("--refine-queries", type=int, default=40, help="embedding queries per run with refinement (0: skip)")
    ap.add_argument("--text-queries", type=int, default=20, help="text queries (1 client) per collection (0: skip)")
    ap.add_argument("--nlist", type=int, help="IVF lists (default 1024 up to 200K segments, else 4096)")
    ap.add_argument("--nprobe", type=int, help="IVF probes per query (default 16 up to 200K segments, else 32)")
    ap.add_argument("--m", type=int, default=64, help="IVF_PQ sub-quantisers (nbits 8)")
    ap.add_argument("--hot-videos", type=int, default=120, help="videos with frame features (the queries' targets)")
    ap.add_argument("--data-dir", default="/tmp/spr-bench-search", help="corpus cache (one folder per size)")
    ap.add_argument("--build-threads", type=int, default=2, help="Faiss OpenMP threads while building (serving uses 1)")
    ap.add_argument("--refiner-device", default="cpu", help="refiner.device of the served refiner")
    ap.add_argument("--clip-model", default="spr-tiny", help="clip.model of the search service (random weights)")
    ap.add_argument("--refiner-timeout-ms", type=float, default=0, help="refiner.timeout_ms (0: the default, 2000)")
    ap.add_argument("--milvus-uri", default="", help="a running Milvus; empty: start one in --milvus-dir")
    ap.add_argument("--milvus-dir", default="/tmp/spr-bench-milvus")
    ap.add_argument("--milvus-ivf-pq", action="store_true", help="also build and serve IVF_PQ on Milvus (slow)")
    ap.add_argument("--json", help="also write every row to this JSON file")
    ap.add_argument(
        "--report", nargs="+", metavar="JSON",
        help="only print the tables of earlier --json files (of repeated rows, the one beside the least other load)",
    )
    ap.add_argument("--coarse", action="store_true",
                    help="instead: the coarse path's parts in this process, old and new side by side (Faiss only)")
    ap.add_argument("--omp-threads", type=int, nargs="+", default=[1],
                    help="--coarse: faiss.threads of the searching store (0: Faiss's default, every core)")
    args = ap.parse_args()

    if args.coarse:
        bench_coarse(args)
        return
    if args.report:
        print_tables(*quietest([json.loads(Path(f).read_text()) for f in args.report]))
        return
    results, builds = [], []
    milvus_uri, started_milvus, milvus_pids = args.milvus_uri, False, []
    try:
        for n in args.sizes:
            spec = CorpusSpec(n=n, hot_videos=args.hot_videos)
            root = Path(args.data_dir) / f"n{n}"
            build_corpus(root, spec)
            nlist = args.nlist or (1024 if n <= 200_000 else 4096)
            nprobe = args.nprobe or (16 if n <= 200_000 else 32)
            for backend in args.backends:
                if backend == "milvus" and not milvus_uri:
                    try:
                        milvus_uri, milvus_pid = milvus_up(args.milvus_dir)
                        started_milvus, milvus_pids = True, [milvus_pid]
                    except (subprocess.CalledProcessError, RuntimeError) as exc:
                        print(f"# milvus skipped: could not start a server ({exc})", flush=True)
                        continue
                    print(f"# milvus at {milvus_uri}", flush=True)
                for kind in args.indexes:
                    if backend == "milvus" and kind == "IVF_PQ" and not args.milvus_ivf_pq:
                        print("# milvus IVF_PQ skipped: its build took 25 min at 100K on 2 cores (--milvus-ivf-pq runs it)")
                        continue
                    name = collection_name(backend, n, kind)
                    ispec = index_spec(kind, nlist, nprobe, args.m)
                    load_before = os.getloadavg()[0]
                    build_s, cached = build_collection(root, backend, name, ispec, milvus_uri, args.build_threads)
                    print(f"# {backend} n={n:,} {kind}: built in {build_s:.1f} s{' (cached)' if cached else ''}", flush=True)
                    services = Services(bench_env(root, backend, name, milvus_uri, args))
                    try:
                        probe = 0 if kind == "FLAT" else nprobe
                        cov = coverage(services.target, spec, [{"collection": name, "nprobe": probe, "embedding": q}
                                                              for q in spec.queries(50, spec.centres(), seed=2)])
                        if args.text_queries:
                            text_cov = coverage(services.target, spec, [{"collection": name, "nprobe": probe, "text": t}
                                                                       for t in text_queries(args.text_queries)])
                            cov.update({f"text_{k}": v for k, v in text_cov.items()})
                        pids = [services.pid] + (milvus_pids if backend == "milvus" else [])
                        rows = bench_collection(services.target, spec, name, args, probe, pids)
                    finally:
                        services.close()
                    params = "" if kind == "FLAT" else f"nlist {nlist}, nprobe {nprobe}" + (f", m {args.m}" if kind == "IVF_PQ" else "")
                    builds.append({
                        "backend": backend, "n": n, "index": kind, "params": params, "build_s": build_s,
                        "cached": cached, "build_load": load_before, **cov,
                    })
                    print(
                        f"# coverage: {cov['proposals_per_query']:.1f} proposals/query, {cov['frames_per_proposal']:.1f} "
                        f"frames/proposal, {100 * cov['with_features']:.1f} % with features",
                        flush=True,
                    )
                    results += [{"backend": backend, "n": n, "index": kind, **r} for r in rows]
                    if args.json:
                        Path(args.json).write_text(json.dumps({"builds": builds, "runs": results}, indent=1))
    finally:
        if started_milvus:
            milvus_down(args.milvus_dir)
        print_tables(builds, results)


def quietest(reports: list[dict]) -> tuple[list[dict], list[dict]]:
    """Builds and runs of several ``--json`` files, one row per (backend, size, index, query,
    clients, refine): the one measured beside the fewest other-process cores (repeats on a
    shared machine), in first-seen order."""
    builds: dict[tuple, dict] = {}
    runs: dict[tuple, dict] = {}
    for report in reports:
        for b in report["builds"]:
            key = (b["backend"], b["n"], b["index"])
            if key not in builds or ("text_with_features" in b and "text_with_features" not in builds[key]):
                builds[key] = b
        for r in report["runs"]:
            key = (r["backend"], r["n"], r["index"], r["query"], r["clients"], r["refine"])
            others = r.get("others_cores", float("inf"))
            if key not in runs or others < runs[key].get("others_cores", float("inf")):
                runs[key] = r
    return list(builds.values()), list(runs.values())


def print_tables(builds: list[dict], results: list[dict]) -> None:
    print("\nproposals of 50 embedding queries (and of the text queries), refine off, top_k 1000; with features = refinable")
    print("| backend | segments | index | params | build s | proposals/query | frames/proposal | with features | text: proposals/query | text: with features |")
    print("|---|---:|---|---|---:|---:|---:|---:|---:|---:|")
    for b in builds:
        text = (
            f"{b['text_proposals_per_query']:.0f} | {100 * b['text_with_features']:.0f} %" if "text_with_features" in b else " | "
        )
        print(
            f"| {b['backend']} | {b['n']:,} | {b['index']} | {b['params']} | {b['build_s']:.0f} | "
            f"{b['proposals_per_query']:.0f} | {b['frames_per_proposal']:.1f} | {100 * b['with_features']:.0f} % | {text} |"
        )
    print(
        "\nms, p50 / p99 per query; coarse = ann + catalog + proposals; refine = the service's timing, or for a "
        "degraded query (refiner late or failed) total - embed - coarse; total = the service's; client = wall time "
        "at the client; refined = queries that came back refined (the rest degraded); load = 1-min load average "
        "(ours included); others = cores busy with other processes during the run"
    )
    print("| backend | segments | index | query | clients | refine | queries | embed | ann | catalog | proposals | coarse | refine | total | client | q/s | refined | load | others |")
    print("|---|---:|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r['backend']} | {r['n']:,} | {r['index']} | {r['query']} | {r['clients']} | {'on' if r['refine'] else 'off'} | "
            f"{r['queries']} | {cell(r, 'embed', 2)} | {cell(r, 'ann', 2)} | {cell(r, 'catalog', 2)} | "
            f"{cell(r, 'proposals', 2)} | {cell(r, 'coarse', 1)} | {cell(r, 'refine', 0)} | {cell(r, 'total', 1)} | "
            f"{cell(r, 'client', 1)} | {r['qps']:.1f} | {r['refined']}/{r['queries']} | {r['load']:.2f} | "
            f"{r.get('others_cores', float('nan')):.2f} |"
        )

if __name__ == "__main__":
    sys.exit(main())
