"""Refiner benchmark: SPR_CLIP latency against the number of proposals of one query, and
against the number of concurrent queries that the dynamic batcher merges into one forward pass.

    python bench/bench_refiner.py --device cpu --precision fp32 bf16
    python bench/bench_refiner.py --device cuda --precision fp32 fp16 bf16

The model is the serving one (:func:`spr.models.refiner.load_refiner` with no checkpoint: random
weights, 768-d frames and queries, 2 Transformer layers) behind the serving
:class:`spr.refine.batching.DynamicBatcher`; nothing goes through gRPC or the feature store, so
this measures the model and the batcher only. Each proposal has 16-60 frames (uniform; a top-200
query's proposals are 1-11 four-second segments padded by 8 s on each side) of float16 features,
as the feature store returns them.

1. **Proposals**: one query at a time (``max_wait_ms=0``) with 25 / 100 / 200 proposals.
2. **Concurrency**: 1 / 4 / 16 / 64 client threads, each sending queries of 100 proposals back
   to back (``max_wait_ms=2``; ``max_batch_proposals`` as the service picks it: 512 on CPU, 4096
   on a GPU): per-query latency (submit to result), queries/s, and the mean ``batch_queries``
   the batcher formed.

Model and queue times come from each query's :class:`spr.refine.batching.ScoredSpans`. Only
torch, numpy and ``spr.refine.batching`` / ``spr.models.refiner`` are imported, so it runs on a GPU
box that has nothing else installed. Prints one line per measurement and two Markdown tables;
``load`` is the 1-minute load average (this process included), ``others`` the cores that other
processes kept busy meanwhile.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

try:
    from spr.refine.batching import DynamicBatcher, RefineWork, ScoredSpans
    from spr.models.refiner import load_refiner
except ImportError:  # a bare checkout (no `pip install -e .`): import from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from spr.refine.batching import DynamicBatcher, RefineWork, ScoredSpans
    from spr.models.refiner import load_refiner

from _common import OthersCpu, pct  # standard library and numpy only


def make_queries(n: int, proposals: int, frames: tuple[int, int], dim: int, seed: int) -> list[RefineWork]:
    """``n`` works of ``proposals`` proposals each: query ``(dim,)`` float32 and per proposal
    ``(T, dim)`` float16 with ``T`` uniform in ``frames`` (inclusive)."""
    rng = np.random.default_rng(seed)
    works = []
    for _ in range(n):
        lengths = rng.integers(frames[0], frames[1] + 1, proposals)
        feats = [rng.standard_normal((int(t), dim), dtype=np.float32).astype(np.float16) for t in lengths]
        works.append(RefineWork(rng.standard_normal(dim, dtype=np.float32), feats, query_projected=False))
    return works


def sweep_proposals(
    model, device: str, precision: str, counts: list[int], frames: tuple[int, int], repeats: int, warmup: int, dim: int
) -> list[dict]:
    """One query at a time (``max_wait_ms=0``): per proposal count, ``repeats`` timed queries
    after ``warmup`` untimed ones; latency = submit to result, in ms."""
    rows = []
    with DynamicBatcher(model, max_wait_ms=0.0, precision=precision) as batcher:
        for count in counts:
            works = make_queries(warmup + repeats, count, frames, dim, seed=count)
            lat, model_ms, queue_ms = [], [], []
            others = OthersCpu()
            for i, work in enumerate(works):
                t = time.perf_counter()
                outcome: ScoredSpans = batcher.refine(work)
                elapsed = (time.perf_counter() - t) * 1e3
                if i >= warmup:
                    lat.append(elapsed)
                    model_ms.append(outcome.model_ms)
                    queue_ms.append(outcome.queue_ms)
            frames_mean = float(np.mean([len(f) for w in works for f in w.features]))
            row = {
                "device": device,
                "precision": precision,
                "proposals": count,
                "frames_mean": frames_mean,
                "queries": repeats,
                "p50": pct(lat, 50),
                "p99": pct(lat, 99),
                "model_p50": pct(model_ms, 50),
                "queue_p50": pct(queue_ms, 50),
                "load": os.getloadavg()[0],
                "others": others.cores(),
            }
            rows.append(row)
            print(
                f"{device:<5} {precision:<5} {count:>4} proposals ({frames_mean:.0f} frames avg): "
                f"p50 {row['p50']:8.1f} ms  p99 {row['p99']:8.1f} ms  model p50 {row['model_p50']:8.1f} ms  "
                f"queue p50 {row['queue_p50']:.2f} ms  (load {row['load']:.2f}, others {row['others']:.2f} cores)",
                flush=True,
            )
    return rows


def sweep_concurrency(
    model,
    device: str,
    precision: str,
    levels: list[int],
    proposals: int,
    frames: tuple[int, int],
    rounds: int,
    min_queries: int,
    max_wait_ms: float,
    max_batch_proposals: int,
    dim: int,
) -> list[dict]:
    """``c`` client threads per level, each sending its share of ``max(rounds * c, min_queries)``
    queries of ``proposals`` proposals back to back through one shared batcher."""
    rows = []
    with DynamicBatcher(model, max_batch_proposals, max_wait_ms, precision=precision) as batcher:
        batcher.refine(make_queries(1, proposals, frames, dim, seed=1)[0])  # warm-up
        for c in levels:
            total = max(rounds * c, min_queries)
            works = make_queries(total, proposals, frames, dim, seed=100 + c)
            shares = [works[i::c] for i in range(c)]
            results: list[list[tuple[float, ScoredSpans]]] = [[] for _ in range(c)]
            start = threading.Barrier(c + 1)

            def client(i: int) -> None:
                start.wait()
                for work in shares[i]:
                    t = time.perf_counter()
                    outcome = batcher.refine(work)
                    results[i].append(((time.perf_counter() - t) * 1e3, outcome))

            threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(c)]
            for th in threads:
                th.start()
            start.wait()
            others = OthersCpu()
            t0 = time.perf_counter()
            for th in threads:
                th.join()
            wall = time.perf_counter() - t0
            done = [r for rs in results for r in rs]
            lat = [ms for ms, _ in done]
            row = {
                "device": device,
                "precision": precision,
                "concurrent": c,
                "cap": max_batch_proposals,
                "proposals": proposals,
                "queries": len(done),
                "p50": pct(lat, 50),
                "p99": pct(lat, 99),
                "qps": len(done) / wall,
                "batch_queries": float(np.mean([o.batch_queries for _, o in done])),
                "model_p50": pct([o.model_ms for _, o in done], 50),
                "queue_p50": pct([o.queue_ms for _, o in done], 50),
                "load": os.getloadavg()[0],
                "others": others.cores(),
            }
            rows.append(row)
            print(
                f"{device:<5} {precision:<5} {c:>3} concurrent x {proposals} proposals: p50 {row['p50']:8.1f} ms  "
                f"p99 {row['p99']:8.1f} ms  {row['qps']:7.2f} q/s  batch_queries {row['batch_queries']:.2f}  "
                f"model p50 {row['model_p50']:8.1f} ms  queue p50 {row['queue_p50']:8.1f} ms  "
                f"(load {row['load']:.2f}, others {row['others']:.2f} cores)",
                flush=True,
            )
    return rows


def describe_device(device: str) -> str:
    if device == "cuda":
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}"
    return f"CPU ({os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} intra-op threads)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_devices = ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
    ap.add_argument("--device", nargs="+", default=default_devices, choices=["cpu", "cuda"])
    ap.add_argument("--precision", nargs="+", default=["fp32", "fp16", "bf16"], choices=["fp32", "fp16", "bf16"])
    ap.add_argument("--proposals", type=int, nargs="+", default=[25, 100, 200], help="proposal counts of the first sweep")
    ap.add_argument("--frames", type=int, nargs=2, default=[16, 60], metavar=("MIN", "MAX"), help="frames per proposal")
    ap.add_argument("--repeats", type=int, default=10, help="timed queries per proposal count")
    ap.add_argument("--warmup", type=int, default=2, help="untimed queries before each proposal count")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64], help="client threads of the second sweep")
    ap.add_argument("--concurrent-proposals", type=int, default=100, help="proposals per query in the second sweep")
    ap.add_argument("--rounds", type=int, default=2, help="queries per client thread in the second sweep")
    ap.add_argument("--min-queries", type=int, default=16, help="at least this many queries per concurrency level")
    ap.add_argument("--max-wait-ms", type=float, default=2.0, help="batcher wait of the second sweep")
    ap.add_argument(
        "--max-batch-proposals", type=int, default=0,
        help="batcher cap (refiner.max_batch_proposals; 0 = the service's auto: 512 on CPU, 4096 on a GPU)",
    )
    ap.add_argument("--dim", type=int, default=768, help="CLIP feature size (ViT-L-14: 768)")
    ap.add_argument("--skip-proposals", action="store_true", help="only the concurrency sweep")
    ap.add_argument("--skip-concurrency", action="store_true", help="only the proposal sweep")
    args = ap.parse_args()

    frames = (args.frames[0], args.frames[1])
    by_count, by_concurrency = [], []
    for device in args.device:
        if device == "cuda" and not torch.cuda.is_available():
            print("# cuda: torch sees no GPU; skipped", flush=True)
            continue
        torch.manual_seed(0)
        model = load_refiner("", args.dim, device)
        print(f"# {device}: {describe_device(device)}; refiner {model.name} (random weights)", flush=True)
        for precision in args.precision:
            if not args.skip_proposals:
                by_count += sweep_proposals(model, device, precision, args.proposals, frames, args.repeats, args.warmup, args.dim)
            if not args.skip_concurrency:
                by_concurrency += sweep_concurrency(
                    model,
                    device,
                    precision,
                    args.concurrency,
                    args.concurrent_proposals,
                    frames,
                    args.rounds,
                    args.min_queries,
                    args.max_wait_ms,
                    args.max_batch_proposals or (4096 if device == "cuda" else 512),
                    args.dim,
                )
        del model
        if device == "cuda":
            torch.cuda.empty_cache()

    if by_count:
        print(f"\nOne query at a time (max_wait_ms=0), {frames[0]}-{frames[1]} frames per proposal, {args.dim}-d, "
              f"{args.repeats} queries per row after {args.warmup} warm-up")
        print("| device | precision | proposals | frames/proposal | p50 ms | p99 ms | model p50 ms | queue p50 ms | load | others |")
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in by_count:
            print(
                f"| {r['device']} | {r['precision']} | {r['proposals']} | {r['frames_mean']:.0f} | {r['p50']:.1f} | "
                f"{r['p99']:.1f} | {r['model_p50']:.1f} | {r['queue_p50']:.2f} | {r['load']:.2f} | {r['others']:.2f} |"
            )
    if by_concurrency:
        print(f"\nConcurrent queries of {args.concurrent_proposals} proposals, max_wait_ms={args.max_wait_ms:g}, "
              f"cap = max_batch_proposals")
        print("| device | precision | cap | concurrent | queries | p50 ms | p99 ms | queries/s | mean batch_queries | model p50 ms | queue p50 ms | load | others |")
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in by_concurrency:
            print(
                f"| {r['device']} | {r['precision']} | {r['cap']} | {r['concurrent']} | {r['queries']} | {r['p50']:.1f} | "
                f"{r['p99']:.1f} | {r['qps']:.2f} | {r['batch_queries']:.2f} | {r['model_p50']:.1f} | "
                f"{r['queue_p50']:.1f} | {r['load']:.2f} | {r['others']:.2f} |"
            )


if __name__ == "__main__":
    sys.exit(main())
