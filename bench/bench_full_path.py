"""The full SPR query path on a CPU, old refiner path and new side by side in one run (issue 13).

    python bench/bench_full_path.py                      # 1M segments, IVF_FLAT, ViT-L-14 text tower
    python bench/bench_full_path.py --segments 100000 --json /tmp/full.json
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python bench/bench_full_path.py   # AVX2-only kernels

**What runs.** Text queries (random English phrases, each new, so the query cache never hits)
go through the real gRPC search service and refiner on loopback, as ``spr serve`` runs them
(bench/bench_search.py's child process): the ViT-L-14 text tower (random weights; speed does
not depend on them), a random text projector, Faiss IVF_FLAT over ``--segments`` 768-d
segments (1 OpenMP thread per search, as served), the catalog (SQLite), ~100 proposals padded by
8 s, then the refiner. Both paths use the same random weights (768-d frames, 2 layers):

* **old**: today's path: the paper's online mode, the frame Transformer over each proposal at
  query time (``context_window`` 0), padded to the longest, with the batching settings that
  were the defaults before this issue (512 proposals, 2 ms wait, 65536 padded frames);
* **buckets**: the online mode with this issue's CPU batching (length buckets of at most 1024
  padded frames, a batch of about one query, no batch wait): what direction 2 alone buys;
* **new**: the windowed frame context precomputed per video (``context_window`` 64, stored as
  the ``refiner_context`` modality by :func:`spr.refine.context.precompute_contexts`, the way
  ``spr refiner precompute`` does), only the query-dependent half at query time.

The corpus is bench/bench_search.py's (one-hour videos of 900 segments, clustered). Text queries
land anywhere in it, so every video needs frame features: the first ``--hot-videos`` videos get
their own, and every other video's files are hard links to those of a hot video of the same
length (same bytes; per-second features of 1M segments would be 6 GB, their context rows 12 GB).
So each of a query's ~100 proposals is refined, as in an archive where every video was ingested.

Prints the CPU, the kernels and precisions in effect, per-stage p50/p99 at 1 and 16 clients,
throughput, degraded responses, and the quality pair: SPR NDCG@10 at IoU 0.5/0.7 on the
synthetic learning benchmark (tests/test_learning_end_to_end.py's setup), a refiner trained
the same way in the online and in the windowed mode. ``--json OUT`` writes ``full_p50_ms``,
``full_p99_ms``, ``degraded_16``, ``qps_1``, ``qps_16`` for the new path, the same under ``old``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import index_spec, text_queries
from bench_search import (
    DIM,
    CorpusSpec,
    Services,
    bench_env,
    build_collection,
    build_corpus,
    collection_name,
    run_load,
    spr_command,
    summarise,
)

WINDOW = 64
STAGE_COLUMNS = ("embed", "ann", "catalog", "proposals", "refine", "total", "client")


def kernels_report(refiner_device: str = "cpu") -> dict:
    """CPU flags, torch's kernel level, the precisions ``auto`` resolves to, Faiss's build."""
    import faiss
    import torch

    from spr.models.clip import cpu_flags, resolve_precision

    flags = cpu_flags()
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "avx512_vnni", "avx_vnni")
    model = ""
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    report = {
        "cpu": model,
        "cores": os.cpu_count(),
        "flags": [f for f in wanted if f in flags],
        "torch": torch.__version__,
        "torch_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(),
        "caps": {k: os.environ[k] for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS", "FBGEMM_ENABLE_INSTRUCTIONS", "FAISS_OPT_LEVEL") if k in os.environ},
        "faiss": getattr(faiss, "__version__", "?"),
        "faiss_opts": faiss.get_compile_options() if hasattr(faiss, "get_compile_options") else "?",
        "precision_auto": resolve_precision("auto", refiner_device),
    }
    try:  # the text tower's own choice, where spr.cpu / clip.text_precision exist
        from spr.cpu import format_cpu_report

        report["cpu_report"] = format_cpu_report()
    except ImportError:
        pass
    return report


# --- corpus ------------------------------------------------------------------------------------


def link_features(root: Path, spec: CorpusSpec, modality: str = "visual") -> int:
    """Give every video without ``modality`` files a hard link to a hot video's file of the
    same length; returns the links made."""
    from spr.config import load_config
    from spr.features import FrameFeatureStore

    store = FrameFeatureStore(load_config(environ={"SPR_DATA_DIR": str(root)}).features_url)
    sizes = spec.video_sizes()
    source_of = {sizes[v]: v for v in range(min(spec.hot_videos, len(sizes)))}
    made = 0
    ids = _video_ids(root)
    for v, size in enumerate(sizes):
        if v < spec.hot_videos or size not in source_of:  # own files; or the last, shorter video
            continue
        target = Path(store.path(ids[v], modality))
        source = Path(store.path(ids[source_of[size]], modality))
        if target.exists():
            if target.stat().st_ino == source.stat().st_ino:
                continue
            target.unlink()  # a link to a file since replaced (rows of an older checkpoint)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(source, target)
        made += 1
    return made


def _video_ids(root: Path) -> list[int]:
    """Catalog video ids in corpus order (``bench/000000``, ...)."""
    from spr.catalog import SegmentCatalog
    from spr.config import load_config

    catalog = SegmentCatalog.from_config(load_config(environ={"SPR_DATA_DIR": str(root)}))
    try:
        videos = {v.key: v.id for v in catalog.list_videos()}
    finally:
        catalog.close()
    return [videos[k] for k in sorted(videos)]


def write_refiners(root: Path, clip_model: str) -> dict[str, Path]:
    """One random refiner (768-d frames, CLIP-sized text input), saved twice: online
    (``context_window`` 0) and windowed (``WINDOW``); the same weights in both."""
    import torch

    from spr.models.clip import clip_feature_dim
    from spr.models.refiner import RefinerShape, build_refiner, save_refiner

    paths = {"old": root / f"refiner-online-{clip_model}.pt", "new": root / f"refiner-window{WINDOW}-{clip_model}.pt"}
    if all(p.is_file() for p in paths.values()):
        from spr.models.refiner import load_refiner

        try:
            for p in paths.values():
                load_refiner(str(p), DIM)  # written by an older version of the model: remade
            return paths
        except ValueError:
            pass
    torch.manual_seed(0)
    shape = RefinerShape(in_dim=DIM, text_in_dim=clip_feature_dim(clip_model), dim=DIM)
    online = build_refiner(shape)
    windowed = build_refiner(RefinerShape(**{**shape.__dict__, "context_window": WINDOW}))
    windowed.load_state_dict(online.state_dict(), strict=False)  # + its proposal-offset table (zeros)
    note = "random initialisation, for bench/bench_full_path.py"
    save_refiner(paths["old"], online, clip_model=clip_model, note=note)
    save_refiner(paths["new"], windowed, clip_model=clip_model, note=note)
    return paths


def precompute_hot(root: Path, spec: CorpusSpec, checkpoint: Path) -> tuple[int, float]:
    """Context rows of the hot videos with the windowed refiner (what ingest or ``spr refiner
    precompute`` does); (rows written, seconds)."""
    from spr.config import load_config
    from spr.features import FrameFeatureStore
    from spr.models.refiner import load_refiner
    from spr.refine.context import precompute_contexts

    store = FrameFeatureStore(load_config(environ={"SPR_DATA_DIR": str(root)}).features_url)
    model = load_refiner(str(checkpoint), DIM)
    ids = _video_ids(root)[: spec.hot_videos]
    report = precompute_contexts(model, store, ids)
    return report.rows, report.wall_s


# --- the served paths --------------------------------------------------------------------------


# The refiner's batching defaults before issue 13: "old" runs with them.
OLD_BATCHING = {"SPR_REFINER__MAX_BATCH_PROPOSALS": "512", "SPR_REFINER__MAX_WAIT_MS": "2", "SPR_REFINER__MAX_BATCH_FRAMES": "65536"}


def service_env(root: Path, collection: str, refiner: Path, args: argparse.Namespace) -> dict[str, str]:
    """bench_search's service settings (Faiss, ViT-L-14 text tower, random projector) with
    this path's refiner checkpoint and precisions."""
    base = argparse.Namespace(clip_model=args.clip_model, refiner_device=args.refiner_device, refiner_timeout_ms=0)
    return {
        **bench_env(root, "faiss", collection, "", base),
        "SPR_REFINER__CHECKPOINT": str(refiner),
        "SPR_LOGGING__LEVEL": os.environ.get("SPR_BENCH_LOG_LEVEL", "WARNING"),
        **({"SPR_REFINER__PRECISION": args.refiner_precision} if args.refiner_precision else {}),
        **({"SPR_CLIP__TEXT_PRECISION": args.text_precision} if args.text_precision else {}),
    }


def _serve_refiner(env: dict[str, str], conn) -> None:
    """Child process: the refiner alone, as ``spr refiner`` runs it; sends its port."""
    from spr.config import load_config
    from spr.logs import configure_logging
    from spr.refine.service import serve_refiner

    config = load_config(environ=env)
    configure_logging(config.logging)
    server, port = serve_refiner(config, port=0, in_dim=DIM, metrics_port=0)
    conn.send(port)
    conn.recv()
    server.stop(1.0).wait()


def _serve_search(env: dict[str, str], conn) -> None:
    """Child process: the search service alone (``spr serve --no-refiner`` with a refiner target)."""
    import logging

    from spr.config import load_config
    from spr.logs import configure_logging
    from spr.search.service import serve_search

    config = load_config(environ=env)
    configure_logging(config.logging)
    logging.getLogger("spr.refine_client").setLevel(logging.ERROR)
    server, port = serve_search(config, port=0, refiner_target=env["_refiner_target"], metrics_port=0)
    conn.send(port)
    conn.recv()
    server.stop(1.0).wait()


class SplitServices:
    """The refiner and the search service in two processes, as a deployment runs them (each
    process has its own interpreter lock); ``target`` is the search service address."""

    def __init__(self, env: dict[str, str]) -> None:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self._children = []
        port = self._start(ctx, _serve_refiner, env)
        port = self._start(ctx, _serve_search, {**env, "_refiner_target": f"127.0.0.1:{port}"})
        self.target = f"127.0.0.1:{port}"

    def _start(self, ctx, target, env) -> int:
        conn, child = ctx.Pipe()
        proc = ctx.Process(target=target, args=(env, child), daemon=True)
        proc.start()
        self._children.append((conn, proc))
        if not conn.poll(300):
            self.close()
            raise RuntimeError(f"{target.__name__} did not start within 300 s")
        return int(conn.recv())

    def close(self) -> None:
        for conn, proc in reversed(self._children):
            try:
                conn.send("stop")
            except (BrokenPipeError, OSError):
                pass
            proc.join(30)
            if proc.is_alive():
                proc.kill()


def bench_path(env: dict[str, str], collection: str, nprobe: int, args: argparse.Namespace, seed: int) -> dict:
    """1 and 16 clients of text queries, refine on, against one served configuration."""
    services = SplitServices(env) if args.split else Services(env)
    try:
        common = {"collection": collection, "nprobe": nprobe, "top_k": 10, "refine": True}
        # Untimed: the first passes, and every video's feature layout read once (a long-running
        # refiner knows them all; a query touches ~150 of this corpus's 1,111 videos).
        warm = [{**common, "text": t} for t in text_queries(args.warm_queries, seed=seed + 100)]
        run_load(services.target, warm[:2], 1)
        run_load(services.target, warm[2:], 16)
        out = {}
        for clients, count, s in ((1, args.queries, seed), (16, args.queries_16, seed + 1)):
            requests = [{**common, "text": t} for t in text_queries(count, seed=s)]
            samples, wall = run_load(services.target, requests, clients)
            row = summarise(samples, wall)
            out[clients] = row
            print(
                f"  {env['_label']:<7} clients={clients:<2} n={row['queries']:<4} "
                + "  ".join(f"{st} {row[f'{st}_p50']:.1f}/{row[f'{st}_p99']:.1f}" for st in STAGE_COLUMNS)
                + f" ms  {row['qps']:.2f} q/s  proposals {row['proposals_mean']:.0f}  degraded {row['degraded']}",
                flush=True,
            )
        return out
    finally:
        services.close()


def figures(runs: dict) -> dict:
    """The issue's keys from one path's runs."""
    one, many = runs[1], runs[16]
    return {
        "full_p50_ms": one["client_p50"],
        "full_p99_ms": one["client_p99"],
        "degraded_16": many["degraded"],
        "qps_1": one["qps"],
        "qps_16": many["qps"],
        "stages_1": {k: v for k, v in one.items() if k.endswith(("_p50", "_p99"))},
        "stages_16": {k: v for k, v in many.items() if k.endswith(("_p50", "_p99"))},
        "proposals_mean": one["proposals_mean"],
    }


# --- quality -----------------------------------------------------------------------------------


def quality_pair(workdir: Path, windows: tuple[int, ...] = (0, WINDOW)) -> dict[int, dict]:
    """SPR/SP NDCG@10 at IoU 0.5 and 0.7 on the synthetic learning benchmark, a refiner trained
    the same way (tests/test_learning_end_to_end.py's recipe) per ``context_window``."""
    env = {
        **os.environ,
        "SPR_DATA_DIR": str(workdir / "data"),
        "SPR_CLIP__MODEL": "spr-tiny",
        "SPR_LOGGING__LEVEL": os.environ.get("SPR_BENCH_LOG_LEVEL", "WARNING"),
        "OMP_NUM_THREADS": "1",
    }
    bench = workdir / "bench"

    def spr(*argv: str, **extra: str) -> dict:
        done = subprocess.run([spr_command(), *argv, "--json"], env={**env, **extra}, capture_output=True, text=True, timeout=1800)
        if done.returncode != 0:
            raise RuntimeError(f"spr {' '.join(argv)} failed: {done.stderr[-2000:]}")
        return json.loads(done.stdout)

    queries = ["--query-features", str(bench / "query_features.h5")]
    spr("train", "synthetic", str(bench), "--videos", "60", "--types", "6")
    spr("import", str(bench / "features.h5"), "--manifest", str(bench / "durations.jsonl"), "--collection", "base")
    projector = workdir / "projector.pt"
    spr(
        "train", "projector", "--train", str(bench / "train.jsonl"), "--features-from-catalog", *queries,
        "--out", str(projector), "--epochs", "8", "--batch-size", "64", "--dim", "64", "--layers", "1", "--heads", "2",
    )
    trained = {"SPR_PROJECTOR__CHECKPOINT": str(projector)}
    spr("import", str(bench / "features.h5"), "--manifest", str(bench / "durations.jsonl"), "--collection", "trained", **trained)
    out = {}
    for window in windows:
        refiner = workdir / f"refiner-w{window}.pt"
        spr(
            "train", "refiner", "--train", str(bench / "train.jsonl"), *queries, "--collection", "trained",
            "--out", str(refiner), "--epochs", "20", "--batch-queries", "16", "--lr", "0.002",
            "--dim", "64", "--layers", "1", "--heads", "2", "--context-window", str(window), **trained,
        )
        if window:
            spr("refiner", "precompute", **trained, SPR_REFINER__CHECKPOINT=str(refiner))
        metrics = spr("eval", str(bench / "test.jsonl"), "--collection", "trained", *queries, **trained, SPR_REFINER__CHECKPOINT=str(refiner))
        out[window] = {
            f"{method}@10_iou{iou}": float(metrics[method]["ndcg"]["10"][f"{iou:.1f}"])
            for method in ("sp", "spr") for iou in (0.5, 0.7)
        }
        print(f"  quality context_window={window}: " + "  ".join(f"{k} {v:.3f}" for k, v in out[window].items()), flush=True)
    return out


# --- main --------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--segments", type=int, default=1_000_000, help="corpus size (segments of 4 s)")
    ap.add_argument("--index", default="IVF_FLAT", choices=["FLAT", "IVF_FLAT", "IVF_PQ"])
    ap.add_argument("--nlist", type=int, help="IVF lists (default 1024 up to 200K segments, else 4096)")
    ap.add_argument("--nprobe", type=int, help="IVF probes (default 16 up to 200K segments, else 32)")
    ap.add_argument("--clip-model", default="ViT-L-14", help="the text tower (random weights)")
    ap.add_argument("--queries", type=int, default=40, help="text queries at 1 client")
    ap.add_argument("--queries-16", type=int, default=96, help="text queries at 16 clients")
    ap.add_argument("--warm-queries", type=int, default=34, help="untimed text queries first (2 alone, the rest at 16 clients)")
    ap.add_argument("--hot-videos", type=int, default=8, help="videos with their own features (the rest link to them)")
    ap.add_argument("--paths", nargs="+", default=["old", "buckets", "new"], choices=["old", "buckets", "new"])
    ap.add_argument("--refiner-device", default="cpu")
    ap.add_argument(
        "--split", action="store_true",
        help="the refiner in its own process (spr refiner + spr serve --no-refiner), not beside the search service",
    )
    ap.add_argument("--refiner-precision", default="", help="refiner.precision (default: auto)")
    ap.add_argument("--text-precision", default="", help="clip.text_precision (default: auto)")
    ap.add_argument("--data-dir", default="/tmp/spr-bench-full", help="corpus cache (one folder per size)")
    ap.add_argument("--build-threads", type=int, default=2)
    ap.add_argument("--no-quality", action="store_true", help="skip the quality pair (~3 min)")
    ap.add_argument("--quality-only", action="store_true")
    ap.add_argument("--quality-windows", type=int, nargs="+", default=[0, WINDOW], help="context windows to train and compare (0 = online)")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()

    kernels = kernels_report(args.refiner_device)
    print("# " + json.dumps(kernels), flush=True)
    result: dict = {
        "kernels": kernels, "segments": args.segments, "index": args.index, "clip_model": args.clip_model,
        "layout": "refiner in its own process" if args.split else "refiner beside the search service (one process)",
    }
    if not args.quality_only:
        spec = CorpusSpec(n=args.segments, hot_videos=args.hot_videos)
        root = Path(args.data_dir) / f"n{args.segments}"
        build_corpus(root, spec)
        linked = link_features(root, spec)
        nlist = args.nlist or (1024 if args.segments <= 200_000 else 4096)
        nprobe = args.nprobe or (16 if args.segments <= 200_000 else 32)
        name = collection_name("faiss", args.segments, args.index)
        build_s, cached = build_collection(root, "faiss", name, index_spec(args.index, nlist, nprobe, 64), "", args.build_threads)
        print(f"# faiss {args.index} n={args.segments:,}: built in {build_s:.1f} s{' (cached)' if cached else ''}; {linked} feature links", flush=True)
        refiners = write_refiners(root, args.clip_model)
        if "new" in args.paths:
            rows, secs = precompute_hot(root, spec, refiners["new"])
            links = link_features(root, spec, "refiner_context")
            print(f"# context rows precomputed: {rows:,} rows in {secs:.1f} s ({rows / secs if secs else 0:,.0f} rows/s); {links} links", flush=True)
            result["precompute_rows_per_s"] = rows / secs if secs else None
        probe = 0 if args.index == "FLAT" else nprobe
        for i, label in enumerate(args.paths):
            env = service_env(root, name, refiners["new" if label == "new" else "old"], args)
            if label == "old":
                env.update(OLD_BATCHING)
            env["_label"] = label
            runs = bench_path(env, name, probe, args, seed=10 + 7 * i)
            result[label] = figures(runs)
    if not args.no_quality:
        with tempfile.TemporaryDirectory(prefix="spr-quality-") as tmp:
            result["quality"] = {str(k): v for k, v in quality_pair(Path(tmp), tuple(args.quality_windows)).items()}
    print_summary(result)
    if args.json:
        new = result.get("new", {})
        out = {**{k: new.get(k) for k in ("full_p50_ms", "full_p99_ms", "degraded_16", "qps_1", "qps_16")}, **result}
        out.pop("new", None)
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


def print_summary(result: dict) -> None:
    print("\n| path | full p50 ms | full p99 ms | q/s 1 client | q/s 16 clients | 16/1 | degraded at 16 |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label in ("old", "buckets", "new"):
        f = result.get(label)
        if f:
            print(
                f"| {label} | {f['full_p50_ms']:.1f} | {f['full_p99_ms']:.1f} | {f['qps_1']:.2f} | {f['qps_16']:.2f} | "
                f"{f['qps_16'] / f['qps_1']:.2f} | {f['degraded_16']} |"
            )
    for label in ("old", "buckets", "new"):
        f = result.get(label)
        if f:
            for clients in (1, 16):
                s = f[f"stages_{clients}"]
                print(f"  {label} {clients:>2} clients: " + "  ".join(f"{st} {s[f'{st}_p50']:.1f}/{s[f'{st}_p99']:.1f}" for st in STAGE_COLUMNS))
    q = result.get("quality")
    if q:
        print("\n| refiner (trained the same way) | SP@10 IoU.5 | SP@10 IoU.7 | SPR@10 IoU.5 | SPR@10 IoU.7 |")
        print("|---|---:|---:|---:|---:|")
        for window, m in q.items():
            name = "online (paper, old)" if window == "0" else f"windowed {window}, precomputed (new)"
            print(f"| {name} | {m['sp@10_iou0.5']:.3f} | {m['sp@10_iou0.7']:.3f} | {m['spr@10_iou0.5']:.3f} | {m['spr@10_iou0.7']:.3f} |")


if __name__ == "__main__":
    sys.exit(main())
