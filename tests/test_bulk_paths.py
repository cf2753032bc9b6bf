"""Bulk paths (issue 13, direction 6): batched coarse search gives exactly what one query at a
time gives, and the bulk import publishes exactly what the per-video import did.

The corpus is small and random on purpose (Faiss FLAT + SQLite, real stores): 30 videos of
40-56 s with 1-s frame features, imported through mean pooling, so the refiner has frame
features to read; 37 queries (not a multiple of any batch size) near random segments."""

from __future__ import annotations

import dataclasses
import json
import uuid
from pathlib import Path

import h5py
import numpy as np
import pytest

from spr.catalog import SegmentCatalog
from spr.cli.eval import evaluate
from spr.config import Config, VectorsConfig
from spr.engine import MomentQuery, MomentSearch, coarse_moments
from spr.eval.evaluation import EvalError, EvalOptions
from spr.ingest.importer import ImportOptions, import_features
from spr.stores import open_vector_store

D = 32
VIDEOS = 30
QUERIES = 37


def _corpus(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Frame features per video: a few random scenes each, so adjacent segments look alike."""
    out = {}
    for v in range(VIDEOS):
        seconds = int(rng.integers(40, 57))
        scenes = rng.standard_normal((seconds // 8 + 1, D)).astype(np.float32)
        frames = np.repeat(scenes, 8, axis=0)[:seconds] + 0.3 * rng.standard_normal((seconds, D)).astype(np.float32)
        out[f"vid{v:02d}"] = frames
    return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Config, Path, Path, dict[str, np.ndarray]]:
    root = tmp_path_factory.mktemp("bulk")
    rng = np.random.default_rng(5)
    frames = _corpus(rng)
    h5_path, manifest = root / "feats.h5", root / "manifest.jsonl"
    with h5py.File(h5_path, "w") as h5:
        for key, array in frames.items():
            h5.create_dataset(key, data=array)
    manifest.write_text("".join(json.dumps({"key": k, "duration": float(len(a))}) + "\n" for k, a in frames.items()))
    config = Config(data_dir=str(root / "data"), vectors=VectorsConfig(collection=f"bulk_{uuid.uuid4().hex[:6]}", dim=D))
    summary = import_features(config, h5_path, manifest, ImportOptions())
    assert not summary.failed and len(summary.imported) == VIDEOS
    queries, qf = root / "queries.jsonl", root / "queries.h5"
    keys = sorted(frames)
    with h5py.File(qf, "w") as h5, queries.open("w") as out:
        for i in range(QUERIES):
            key = keys[int(rng.integers(len(keys)))]
            at = int(rng.integers(0, len(frames[key]) - 8))
            h5.create_dataset(f"q{i}", data=frames[key][at : at + 4].mean(axis=0) + 0.5 * rng.standard_normal(D))
            record = {
                "query_id": f"q{i}", "query": f"query {i}", "video_name": key, "timestamp": [at, at + 6.0],
                "duration": float(len(frames[key])), "relevance": int(rng.integers(1, 4)),
            }
            out.write(json.dumps(record) + "\n")
    return config, queries, qf, frames


def _predictions(report) -> dict:
    """Everything per query that scoring reads, exactly (no tolerance)."""
    out = {}
    for o in report.outcomes:
        out[o.query_id] = {
            "sp": [(m.video_name, m.start_s, m.end_s, m.score) for m in o.sp],
            "spr": None if o.spr is None else [(m.video_name, m.start_s, m.end_s, m.score) for m in o.spr],
            "padded": [(p.video_key, p.start_s, p.end_s, p.segment_ids) for p in o.padded],
            "degraded": o.degraded,
        }
    return out


def _metrics(report) -> dict:
    data = report.to_json()
    return {k: data[k] for k in ("sp", "spr", "upper_bound", "queries", "queries_evaluated")}


@pytest.mark.parametrize("batch", [8, 64])
def test_batched_eval_equals_the_per_query_path(setup, batch: int) -> None:
    config, queries, qf, _ = setup
    base = EvalOptions(query_features=str(qf), refine=False, top_k_segments=40, max_moments=20, workers=3)
    one = evaluate(config, queries, dataclasses.replace(base, batch_queries=1))
    many = evaluate(config, queries, dataclasses.replace(base, batch_queries=batch))
    assert one.batch_queries == 1 and many.batch_queries == batch
    assert [o.query_id for o in many.outcomes] == [f"q{i}" for i in range(QUERIES)]  # file order, none lost
    assert _predictions(many) == _predictions(one)
    assert _metrics(many) == _metrics(one)
    assert any(o.sp for o in many.outcomes) and many.sp.ndcg[10][0.3] > 0  # the comparison is not of empties
    # SP is what a coarse search answers (the engine's coarse_moments). The engine normalises
    # the raw embedding itself here (numpy, not the projector's torch), hence the tolerance.
    with MomentSearch.open(config) as search, h5py.File(qf, "r") as h5:
        alone = search.search(MomentQuery(embedding=h5["q0"][()], segments_k=40, top_k=20, refine=False))
    expected = coarse_moments(alone.coarse, 20)
    got = many.outcomes[0].sp
    assert [(m.video_name, m.start_s, m.end_s) for m in got] == [(m.video_key, m.start_s, m.end_s) for m in expected]
    assert [m.score for m in got] == pytest.approx([m.score for m in expected], abs=1e-6)
    # Each query's share of its batch's ANN call is what the batch cost over its queries.
    assert all(o.timings_ms["ann"] > 0 and o.timings_ms["catalog"] > 0 for o in many.outcomes)


def test_batched_eval_with_the_refiner_equals_the_per_query_path(setup) -> None:
    config, queries, qf, _ = setup
    config = config.replace(refiner=dataclasses.replace(config.refiner, checkpoint="", device="cpu"))
    # One worker: the refiner then sees one query per forward pass on both paths, so even its
    # floating-point sums are the same.
    base = EvalOptions(query_features=str(qf), top_k_segments=30, max_moments=10, workers=1)
    one = evaluate(config, queries, dataclasses.replace(base, batch_queries=1))
    many = evaluate(config, queries, dataclasses.replace(base, batch_queries=16))
    assert many.spr is not None and not many.degraded_queries
    assert _predictions(many) == _predictions(one)
    assert _metrics(many) == _metrics(one)
    assert set(many.timings_ms) == {"embed", "ann", "catalog", "proposals", "features", "refine", "total"}


def test_search_many_equals_search_for_mixed_queries(setup) -> None:
    """Different ``segments_k``, video filters and top_k in one call: grouped into separate
    store searches, each answer the same as :meth:`MomentSearch.search` gives it."""
    config, _, _, frames = setup
    rng = np.random.default_rng(9)
    keys = sorted(frames)
    queries = []
    for i in range(20):
        q = rng.standard_normal(D).astype(np.float32)
        queries.append(
            MomentQuery(
                embedding=q, segments_k=[10, 25][i % 2], top_k=[5, 50][i % 3 == 0],
                video_keys=tuple(keys[:7]) if i % 4 == 0 else (), refine=False,
            )
        )
    with MomentSearch.open(config) as search:
        alone = [search.search(q) for q in queries]
        together = search.search_many(queries)
    for a, b in zip(alone, together, strict=True):
        assert [dataclasses.astuple(m) for m in b.moments] == [dataclasses.astuple(m) for m in a.moments]
        assert b.coarse.padded == a.coarse.padded and b.coarse.locations == a.coarse.locations
        assert b.segments_retrieved == a.segments_retrieved and b.proposals == a.proposals
    assert any(len(r.moments) > 3 for r in together)
    filtered = [r for q, r in zip(queries, together) if q.video_keys]
    assert filtered and all(m.video_key in keys[:7] for r in filtered for m in r.moments)


def test_batch_queries_must_be_positive(setup) -> None:
    config, queries, qf, _ = setup
    with pytest.raises(EvalError, match="batch queries"):
        evaluate(config, queries, EvalOptions(query_features=str(qf), refine=False, batch_queries=0))


# --- the bulk import ------------------------------------------------------------------------------


def _catalog_view(config: Config) -> dict:
    """Every video's row (what a reader sees) and segments, and the vectors of the collection."""
    catalog = SegmentCatalog.from_config(config)
    store = open_vector_store(config)
    try:
        videos = {}
        for v in catalog.list_videos():
            located = catalog.lookup_segments(np.arange(v.id << 20, (v.id << 20) + 64), ready_only=False)
            spans = sorted((loc.segment_id, loc.ordinal, loc.start_s, loc.end_s) for loc in located.values())
            videos[v.key] = {
                "id": v.id, "status": v.status, "uri": v.uri, "duration_s": v.duration_s,
                "content_hash": v.content_hash, "metadata": v.metadata, "error": v.error, "spans": spans,
            }
        name = config.vectors.collection
        ids = np.array(sorted(s[0] for v in videos.values() for s in v["spans"]), dtype=np.int64)
        found = store.search(name, np.eye(D, dtype=np.float32)[:1], min(len(ids), 1024)) if len(ids) else None
        # The filterable metadata pairs (video_metadata), which register_video keeps beside the row.
        matching = {n: catalog.video_keys_matching({"n": str(n)}) for n in range(3)}
        return {
            "videos": videos, "vectors": store.count(name), "hits": None if found is None else found.hits(0),
            "matching": matching,
        }
    finally:
        store.close()
        catalog.close()


def _inputs(tmp_path: Path, frames: dict[str, np.ndarray]) -> tuple[Path, Path]:
    h5_path, manifest = tmp_path / "feats.h5", tmp_path / "manifest.jsonl"
    with h5py.File(h5_path, "w") as h5:
        for key, array in frames.items():
            h5.create_dataset(key, data=array)
    rows = [{"key": k, "duration": float(len(a)), "metadata": {"n": i % 3}} for i, (k, a) in enumerate(frames.items())]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return h5_path, manifest


def test_bulk_import_writes_what_the_per_video_import_wrote(setup, tmp_path: Path) -> None:
    _, _, _, frames = setup
    h5_path, manifest = _inputs(tmp_path, frames)
    views = {}
    for bulk in (False, True):
        config = Config(data_dir=str(tmp_path / f"data-{bulk}"), vectors=VectorsConfig(collection="same", dim=D))
        summary = import_features(config, h5_path, manifest, ImportOptions(bulk=bulk))
        assert not summary.failed and summary.segments_written == sum(len(a) // 4 + (len(a) % 4 > 0) for a in frames.values())
        views[bulk] = _catalog_view(config)
        # A re-run skips every video; --force replaces them all with the same ids, no duplicates.
        again = import_features(config, h5_path, manifest, ImportOptions(bulk=bulk))
        assert len(again.skipped) == VIDEOS and not again.imported
        forced = import_features(config, h5_path, manifest, ImportOptions(bulk=bulk, force=True))
        assert len(forced.imported) == VIDEOS
        assert _catalog_view(config) == views[bulk]
    assert views[True] == views[False]
    assert all(v["status"] == "ready" and v["spans"] for v in views[True]["videos"].values())
    assert views[True]["vectors"] == summary.segments_written
    assert all(views[True]["matching"][n] for n in range(3))


def test_a_bulk_import_that_crashes_leaves_its_batch_invisible_and_a_rerun_finishes_it(
    setup, tmp_path: Path, monkeypatch
) -> None:
    from spr.stores.faiss_store import FaissStore

    _, _, _, frames = setup
    h5_path, manifest = _inputs(tmp_path, frames)
    config = Config(data_dir=str(tmp_path / "data"), vectors=VectorsConfig(collection="crash", dim=D))
    config = config.replace(ingest=dataclasses.replace(config.ingest, write_batch_videos=4))
    flush, calls = FaissStore.flush, []

    def flush_then_fail(self, name):
        calls.append(name)
        if len(calls) == 3:  # batches of 4, 12, 14 videos (growth 3): the third never becomes ready
            raise RuntimeError("the machine went away")
        flush(self, name)

    monkeypatch.setattr(FaissStore, "flush", flush_then_fail)
    with pytest.raises(RuntimeError, match="went away"):
        import_features(config, h5_path, manifest, ImportOptions())
    monkeypatch.setattr(FaissStore, "flush", flush)
    catalog = SegmentCatalog.from_config(config)
    try:
        counts = catalog.count_by_status()
        assert counts["ready"] == 16 and counts["pending"] == 14
        # What search sees: the ready videos' segments only.
        pending = [v for v in catalog.list_videos(status="pending")]
        hidden = catalog.lookup_segments(np.concatenate([np.arange(v.id << 20, (v.id << 20) + 20) for v in pending]))
        assert hidden == {}
    finally:
        catalog.close()
    rerun = import_features(config, h5_path, manifest, ImportOptions())
    assert not rerun.failed and len(rerun.skipped) == 16 and len(rerun.imported) == VIDEOS - 16
    view = _catalog_view(config)
    assert all(v["status"] == "ready" for v in view["videos"].values())
    assert view["vectors"] == sum(len(v["spans"]) for v in view["videos"].values())  # no duplicates
