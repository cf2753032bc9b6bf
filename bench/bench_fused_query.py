"""Fused query latency: what searching speech and subtitles beside the visual modality costs.

    python bench/bench_fused_query.py --segments 100000 1000000            # the figures
    python bench/bench_fused_query.py --segments 20000 --queries 50        # a quick look
    python bench/bench_fused_query.py --skip-encoders --segments 100000 --json

**Query encoders**: the CLIP text tower of the built-in ``spr-tiny`` model with the untrained
pass-through projector (:class:`spr.models.query.QueryEncoder`; RANDOM weights: its speed, not
its answers, is what counts here) and all-MiniLM-L6-v2 from the packaged offline copy
(:func:`spr.models.text.load_sentence_encoder`, 384-d): model load, the first query, then
``--queries`` distinct queries (MiniLM: uncached, then the same texts again from its query
cache; CLIP has no cache).

**Corpus** (synthetic, built once per size and cached under ``--data-dir``): videos of
``--video-segments`` 4-s segments, each a run of scenes (1 + geometric(1/6) segments). A
segment's visual vector is its scene's direction plus noise (64-d, spr-tiny's size); a scene
speaks with probability ``--speech-frac`` and carries subtitles with ``--subtitles-frac``
(independently), its segments' text vectors (384-d, MiniLM's size) being a per-scene direction
plus noise, their texts random phrases. Everything goes through
:func:`spr.publish.publish_videos` (``VideoPayload.texts``, ``text_collections``) into SQLite
and three Faiss FLAT collections with the same segment ids: ``fused``, ``fused__speech``,
``fused__subtitles``. ``--text-rows-frac`` < 1 stores the catalog text of only that share of
the text segments (the rest keep their vectors; snippets then find less text).

**Search**: ``MomentSearch.search`` in this process, no refiner, default ``segments_k`` (200)
and ``top_k``, the query texts random English phrases (a fresh set per mode, so the MiniLM
cache never answers across modes), after a short warm-up per mode:

* ``visual`` (weights visual=1, speech=0, subtitles=0): the old side, what the engine answered
  before the text tracks (plus the new ``snippets`` stage);
* ``speech`` (visual=0, speech=1, subtitles=0);
* ``fused rrf`` and ``fused sum`` (visual=1 explicitly, since a random visual encoder is left
  out otherwise, speech=1, subtitles=1);
* ``fused rrf (pinned)`` (``--no-pinned`` skips it): ``fused rrf`` again with the engine's
  per-modality threads on ``faiss.threads`` OpenMP threads (:func:`pin_pool_threads`): what a
  store that sets the thread count in every searching thread would give.

Stages are the engine's own ``timings_ms``: ``embed`` (visual CLIP plus every text track's
``embed.<m>``, summed although the tracks encode side by side), ``ann`` the wall time of the per-modality searches run side by side
(``ann.<m>`` each), ``fusion``, ``catalog``, ``proposals``, ``snippets``, ``total``. Prints
Markdown tables (mean / p50 / p95 ms); ``--json`` adds one JSON line of the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from _common import WORDS, cpu_description, pct, scene_lengths, text_queries  # bench/ is on the path

VISUAL_DIM = 64  # spr-tiny's CLIP feature size (the untrained projector passes it through)
TEXT_DIM = 384  # all-MiniLM-L6-v2
SEGMENT_S = 4.0
COLLECTION = "fused"
STAGES = (
    "embed", "embed.speech", "embed.subtitles", "ann", "ann.visual", "ann.speech", "ann.subtitles",
    "fusion", "catalog", "proposals", "snippets", "total",
)
MODES = {
    "visual (old)": ({"visual": 1.0, "speech": 0.0, "subtitles": 0.0}, "rrf"),
    "speech": ({"visual": 0.0, "speech": 1.0, "subtitles": 0.0}, "rrf"),
    "fused rrf": ({"visual": 1.0, "speech": 1.0, "subtitles": 1.0}, "rrf"),
    "fused sum": ({"visual": 1.0, "speech": 1.0, "subtitles": 1.0}, "sum"),
}
PINNED = "fused rrf (pinned)"  # fused rrf with the pool's Faiss threads pinned (pin_pool_threads)


# --- query encoders ------------------------------------------------------------------------------


def bench_env(root: Path) -> dict[str, str]:
    return {
        "SPR_DATA_DIR": str(root),
        "SPR_CLIP__MODEL": "spr-tiny",
        "SPR_CLIP__DEVICE": "cpu",
        "SPR_TEXT__DEVICE": "cpu",
        "SPR_VECTORS__COLLECTION": COLLECTION,
        "SPR_VECTORS__DIM": str(VISUAL_DIM),
        "SPR_FAISS__USE_GPU": "false",
        "SPR_LOGGING__LEVEL": "ERROR",
        "HF_HUB_OFFLINE": "1",
    }


def _timed_ms(fn, *args) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return (time.perf_counter() - t0) * 1e3


def _summary(values_ms: list[float]) -> dict[str, float]:
    return {"mean": float(np.mean(values_ms)), "p50": pct(values_ms, 50), "p95": pct(values_ms, 95)}


def bench_encoders(queries: int) -> tuple[list[dict], object, object]:
    """Encoder rows (load s, first query ms, per-query mean/p50/p95 ms) and the two loaded
    encoders (``QueryEncoder``, ``SentenceEncoder``), which the search part reuses."""
    from spr.compat.torchvision_ops import ensure_torchvision_importable

    ensure_torchvision_importable()
    from spr.config import load_config
    from spr.models.query import QueryEncoder
    from spr.models.text import load_sentence_encoder

    texts = text_queries(queries + 1, seed=7)
    rows = []
    t0 = time.perf_counter()
    clip = QueryEncoder.from_config(load_config(environ=bench_env(Path(tempfile.gettempdir()))))
    load_s = time.perf_counter() - t0
    first = _timed_ms(clip.encode, texts[0])
    per = [_timed_ms(clip.encode, t) for t in texts[1:]]
    rows.append({
        "modality": "visual", "model": f"{clip.identity} (random weights)", "dim": clip.dim, "load_s": load_s,
        "first_ms": first, "uncached": _summary(per), "cached": None,
    })

    t0 = time.perf_counter()
    minilm = load_sentence_encoder("", "cpu", 64)
    load_s = time.perf_counter() - t0
    first = _timed_ms(minilm.encode_query, texts[0])
    uncached = [_timed_ms(minilm.encode_query, t) for t in texts[1:]]
    cached = [_timed_ms(minilm.encode_query, t) for t in texts[1:]]
    rows.append({
        "modality": "speech, subtitles", "model": minilm.identity, "dim": minilm.dim, "load_s": load_s,
        "first_ms": first, "uncached": _summary(uncached), "cached": _summary(cached),
    })
    return rows, clip, minilm


# --- the corpus ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CorpusSpec:
    """What a cached corpus was built from (a mismatch rebuilds it)."""

    segments: int
    video_segments: int = 1000
    speech_frac: float = 0.3
    subtitles_frac: float = 0.2
    text_rows_frac: float = 1.0
    seed: int = 0
    mean_scene: float = 6.0

    @property
    def videos(self) -> int:
        return -(-self.segments // self.video_segments)

    def video_size(self, v: int) -> int:
        return min(self.video_segments, self.segments - v * self.video_segments)


_PHRASES = [" ".join(np.random.default_rng(i).choice(WORDS, 8 + i % 7)) for i in range(4096)]


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def video_payload(spec: CorpusSpec, v: int):
    """Video ``v``'s :class:`~spr.publish.VideoPayload`: ``(n, 64)`` visual vectors and, for the
    scenes that have them, speech and subtitle texts with ``(m, 384)`` vectors."""
    from spr.features import SPEECH, SUBTITLES
    from spr.publish import VideoPayload
    from spr.text_tracks import SegmentText, Transcript

    n = spec.video_size(v)
    rng = np.random.default_rng((spec.seed, v))
    lengths = np.array(scene_lengths(rng, n, spec.mean_scene))
    scene_of = np.repeat(np.arange(len(lengths)), lengths)
    visual = _unit(rng.standard_normal((len(lengths), VISUAL_DIM), dtype=np.float32)[scene_of]
                   + 0.7 * rng.standard_normal((n, VISUAL_DIM), dtype=np.float32))
    texts = {}
    for track, frac in ((SPEECH, spec.speech_frac), (SUBTITLES, spec.subtitles_frac)):
        with_text = np.nonzero((rng.random(len(lengths)) < frac)[scene_of])[0]  # ordinals, ascending
        if not len(with_text):
            continue
        directions = rng.standard_normal((len(lengths), TEXT_DIM), dtype=np.float32)
        vectors = _unit(directions[scene_of[with_text]] + 0.7 * rng.standard_normal((len(with_text), TEXT_DIM), dtype=np.float32))
        stored = with_text[rng.random(len(with_text)) < spec.text_rows_frac] if spec.text_rows_frac < 1 else with_text
        segment_texts = [""] * n
        for o in stored:
            segment_texts[o] = _PHRASES[int(rng.integers(len(_PHRASES)))]
        texts[track] = SegmentText(
            texts=tuple(segment_texts), embeddings=vectors, transcript=Transcript(track, ()),
            vector_ordinals=with_text.astype(np.int64),
        )
    return VideoPayload(
        key=f"fused/{v:05d}", uri=f"file:///archive/{v:05d}.mp4", duration_s=n * SEGMENT_S,
        embeddings=visual, texts=texts,
    )


def build_corpus(root: Path, spec: CorpusSpec, batch_segments: int) -> dict:
    """Publish the corpus under ``root`` unless ``corpus.json`` says it is there; its facts
    (build seconds, vectors per collection, catalog text rows)."""
    marker = root / "corpus.json"
    if marker.is_file() and json.loads(marker.read_text()).get("spec") == asdict(spec):
        return json.loads(marker.read_text())["facts"]
    if root.exists():
        shutil.rmtree(root)  # a stale or half-written corpus of this benchmark
    root.mkdir(parents=True)
    from spr.catalog import SegmentCatalog
    from spr.config import load_config
    from spr.features import SPEECH, SUBTITLES
    from spr.models.text import PACKAGED_IDENTITY
    from spr.publish import ensure_collection, publish_videos
    from spr.stores import Flat, open_vector_store
    from spr.text_tracks import track_collection

    t0 = time.perf_counter()
    config = load_config(environ=bench_env(root))
    store = open_vector_store(config)
    catalog = SegmentCatalog.from_config(config)
    tracks = {t: track_collection(COLLECTION, t) for t in (SPEECH, SUBTITLES)}
    counts = {"visual": 0, SPEECH: 0, SUBTITLES: 0, "text_rows": 0}
    try:
        ensure_collection(catalog, store, COLLECTION, VISUAL_DIM, "bench-random-64", Flat())
        for name in tracks.values():
            ensure_collection(catalog, store, name, TEXT_DIM, PACKAGED_IDENTITY, Flat())
        per_batch = max(1, batch_segments // spec.video_segments)
        for lo in range(0, spec.videos, per_batch):
            payloads = [video_payload(spec, v) for v in range(lo, min(spec.videos, lo + per_batch))]
            publish_videos(catalog, store, COLLECTION, payloads, SEGMENT_S, text_collections=tracks)
            for p in payloads:
                counts["visual"] += len(p.embeddings)
                for t, text in p.texts.items():
                    counts[t] += len(text.embeddings)
                    counts["text_rows"] += sum(1 for s in text.texts if s)
            print(f"  corpus {spec.segments:,}: {counts['visual']:,} segments published "
                  f"({time.perf_counter() - t0:.0f} s)", end="\r", flush=True)
    finally:
        store.close()
        catalog.close()
    facts = {**counts, "videos": spec.videos, "build_s": time.perf_counter() - t0}
    marker.write_text(json.dumps({"spec": asdict(spec), "facts": facts}))
    print(f"\n# corpus {spec.segments:,}: built in {facts['build_s']:.0f} s", flush=True)
    return facts


# --- search --------------------------------------------------------------------------------------


def pin_pool_threads(engine, threads: int) -> None:
    """Give the engine's per-modality thread pool Faiss's configured OpenMP thread count.

    ``faiss.omp_set_num_threads`` (the Faiss store calls it once, in the thread that opens it)
    sets only the calling thread's OpenMP setting: the pool's threads search on every core,
    which on 2 busy cores made one 1M x 384 FLAT search 5x slower (136 ms against 26 ms). This
    is what a fix in the store would give; the engine's pool is replaced for the ``(pinned)``
    column only."""
    from concurrent.futures import ThreadPoolExecutor

    import faiss

    old = engine._pool
    engine._pool = ThreadPoolExecutor(
        max_workers=old._max_workers, thread_name_prefix="search-modality-pinned",
        initializer=faiss.omp_set_num_threads, initargs=(threads,),
    )
    old.shutdown(wait=True)


def bench_search(root: Path, clip, minilm, queries: int, warmup: int, seed: int, pinned: bool) -> dict[str, dict]:
    """Per mode: ``{"stages": {stage: {mean, p50, p95}}, "proposals": mean, "snippets": share of
    moments with a snippet, "searched": modalities searched}``. Query texts are drawn from
    ``seed`` + the mode's index (a fresh set per mode and corpus: the MiniLM cache never hits).
    ``pinned``: then ``fused rrf`` once more with :func:`pin_pool_threads`."""
    from spr.catalog import SegmentCatalog
    from spr.config import load_config
    from spr.engine import MomentQuery, MomentSearch
    from spr.stores import open_vector_store

    config = load_config(environ=bench_env(root))
    engine = MomentSearch(config, SegmentCatalog.from_config(config), open_vector_store(config), clip, None, minilm)
    out = {}
    try:
        t0 = time.perf_counter()
        for name in (COLLECTION, f"{COLLECTION}__speech", f"{COLLECTION}__subtitles"):
            engine.store.describe(name)  # loads the Faiss index from disk, off the clock
        print(f"  {root.name}: indexes loaded in {time.perf_counter() - t0:.1f} s; faiss.threads "
              f"{config.faiss.threads}", flush=True)
        modes = list(MODES.items()) + ([(PINNED, MODES["fused rrf"])] if pinned else [])
        for i, (mode, (weights, fusion)) in enumerate(modes):
            if mode == PINNED:
                pin_pool_threads(engine, config.faiss.threads)
            texts = text_queries(warmup + queries, seed=seed + i)
            samples, proposals, snippets, moments = [], [], 0, 0
            searched: list[str] = []
            for j, text in enumerate(texts):
                r = engine.search(MomentQuery(text=text, weights=weights, fusion=fusion, refine=False))
                if j < warmup:
                    continue
                samples.append(r.timings_ms)
                proposals.append(r.proposals)
                moments += len(r.moments)
                snippets += sum(1 for m in r.moments if m.snippet)
                searched = [m.modality for m in r.modalities if m.searched]
            stages = {s: _summary([t[s] for t in samples]) for s in STAGES if all(s in t for t in samples)}
            out[mode] = {
                "searched": searched, "stages": stages, "proposals": float(np.mean(proposals)),
                "moments_with_snippet": snippets / max(moments, 1),
            }
            print(f"  {mode}: total mean {stages['total']['mean']:.1f} ms, p95 {stages['total']['p95']:.1f} ms "
                  f"({'+'.join(searched)})", flush=True)
    finally:
        engine.close()
    return out


# --- tables --------------------------------------------------------------------------------------


def _ms(s: dict[str, float] | None) -> str:
    if s is None:
        return "—"
    digits = 3 if s["p95"] < 0.1 else 2  # a cache hit takes microseconds
    return " / ".join(f"{s[k]:.{digits}f}" for k in ("mean", "p50", "p95"))


def print_encoders(rows: list[dict], queries: int) -> None:
    print(f"\n### Query encoding (ms, mean / p50 / p95 over {queries} distinct queries)\n")
    print("| modality | model | dim | load s | first query ms | per query | cached (same texts again) |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['modality']} | {r['model']} | {r['dim']} | {r['load_s']:.2f} | {r['first_ms']:.1f} | "
              f"{_ms(r['uncached'])} | {_ms(r['cached'])} |")


def print_search(size: int, facts: dict, modes: dict[str, dict], queries: int) -> None:
    print(f"\n### {size:,} segments ({facts['videos']} videos; speech {facts['speech']:,}, subtitles "
          f"{facts['subtitles']:,} segments; {facts['text_rows']:,} catalog text rows; built in "
          f"{facts['build_s']:.0f} s): ms, mean / p50 / p95 over {queries} queries\n")
    names = list(modes)
    print("| stage | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(names))
    for stage in STAGES:
        print(f"| {stage} | " + " | ".join(_ms(modes[n]["stages"].get(stage)) for n in names) + " |")
    print("| modalities searched | " + " | ".join("+".join(modes[n]["searched"]) for n in names) + " |")
    print("| proposals (mean) | " + " | ".join(f"{modes[n]['proposals']:.0f}" for n in names) + " |")
    print("| moments with a snippet | " + " | ".join(f"{modes[n]['moments_with_snippet']:.0%}" for n in names) + " |")


# --- main ----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "spr-bench-fused")
    parser.add_argument("--segments", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--video-segments", type=int, default=1000, help="4-s segments per video")
    parser.add_argument("--speech-frac", type=float, default=0.3)
    parser.add_argument("--subtitles-frac", type=float, default=0.2)
    parser.add_argument("--text-rows-frac", type=float, default=1.0,
                        help="share of text segments whose text is stored in the catalog")
    parser.add_argument("--batch-segments", type=int, default=250_000, help="segments per publish_videos call")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--skip-encoders", action="store_true", help="skip the encoder table (still loads them)")
    parser.add_argument("--build-only", action="store_true", help="build (or check) the corpora and stop")
    parser.add_argument("--no-pinned", dest="pinned", action="store_false",
                        help="skip the fused rrf run with the pool's Faiss threads pinned")
    parser.add_argument("--json", action="store_true", help="also print one JSON line of the figures")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded: both models are local

    machine = cpu_description()
    print(f"machine: {machine}", flush=True)
    corpora = {}
    for size in args.segments:
        spec = CorpusSpec(size, args.video_segments, args.speech_frac, args.subtitles_frac, args.text_rows_frac)
        corpora[size] = build_corpus(args.data_dir / f"n{size}", spec, args.batch_segments)
    if args.build_only:
        return 0
    from spr.config import LoggingConfig
    from spr.logs import configure_logging

    configure_logging(LoggingConfig(level="ERROR", json=False))  # random-weight warnings, once per query
    encoders, clip, minilm = bench_encoders(args.queries)
    import torch

    print(f"torch threads: {torch.get_num_threads()}", flush=True)
    search = {
        size: bench_search(args.data_dir / f"n{size}", clip, minilm, args.queries, args.warmup, 100 + 10 * i, args.pinned)
        for i, size in enumerate(args.segments)
    }

    print(f"\nmachine: {machine}")
    if not args.skip_encoders:
        print_encoders(encoders, args.queries)
    for size in args.segments:
        print_search(size, corpora[size], search[size], args.queries)
    if args.json:
        print(json.dumps({
            "bench": "fused_query", "machine": machine, "queries": args.queries, "encoders": encoders,
            "corpora": {str(k): v for k, v in corpora.items()}, "search": {str(k): v for k, v in search.items()},
        }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
