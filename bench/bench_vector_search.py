"""Vector-store benchmark: build time, single-query search latency and recall@k of FLAT,
IVF_FLAT and IVF_PQ on clustered 768-d unit vectors, on Faiss and on a Milvus server.

    python bench/bench_vector_search.py --sizes 100000 1000000 --backends faiss milvus

Data: ``n`` vectors around ``n / 100`` random centres (a stand-in for segment embeddings,
which cluster by video and topic), queries drawn the same way; the ground truth is exact
inner-product search. Latency is one query per call (what the search service does), k=200.
Milvus needs ``--milvus-uri`` (default ``$SPR_MILVUS__URI`` or http://127.0.0.1:19530): start
one with ``spr milvus start``. Prints one line per (backend, size, index) and a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid

import numpy as np

from _common import clustered, index_spec, load_collection, open_store


def exact_top_k(data: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """``(nq, k)`` ids of the exact inner-product neighbours."""
    import faiss

    index = faiss.IndexFlatIP(data.shape[1])
    index.add(data)
    return index.search(queries, k)[1]


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found.tolist(), truth.tolist())]))


def bench_one(store, spec, data, queries, truth, k: int) -> dict:
    """Load ``data`` into a new collection of ``spec``, time single-query searches at the
    spec's own nprobe, drop it; build seconds, latency percentiles (ms) and recall@k."""
    name = f"bench_{spec.kind.lower()}_{uuid.uuid4().hex[:6]}"
    store.create_collection(name, data.shape[1], spec)
    keys = [f"v{i // 900}" for i in range(len(data))]
    t0 = time.perf_counter()
    load_collection(store, name, np.arange(len(data)), data, keys, timeout_s=3600)
    build_s = time.perf_counter() - t0
    store.search(name, queries[:5], k)  # warm-up
    lat, found = [], []
    for q in queries:
        t = time.perf_counter()
        r = store.search(name, q[None, :], k)
        lat.append((time.perf_counter() - t) * 1e3)
        found.append(r.ids[0])
    store.drop_collection(name)
    lat = np.array(lat)
    return {
        "build_s": build_s,
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        "qps_1_client": 1e3 / float(lat.mean()),
        "recall": recall(np.array(found), truth),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000])
    ap.add_argument("--backends", nargs="+", default=["faiss"], choices=["faiss", "milvus"])
    ap.add_argument("--indexes", nargs="+", default=["FLAT", "IVF_FLAT", "IVF_PQ"])
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--k", type=int, default=200)
    ap.add_argument("--nlist", type=int, default=1024)
    ap.add_argument("--nprobe", type=int, default=16)
    ap.add_argument("--m", type=int, default=64, help="IVF_PQ sub-quantisers (must divide --dim)")
    ap.add_argument("--milvus-uri", default=os.environ.get("SPR_MILVUS__URI", "http://127.0.0.1:19530"))
    args = ap.parse_args()

    rows = []
    with tempfile.TemporaryDirectory(prefix="spr-bench-") as root:
        for n in args.sizes:
            t = time.perf_counter()
            data, queries = clustered(n, args.queries, args.dim)
            truth = exact_top_k(data, queries, args.k)
            print(f"# n={n} dim={args.dim}: data + exact ground truth in {time.perf_counter() - t:.1f} s", flush=True)
            for backend in args.backends:
                store = open_store(backend, os.path.join(root, f"{backend}-{n}"), args.milvus_uri)
                for kind in args.indexes:
                    spec = index_spec(kind, args.nlist, args.nprobe, args.m)
                    r = bench_one(store, spec, data, queries, truth, args.k)
                    row = {"backend": backend, "n": n, "index": kind, **r}
                    rows.append(row)
                    print(
                        f"{backend:<7} n={n:>8} {kind:<9} build {r['build_s']:7.1f} s  p50 {r['p50_ms']:7.2f} ms  "
                        f"p99 {r['p99_ms']:7.2f} ms  recall@{args.k} {r['recall']:.3f}",
                        flush=True,
                    )
                store.close()
            del data
    print(f"\nk={args.k}, nlist={args.nlist}, nprobe={args.nprobe}, IVF_PQ m={args.m} nbits=8, {args.queries} queries, 1 query per call")
    print("| backend | vectors | index | build s | p50 ms | p99 ms | recall@k |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['backend']} | {r['n']:,} | {r['index']} | {r['build_s']:.1f} | {r['p50_ms']:.2f} | "
            f"{r['p99_ms']:.2f} | {r['recall']:.3f} |"
        )


if __name__ == "__main__":
    sys.exit(main())
