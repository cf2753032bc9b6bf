"""Issue #14, ingest side: collections that stay consistent with each other (5), crashed
encoder actors (6), ``--json`` that stays JSON (7) and ingest bookkeeping (10).

Real stores (SQLite or PostgreSQL catalog, Faiss), real PyAV decoding, real local Ray; the
model is the built-in ``spr-tiny`` with random weights (plumbing, not retrieval quality).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from spr.catalog import SegmentCatalog
from spr.catalog.engine import create_catalog_engine
from spr.catalog.migrate import upgrade
from spr.cli import main as spr_main
from spr.config import load_config
from spr.ingest.distributed import ray_temp_dir, start_ray
from spr.ingest.pipeline import run_ingest
from spr.ingest.progress import IngestProgress
from spr.ingest.sources import sources_from_manifest, sources_from_paths
from spr.ingest.synthetic_video import write_video
from spr.segments import segment_count
from spr.stores import open_vector_store

from conftest import run_spr

SIZE = (160, 120)


def env_for(tmp_path: Path, **extra: str) -> dict[str, str]:
    """Configuration as SPR_* variables: the same for in-process calls and child processes."""
    return {
        "SPR_DATA_DIR": str(tmp_path / "data"),
        "SPR_CLIP__MODEL": "spr-tiny",
        "SPR_CLIP__BATCH_SIZE": "16",
        "SPR_RAY__NUM_CPUS": "2",
        # No text tracks: these tests are about frames and bookkeeping, and the ASR model is slow.
        "SPR_SPEECH__ENABLED": "false",
        "SPR_SUBTITLES__ENABLED": "false",
        **extra,
    }


def make_config(tmp_path: Path, **extra: str):
    return load_config(environ=env_for(tmp_path, **extra))


def ingest(config, sources, collection=None, executor="inline", **kw):
    progress = IngestProgress(len(sources), stream=None)
    return run_ingest(config, sources, collection, executor=executor, progress=progress, **kw)


def status_output(monkeypatch, capsys, tmp_path: Path) -> str:
    """``spr status`` in this process, as a user would see it."""
    for name, value in env_for(tmp_path).items():
        monkeypatch.setenv(name, value)
    capsys.readouterr()
    assert spr_main(["status"]) == 0
    return capsys.readouterr().out


def vectors_line(output: str, collection: str) -> int:
    """The vector count `spr status` prints for ``collection``."""
    for line in output.splitlines():
        fields = line.split()
        if fields and fields[0] == collection:
            return int(fields[-1])
    raise AssertionError(f"no line for {collection!r} in:\n{output}")


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("videos")
    write_video(root / "a.mp4", 10.0, fps=4, size=SIZE, seed=1)
    write_video(root / "b.mp4", 18.0, fps=4, size=SIZE, seed=2)
    return root


# --- 5. collections stay consistent with each other ----------------------------------------------


def test_videos_ready_in_one_collection_are_ingested_into_another(tmp_path, videos):
    config = make_config(tmp_path)
    sources = sources_from_paths([videos])
    first = ingest(config, sources)
    assert (first.videos_done, first.videos_failed) == (2, 0)
    expected = segment_count(10.0) + segment_count(18.0)

    # "Already done" is judged per collection: `segments` holding them says nothing about `news`.
    news = ingest(config, sources, "news")
    assert (news.videos_done, news.videos_skipped, news.videos_failed) == (2, 0, 0)
    store = open_vector_store(config)
    try:
        assert store.count("news") == store.count("segments") == expected
    finally:
        store.close()
    # ... and once there, a re-run into `news` skips them.
    again = ingest(config, sources, "news")
    assert (again.videos_done, again.videos_skipped) == (0, 2)


def test_a_changed_video_leaves_no_stale_vectors_in_another_collection(tmp_path, videos, monkeypatch, capsys):
    root = tmp_path / "v"
    root.mkdir()
    write_video(root / "long.mp4", 30.0, fps=4, size=SIZE, seed=5)
    write_video(root / "other.mp4", 9.0, fps=4, size=SIZE, seed=6)
    config = make_config(tmp_path)
    sources = sources_from_paths([root])
    ingest(config, sources, "alpha")
    ingest(config, sources, "beta")
    old_long, other = segment_count(30.0), segment_count(9.0)
    before = status_output(monkeypatch, capsys, tmp_path)
    assert vectors_line(before, "alpha") == vectors_line(before, "beta") == old_long + other

    # The file changes (shorter) and is re-ingested into `alpha` only.
    write_video(root / "long.mp4", 10.0, fps=4, size=SIZE, seed=7)
    changed = ingest(config, sources, "alpha")
    assert (changed.videos_done, changed.videos_skipped) == (1, 1)
    new_long = segment_count(10.0)

    # `beta` held the old version: its vectors are gone (none maps onto the new spans, none
    # points at nothing), and `spr status` no longer counts them.
    store = open_vector_store(config)
    catalog = SegmentCatalog.from_config(config)
    try:
        assert store.count("alpha") == new_long + other
        assert store.count("beta") == other
        video = catalog.get_video("long.mp4")
        assert catalog.holds("beta", video.id) is None
        assert catalog.holds("alpha", video.id) == (video.content_hash, new_long)
    finally:
        store.close()
        catalog.close()
    after = status_output(monkeypatch, capsys, tmp_path)
    assert vectors_line(after, "alpha") == new_long + other
    assert vectors_line(after, "beta") == other

    # `beta` is not done with the new version: its next run ingests it, the other is skipped.
    refill = ingest(config, sources, "beta")
    assert (refill.videos_done, refill.videos_skipped) == (1, 1)
    store = open_vector_store(config)
    try:
        assert store.count("beta") == new_long + other
    finally:
        store.close()


def test_an_unchanged_video_ingested_into_another_collection_stays_in_the_first(tmp_path, videos):
    """Publishing the same version elsewhere (or again) must not invalidate anything."""
    config = make_config(tmp_path)
    sources = sources_from_paths([videos / "a.mp4"])
    ingest(config, sources, "alpha")
    ingest(config, sources, "beta", force=True)
    ingest(config, sources, "beta", force=True)
    store = open_vector_store(config)
    try:
        assert store.count("alpha") == store.count("beta") == segment_count(10.0)
    finally:
        store.close()


# --- 10. ingest bookkeeping --------------------------------------------------------------------------


def test_the_run_row_and_the_summary_agree_about_skipped_videos(tmp_path, videos):
    config = make_config(tmp_path)
    sources = sources_from_paths([videos])
    ingest(config, sources)
    again = ingest(config, sources)
    assert (again.videos_done, again.videos_skipped) == (0, 2)
    with SegmentCatalog.from_config(config) as catalog:
        run = catalog.get_run(again.run_id)
    assert (run.videos_done, run.videos_skipped, run.videos_failed) == (0, 2, 0)


def test_user_metadata_keeps_its_own_path_size_and_mtime_and_internal_fields_are_not_filterable(tmp_path, videos):
    manifest = tmp_path / "m.jsonl"
    user = {"path": "archive/tape-7", "file_size": "2 reels", "file_mtime_ns": "1970", "show": "x"}
    manifest.write_text(json.dumps({"key": "tape7", "path": str(videos / "a.mp4"), "metadata": user}) + "\n")
    config = make_config(tmp_path)
    sources = sources_from_manifest(manifest)
    assert ingest(config, sources).videos_done == 1
    with SegmentCatalog.from_config(config) as catalog:
        video = catalog.get_video("tape7")
        assert video.metadata == user  # nothing overwritten
        st = os.stat(videos / "a.mp4")
        assert video.ingest_info == {
            "path": sources[0].path, "file_size": st.st_size, "file_mtime_ns": st.st_mtime_ns,
        }
        # Filters see the user's values only.
        assert catalog.video_keys_matching({"path": "archive/tape-7"}) == ["tape7"]
        assert catalog.video_keys_matching({"path": sources[0].path}) == []
        assert catalog.video_keys_matching({"file_size": str(st.st_size)}) == []
    # The internal fingerprint still lets a re-run skip the unchanged file without hashing it.
    assert ingest(config, sources).videos_skipped == 1


def test_the_migration_moves_ingest_fields_out_of_existing_metadata(catalog_url):
    """A catalog written before 0003: ingest's keys leave ``metadata``, a user's ``path`` on
    a row ingest did not write stays, every ready video counts as held by every collection."""
    engine = create_catalog_engine(catalog_url)
    try:
        with engine.begin() as conn:
            upgrade(conn, "0002")
            conn.execute(sa.text(
                "INSERT INTO videos (key, uri, duration_s, status, metadata) VALUES "
                "('ingested', 'file:///srv/a.mp4', 10, 'ready', :m1), "
                "('failed', 'file:///srv/b.mp4', 0, 'failed', :m2), "
                "('imported', 's3://bucket/c.mp4', 8, 'ready', :m3)"
            ), {
                "m1": json.dumps({"show": "x", "path": "/srv/a.mp4", "file_size": 5, "file_mtime_ns": 7}),
                "m2": json.dumps({"path": "/srv/b.mp4"}),
                "m3": json.dumps({"path": "my/own/path"}),
            })
            conn.execute(sa.text(
                "INSERT INTO collections (name, backend, dim, metric, index_spec) VALUES "
                "('segments', 'faiss', 8, 'IP', '{}'), ('news', 'faiss', 8, 'IP', '{}')"
            ))
            conn.execute(sa.text("INSERT INTO ingest_runs (status, config) VALUES ('running', '{}')"))
    finally:
        engine.dispose()
    with SegmentCatalog.open(catalog_url) as catalog:
        ingested, failed, imported = (catalog.get_video(k) for k in ("ingested", "failed", "imported"))
        assert (ingested.metadata, ingested.ingest_info) == (
            {"show": "x"}, {"path": "/srv/a.mp4", "file_size": 5, "file_mtime_ns": 7}
        )
        assert (failed.metadata, failed.ingest_info) == ({}, {"path": "/srv/b.mp4"})
        assert (imported.metadata, imported.ingest_info) == ({"path": "my/own/path"}, {})
        assert catalog.holdings([ingested.id, imported.id, failed.id]) == {
            v.id: {"segments": (None, 0), "news": (None, 0)} for v in (ingested, imported)
        }
        # A run from before the catalog kept process ids: unknown, left as it was.
        (old,) = catalog.list_runs()
        assert (old.status, old.pid, old.videos_skipped) == ("running", None, 0)
        catalog.finish_run(old.id)
        new = catalog.start_run({})
        catalog.finish_run(new, "failed", "x")


def test_a_killed_run_is_marked_abandoned_by_the_next_run_and_shown_in_status(tmp_path, monkeypatch, capsys):
    config = make_config(tmp_path)
    url = config.catalog_url
    # A run whose process is killed before it can close its row.
    code = (
        "import sys, time\nfrom spr.catalog import SegmentCatalog\n"
        "c = SegmentCatalog.open(sys.argv[1]); print(c.start_run({'collection': 'segments'}), flush=True)\n"
        "time.sleep(600)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code, url], stdout=subprocess.PIPE, text=True)
    try:
        killed = int(child.stdout.readline())
        with SegmentCatalog.open(url) as catalog:
            alive = catalog.start_run({"collection": "other"})
            assert catalog.get_run(killed).status == "running"  # its process still runs: left alone
    finally:
        child.kill()
        child.wait(30)
    with SegmentCatalog.open(url) as catalog:
        # The next run finds the killed one's process gone; this process's run stays.
        nxt = catalog.start_run({"collection": "segments"})
        run = catalog.get_run(killed)
        assert run.status == "abandoned" and run.finished_at is not None and "process" in run.error
        assert catalog.get_run(alive).status == catalog.get_run(nxt).status == "running"
        catalog.finish_run(alive)
        catalog.finish_run(nxt)
    out = status_output(monkeypatch, capsys, tmp_path)
    assert "abandoned=1" in out
    assert f"run {killed}" in out and "abandoned" in out.split(f"run {killed}")[1].splitlines()[0]


def test_status_counts_only_ready_videos_segments(tmp_path, videos, monkeypatch, capsys):
    config = make_config(tmp_path)
    ingest(config, sources_from_paths([videos / "a.mp4"]))
    with SegmentCatalog.from_config(config) as catalog:
        # A video half-way through publishing: its segment rows exist, it is not searchable.
        pending = catalog.register_video("half.mp4", "file:///half.mp4", 40.0)
        catalog.replace_segments(pending.id, np.arange(10), np.arange(10) * 4.0, np.arange(1, 11) * 4.0)
    out = status_output(monkeypatch, capsys, tmp_path)
    line = next(ln for ln in out.splitlines() if ln.startswith("videos"))
    assert f"(segments: {segment_count(10.0)}, 10 of pending videos)" in line


def test_a_bad_collection_name_is_a_usage_error_before_ray_starts(tmp_path, videos):
    env = env_for(tmp_path)
    t0 = time.monotonic()
    done = run_spr("ingest", str(videos / "a.mp4"), "--collection", "../evil", env=env)
    assert done.returncode == 2, done.stderr
    assert "invalid collection name '../evil'" in done.stderr and "Traceback" not in done.stderr
    assert not Path(ray_temp_dir(tmp_path / "data")).exists()  # Ray never started
    assert time.monotonic() - t0 < 60


def test_status_into_a_closed_pipe_exits_quietly(tmp_path, videos):
    """`spr status | head` once head has left: no "Broken pipe", no traceback, exit 0."""
    env = env_for(tmp_path)
    assert run_spr("ingest", str(videos / "a.mp4"), "--executor", "inline", env=env).returncode == 0
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first byte
    try:
        done = subprocess.run(
            [sys.executable, "-m", "spr.cli", "status"], stdout=write, stderr=subprocess.PIPE, text=True,
            env={**os.environ, **env}, timeout=300,
        )
    finally:
        os.close(write)
    assert done.returncode == 0, done.stderr
    assert "Broken pipe" not in done.stderr and "BrokenPipeError" not in done.stderr, done.stderr


# --- 6 and 7. a crashed encoder actor, on real Ray; stdout stays JSON ------------------------------


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    """One local Ray for the module: run_ingest joins it (and leaves it running)."""
    import ray

    start_ray("", tmp_path_factory.mktemp("ray-home"), 2)
    yield
    ray.shutdown()


def _encoder_pids() -> dict[str, int]:
    import ray

    return {
        a["Name"]: a["Pid"] for a in ray._private.state.actors().values()
        if a.get("Name", "").startswith("spr-encoder-") and a["State"] == "ALIVE" and a.get("Pid")
    }


def _kill_encoders(url: str, after_ready: int, kills: int, stop: threading.Event, killed: list[str]) -> None:
    """Once the run has started (its actor loaded the model) and ``after_ready`` videos are
    ready, SIGKILL the live encoder actor's process, ``kills`` times (each replacement once up)."""
    with SegmentCatalog.open(url, migrate=False) as catalog:
        def started() -> bool:
            return bool(catalog.list_runs("running")) and catalog.count_by_status()["ready"] >= after_ready

        while not stop.is_set() and not started():
            time.sleep(0.05)
    while not stop.is_set() and len(killed) < kills:
        pids = {n: p for n, p in _encoder_pids().items() if n not in killed}
        if not pids:
            time.sleep(0.05)
            continue
        name, pid = sorted(pids.items())[0]
        os.kill(pid, signal.SIGKILL)
        killed.append(name)


@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_a_crashed_encoder_actor_is_restarted_and_its_videos_retried_and_json_stays_json(
    tmp_path, local_ray, monkeypatch, capfd, restore_logging
):
    root = tmp_path / "v"
    root.mkdir()
    durations = [16.0, 17.0, 15.0, 18.0, 16.0]
    for i, d in enumerate(durations):
        write_video(root / f"v{i}.mp4", d, fps=4, size=SIZE, seed=10 + i)
    # One actor taking one video at a time: once the run has started, one video is on it and
    # the others are queued there.
    env = env_for(tmp_path, SPR_INGEST__DECODE_WORKERS="1", SPR_INGEST__WRITE_BATCH_VIDEOS="1")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    config = load_config(environ=env)
    SegmentCatalog.from_config(config).close()  # the catalog exists before the killer polls it
    stop, killed = threading.Event(), []
    killer = threading.Thread(target=_kill_encoders, args=(config.catalog_url, 0, 1, stop, killed), daemon=True)
    killer.start()
    try:
        code = spr_main(["ingest", str(root), "--actors", "1", "--json"])
    finally:
        stop.set()
        killer.join(30)
    out, err = capfd.readouterr()
    assert killed, "the actor was never killed: the test did not test anything"
    summary = json.loads(out)  # stdout is the summary alone, whatever Ray printed meanwhile
    assert code == 0, err
    assert summary["videos"] == {"total": 5, "done": 5, "skipped": 0, "failed": 0}, err
    assert summary["segments_written"] == sum(segment_count(d) for d in durations)
    assert "crashed" in err and "retrying" in err  # the restart is logged, on stderr
    with SegmentCatalog.from_config(config) as catalog:
        assert catalog.count_by_status()["ready"] == 5


def test_a_video_whose_actor_keeps_crashing_fails_after_bounded_retries(tmp_path, local_ray):
    from spr.ingest.distributed import CRASH_RETRIES

    write_video(tmp_path / "only.mp4", 30.0, fps=4, size=SIZE, seed=3)
    config = make_config(tmp_path, SPR_INGEST__DECODE_WORKERS="1")
    SegmentCatalog.from_config(config).close()
    stop, killed = threading.Event(), []
    # Kill every actor that comes up: the first run and every retry die.
    killer = threading.Thread(
        target=_kill_encoders, args=(config.catalog_url, 0, CRASH_RETRIES + 1, stop, killed), daemon=True
    )
    killer.start()
    try:
        summary = ingest(config, sources_from_paths([tmp_path / "only.mp4"]), executor="ray", actors=1)
    finally:
        stop.set()
        killer.join(30)
    assert len(killed) == CRASH_RETRIES + 1
    assert (summary.videos_done, summary.videos_failed) == (0, 1)
    (key, error), = summary.failures
    assert key == "only.mp4" and f"crashed {CRASH_RETRIES + 1} times" in error
