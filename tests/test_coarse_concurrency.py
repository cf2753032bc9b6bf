"""The coarse path under concurrency (issue #13, direction 5).

- The reader/writer lock (:mod:`spr.locks`): readers share it, a writer is alone, a waiting
  writer goes before new readers, re-entry never deadlocks, an upgrade is refused.
- :class:`~spr.stores.faiss_store.FaissStore`: searches run side by side (a search of another
  collection finishes while a long one is still running), writers stay excluded (a search never
  sees an upsert half applied).
- The catalog lookup reads the hits' video rows (always fresh: a video deleted or re-ingested
  by another catalog, i.e. another process, shows at once) and takes segment spans from a
  cache invalidated by this catalog's writes; the answer is the joined lookup's.
- The vectorised proposal merge gives exactly the reference implementation's proposals.
- ``timings_ms.total`` counts the wait for a worker of the gRPC server.

Behaviour only: nothing here asserts a speed (bench/bench_search.py --coarse measures that).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import event
from sqlalchemy.engine import Engine

from spr.catalog import SegmentCatalog
from spr.config import Config, FaissConfig, VectorsConfig
from spr.engine import MomentSearch
from spr.locks import RWLock
from spr.proposals import (
    AdaptiveGap,
    AdjacentOnly,
    BoundedMerge,
    ConstantGap,
    Proposal,
    RetrievedSegment,
    _propose_moments_reference,
    pad_proposals,
    propose_arrays,
    propose_moments,
    retrieved_segments,
)
from spr.retrieval import propose_from_hits
from spr.search.client import SearchClient
from spr.search.service import SearchServicer, start_search_server
from spr.segments import segment_bounds
from spr.stores import Flat, l2_normalize
from spr.stores.faiss_store import FaissStore

WAIT_S = 10.0  # how long a thread that should get through may take (never reached when correct)
BLOCKED_S = 0.3  # how long a thread that must wait is watched not getting through


def started(target, *args) -> tuple[threading.Thread, threading.Event]:
    """``target(*args)`` in a daemon thread; the event is set once it returned."""
    done = threading.Event()

    def run() -> None:
        try:
            target(*args)
        finally:
            done.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, done


# --- the reader/writer lock -----------------------------------------------------------------------


def test_readers_share_the_lock():
    lock = RWLock()
    inside = threading.Barrier(3, timeout=WAIT_S)

    def reader() -> None:
        with lock.read():
            inside.wait()  # all three inside at once, or BrokenBarrierError

    threads = [started(reader)[0] for _ in range(2)]
    with lock.read():
        inside.wait()
    for t in threads:
        t.join(WAIT_S)
    assert lock.readers == 0


def test_a_writer_excludes_readers_and_writers():
    lock = RWLock()

    def read() -> None:
        with lock.read():
            pass

    def write() -> None:
        with lock.write():
            pass

    lock.acquire_write()
    _, read_done = started(read)
    _, write_done = started(write)
    assert not read_done.wait(BLOCKED_S) and not write_done.is_set()
    lock.release_write()
    assert read_done.wait(WAIT_S) and write_done.wait(WAIT_S)


def test_a_waiting_writer_goes_before_new_readers():
    lock = RWLock()
    order: list[str] = []
    lock.acquire_read()

    def writer() -> None:
        with lock.write():
            order.append("writer")

    def late_reader() -> None:
        with lock.read():
            order.append("reader")

    _, writer_done = started(writer)
    deadline = time.monotonic() + WAIT_S
    while not lock.writer_waiting and time.monotonic() < deadline:
        time.sleep(0.001)
    assert lock.writer_waiting
    _, reader_done = started(late_reader)
    # The late reader queues behind the writer, which waits for the first reader.
    assert not reader_done.wait(BLOCKED_S) and not writer_done.is_set()
    lock.release_read()
    assert writer_done.wait(WAIT_S) and reader_done.wait(WAIT_S)
    assert order == ["writer", "reader"]


def test_re_entry_never_deadlocks_and_an_upgrade_is_refused():
    lock = RWLock()
    with lock.write():
        with lock.write(), lock.read():  # a writer may write again and read
            pass
    lock.acquire_read()

    def writer() -> None:
        with lock.write():
            pass

    _, writer_done = started(writer)
    while not lock.writer_waiting:
        time.sleep(0.001)
    with lock.read():  # a reader re-enters although a writer waits (else: deadlock)
        with pytest.raises(RuntimeError, match="upgrade"):
            lock.acquire_write()
    lock.release_read()
    assert writer_done.wait(WAIT_S)
    with pytest.raises(RuntimeError):
        lock.release_read()
    with pytest.raises(RuntimeError):
        lock.release_write()


# --- the Faiss store ------------------------------------------------------------------------------

DIM = 64


def keys_of(n: int, per_video: int = 100) -> list[str]:
    return [f"v{i // per_video}" for i in range(n)]


@pytest.fixture(scope="module")
def big_store(tmp_path_factory) -> FaissStore:
    """A store with ``big`` (200K FLAT vectors: a search of many queries takes a while) and
    ``small`` (100 vectors)."""
    store = FaissStore(tmp_path_factory.mktemp("faiss"), threads=1, use_gpu=False)
    rng = np.random.default_rng(0)
    for name, n in (("big", 200_000), ("small", 100)):
        store.create_collection(name, DIM, Flat())
        store.upsert(name, np.arange(n, dtype=np.int64), l2_normalize(rng.standard_normal((n, DIM))), keys_of(n))
    return store


def test_a_search_runs_while_another_search_holds_the_store(big_store: FaissStore):
    """Before the reader/writer lock, the short search waited for the long one to finish."""
    rng = np.random.default_rng(1)
    queries = l2_normalize(rng.standard_normal((64, DIM)))
    t0 = time.perf_counter()
    big_store.search("big", queries, 10)
    per_query = (time.perf_counter() - t0) / len(queries)
    # A long search: about 1.5 s on this machine whatever its speed (calibrated, not asserted).
    long_queries = l2_normalize(rng.standard_normal((max(64, int(1.5 / per_query)), DIM)))
    _, long_done = started(big_store.search, "big", long_queries, 10)
    time.sleep(0.1)
    assert not long_done.is_set(), "the long search ended too soon to tell"
    found = big_store.search("small", long_queries[:1], 5)
    overlapped = not long_done.is_set()
    assert long_done.wait(60)
    assert found.ids.shape == (1, 5)
    assert overlapped, "the short search waited for the long one: searches are serialised"


def test_the_exclusive_mode_serialises_searches(tmp_path: Path):
    """The old behaviour, kept for the benchmark's side-by-side run, is still what it was."""
    store = FaissStore(tmp_path, threads=1, use_gpu=False, exclusive_search=True)
    rng = np.random.default_rng(2)
    for name, n in (("big", 100_000), ("small", 100)):
        store.create_collection(name, DIM, Flat())
        store.upsert(name, np.arange(n, dtype=np.int64), l2_normalize(rng.standard_normal((n, DIM))), keys_of(n))
    queries = l2_normalize(rng.standard_normal((2000, DIM)))
    _, long_done = started(store.search, "big", queries, 10)
    time.sleep(0.1)
    if long_done.is_set():
        pytest.skip("the long search ended too soon to tell")
    store.search("small", queries[:1], 5)
    assert long_done.is_set()


def test_a_search_never_sees_an_upsert_half_applied(tmp_path: Path):
    """An upsert removes a video's old vectors, then adds the new ones: a search between the two
    would miss the video. Searches run throughout a stream of upserts and always find all of it."""
    store = FaissStore(tmp_path, threads=1, use_gpu=False)
    rng = np.random.default_rng(3)
    store.create_collection("c", DIM, Flat())
    store.upsert("c", np.arange(5_000, 25_000, dtype=np.int64),
                 l2_normalize(rng.standard_normal((20_000, DIM))), ["other"] * 20_000)
    direction = l2_normalize(rng.standard_normal(DIM))
    video_ids = np.arange(50, dtype=np.int64)

    def version(seed: int) -> np.ndarray:
        noise = np.random.default_rng(seed).standard_normal((50, DIM)) * 0.01
        return l2_normalize(direction + noise)

    store.upsert("c", video_ids, version(0), ["video"] * 50)
    stop = threading.Event()
    upserts = [0]

    def writer() -> None:
        while not stop.is_set():
            store.upsert("c", video_ids, version(upserts[0] + 1), ["video"] * 50)
            upserts[0] += 1

    thread, _ = started(writer)
    seen = []
    try:
        for _ in range(300):
            seen.append(set(store.search("c", direction[None, :], 50).ids[0].tolist()))
    finally:
        stop.set()
        thread.join(WAIT_S)
    assert upserts[0] > 10, "too few upserts ran beside the searches to tell"
    assert all(found == set(video_ids.tolist()) for found in seen)


# --- the catalog lookup ---------------------------------------------------------------------------


def add_video(catalog: SegmentCatalog, key: str, duration_s: float, ready: bool = True) -> np.ndarray:
    video = catalog.register_video(key, f"file:///{key}.mp4", duration_s)
    bounds = segment_bounds(duration_s, 4.0)
    ids = catalog.replace_segments(video.id, bounds.ordinals, bounds.start_s, bounds.end_s)
    if ready:
        catalog.mark_ready(video.id)
    return ids


@pytest.fixture
def catalogs(catalog_url: str):
    """The same catalog (SQLite, PostgreSQL) opened twice: ``here`` (the search service's) and
    ``there`` (another process's, e.g. ``spr delete``); plus ``joined``, ``here`` without the cache."""
    here = SegmentCatalog.open(catalog_url)
    there = SegmentCatalog.open(catalog_url)
    joined = SegmentCatalog(here.engine, lookup_cache_segments=0)
    yield here, there, joined
    there.close()
    here.close()


def test_the_cached_lookup_gives_the_joined_lookups_answer(catalogs):
    here, _, joined = catalogs
    rng = np.random.default_rng(4)
    ids = []
    for v in range(12):
        ids.extend(add_video(here, f"k{v}", float(rng.uniform(3.0, 300.0)), ready=v % 4 != 3).tolist())
    here.mark_failed(here.get_video("k5").id, "broken")
    wanted = list(rng.choice(ids, 150, replace=False)) + [ids[0] + 100_000, -1, ids[3]]
    for _ in range(2):  # cold, then warm
        assert here.lookup_segments(wanted) == joined.lookup_segments(wanted)
    assert here.lookup_segments([]) == {} and here.lookup_segments([-1]) == {}


def bound_values(parameters) -> int:
    """Values bound to one statement (SQLite: a tuple; PostgreSQL: a dict with array values)."""
    values = parameters.values() if isinstance(parameters, dict) else parameters
    return sum(len(v) if isinstance(v, (list, tuple)) else 1 for v in values)


def test_a_lookup_is_one_statement_and_a_warm_one_reads_video_rows_only(catalogs):
    """The search's one catalog round trip stays one statement; once the spans of the hits are
    cached, it asks only for the hits' videos (5 rows), not for their 100 segments."""
    here, _, _ = catalogs
    ids = np.concatenate([add_video(here, f"k{v}", 3600.0) for v in range(5)])
    wanted = ids[::9]
    statements: list[int] = []

    def heard(conn, cursor, statement, parameters, *rest) -> None:
        if statement.lstrip().upper().startswith("SELECT"):  # not SQLite's BEGIN, PRAGMAs
            statements.append(bound_values(parameters))

    # On the Engine class: PostgreSQL lookups go through the catalog's own autocommit engine.
    event.listen(Engine, "after_cursor_execute", heard)
    try:
        cold_found = here.lookup_segments(wanted)
        cold = list(statements)
        statements.clear()
        found = here.lookup_segments(wanted)
    finally:
        event.remove(Engine, "after_cursor_execute", heard)
    assert len(found) == len(wanted) and found == cold_found
    assert len(cold) == 1 and len(statements) == 1
    assert cold[0] - statements[0] >= len(wanted)  # the segment ids were asked for once only


def test_a_video_deleted_elsewhere_disappears_at_once(catalogs):
    here, there, _ = catalogs
    ids = add_video(here, "gone", 60.0)
    kept = add_video(here, "kept", 60.0)
    wanted = np.concatenate([ids, kept])
    assert len(here.lookup_segments(wanted)) == 30  # cached now
    video = there.get_video("gone")
    there.mark_deleted(video.id)
    assert set(here.lookup_segments(wanted)) == set(kept.tolist())
    there.purge_video(video.id)
    assert set(here.lookup_segments(wanted)) == set(kept.tolist())
    # Re-registered elsewhere (pending: invisible until ready), under a new id.
    again = add_video(there, "gone", 60.0, ready=False)
    assert set(here.lookup_segments(np.concatenate([wanted, again]))) == set(kept.tolist())


def test_a_video_re_ingested_elsewhere_shows_its_new_spans(catalogs):
    here, there, joined = catalogs
    ids = add_video(here, "v", 100.0)
    assert len(here.lookup_segments(ids)) == 25
    add_video(there, "v", 41.0)  # same id, 11 segments now: the rest must be gone
    assert here.lookup_segments(ids) == joined.lookup_segments(ids)
    assert len(here.lookup_segments(ids)) == 11
    assert here.lookup_segments(ids)[int(ids[10])].end_s == 41.0


def test_writes_of_this_catalog_invalidate_its_cache(catalogs):
    here, _, joined = catalogs
    ids = add_video(here, "v", 100.0)
    assert len(here.lookup_segments(ids)) == 25
    video = here.get_video("v")
    here.mark_deleted(video.id)
    assert here.lookup_segments(ids) == {}
    here.mark_ready(video.id)
    assert len(here.lookup_segments(ids)) == 25
    # Segments replaced with other spans while the video stays ready (no catalog path does
    # this in one second, but a direct API call can): the next lookup reads them.
    here.replace_segments(video.id, np.arange(5), np.arange(5) * 10.0, np.arange(5) * 10.0 + 10.0)
    assert here.lookup_segments(ids) == joined.lookup_segments(ids)
    assert here.lookup_segments(ids)[int(ids[4])].start_s == 40.0
    here.purge_video(video.id)
    assert here.lookup_segments(ids) == {}


# --- the vectorised proposal merge ----------------------------------------------------------------

RULES = [AdjacentOnly(), ConstantGap(0), ConstantGap(1), ConstantGap(3), AdaptiveGap(0.0), AdaptiveGap(0.5)]
RULES += [BoundedMerge(r, w, c) for r in (AdjacentOnly(), ConstantGap(2), AdaptiveGap(0.5))
          for w in (1.0, 0.6, 0.0) for c in (0.0, 8.0, 30.0)]


class EveryOther:
    """A gap rule of the caller's own: the generic path (runs two apart join)."""

    def joins(self, current, following) -> bool:
        return following.first_ordinal - current.last_ordinal <= 2


def random_hits(rng: np.random.Generator, odd: bool) -> list[RetrievedSegment]:
    """Up to 220 hits over up to 12 videos, clustered in time; ``odd``: duplicated ids, tied
    ranks and scores, two ids of one ordinal, spans off the grid (a catalog's oddities)."""
    n, videos = int(rng.integers(1, 220)), int(rng.integers(1, 12))
    durations = rng.choice([7.0, 37.3, 120.5, 3600.0], videos)
    out = []
    for r in range(n):
        v = int(rng.integers(videos))
        o = int(rng.integers(0, min(int(np.ceil(durations[v] / 4.0)), 40)))
        sid = (v + 1) << 20 | o
        start, end = o * 4.0, min(o * 4.0 + 4.0, float(durations[v]))
        rank, score = r, float(rng.random())
        if odd:
            if rng.random() < 0.1:
                sid += 1 << 19
            if rng.random() < 0.1:
                start, end = start - 1.0, end + 2.0
            rank, score = int(rng.integers(0, n // 3 + 1)), round(score, 1)
        out.append(RetrievedSegment(sid, f"video-{v}", o, start, end, float(durations[v]), score, rank))
    if odd:
        out += [out[int(i)] for i in rng.integers(0, n, n // 5)]
    return out


@pytest.mark.parametrize("odd", [False, True], ids=["well-formed", "oddities"])
def test_the_vectorised_merge_gives_the_reference_proposals(odd: bool):
    rng = np.random.default_rng(5 + odd)
    for _ in range(150):
        hits = random_hits(rng, odd)
        for rule in [*RULES, EveryOther()]:
            for cap in (None, 7):
                assert propose_moments(hits, rule, cap) == _propose_moments_reference(hits, rule, cap), rule


def test_the_vectorised_merge_refuses_what_the_reference_refuses():
    hits = [RetrievedSegment(1, "v", 0, 0.0, 4.0, 60.0, 0.9, 0), RetrievedSegment(2, "v", 1, 4.0, 8.0, 61.0, 0.8, 1)]
    for merge in (propose_moments, _propose_moments_reference):
        with pytest.raises(ValueError, match="disagree on its duration"):
            merge(hits)
        with pytest.raises(ValueError, match="max_proposals"):
            merge(hits[:1], AdjacentOnly(), -1)
    assert propose_arrays([], [], [], [], [], [], [], []) == []


def test_segments_built_from_columns_are_the_constructors():
    rng = np.random.default_rng(7)
    hits = random_hits(rng, odd=True)
    columns = [[getattr(h, f) for h in hits] for f in
               ("segment_id", "video_key", "ordinal", "start_s", "end_s", "video_duration_s", "score", "rank")]
    assert retrieved_segments(*columns) == hits
    columns[4][3] = columns[3][3] - 1.0  # one that ends before it starts
    with pytest.raises(ValueError, match="ends before it starts"):
        retrieved_segments(*columns)
    padded = pad_proposals(propose_moments(hits), 8.0)
    assert padded == [Proposal(p.video_key, p.start_s, p.end_s, p.video_duration_s, p.segment_ids,
                               p.segment_ranks, p.segment_scores) for p in padded]
    with pytest.raises(ValueError, match="ends before it starts"):
        pad_proposals([Proposal("v", 50.0, 60.0, 30.0, (1,), (0,), (1.0,))], 8.0)


def test_retrieval_merges_as_propose_moments_does(catalogs):
    here, _, _ = catalogs
    ids = np.concatenate([add_video(here, f"k{v}", 200.0) for v in range(4)])
    rng = np.random.default_rng(6)
    picked = rng.choice(ids, 80, replace=False)
    hits = [(int(s), float(1.0 - 0.01 * r)) for r, s in enumerate(picked)]
    rule = BoundedMerge(ConstantGap(1), 1.0, 30.0)
    coarse = propose_from_hits(here, hits, rule, 8.0)
    assert coarse.proposals == _propose_moments_reference(coarse.segments, rule)


# --- total counts the wait for a worker -----------------------------------------------------------


def test_total_counts_the_wait_for_a_worker(tmp_path: Path, big_store: FaissStore):
    """One worker thread and six concurrent calls: the calls queue for it, and their totals
    say so (before, total started when a worker picked the call up)."""
    config = Config(data_dir=str(tmp_path), vectors=VectorsConfig(dim=DIM, collection="big"),
                    faiss=FaissConfig(use_gpu=False))
    # The engine closes its store when the server stops: the module's store is used last here.
    engine = MomentSearch(config, SegmentCatalog.from_config(config), big_store)
    server, port = start_search_server(config, SearchServicer(engine), port=0, max_workers=1, refresh_s=0)
    query = l2_normalize(np.random.default_rng(7).standard_normal(DIM))
    results: list = []
    try:
        with SearchClient(f"127.0.0.1:{port}", timeout_s=60) as client:
            client.search(embedding=query, refine=False)  # warm
            gate = threading.Barrier(6, timeout=WAIT_S)

            def call() -> None:
                gate.wait()
                t0 = time.perf_counter()
                response = client.search(embedding=query, refine=False)
                results.append((response.timings_ms, (time.perf_counter() - t0) * 1e3))

            threads = [started(call)[0] for _ in range(6)]
            for t in threads:
                t.join(60)
    finally:
        server.stop(0).wait()
    assert len(results) == 6
    stages = ("embed", "ann", "catalog", "proposals", "fusion", "refine", "snippets")
    work = [sum(t.get(s, 0.0) for s in stages) for t, _ in results]
    for timings, wall_ms in results:
        assert timings["total"] <= wall_ms + 1.0  # never more than the client waited
        assert timings["queue"] >= 0.0 and timings["total"] >= timings["queue"]
    # The last call served waited for ~five others: its total is several times its work.
    assert max(t["total"] for t, _ in results) >= 2.5 * max(work), results
