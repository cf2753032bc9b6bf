"""Catalog benchmark: bulk insert of segment rows (rows/s) and the search path's lookup of
200 segment ids (latency), on PostgreSQL and on SQLite.

    python bench/bench_catalog.py --postgres postgresql+psycopg2://postgres@127.0.0.1:5432/test

Writes ``--videos`` one-hour videos (900 four-second segments each) into a fresh PostgreSQL
schema (dropped afterwards) and a temporary SQLite file, then times ``--lookups`` lookups of
200 random ids spread over all videos, as a search does. Prints figures and a Markdown table.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid

import numpy as np
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from spr.catalog import SegmentCatalog
from spr.segments import segment_bounds


def fill(catalog: SegmentCatalog, videos: int, duration_s: float) -> tuple[float, int, list[int]]:
    """Publish ``videos`` videos; returns (seconds spent in segment inserts, rows, video ids)."""
    bounds = segment_bounds(duration_s)
    spent, ids = 0.0, []
    for v in range(videos):
        video = catalog.register_video(f"bench/{v:06d}", f"file:///archive/{v:06d}.mp4", duration_s)
        t = time.perf_counter()
        catalog.replace_segments(video.id, bounds.ordinals, bounds.start_s, bounds.end_s)
        spent += time.perf_counter() - t
        catalog.mark_ready(video.id)
        ids.append(video.id)
    return spent, videos * len(bounds), ids


def time_lookups(catalog: SegmentCatalog, video_ids: list[int], segments_per_video: int, lookups: int) -> np.ndarray:
    """Latency in ms of ``lookups`` lookups of 200 random existing ids."""
    rng = np.random.default_rng(0)
    vids = np.array(video_ids, dtype=np.int64)
    lat = []
    for i in range(lookups + 20):
        ids = (vids[rng.integers(0, len(vids), 200)] << 20) | rng.integers(0, segments_per_video, 200)
        t = time.perf_counter()
        found = catalog.lookup_segments(ids)
        elapsed = (time.perf_counter() - t) * 1e3
        assert len(found) == len(set(ids.tolist())), "lookup lost rows"
        if i >= 20:  # the first ones warm the pool and the plan cache
            lat.append(elapsed)
    return np.array(lat)


def bench(name: str, url: str, videos: int, lookups: int) -> dict:
    with SegmentCatalog.open(url) as catalog:
        spent, rows, vids = fill(catalog, videos, 3600.0)
        lat = time_lookups(catalog, vids, 900, lookups)
        method = catalog.bulk_method
    result = {
        "backend": name,
        "method": method,
        "rows": rows,
        "rows_per_s": rows / spent,
        "lookup_p50_ms": float(np.percentile(lat, 50)),
        "lookup_p99_ms": float(np.percentile(lat, 99)),
    }
    print(
        f"{name:<10} {method:<12} {rows:>9,} rows  {result['rows_per_s']:>10,.0f} rows/s   "
        f"200-id lookup p50 {result['lookup_p50_ms']:.2f} ms  p99 {result['lookup_p99_ms']:.2f} ms",
        flush=True,
    )
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--postgres", default="postgresql+psycopg2://postgres@127.0.0.1:5432/test")
    ap.add_argument("--videos", type=int, default=1000, help="one-hour videos to write (900 rows each)")
    ap.add_argument("--lookups", type=int, default=1000)
    ap.add_argument("--no-sqlite", action="store_true")
    args = ap.parse_args()
    rows = []
    schema = f"spr_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(args.postgres)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        url = make_url(args.postgres).update_query_dict({"options": f"-csearch_path={schema}"})
        rows.append(bench("postgresql", url.render_as_string(hide_password=False), args.videos, args.lookups))
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
    if not args.no_sqlite:
        with tempfile.TemporaryDirectory() as tmp:
            rows.append(bench("sqlite", f"sqlite:///{tmp}/catalog.db", args.videos, args.lookups))
    print(f"\n{args.videos} one-hour videos x 900 segments; {args.lookups} lookups of 200 random ids")
    print("| catalog | bulk path | rows | insert rows/s | lookup p50 ms | lookup p99 ms |")
    print("|---|---|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['backend']} | {r['method']} | {r['rows']:,} | {r['rows_per_s']:,.0f} | "
            f"{r['lookup_p50_ms']:.2f} | {r['lookup_p99_ms']:.2f} |"
        )


if __name__ == "__main__":
    sys.exit(main())
