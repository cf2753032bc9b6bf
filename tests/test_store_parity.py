"""Faiss and Milvus agree: an index spec means the same on both backends.

The same clustered data goes into both. FLAT must return identical neighbours; IVF_FLAT and
IVF_PQ at the same (nlist, nprobe, m, nbits) must reach recall@k within 0.02 of each other.
"""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from conftest import store_config
from spr.stores import Flat, IvfFlat, IvfPq, SearchParams, l2_normalize, open_vector_store

pytestmark = pytest.mark.milvus

DIM, N, CLUSTERS, QUERIES, K = 64, 20_000, 100, 300, 50


def clustered(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` unit vectors around ``CLUSTERS`` centres, and ``QUERIES`` queries drawn the same way."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((CLUSTERS, DIM))
    data = centres[rng.integers(0, CLUSTERS, n)] + 1.5 * rng.standard_normal((n, DIM))
    queries = centres[rng.integers(0, CLUSTERS, QUERIES)] + 1.5 * rng.standard_normal((QUERIES, DIM))
    return l2_normalize(data), l2_normalize(queries)


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found.tolist(), truth.tolist())]))


@pytest.fixture(scope="module")
def data():
    x, q = clustered(N, seed=1)
    truth = np.argsort(-(q @ x.T), axis=1)[:, :K]
    return x, q, truth


@pytest.fixture(scope="module")
def both(milvus_uri, tmp_path_factory):
    # Faiss trains on all N vectors here (wait_until_indexed), as Milvus does per sealed segment.
    root = tmp_path_factory.mktemp("parity")
    faiss_store = open_vector_store(store_config("faiss", root, train_points_per_list=N))
    milvus_store = open_vector_store(store_config("milvus", root, milvus_uri))
    yield faiss_store, milvus_store
    milvus_store.close()


def load(store, spec, x) -> str:
    name = f"t_parity_{spec.kind.lower()}_{uuid.uuid4().hex[:6]}"
    store.create_collection(name, DIM, spec)
    store.upsert(name, np.arange(N), x, [f"v{i // 50}" for i in range(N)])
    store.wait_until_indexed(name)
    return name


def test_flat_returns_identical_neighbours_on_both_backends(both, data):
    x, q, truth = data
    faiss_store, milvus_store = both
    f_name, m_name = load(faiss_store, Flat(), x), load(milvus_store, Flat(), x)
    f, m = faiss_store.search(f_name, q, K), milvus_store.search(m_name, q, K)
    assert recall_at_k(f.ids, truth) == 1.0
    # Identical up to float32 ties: compare id sets on the first K-1 ranks and scores exactly.
    np.testing.assert_allclose(f.scores, m.scores, atol=1e-5)
    same_rank = (f.ids == m.ids).mean()
    assert same_rank > 0.999, f"only {same_rank:.4f} of ranks agree"
    milvus_store.drop_collection(m_name)


@pytest.mark.parametrize(
    "spec",
    [IvfFlat(nlist=64, nprobe=4), IvfPq(nlist=64, m=16, nbits=8, nprobe=4)],
    ids=["IVF_FLAT", "IVF_PQ"],
)
def test_ivf_recall_matches_within_two_points_at_the_same_parameters(both, data, spec):
    x, q, truth = data
    faiss_store, milvus_store = both
    f_name, m_name = load(faiss_store, spec, x), load(milvus_store, spec, x)
    recalls = {}
    for nprobe in (spec.nprobe, spec.nprobe * 4):
        params = SearchParams(nprobe=nprobe)
        f = recall_at_k(faiss_store.search(f_name, q, K, params).ids, truth)
        m = recall_at_k(milvus_store.search(m_name, q, K, params).ids, truth)
        recalls[nprobe] = (f, m)
        assert abs(f - m) <= 0.02, f"{spec.kind} nprobe={nprobe}: faiss recall {f:.3f}, milvus {m:.3f}"
    # The parameters must really act on both: more probes, better recall, and not exact.
    (f_lo, m_lo), (f_hi, m_hi) = recalls[spec.nprobe], recalls[spec.nprobe * 4]
    assert f_hi > f_lo and m_hi > m_lo
    assert f_lo < 0.99 and m_lo < 0.99
    milvus_store.drop_collection(m_name)
