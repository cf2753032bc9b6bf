"""The vector-store contract, held against both backends: local Faiss and a real Milvus server."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import uuid
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import store_config
from spr.config import VectorBackend, load_config
from spr.stores import (
    CollectionExists,
    CollectionNotFound,
    Flat,
    Hnsw,
    IvfFlat,
    IvfPq,
    VectorStore,
    backend_names,
    l2_normalize,
    open_vector_store,
)
from spr.stores.faiss_store import FaissStore
from spr.stores.milvus_store import MilvusStore

DIM = 32


@pytest.fixture(params=["faiss", "milvus"])
def store(request, open_store) -> VectorStore:
    s = open_store(request.param)
    yield s
    for name in s.list_collections():
        if name.startswith("t_"):
            s.drop_collection(name)


@pytest.fixture
def name() -> str:
    return f"t_{uuid.uuid4().hex[:12]}"


def vectors(n: int, seed: int = 0) -> np.ndarray:
    return l2_normalize(np.random.default_rng(seed).standard_normal((n, DIM)))


def keys_for(ids) -> list[str]:
    return [f"video-{i // 10}" for i in ids]


def fill(store, name, n=200, spec=Flat()):
    store.create_collection(name, DIM, spec)
    x = vectors(n)
    ids = np.arange(n, dtype=np.int64) + 100
    store.upsert(name, ids, x, keys_for(range(n)))
    store.flush(name)
    return ids, x


def test_a_stored_vector_is_its_own_nearest_neighbour(store, name):
    ids, x = fill(store, name)
    result = store.search(name, x[[3, 50, 199]], k=5)
    assert result.ids[:, 0].tolist() == [103, 150, 299]
    np.testing.assert_allclose(result.scores[:, 0], 1.0, atol=1e-5)
    # Best first.
    assert (np.diff(result.scores, axis=1) <= 1e-6).all()
    assert store.count(name) == 200


def test_creating_an_existing_collection_is_idempotent_but_a_different_shape_is_refused(store, name):
    store.create_collection(name, DIM, Flat())
    info = store.create_collection(name, DIM, Flat())
    assert (info.dim, info.metric, info.index) == (DIM, "IP", Flat())
    with pytest.raises(CollectionExists):
        store.create_collection(name, DIM * 2, Flat())
    with pytest.raises(CollectionExists):
        store.create_collection(name, DIM, IvfFlat(nlist=4, nprobe=1))
    assert name in store.list_collections()


def test_upsert_replaces_vectors_by_id_without_duplicates(store, name):
    ids, x = fill(store, name)
    fresh = vectors(10, seed=7)
    store.upsert(name, ids[:10], fresh, keys_for(range(10)))
    store.flush(name)
    assert store.count(name) == 200
    result = store.search(name, fresh[:3], k=2)
    assert result.ids[:, 0].tolist() == ids[:3].tolist()
    np.testing.assert_allclose(result.scores[:, 0], 1.0, atol=1e-5)


def test_deleting_a_video_removes_exactly_its_segments(store, name):
    ids, x = fill(store, name)
    store.delete_videos(name, ["video-0", "video-5"])
    store.flush(name)
    assert store.count(name) == 180
    result = store.search(name, x[:10], k=20)
    gone = set(range(100, 110)) | set(range(150, 160))
    assert not gone & set(result.ids[result.ids >= 0].tolist())
    store.delete_videos(name, ["no-such-video"])
    assert store.count(name) == 180


def test_deleting_ids(store, name):
    ids, x = fill(store, name)
    store.delete_ids(name, ids[:5])
    store.flush(name)
    assert store.count(name) == 195
    assert 100 not in store.search(name, x[:1], k=5).ids


def test_search_can_be_restricted_to_some_videos(store, name):
    ids, x = fill(store, name)
    result = store.search(name, x[:4], k=5, video_keys=["video-3", "video-7"])
    found = set(result.ids[result.ids >= 0].tolist())
    assert found and found <= set(range(130, 140)) | set(range(170, 180))
    empty = store.search(name, x[:1], k=5, video_keys=[])
    assert (empty.ids == -1).all()


def test_fewer_vectors_than_k_pads_with_minus_one(store, name):
    fill(store, name, n=3)
    result = store.search(name, vectors(1), k=10)
    assert sorted(result.ids[0, :3].tolist()) == [100, 101, 102]
    assert (result.ids[0, 3:] == -1).all()
    assert result.hits(0)[0][0] in (100, 101, 102) and len(result.hits(0)) == 3


def test_bad_input_is_refused_with_a_clear_error(store, name):
    with pytest.raises(CollectionNotFound):
        store.search("t_missing_collection", vectors(1), k=5)
    fill(store, name, n=10)
    with pytest.raises(ValueError, match="shape"):
        store.upsert(name, np.arange(2), np.zeros((2, DIM + 1), np.float32), ["a", "b"])
    with pytest.raises(ValueError, match="duplicate"):
        store.upsert(name, np.array([1, 1]), vectors(2), ["a", "b"])
    with pytest.raises(ValueError, match="NaN"):
        store.upsert(name, np.array([1]), np.full((1, DIM), np.nan, np.float32), ["a"])
    with pytest.raises(ValueError, match="queries"):
        store.search(name, np.zeros((1, DIM + 3), np.float32), k=5)
    with pytest.raises(ValueError, match="k="):
        store.search(name, vectors(1), k=0)
    with pytest.raises(ValueError, match="collection name"):
        store.create_collection("bad name!", DIM, Flat())
    with pytest.raises(ValueError, match="m to divide"):
        store.create_collection(name + "_pq", DIM, IvfPq(nlist=4, m=5, nbits=4, nprobe=1))
    assert store.count(name) == 10


@pytest.mark.parametrize("spec", [IvfFlat(nlist=8, nprobe=8), IvfPq(nlist=8, m=8, nbits=4, nprobe=8), Hnsw(M=8)])
def test_every_index_kind_finds_stored_vectors(store, name, spec):
    ids, x = fill(store, name, n=3000, spec=spec)
    store.wait_until_indexed(name)
    result = store.search(name, x[:20], k=10)
    # PQ codes are lossy: the vector itself must still be among the first ten.
    hit = [ids[i] in result.ids[i] for i in range(20)]
    assert sum(hit) >= 19
    store.delete_videos(name, ["video-0"])
    store.flush(name)
    assert store.count(name) == 2990
    assert store.describe(name).index == spec


def test_dropping_a_collection(store, name):
    fill(store, name, n=10)
    store.drop_collection(name)
    assert name not in store.list_collections()
    with pytest.raises(CollectionNotFound):
        store.count(name)


def test_a_store_holds_the_catalog_records_of_its_own_backend_only(store):
    assert store.holds(SimpleNamespace(backend=store.backend))
    other = "milvus" if store.backend == "faiss" else "faiss"
    assert not store.holds(SimpleNamespace(backend=other))


def test_wait_until_indexed_leaves_every_vector_searchable_through_the_index(store, name):
    # Faiss would train this IVF index on its own at 8 lists x 64 points = 512 vectors; the
    # first 300 stay in its exact buffer until build_index trains on them.
    store.create_collection(name, DIM, IvfFlat(nlist=8, nprobe=8))
    x = vectors(600)
    store.upsert(name, np.arange(300), x[:300], keys_for(range(300)))
    store.build_index(name)
    store.upsert(name, np.arange(300, 600), x[300:], keys_for(range(300, 600)))
    store.wait_until_indexed(name, timeout_s=120)
    assert store.count(name) == 600
    result = store.search(name, x[[0, 299, 300, 599]], k=1)
    assert result.ids[:, 0].tolist() == [0, 299, 300, 599]


# -- the registry ---------------------------------------------------------------------


def test_the_registry_names_every_configurable_backend():
    assert backend_names() == sorted(b.value for b in VectorBackend)


@pytest.mark.parametrize("backend, cls", [("faiss", FaissStore), ("milvus", MilvusStore)])
def test_the_registry_opens_the_configured_backend_with_its_settings(request, tmp_path, backend, cls):
    uri = request.getfixturevalue("milvus_uri") if backend == "milvus" else ""
    store = open_vector_store(store_config(backend, tmp_path / "faiss", uri, threads=1, train_points_per_list=16))
    try:
        assert isinstance(store, cls) and store.backend == backend
        if isinstance(store, FaissStore):
            assert store.root == tmp_path / "faiss" and store.train_points_per_list == 16
        else:
            assert store.uri == uri and store.consistency_level == "Strong"
    finally:
        store.close()


def test_an_unknown_backend_names_the_known_ones():
    config = load_config(environ={})
    with pytest.raises(ValueError, match="faiss"):
        open_vector_store(config.replace(vectors=dataclasses.replace(config.vectors, backend="qdrant")))


def test_the_milvus_path_never_imports_faiss(milvus_uri):
    """A Milvus deployment need not ship Faiss: neither importing the stores and the
    configuration nor opening and using a Milvus store through the registry loads it."""
    probe = f"""
import sys
import spr.config, spr.stores, spr.stores.milvus_store
from spr.config import load_config
from spr.stores import open_vector_store
store = open_vector_store(load_config(environ={{"SPR_VECTORS__BACKEND": "milvus", "SPR_MILVUS__URI": {milvus_uri!r}}}))
store.list_collections()
store.close()
assert "faiss" not in sys.modules, "faiss was imported"
"""
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr


# -- Faiss specifics ------------------------------------------------------------------


def test_faiss_flushed_collections_survive_a_restart(tmp_path):
    store = FaissStore(tmp_path)
    store.create_collection("t_persist", DIM, IvfFlat(nlist=4, nprobe=4))
    x = vectors(500)
    store.upsert("t_persist", np.arange(500), x, keys_for(range(500)))
    store.flush("t_persist")
    store.upsert("t_persist", np.arange(500, 510), vectors(10, seed=3), keys_for(range(10)))  # not flushed

    reopened = FaissStore(tmp_path)
    assert reopened.list_collections() == ["t_persist"]
    assert reopened.count("t_persist") == 500
    assert reopened.describe("t_persist").index == IvfFlat(nlist=4, nprobe=4)
    assert reopened.search("t_persist", x[7:8], k=1).ids[0, 0] == 7
    reopened.delete_videos("t_persist", ["video-0"])
    assert reopened.count("t_persist") == 490


def test_faiss_a_flush_interrupted_before_its_swap_leaves_the_previous_generation(tmp_path):
    store = FaissStore(tmp_path)
    store.create_collection("t_crash", DIM, Flat())
    store.upsert("t_crash", np.arange(5), vectors(5), keys_for(range(5)))
    store.flush("t_crash")
    # A half-written next generation, as a kill -9 during flush would leave it.
    (tmp_path / "t_crash" / "gen-999999").mkdir()
    (tmp_path / "t_crash" / "gen-999999" / "index.faiss").write_bytes(b"partial")
    assert FaissStore(tmp_path).count("t_crash") == 5


def test_faiss_ivf_searches_exactly_until_it_has_enough_vectors_to_train(tmp_path):
    store = FaissStore(tmp_path, train_points_per_list=16)
    spec = IvfFlat(nlist=8, nprobe=1)
    store.create_collection("t_ivf", DIM, spec)
    x = vectors(8 * 16 + 50)
    store.upsert("t_ivf", np.arange(100), x[:100], keys_for(range(100)))
    coll = store._collections["t_ivf"]
    assert coll.pending is not None and not coll.index.is_trained
    # Untrained: the exact buffer answers, so the true nearest neighbours come back.
    exact = np.argsort(-(x[:100] @ x[0]))[:5]
    assert store.search("t_ivf", x[:1], k=5).ids[0].tolist() == exact.tolist()
    store.upsert("t_ivf", np.arange(100, len(x)), x[100:], keys_for(range(100, len(x))))
    assert coll.pending is None and coll.index.is_trained and coll.index.ntotal == len(x)
    assert store.search("t_ivf", x[:1], k=1).ids[0, 0] == 0


def test_faiss_explicit_training_needs_enough_points(tmp_path):
    store = FaissStore(tmp_path)
    store.create_collection("t_small", DIM, IvfFlat(nlist=64, nprobe=4))
    store.upsert("t_small", np.arange(10), vectors(10), keys_for(range(10)))
    with pytest.raises(ValueError, match="needs at least 64"):
        store.train("t_small")


def test_faiss_trains_ivf_on_a_sample_of_points_per_list_not_on_everything(tmp_path, caplog):
    store = FaissStore(tmp_path, train_points_per_list=16)
    store.create_collection("t_sample", DIM, IvfFlat(nlist=8, nprobe=8))
    x = vectors(1000)
    # One batch larger than the training size: it trains on a sample of 8 x 16, adds all.
    with caplog.at_level("INFO", logger="spr.stores.faiss_store"):
        store.upsert("t_sample", np.arange(1000), x, keys_for(range(1000)))
    assert "on 128 of 1000 vectors" in caplog.text
    assert store.count("t_sample") == 1000
    assert store.search("t_sample", x[500:501], k=1).ids[0, 0] == 500


def test_faiss_uses_the_configured_number_of_openmp_threads(tmp_path):
    import faiss

    before = faiss.omp_get_max_threads()
    try:
        FaissStore(tmp_path, threads=1)
        assert faiss.omp_get_max_threads() == 1
    finally:
        faiss.omp_set_num_threads(before)


# -- Milvus specifics -----------------------------------------------------------------


def test_milvus_a_new_client_recovers_the_index_spec_from_the_server(milvus_uri, name):
    first = MilvusStore(milvus_uri, consistency_level="Strong")
    first.create_collection(name, DIM, IvfPq(nlist=16, m=8, nbits=8, nprobe=4))
    second = MilvusStore(milvus_uri, consistency_level="Strong")
    try:
        info = second.describe(name)
        assert (info.dim, info.metric, info.index, info.count) == (DIM, "IP", IvfPq(nlist=16, m=8, nbits=8, nprobe=4), 0)
    finally:
        second.drop_collection(name)
        first.close()
        second.close()


def test_milvus_unreachable_server_gives_an_actionable_error():
    with pytest.raises(ConnectionError, match="spr milvus start"):
        MilvusStore("http://127.0.0.1:1", timeout_s=2)


def test_a_faiss_reader_picks_up_another_writers_flush_on_refresh(tmp_path):
    writer = FaissStore(tmp_path / "faiss")
    writer.create_collection("c", 8, Flat())
    vectors = l2_normalize(np.random.default_rng(0).standard_normal((3, 8)))
    writer.upsert("c", np.arange(2), vectors[:2], ["a", "a"])
    writer.flush("c")
    reader = FaissStore(tmp_path / "faiss")
    assert reader.count("c") == 2
    assert reader.refresh() == []  # nothing new
    writer.upsert("c", np.array([7]), vectors[2:], ["b"])
    writer.flush("c")
    assert reader.count("c") == 2  # a loaded copy does not change under a search...
    assert reader.refresh() == ["c"]  # ...until the reader refreshes
    assert reader.count("c") == 3
    assert reader.search("c", vectors[2], 1).hits(0)[0][0] == 7
    writer.drop_collection("c")
    assert reader.refresh() == ["c"] and not reader.has_collection("c")
