"""Index specs: plain data with one meaning, which each backend translates into its own vocabulary."""

import subprocess
import sys

import pytest

from spr.config import ConfigError, load_config
from spr.stores import faiss_store, milvus_store
from spr.stores.index_spec import (
    Flat,
    Hnsw,
    IvfFlat,
    IvfPq,
    SearchParams,
    effective_search,
    index_spec_from_config,
    index_spec_from_dict,
    index_spec_to_dict,
    parse_index_spec,
)


def test_each_kind_names_the_same_index_on_faiss_and_milvus():
    assert faiss_store.index_param(Flat()) == "Flat"
    assert milvus_store.index_param(Flat()) == {"index_type": "FLAT", "params": {}}
    assert faiss_store.index_param(IvfFlat(nlist=256)) == "IVF256,Flat"
    assert milvus_store.index_param(IvfFlat(nlist=256)) == {"index_type": "IVF_FLAT", "params": {"nlist": 256}}
    assert faiss_store.index_param(IvfPq(nlist=128, m=32, nbits=8)) == "IVF128,PQ32x8np"
    assert milvus_store.index_param(IvfPq(nlist=128, m=32, nbits=8)) == {
        "index_type": "IVF_PQ",
        "params": {"nlist": 128, "m": 32, "nbits": 8},
    }
    assert faiss_store.index_param(Hnsw(M=32, ef_construction=100)) == "HNSW32,Flat"
    assert milvus_store.index_param(Hnsw(M=32, ef_construction=100)) == {
        "index_type": "HNSW",
        "params": {"M": 32, "efConstruction": 100},
    }


def test_search_params_default_to_the_spec_and_take_per_query_overrides():
    spec = IvfFlat(nlist=64, nprobe=8)
    assert milvus_store.search_param(spec) == {"nprobe": 8}
    assert milvus_store.search_param(spec, SearchParams(nprobe=32)) == {"nprobe": 32}
    # nprobe beyond nlist means "all lists", which both backends accept only as nlist.
    assert milvus_store.search_param(spec, SearchParams(nprobe=1000)) == {"nprobe": 64}
    assert milvus_store.search_param(Hnsw(ef=40), SearchParams(ef=128)) == {"ef": 128}
    assert milvus_store.search_param(Flat(), SearchParams(nprobe=4)) == {}


def test_both_backends_search_with_the_same_effective_knobs():
    cases = [
        (IvfFlat(nlist=64, nprobe=8), None, SearchParams(nprobe=8)),
        (IvfPq(nlist=64, m=8, nprobe=8), SearchParams(nprobe=1000), SearchParams(nprobe=64)),
        (Hnsw(ef=40), SearchParams(ef=128), SearchParams(ef=128)),
        (Flat(), SearchParams(nprobe=4), SearchParams()),
    ]
    for spec, override, expected in cases:
        assert effective_search(spec, override) == expected
        faiss_params = faiss_store.search_param(spec, override)
        assert getattr(faiss_params, "nprobe", None) == expected.nprobe
        assert getattr(faiss_params, "efSearch", None) == expected.ef


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


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"nlist": 16}, "needs a kind; allowed: FLAT, IVF_FLAT, IVF_PQ, HNSW"),
        ({"kind": "ANNOY"}, "unknown index kind 'ANNOY'"),
        ({"kind": "FLAT", "nlist": 16}, "nlist does not apply to kind FLAT, which takes no parameters"),
        ({"kind": "IVF_FLAT", "m": 8}, "m does not apply to kind IVF_FLAT, which takes nlist, nprobe"),
        ({"kind": "HNSW", "m": 8}, "which takes hnsw_m \\(or M\\), ef_construction, ef"),
        ({"kind": "HNSW", "M": 8, "hnsw_m": 8}, "sets M twice"),
        ({"kind": "IVF_FLAT", "nlist": "many"}, "nlist must be an integer, got 'many'"),
        ({"kind": "IVF_FLAT", "nlist": True}, "nlist must be an integer"),
    ],
)
def test_the_parser_names_what_is_wrong(raw, message):
    with pytest.raises(ValueError, match=message):
        parse_index_spec(raw)


def test_the_parser_takes_any_case_of_a_kind_text_integers_and_the_config_spelling_of_hnsw_m():
    assert parse_index_spec({"kind": "ivf_pq", "nlist": "512", "m": 48}) == IvfPq(nlist=512, m=48)
    assert parse_index_spec({"kind": "HNSW", "hnsw_m": 32}) == Hnsw(M=32)


def test_search_params_out_of_range_are_rejected():
    with pytest.raises(ValueError, match="nprobe"):
        SearchParams(nprobe=0)


@pytest.mark.parametrize("spec", [Flat(), IvfFlat(nlist=32, nprobe=4), IvfPq(nlist=32, m=8, nbits=6, nprobe=2), Hnsw(M=8)])
def test_specs_round_trip_through_dicts(spec):
    assert index_spec_from_dict(index_spec_to_dict(spec)) == spec


def test_config_section_selects_the_spec_and_its_parameters():
    env = {
        "SPR_VECTORS__INDEX__KIND": "ivf_pq",
        "SPR_VECTORS__INDEX__NLIST": "512",
        "SPR_VECTORS__INDEX__M": "48",
        "SPR_VECTORS__INDEX__NBITS": "8",
        "SPR_VECTORS__INDEX__NPROBE": "20",
    }
    assert index_spec_from_config(load_config(environ=env).vectors.index) == IvfPq(nlist=512, m=48, nbits=8, nprobe=20)
    assert index_spec_from_config(load_config(environ={}).vectors.index) == Flat()
    assert index_spec_from_config({"kind": "HNSW", "hnsw_m": 8}) == Hnsw(M=8)
    with pytest.raises(ConfigError, match="unknown index kind"):
        load_config(environ={"SPR_VECTORS__INDEX__KIND": "ANNOY"})


def test_specs_are_plain_data_that_import_no_backend():
    probe = (
        "import sys, spr.stores.index_spec, spr.config;"
        "assert not {'faiss', 'pymilvus'} & set(sys.modules), sorted({'faiss', 'pymilvus'} & set(sys.modules))"
    )
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
