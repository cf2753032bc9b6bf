"""The ``spr`` command line, run as a child process the way a user runs it."""

from __future__ import annotations

import json

import pytest

from conftest import run_spr
from spr.stores.milvus_server import EmbeddedMilvus


@pytest.fixture
def embedded(tmp_path) -> dict[str, str]:
    """Environment for the embedded defaults under a private data directory."""
    return {"SPR_DATA_DIR": str(tmp_path / "data"), "SPR_CONFIG": ""}


def test_help_lists_the_subcommands_and_version_prints_it():
    helped = run_spr("--help")
    assert helped.returncode == 0
    for command in ("version", "config", "status", "smoke", "milvus"):
        assert command in helped.stdout
    version = run_spr("version")
    assert version.returncode == 0 and version.stdout.startswith("spr 0.")


def test_config_prints_the_effective_values_with_the_password_masked(embedded):
    shown = run_spr(
        "config",
        env={**embedded, "SPR_CATALOG__URL": "postgresql+psycopg2://spr:s3cret@db:5432/spr", "SPR_MILVUS__TOKEN": "tok"},
    )
    assert shown.returncode == 0, shown.stderr
    cfg = json.loads(shown.stdout)
    assert cfg["catalog"]["url"] == "postgresql+psycopg2://spr:***@db:5432/spr"
    assert cfg["milvus"]["token"] == "***"
    assert "s3cret" not in shown.stdout and "tok\"" not in shown.stdout


def test_a_configuration_typo_is_one_line_naming_the_key_and_exit_code_2(embedded):
    bad = run_spr("status", env={**embedded, "SPR_VECTORS__BAKEND": "milvus"})
    assert bad.returncode == 2
    assert "vectors.bakend" in bad.stderr and "Traceback" not in bad.stderr


def test_an_unreachable_catalog_is_an_actionable_error_not_a_traceback(embedded):
    bad = run_spr("status", env={**embedded, "SPR_CATALOG__URL": "postgresql+psycopg2://u:pw@127.0.0.1:1/x"})
    assert bad.returncode == 2
    assert "cannot open the catalog database" in bad.stderr and "***" in bad.stderr
    assert "Traceback" not in bad.stderr and ":pw@" not in bad.stderr


def test_smoke_on_the_embedded_defaults_finds_every_planted_event_and_reruns_without_duplicates(embedded):
    first = run_spr("smoke", "--json", env=embedded)
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)
    assert report["backend"] == "faiss" and report["catalog"].startswith("sqlite:///")
    assert report["found"] == len(report["queries"]) == 5
    for q in report["queries"]:
        assert q["top_iou"] >= 0.5
        assert q["proposals"][0]["video_key"] == q["planted"]["video_key"]
    again = run_spr("smoke", "--json", env=embedded)
    assert again.returncode == 0 and json.loads(again.stdout)["segments"] == report["segments"]
    status = run_spr("status", env=embedded)
    assert status.returncode == 0, status.stderr
    assert "ready=20" in status.stdout and f"(segments: {report['segments']})" in status.stdout
    smoke_row = next(line for line in status.stdout.splitlines() if line.startswith("smoke "))
    assert smoke_row.split()[-1] == str(report["segments"])  # vectors == catalog segments


def test_smoke_prints_tables_with_timestamps_and_says_the_embeddings_are_synthetic(embedded):
    run = run_spr("smoke", "--videos", "4", "--events", "2", env=embedded)
    assert run.returncode == 0, run.stderr
    assert "synthetic" in run.stdout and "found 2/2" in run.stdout
    assert "0:" in run.stdout and "timings: ann" in run.stdout


@pytest.mark.postgres
@pytest.mark.milvus
def test_smoke_runs_the_same_on_postgresql_and_milvus_with_an_ivf_index(embedded, postgres_url, milvus_uri):
    env = {
        **embedded,
        "SPR_CATALOG__URL": postgres_url,
        "SPR_VECTORS__BACKEND": "milvus",
        "SPR_MILVUS__URI": milvus_uri,
        "SPR_VECTORS__INDEX__KIND": "IVF_FLAT",
        "SPR_VECTORS__INDEX__NLIST": "16",
        "SPR_VECTORS__INDEX__NPROBE": "16",
    }
    collection = f"t_smoke_{abs(hash(postgres_url)) % 10**8}"
    run = run_spr("smoke", "--json", "--videos", "6", "--events", "3", "--collection", collection, env=env)
    try:
        assert run.returncode == 0, run.stderr
        report = json.loads(run.stdout)
        assert report["backend"] == "milvus" and report["catalog"].startswith("postgresql")
        assert report["found"] == 3
    finally:
        from spr.stores.milvus_store import MilvusStore

        store = MilvusStore(milvus_uri)
        store.drop_collection(collection)
        store.close()


@pytest.mark.milvus
def test_milvus_status_reports_the_running_server_and_a_second_start_reuses_it(milvus_server_dir):
    if milvus_server_dir is None:
        pytest.skip("the suite uses an external Milvus server (SPR_TEST_MILVUS_URI); nothing was started here")
    state = EmbeddedMilvus(milvus_server_dir).status()
    status = run_spr("milvus", "status", "--dir", str(milvus_server_dir))
    assert status.returncode == 0
    assert f"uri={state.uri}" in status.stdout and "healthy" in status.stdout
    again = run_spr("milvus", "start", "--dir", str(milvus_server_dir), "--port", "0")
    assert again.returncode == 0 and f"pid={state.pid}" in again.stdout
    assert "all interfaces" in again.stdout


def test_milvus_status_of_a_directory_with_no_server_exits_1(tmp_path):
    status = run_spr("milvus", "status", "--dir", str(tmp_path / "none"))
    assert status.returncode == 1 and "not running" in status.stdout
    stopped = run_spr("milvus", "stop", "--dir", str(tmp_path / "none"))
    assert stopped.returncode == 0 and "was not running" in stopped.stdout


def test_timestamps_print_as_hours_minutes_seconds_and_round_into_the_next_minute():
    from spr.cli import hms

    assert hms(0.0) == "0:00:00.0"
    assert hms(3725.3) == "1:02:05.3"
    assert hms(59.96) == "0:01:00.0"
    assert hms(3600.0) == "1:00:00.0"
