"""Catalog benchmark: bulk insert of segment rows (rows/s) and the search path's lookup of
200 segment ids (latency), on PostgreSQL and on SQLite.

    python bench/bench_catalog.py --postgres postgresql+psycopg2://postgres@127.0.0.1:5432/test

Writes ``--videos`` one-hour videos (900 four-second segments each) into a fresh PostgreSQL
schema (dropped afterwards) and a temporary SQLite file, then times ``--lookups`` lookups of
200 random ids spread over all videos, as a search does. Prints figures and a Markdown table.

    python bench/bench_catalog.py --filter-videos 20000

times metadata filters instead (issue #14): ``--filter-videos`` videos with a few metadata
fields each, then filters of 1, 8 and 64 pairs (the limit) and a broad one (2 pairs that half
the videos hold) answered by the old per-pair JSON
expression tree (one ``->>`` / ``json_extract`` comparison per pair, a scan of every video) and by
the catalog's one indexed query (``video_metadata``), side by side on both catalogs; plus the old
filter at 999 pairs, which SQLite refused ("Expression tree is too large").
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


def _old_filter(catalog: SegmentCatalog, metadata: dict[str, str]) -> list[str]:
    """The filter before issue #14: one JSON comparison per pair, ANDed."""
    from sqlalchemy import Text, case, cast, func, literal, select

    from spr.catalog.models import videos

    def field(key: str):
        if catalog.dialect == "postgresql":
            return videos.c.metadata[key].as_string()
        path = f'$."{key}"'
        kind = func.json_type(videos.c.metadata, path)
        return case(
            (kind == "true", literal("true")),
            (kind == "false", literal("false")),
            else_=cast(func.json_extract(videos.c.metadata, path), Text),
        )

    stmt = select(videos.c.key).where(videos.c.status == "ready").order_by(videos.c.key)
    for key, value in metadata.items():
        stmt = stmt.where(field(key) == value)
    with catalog.engine.connect() as conn:
        return [k for (k,) in conn.execute(stmt)]


def bench_filter(name: str, url: str, videos: int, repeats: int = 5) -> list[dict]:
    """Median ms of the old and the new filter for 1, 8 and 64 pairs (and the old one at 999)."""
    rng = np.random.default_rng(0)
    out = []
    with SegmentCatalog.open(url) as catalog:
        t = time.perf_counter()
        for v in range(videos):
            meta = {"show": f"show{v % 200}", "season": int(v % 7), "hd": bool(v % 2), "lang": "en"}
            meta.update({f"tag{i}": f"t{rng.integers(0, 3)}" for i in range(64)} if v % 100 == 0 else {})
            catalog.mark_ready(catalog.register_video(f"bench/{v:06d}", f"file:///{v:06d}.mp4", 60.0, metadata=meta).id)
        fill_s = time.perf_counter() - t
        print(f"{name}: {videos} videos registered in {fill_s:.1f} s", flush=True)
        filters = {1: {"show": "show7"}, 8: {"show": "show0", "season": "0", "hd": "false", "lang": "en"}}
        filters[8].update({f"tag{i}": "t1" for i in range(4)})
        filters[64] = {f"tag{i}": "t1" for i in range(64)}
        filters[2] = {"lang": "en", "hd": "true"}  # broad: half of all videos match (the worst case)
        filters[999] = {f"k{i}": "v" for i in range(999)}
        for pairs, metadata in filters.items():
            row = {"backend": name, "pairs": pairs}
            for label, run in (("old", lambda m=metadata: _old_filter(catalog, m)),
                               ("new", lambda m=metadata: catalog.video_keys_matching(m))):
                if label == "new" and pairs > 64:
                    row[label] = "refused (limit 64)"
                    continue
                times, answer = [], None
                try:
                    for _ in range(repeats):
                        t = time.perf_counter()
                        answer = run()
                        times.append((time.perf_counter() - t) * 1e3)
                    row[label] = f"{float(np.median(times)):.2f}"
                    row[f"{label}_hits"] = len(answer)
                except Exception as exc:  # the old filter on SQLite at 999 pairs
                    row[label] = f"error: {' '.join(str(exc.orig if hasattr(exc, 'orig') else exc).split())[:50]}"
            if "old_hits" in row and "new_hits" in row:
                assert row["old_hits"] == row["new_hits"], row
            print(f"  {pairs:>4} pairs: old {row['old']} ms   new {row['new']} ms", flush=True)
            out.append(row)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--postgres", default="postgresql+psycopg2://postgres@127.0.0.1:5432/test")
    ap.add_argument("--videos", type=int, default=1000, help="one-hour videos to write (900 rows each)")
    ap.add_argument("--lookups", type=int, default=1000)
    ap.add_argument("--no-sqlite", action="store_true")
    ap.add_argument("--filter-videos", type=int, default=0, help="time metadata filters over this many videos instead")
    args = ap.parse_args()
    run = bench if not args.filter_videos else (lambda name, url, *_: bench_filter(name, url, args.filter_videos))
    rows = []
    schema = f"spr_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(args.postgres)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        url = make_url(args.postgres).update_query_dict({"options": f"-csearch_path={schema}"})
        rows.append(run("postgresql", url.render_as_string(hide_password=False), args.videos, args.lookups))
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
    if not args.no_sqlite:
        with tempfile.TemporaryDirectory() as tmp:
            rows.append(run("sqlite", f"sqlite:///{tmp}/catalog.db", args.videos, args.lookups))
    if args.filter_videos:
        print(f"\n{args.filter_videos} videos; median of 5 filters, ms")
        print("| catalog | pairs | old: a JSON comparison per pair | new: one indexed query |")
        print("|---|---:|---:|---:|")
        for r in (r for group in rows for r in group):
            print(f"| {r['backend']} | {r['pairs']} | {r['old']} | {r['new']} |")
        return
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
