"""Configuration: one typed object, defaults < TOML file < SPR_* variables, errors that say what is wrong."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from spr.config import (
    Config,
    ConfigError,
    ConsistencyLevel,
    GapRuleName,
    LogLevel,
    Precision,
    VectorBackend,
    load_config,
)
from spr.stores import Flat, Hnsw, IvfFlat, Metric


def test_no_file_and_no_variables_gives_the_embedded_defaults(tmp_path):
    cfg = load_config(environ={"SPR_DATA_DIR": str(tmp_path)})
    assert cfg.vectors.backend == "faiss"
    assert cfg.catalog_url == f"sqlite:///{tmp_path / 'catalog.db'}"
    assert cfg.faiss_path == tmp_path / "faiss"
    assert cfg.services.host == "127.0.0.1"
    assert cfg.ray.address == ""
    assert (cfg.segments.length_s, cfg.proposals.top_k_segments, cfg.proposals.pad_s) == (4.0, 200, 8.0)
    assert cfg.faiss.threads == 1


def test_a_toml_file_sets_values_and_variables_override_it(tmp_path):
    file = tmp_path / "spr.toml"
    file.write_text(
        '[catalog]\nurl = "postgresql+psycopg2://spr@db/spr"\n'
        '[vectors]\nbackend = "milvus"\n[vectors.index]\nkind = "IVF_PQ"\nnprobe = 8\n'
    )
    cfg = load_config(file, environ={"SPR_VECTORS__INDEX__NPROBE": "32", "SPR_MILVUS__URI": "http://m:19530"})
    assert cfg.catalog_url == "postgresql+psycopg2://spr@db/spr"
    assert cfg.vectors.backend == "milvus"
    assert cfg.vectors.index.kind == "IVF_PQ"
    assert cfg.vectors.index.nprobe == 32  # the variable wins, converted to int
    assert cfg.milvus.uri == "http://m:19530"


def test_spr_config_names_the_file_when_no_path_is_given(tmp_path):
    file = tmp_path / "c.toml"
    file.write_text("[faiss]\nthreads = 3\n")
    assert load_config(environ={"SPR_CONFIG": str(file)}).faiss.threads == 3


@pytest.mark.parametrize("value, expected", [("true", True), ("0", False), ("yes", True), ("off", False)])
def test_booleans_from_variables(value, expected):
    assert load_config(environ={"SPR_FAISS__USE_GPU": value}).faiss.use_gpu is expected


@pytest.mark.parametrize(
    "environ, fragment",
    [
        ({"SPR_VECTORS__BAKEND": "milvus"}, "vectors.bakend"),
        ({"SPR_FAISS__THREADS": "two"}, "faiss.threads must be int"),
        ({"SPR_FAISS__USE_GPU": "maybe"}, "faiss.use_gpu must be bool"),
        ({"SPR_VECTORS": "x"}, "vectors is a section"),
    ],
)
def test_typos_and_wrong_types_are_errors_naming_the_key(environ, fragment):
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.")):
        load_config(environ=environ)


def test_a_missing_or_broken_file_is_an_error_naming_it(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml", environ={})
    bad = tmp_path / "bad.toml"
    bad.write_text("[catalog\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad, environ={})


def test_replace_returns_a_modified_copy():
    cfg = Config()
    other = cfg.replace(data_dir="/srv/spr")
    assert other.data_path == Path("/srv/spr") and cfg.data_dir == ""


def test_the_test_suites_own_variables_are_not_configuration_keys():
    config = load_config(environ={"SPR_TEST_MILVUS_URI": "http://x:1", "SPR_MILVUS__URI": "http://y:2"})
    assert config.milvus.uri == "http://y:2"


# -- enum-like values and [vectors.index] ------------------------------------------------


@pytest.mark.parametrize(
    "variable, key, allowed",
    [
        ("SPR_VECTORS__BACKEND", "vectors.backend", "faiss, milvus"),
        ("SPR_VECTORS__METRIC", "vectors.metric", "IP, L2"),
        ("SPR_VECTORS__INDEX__KIND", "vectors.index.kind", "FLAT, IVF_FLAT, IVF_PQ, HNSW"),
        ("SPR_MILVUS__CONSISTENCY_LEVEL", "milvus.consistency_level", "Strong, Session, Bounded, Eventually"),
        ("SPR_PROPOSALS__GAP_RULE", "proposals.gap_rule", "adjacent, constant, adaptive"),
        ("SPR_CLIP__PRECISION", "clip.precision", "auto, fp32, fp16, bf16"),
        ("SPR_REFINER__PRECISION", "refiner.precision", "auto, fp32, fp16, bf16"),
        ("SPR_CLIP__DEVICE", "clip.device", "auto, cpu, cuda, cuda:<index>, mps"),
        ("SPR_REFINER__DEVICE", "refiner.device", "auto, cpu, cuda, cuda:<index>, mps"),
        ("SPR_TRAIN__DEVICE", "train.device", "auto, cpu, cuda, cuda:<index>, mps"),
        ("SPR_LOGGING__LEVEL", "logging.level", "DEBUG, INFO, WARNING, ERROR, CRITICAL"),
    ],
)
def test_an_enum_like_value_outside_its_choices_is_an_error_naming_the_key_and_the_choices(variable, key, allowed):
    with pytest.raises(ConfigError) as caught:
        load_config(environ={variable: "bogus"})
    assert key in str(caught.value) and allowed in str(caught.value) and "'bogus'" in str(caught.value)


def test_enum_like_values_are_typed_and_matched_in_any_case():
    cfg = load_config(
        environ={
            "SPR_VECTORS__BACKEND": "Milvus",
            "SPR_VECTORS__METRIC": "l2",
            "SPR_MILVUS__CONSISTENCY_LEVEL": "strong",
            "SPR_PROPOSALS__GAP_RULE": "ADAPTIVE",
            "SPR_CLIP__PRECISION": "BF16",
            "SPR_CLIP__DEVICE": "cuda:1",
            "SPR_LOGGING__LEVEL": "warning",
        }
    )
    assert cfg.vectors.backend is VectorBackend.MILVUS and cfg.vectors.metric is Metric.L2
    assert cfg.milvus.consistency_level is ConsistencyLevel.STRONG
    assert cfg.proposals.gap_rule is GapRuleName.ADAPTIVE
    assert cfg.clip.precision is Precision.BF16 and cfg.clip.device == "cuda:1"
    assert cfg.logging.level is LogLevel.WARNING
    # StrEnum members are their values: code comparing with strings keeps working.
    assert cfg.vectors.backend == "milvus" and cfg.clip.precision == "bf16"


def test_the_defaults_are_members_of_their_enums():
    cfg = Config()
    assert cfg.vectors.backend is VectorBackend.FAISS and cfg.proposals.gap_rule is GapRuleName.ADJACENT
    assert cfg.clip.precision is Precision.AUTO and cfg.milvus.consistency_level is ConsistencyLevel.BOUNDED


def test_the_index_section_is_parsed_into_its_spec(tmp_path):
    file = tmp_path / "spr.toml"
    file.write_text('[vectors.index]\nkind = "HNSW"\nhnsw_m = 32\nef = 128\n')
    assert load_config(file, environ={}).vectors.index == Hnsw(M=32, ef=128)
    assert load_config(environ={}).vectors.index == Flat()  # no section: exact search
    assert load_config(environ={"SPR_VECTORS__INDEX__KIND": "ivf_flat"}).vectors.index == IvfFlat()


@pytest.mark.parametrize(
    "environ, fragment",
    [
        ({"SPR_VECTORS__INDEX__KIND": "IVF_FLAT", "SPR_VECTORS__INDEX__NLSIT": "16"}, "vectors.index: nlsit does not apply"),
        ({"SPR_VECTORS__INDEX__KIND": "FLAT", "SPR_VECTORS__INDEX__NPROBE": "8"}, "nprobe does not apply to kind FLAT"),
        ({"SPR_VECTORS__INDEX__NPROBE": "8"}, "nprobe does not apply to kind FLAT (kind not set, the default)"),
        ({"SPR_VECTORS__INDEX__KIND": "IVF_FLAT", "SPR_VECTORS__INDEX__M": "8"}, "m does not apply to kind IVF_FLAT"),
        ({"SPR_VECTORS__INDEX__KIND": "HNSW", "SPR_VECTORS__INDEX__NBITS": "8"}, "nbits does not apply to kind HNSW"),
        ({"SPR_VECTORS__INDEX__KIND": "IVF_FLAT", "SPR_VECTORS__INDEX__NLIST": "lots"}, "vectors.index.nlist must be an integer"),
        ({"SPR_VECTORS__INDEX__KIND": "IVF_FLAT", "SPR_VECTORS__INDEX__NLIST": "8", "SPR_VECTORS__INDEX__NPROBE": "9"}, "nprobe=9 out of range"),
        ({"SPR_VECTORS__INDEX": "FLAT"}, "vectors.index is a section"),
    ],
)
def test_index_keys_unknown_or_of_another_kind_are_errors(environ, fragment):
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        load_config(environ=environ)


def test_as_dict_shows_the_index_with_its_kind():
    shown = load_config(environ={"SPR_VECTORS__INDEX__KIND": "IVF_FLAT", "SPR_VECTORS__INDEX__NLIST": "64"}).as_dict()
    assert shown["vectors"]["index"] == {"kind": "IVF_FLAT", "nlist": 64, "nprobe": 16}
    assert json.loads(json.dumps(shown))["vectors"]["backend"] == "faiss"
