"""Index specs: one meaning, two backends."""

import pytest

from spr.config import IndexConfig
from spr.stores.index_spec import (
    Flat,
    Hnsw,
    IvfFlat,
    IvfPq,
    SearchParams,
    index_spec_from_config,
    index_spec_from_dict,
    index_spec_to_dict,
)


def test_each_kind_names_the_same_index_on_faiss_and_milvus():
    assert Flat().faiss_factory() == "Flat"
    assert Flat().milvus_index_params() == {"index_type": "FLAT", "params": {}}
    assert IvfFlat(nlist=256).faiss_factory() == "IVF256,Flat"
    assert IvfFlat(nlist=256).milvus_index_params() == {"index_type": "IVF_FLAT", "params": {"nlist": 256}}
    assert IvfPq(nlist=128, m=32, nbits=8).faiss_factory() == "IVF128,PQ32x8np"
    assert IvfPq(nlist=128, m=32, nbits=8).milvus_index_params() == {
        "index_type": "IVF_PQ",
        "params": {"nlist": 128, "m": 32, "nbits": 8},
    }
    assert Hnsw(M=32, ef_construction=100).faiss_factory() == "HNSW32,Flat"
    assert Hnsw(M=32, ef_construction=100).milvus_index_params() == {
        "index_type": "HNSW",
        "params": {"M": 32, "efConstruction": 100},
    }


def test_search_params_default_to_the_spec_and_take_per_query_overrides():
    spec = IvfFlat(nlist=64, nprobe=8)
    assert spec.search_params() == {"nprobe": 8}
    assert spec.search_params(SearchParams(nprobe=32)) == {"nprobe": 32}
    # nprobe beyond nlist means "all lists", which both backends accept only as nlist.
    assert spec.search_params(SearchParams(nprobe=1000)) == {"nprobe": 64}
    assert Hnsw(ef=40).search_params(SearchParams(ef=128)) == {"ef": 128}
    assert Flat().search_params(SearchParams(nprobe=4)) == {}


@pytest.mark.parametrize(
    "bad",
    [
        {"kind": "DISKANN"},
        {"kind": "IVF_FLAT", "nlist": 0},
        {"kind": "IVF_FLAT", "nlist": 16, "nprobe": 17},
        {"kind": "IVF_PQ", "nbits": 0},
        {"kind": "IVF_FLAT", "nlsit": 16},
        {"kind": "HNSW", "M": 1},
    ],
)
def test_invalid_specs_are_rejected_with_a_clear_error(bad):
    with pytest.raises(ValueError):
        index_spec_from_dict(bad)


def test_search_params_out_of_range_are_rejected():
    with pytest.raises(ValueError, match="nprobe"):
        SearchParams(nprobe=0)


@pytest.mark.parametrize("spec", [Flat(), IvfFlat(nlist=32, nprobe=4), IvfPq(nlist=32, m=8, nbits=6, nprobe=2), Hnsw(M=8)])
def test_specs_round_trip_through_dicts(spec):
    assert index_spec_from_dict(index_spec_to_dict(spec)) == spec


def test_config_section_selects_the_spec_and_its_parameters():
    assert index_spec_from_config(IndexConfig(kind="ivf_pq", nlist=512, m=48, nbits=8, nprobe=20)) == IvfPq(
        nlist=512, m=48, nbits=8, nprobe=20
    )
    assert index_spec_from_config(IndexConfig()) == Flat()
    with pytest.raises(ValueError, match="unknown index kind"):
        index_spec_from_config(IndexConfig(kind="ANNOY"))
