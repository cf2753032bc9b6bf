"""Bulk paths (issue 13, direction 6): ``spr eval`` throughput against raw Faiss on the same
index, and ``spr import`` segments/s, old and new side by side in one run.

    python bench/bench_bulk.py --segments 146840 --queries 2000 --dim 384 --json /tmp/bulk.json
    python bench/bench_bulk.py --segments 40000 --milvus-uri http://127.0.0.1:19530

A synthetic corpus of the real shape (TVR: 20 four-second segments per video, ``--dim``-d,
clustered as :func:`_common.clustered` makes it) is written as an HDF5 file of 1-s frame
features (``--rows-per-segment`` rows per segment, what ``spr import`` reads; the 147K-segment
file is 0.9 GB at 384-d) and as ready-made segment embeddings (``--segments`` mode). Then:

* **import**: ``spr import`` (the library call) of both files into fresh SQLite + Faiss data
  directories, the per-video publish (``ImportOptions(bulk=False)``, the path before) and the
  bulk one; with ``--milvus-uri`` the same into Milvus (``--milvus-segments`` of them, since
  the old path runs at a few hundred segments/s there);
* **eval**: ``run_evaluation`` (the code of ``spr eval``) of ``--queries`` projected query
  embeddings over the FLAT collection the new import made and an IVF_FLAT copy of it, without
  refinement (the refiner is not what this measures): one query per search (``batch_queries=1``,
  the path before, ``--workers`` threads), and batched (``--batch-queries``) with 1 and with
  ``--workers`` threads; next to raw Faiss on the same index file (``faiss.read_index`` of the
  collection, same k, nprobe and OpenMP threads as the store) with one caller and with
  ``--workers`` callers.

The box is shared and noisy: every figure of one run is measured in one process, and the
machine's load beside each is printed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from _common import OthersCpu, clustered, cpu_description

SEGMENTS_PER_VIDEO = 20
SEGMENT_S = 4.0


class Beside:
    """``with Beside() as b: ...``; then ``b.cores``: how many cores other processes kept busy
    meanwhile (:class:`_common.OthersCpu`)."""

    cores = float("nan")

    def __enter__(self) -> "Beside":
        self._others = OthersCpu()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cores = self._others.cores()


# --- inputs --------------------------------------------------------------------------------------


def write_inputs(folder: Path, data: np.ndarray, queries: np.ndarray, rows_per_segment: int, seed: int = 0) -> dict:
    """The import files (frame features, ready-made segments, manifest) and the eval files
    (queries with one ground-truth moment each, their embeddings)."""
    import h5py

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    videos = len(data) // SEGMENTS_PER_VIDEO
    paths = {n: folder / f for n, f in [("features", "features.h5"), ("segments", "segments.h5"),
                                        ("manifest", "manifest.jsonl"), ("queries", "queries.jsonl"),
                                        ("query_features", "queries.h5")]}
    rows = SEGMENTS_PER_VIDEO * rows_per_segment
    with h5py.File(paths["features"], "w") as feats, h5py.File(paths["segments"], "w") as segs, \
            paths["manifest"].open("w") as manifest:
        for v in range(videos):
            key = f"vid{v:06d}"
            block = data[v * SEGMENTS_PER_VIDEO : (v + 1) * SEGMENTS_PER_VIDEO]
            segs.create_dataset(key, data=block)
            frames = np.repeat(block, rows_per_segment, axis=0)
            feats.create_dataset(key, data=frames + 0.05 * rng.standard_normal(frames.shape, dtype=np.float32))
            manifest.write(json.dumps({"key": key, "duration": SEGMENTS_PER_VIDEO * SEGMENT_S}) + "\n")
    with h5py.File(paths["query_features"], "w") as h5, paths["queries"].open("w") as out:
        for i, q in enumerate(queries):
            h5.create_dataset(f"q{i}", data=q)
            start = float(rng.integers(0, int(SEGMENTS_PER_VIDEO * SEGMENT_S) - 8))
            out.write(json.dumps({
                "query_id": f"q{i}", "query": f"query {i}", "video_name": f"vid{int(rng.integers(videos)):06d}",
                "timestamp": [start, start + 8.0], "duration": SEGMENTS_PER_VIDEO * SEGMENT_S, "relevance": 1,
            }) + "\n")
    return {**paths, "videos": videos, "rows": rows}


def make_config(data_dir: Path, collection: str, milvus_uri: str = "", catalog_url: str = ""):
    from spr.config import CatalogConfig, Config, ConsistencyLevel, MilvusConfig, VectorsConfig

    config = Config(
        data_dir=str(data_dir), catalog=CatalogConfig(url=catalog_url),
        vectors=VectorsConfig(collection=collection, backend="milvus" if milvus_uri else "faiss"),
    )
    if milvus_uri:
        config = config.replace(milvus=MilvusConfig(uri=milvus_uri, consistency_level=ConsistencyLevel.BOUNDED, timeout_s=600))
    return config


# --- import --------------------------------------------------------------------------------------


def bench_import(config, paths: dict, mode: str, bulk: bool) -> dict:
    """One ``spr import`` into ``config``'s (fresh) stores; segments/s over its whole wall time
    (index wait included)."""
    from spr.ingest.importer import ImportOptions, import_features

    options = ImportOptions(segments=mode == "segments", progress_every=0, bulk=bulk)
    source = paths["segments" if mode == "segments" else "features"]
    with Beside() as others:
        t = time.perf_counter()
        summary = import_features(config, source, paths["manifest"], options)
        wall = time.perf_counter() - t
    assert not summary.failed, list(summary.failed.items())[:3]
    return {
        "backend": config.vectors.backend.value if hasattr(config.vectors.backend, "value") else str(config.vectors.backend),
        "mode": mode, "path": "bulk" if bulk else "per-video", "segments": summary.segments_written,
        "videos": len(summary.imported), "seconds": wall, "segments_per_s": summary.segments_written / wall,
        "index_wait_s": summary.index_wait_s, "others_cpu": others.cores,
    }


def subset_inputs(paths: dict, folder: Path, videos: int) -> dict:
    """The first ``videos`` videos of the import files (the Milvus runs)."""
    import h5py

    folder.mkdir(parents=True, exist_ok=True)
    out = dict(paths)
    keys = [f"vid{v:06d}" for v in range(videos)]
    for name in ("features", "segments"):
        out[name] = folder / paths[name].name
        with h5py.File(paths[name], "r") as src, h5py.File(out[name], "w") as dst:
            for key in keys:
                dst.create_dataset(key, data=src[key][()])
    out["manifest"] = folder / "manifest.jsonl"
    lines = paths["manifest"].read_text().splitlines()[:videos]
    out["manifest"].write_text("\n".join(lines) + "\n")
    return out


# --- eval ----------------------------------------------------------------------------------------


def ivf_copy(config, source: str, target: str, nlist: int, nprobe: int) -> None:
    """An IVF_FLAT collection holding exactly the vectors and ids of ``source`` (Faiss)."""
    import faiss

    from spr.stores import IvfFlat, open_vector_store

    store = open_vector_store(config)
    try:
        index = read_store_index(config, source)
        inner = faiss.downcast_index(index.index)
        ids = faiss.vector_to_array(index.id_map).astype(np.int64)
        vectors = inner.reconstruct_n(0, inner.ntotal)
        store.create_collection(target, vectors.shape[1], IvfFlat(nlist=nlist, nprobe=nprobe))
        owners = np.asarray(ids >> 20)
        store.upsert(target, ids, vectors, [f"v{o}" for o in owners.tolist()])
        store.wait_until_indexed(target)
    finally:
        store.close()


def read_store_index(config, name: str):
    import faiss

    root = config.faiss_path / name
    return faiss.read_index(str(root / (root / "CURRENT").read_text().strip() / "index.faiss"))


def raw_faiss(config, name: str, queries: np.ndarray, k: int, nprobe: int | None, callers: int, batch: int) -> dict:
    """Raw Faiss on the collection's own index file: ``callers`` threads, each searching its
    share of ``queries`` in batches of ``batch`` with one OpenMP thread (as the store does)."""
    import faiss

    index = read_store_index(config, name)
    params = faiss.SearchParametersIVF(nprobe=nprobe) if nprobe else None
    shares = np.array_split(np.arange(len(queries)), callers)

    def work(rows: np.ndarray) -> None:
        faiss.omp_set_num_threads(1)
        for lo in range(0, len(rows), batch):
            chunk = queries[rows[lo : lo + batch]]
            index.search(chunk, k, params=params) if params is not None else index.search(chunk, k)

    work(shares[0][: min(len(shares[0]), batch)])  # warm
    threads = [threading.Thread(target=work, args=(rows,)) for rows in shares]
    with Beside() as others:
        t = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        wall = time.perf_counter() - t
    return {"queries_per_s": len(queries) / wall, "seconds": wall, "others_cpu": others.cores}


def bench_eval(config, paths: dict, collection: str, nq: int, k: int, workers: int, batch: int) -> dict:
    from spr.engine import MomentSearch
    from spr.eval.evaluation import EvalOptions, load_eval_queries, run_evaluation

    items = load_eval_queries(paths["queries"])[:nq]
    options = EvalOptions(
        collection=collection, query_features=str(paths["query_features"]), projected=True, refine=False,
        modalities=False, top_k_segments=k, workers=workers, batch_queries=batch,
    )
    with MomentSearch.open(config) as search, Beside() as others:
        report = run_evaluation(config, items, options, search=search)
    t = report.timings_ms
    return {
        "collection": collection, "workers": workers, "batch_queries": batch, "queries": len(items),
        "queries_per_s": len(items) / report.wall_s, "seconds": report.wall_s,
        "ann_p50_ms": t["ann"]["p50"], "catalog_p50_ms": t["catalog"]["p50"], "proposals_p50_ms": t["proposals"]["p50"],
        "others_cpu": others.cores, "sp_ndcg10_05": report.sp.ndcg[10][0.5],
    }


# --- driver --------------------------------------------------------------------------------------


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--segments", type=int, default=40_000, help="segments in the corpus (20 per video)")
    p.add_argument("--queries", type=int, default=1_000)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--rows-per-segment", type=int, default=4, help="1-s feature rows per 4-s segment (default 4)")
    p.add_argument("--top-k-segments", type=int, default=200)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--batch-queries", type=int, default=64)
    p.add_argument("--nlist", type=int, default=1024)
    p.add_argument("--nprobe", type=int, default=16)
    p.add_argument("--milvus-uri", default="", help="also import into this Milvus server")
    p.add_argument("--milvus-segments", type=int, default=20_000, help="segments imported into Milvus (default 20,000)")
    p.add_argument(
        "--catalog-url", default="",
        help="catalog of the Milvus runs (default: SQLite in the data dir); a PostgreSQL URL gets a fresh "
        "database per run on that server, dropped after it",
    )
    p.add_argument(
        "--faiss-catalog", action="store_true",
        help="the Faiss imports use --catalog-url too (then without eval, which reads a SQLite catalog)",
    )
    p.add_argument("--skip-old-import", action="store_true", help="the per-video import is slow: leave it out")
    p.add_argument(
        "--parts", nargs="+", choices=("faiss-import", "milvus-import", "eval"),
        default=["faiss-import", "milvus-import", "eval"],
        help="what to run (default all; milvus-import only with --milvus-uri; eval needs faiss-import's collection)",
    )
    p.add_argument("--json", metavar="OUT", help="write every figure here")
    p.add_argument("--root", help="work folder (default: a temporary one)")
    args = p.parse_args()

    from spr.models.clip import cpu_flags

    flags = sorted(cpu_flags())
    simd = [f for f in flags if f.startswith(("avx", "amx", "sse4", "fma"))]
    print(f"CPU: {cpu_description()}")
    print(f"CPU flags (spr.models.clip.cpu_flags(), SIMD ones): {' '.join(simd)}")
    print(f"all {len(flags)} flags: {' '.join(flags)}")
    root = Path(args.root or tempfile.mkdtemp(prefix="bench-bulk-"))
    root.mkdir(parents=True, exist_ok=True)
    n = args.segments - args.segments % SEGMENTS_PER_VIDEO
    t = time.perf_counter()
    data, queries = clustered(n, args.queries, args.dim, seed=0)
    paths = write_inputs(root / "inputs", data, queries, args.rows_per_segment)
    del data
    print(f"corpus: {n} segments of {args.dim}-d in {paths['videos']} videos ({paths['rows']} rows each), "
          f"{args.queries} queries; written in {time.perf_counter() - t:.1f} s to {root}")
    out: dict = {"cpu": cpu_description(), "cpu_flags": flags, "args": vars(args), "import": [], "raw_faiss": [], "eval": []}

    # -- import, old and new
    eval_config = None
    faiss_modes = ("segments", "features") if "faiss-import" in args.parts else ()
    if "eval" in args.parts and not faiss_modes:
        faiss_modes = ("segments",)
    for mode in faiss_modes:
        for bulk in ((False, True) if not args.skip_old_import else (True,)):
            # The eval's collection lives beside a SQLite catalog (it is read after the run).
            url = args.catalog_url if args.faiss_catalog else ""
            with FreshDatabase(url) as catalog_url:
                config = make_config(root / f"faiss-{mode}-{'bulk' if bulk else 'old'}", "segments", catalog_url=catalog_url)
                row = bench_import(config, paths, mode, bulk)
            row["catalog"] = "postgresql" if catalog_url.startswith("postgresql") else "sqlite"
            out["import"].append(row)
            print(f"import faiss/{row['catalog']} {mode:<8} {row['path']:<9}: {row['segments']} segments in {row['seconds']:.1f} s = "
                  f"{row['segments_per_s']:,.0f} segments/s, index wait {row['index_wait_s']:.1f} s "
                      f"(others: {row['others_cpu']:.1f} cores)", flush=True)
            if bulk and mode == "segments":
                eval_config = config
    if args.milvus_uri and "milvus-import" in args.parts:
        small = subset_inputs(paths, root / "inputs-milvus", max(1, args.milvus_segments // SEGMENTS_PER_VIDEO))
        for mode in ("segments", "features"):
            for bulk in ((False, True) if not args.skip_old_import else (True,)):
                name = f"bench_bulk_{os.getpid()}_{mode}_{int(bulk)}"
                with FreshDatabase(args.catalog_url) as catalog_url:
                    config = make_config(root / f"milvus-{mode}-{int(bulk)}", name, args.milvus_uri, catalog_url)
                    try:
                        row = bench_import(config, small, mode, bulk)
                    finally:
                        drop_milvus(config, name)
                row["catalog"] = "postgresql" if catalog_url.startswith("postgresql") else "sqlite"
                out["import"].append(row)
                print(f"import milvus/{row['catalog']} {mode:<8} {row['path']:<9}: {row['segments']} segments in {row['seconds']:.1f} s = "
                      f"{row['segments_per_s']:,.0f} segments/s, index wait {row['index_wait_s']:.1f} s "
                      f"(others: {row['others_cpu']:.1f} cores)", flush=True)

    # -- eval against raw Faiss, on the FLAT collection and an IVF_FLAT copy
    if "eval" not in args.parts or args.faiss_catalog:
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=1))
        return
    assert eval_config is not None
    ivf_copy(eval_config, "segments", "segments_ivf", args.nlist, args.nprobe)
    k, w, b = args.top_k_segments, args.workers, args.batch_queries
    for collection, nprobe in (("segments", None), ("segments_ivf", args.nprobe)):
        kind = "IVF_FLAT" if nprobe else "FLAT"
        raws = {}
        for callers in (1, w):
            raw = raw_faiss(eval_config, collection, queries, k, nprobe, callers, b)
            raw.update(index=kind, callers=callers, batch=b)
            raws[callers] = raw["queries_per_s"]
            out["raw_faiss"].append(raw)
            print(f"raw faiss {kind:<8} {callers} caller(s), batches of {b}: {raw['queries_per_s']:,.1f} queries/s "
                  f"(others: {raw['others_cpu']:.1f} cores)", flush=True)
        for workers, batch in ((w, 1), (1, b), (w, b)):
            row = bench_eval(eval_config, paths, collection, args.queries, k, workers, batch)
            row.update(index=kind, raw_same_callers=raws.get(workers, raws[1]))
            row["share_of_raw"] = row["queries_per_s"] / row["raw_same_callers"]
            out["eval"].append(row)
            label = "per-query" if batch == 1 else f"batched {batch}"
            print(f"eval {kind:<8} {label:<11} {workers} worker(s): {row['queries_per_s']:,.1f} queries/s = "
                  f"{row['share_of_raw']:.0%} of raw Faiss with {workers} caller(s); ann p50 {row['ann_p50_ms']:.1f} ms, "
                  f"catalog p50 {row['catalog_p50_ms']:.2f} ms, proposals p50 {row['proposals_p50_ms']:.2f} ms "
                  f"(others: {row['others_cpu']:.1f} cores)", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
        print(f"wrote {args.json}")


class FreshDatabase:
    """``with FreshDatabase(url) as u``: a new, empty PostgreSQL database on ``url``'s server
    (dropped on exit), so that runs do not see each other's videos; a SQLite or empty ``url``
    passes through (each run has its own data directory)."""

    count = 0

    def __init__(self, url: str) -> None:
        self.url, self.name = url, ""

    def __enter__(self) -> str:
        if not self.url.startswith("postgresql"):
            return self.url
        from sqlalchemy import create_engine
        from sqlalchemy.engine import make_url

        FreshDatabase.count += 1
        self.name = f"bench_bulk_{os.getpid()}_{FreshDatabase.count}"
        self._admin = create_engine(make_url(self.url), isolation_level="AUTOCOMMIT")
        with self._admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{self.name}"')
        return make_url(self.url).set(database=self.name).render_as_string(hide_password=False)

    def __exit__(self, *exc: object) -> None:
        if self.name:
            with self._admin.connect() as conn:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
            self._admin.dispose()


def drop_milvus(config, name: str) -> None:
    from spr.stores import open_vector_store

    store = open_vector_store(config)
    try:
        if store.has_collection(name):
            store.drop_collection(name)
    finally:
        store.close()


if __name__ == "__main__":
    sys.exit(main())
