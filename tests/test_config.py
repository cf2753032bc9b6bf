"""Configuration: one typed object, defaults < TOML file < SPR_* variables, errors that say what is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from spr.config import Config, ConfigError, load_config


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
